"""GPU check: quantfair's evaluator against a bare loop on the same GPU, and GPU numbers against
CPU numbers computed on another machine.

    python benchmarks/gpu_check.py --write-reference   # on a CPU machine: gpu_reference.json
    bash benchmarks/gpu_check.sh                        # on the GPU machine

Uses GPT-2's architecture with seeded random weights (a shipped config: no download, no gguf
package) and the shipped UDHR texts. Prints (1) tokens/s of a bare transformers loop and of
quantfair's evaluator (batched by tokens, `--dtype`), their ratio; (2) the largest relative
difference of per-unit FP and int4-g128 NLLs between this device in float32 and the CPU
reference (goal <= 1e-4) and in bfloat16 (reported, expected ~1e-2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluate import bare_loop  # noqa: E402

from quantfair.corpus import load_corpus  # noqa: E402
from quantfair.evaluate import Evaluator, ResultCache  # noqa: E402
from quantfair.models import load_model  # noqa: E402
from quantfair.quantize import WeightBank  # noqa: E402
from quantfair.schemes import QuantScheme  # noqa: E402

REFERENCE = Path(__file__).with_name("gpu_reference.json")
LANGUAGES, UNITS, SCHEME = ["en", "he", "zh", "ru"], 6, "int4-g128"


def texts() -> list[str]:
    corpus = load_corpus().select(LANGUAGES)
    corpus = corpus.select(units=corpus.sample_units(UNITS))
    return [t for units in corpus.texts.values() for t in units.values()]


def nlls(device: str, dtype: str) -> dict[str, list[float]]:
    """Per-unit summed NLL (nats) of the FP model and of SCHEME, in `texts()` order."""
    loaded = load_model("gpt2", device, random_weights=True, dtype=dtype)
    items = texts()
    with tempfile.TemporaryDirectory() as folder:
        bank = WeightBank(loaded.model, Path(folder) / "weights")
        evaluator = Evaluator(loaded, ResultCache(Path(folder) / "results"))
        fp = evaluator.evaluate("fp", items)
        bank.apply(QuantScheme.parse(SCHEME))
        quantized = evaluator.evaluate(SCHEME, items)
    return {"fp": [fp[t].nll for t in items], SCHEME: [quantized[t].nll for t in items]}


def throughput(device: str, dtype: str) -> None:
    loaded = load_model("gpt2", device, random_weights=True, dtype=dtype)
    items = texts() * 4
    bare_loop(loaded, items[:4])  # warm-up
    sync = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)
    best_bare = best_ours = float("inf")
    for _ in range(3):  # interleaved, best of three
        sync()
        start = time.perf_counter()
        _, tokens = bare_loop(loaded, items)
        sync()
        best_bare = min(best_bare, time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as folder:
            evaluator = Evaluator(loaded, ResultCache(Path(folder)))
            start = time.perf_counter()
            evaluator.evaluate("bench", list(dict.fromkeys(items)))
            sync()
            best_ours = min(best_ours, time.perf_counter() - start)
    unique = sum(len(loaded.tokenizer(t)["input_ids"]) for t in dict.fromkeys(items))
    print(f"{device} {dtype}: bare loop {tokens / best_bare:10.0f} tokens/s, quantfair "
          f"{unique / best_ours:10.0f} tokens/s (batched by tokens), ratio "
          f"{(unique / best_ours) / (tokens / best_bare):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--write-reference", action="store_true")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.write_reference:
        REFERENCE.write_text(json.dumps(nlls("cpu", "float32"), indent=1) + "\n")
        print(f"wrote {REFERENCE}")
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, f"gpu_check: torch {torch.__version__} sees no CUDA GPU here; "
                       "`bash benchmarks/gpu_check.sh cpu` runs the check on the CPU\n")
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    reference = json.loads(REFERENCE.read_text())
    for dtype in ("float32", "bfloat16"):
        measured = nlls(args.device, dtype)
        for name, values in measured.items():
            ours, theirs = np.array(values), np.array(reference[name])
            worst = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
            goal = "  (goal <= 1e-4)" if dtype == "float32" else ""
            print(f"{args.device} {dtype} {name}: largest relative NLL difference to the CPU "
                  f"reference {worst:.2e}{goal}")
        throughput(args.device, dtype)


if __name__ == "__main__":
    main()
