"""quantfair's evaluator against a bare transformers forward loop, same texts, same process.

    python benchmarks/bench_evaluate.py [--model smollm2-135m] [--languages en,he,zh] [--units 6]

Prints tokens/s of both, their ratio (target >= 0.95), and the warm-cache time (target < 1 s).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from quantfair.corpus import load_corpus
from quantfair.evaluate import Evaluator, ResultCache
from quantfair.models import load_model


def bare_loop(loaded, texts: list[str]) -> tuple[float, int]:
    """The baseline: one plain forward per text, BOS prefix, summed NLL."""
    tokenizer, model = loaded.tokenizer, loaded.model
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([[prefix] + tokenizer(text, add_special_tokens=False)["input_ids"]],
                               device=loaded.device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            tokens += ids.shape[1] - 1
    return total, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--languages", default="en,he,zh")
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    loaded = load_model(args.model, args.device)
    corpus = load_corpus().select(args.languages.split(","))
    corpus = corpus.select(units=corpus.sample_units(args.units))
    texts = [t for units in corpus.texts.values() for t in units.values()]
    bare_loop(loaded, texts[:2])  # warm-up

    best_bare = best_ours = float("inf")
    for _ in range(args.repeats):  # alternate to share drift between both
        start = time.perf_counter()
        bare_nll, tokens = bare_loop(loaded, texts)
        best_bare = min(best_bare, time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as folder:
            evaluator = Evaluator(loaded, ResultCache(Path(folder)))
            start = time.perf_counter()
            ours = evaluator.evaluate("bench", texts)
            best_ours = min(best_ours, time.perf_counter() - start)
            start = time.perf_counter()
            Evaluator(loaded, ResultCache(Path(folder))).evaluate("bench", texts)
            warm = time.perf_counter() - start
    our_nll = sum(r.nll for r in ours.values())
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {loaded.device}, torch {torch.__version__}")
    print(f"model {args.model}: {len(texts)} units, {tokens:,} scored tokens")
    print(f"bare loop:  {tokens / best_bare:8.1f} tokens/s  ({best_bare:.2f} s)")
    print(f"quantfair:  {tokens / best_ours:8.1f} tokens/s  ({best_ours:.2f} s)")
    print(f"ratio quantfair / bare: {best_bare / best_ours:.3f}  (target >= 0.95)")
    print(f"warm cache re-run: {warm:.3f} s  (target < 1 s)")
    print(f"NLL agreement: relative difference {abs(our_nll - bare_nll) / bare_nll:.2e}")


if __name__ == "__main__":
    main()
