"""quantfair's evaluator against a bare transformers forward loop, same texts, same process.

    python benchmarks/bench_evaluate.py [--model smollm2-135m] [--languages en,he,zh]
        [--units 6] [--repeats 5] [--allocator]

Runs the bare loop and quantfair's evaluator (cold cache) in turn, `--repeats` times, and
prints tokens/s of both, the ratio quantfair / bare of each round and their median (target
>= 0.98), and the warm-cache time (target < 1 s). When lm-evaluation-harness is importable
(it is not a dependency: e.g. `pip install --target DIR lm_eval` and PYTHONPATH=DIR), its
`loglikelihood_rolling` on the same texts and model is timed in the same rounds.
`--allocator` sets glibc's malloc as an audit process does (`tune_allocator`) before the
model loads: a run with it against one without says what the settings cost in speed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from quantfair.corpus import load_corpus
from quantfair.evaluate import Evaluator, ResultCache
from quantfair.models import load_model
from quantfair.workers import tune_allocator


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
            if ids.shape[1] > loaded.context_length:  # the loop has no windows
                raise SystemExit(f"bare loop: a text of {ids.shape[1]} tokens is longer than "
                                 f"{loaded.name}'s context ({loaded.context_length} positions); "
                                 "benchmark a model with a longer context")
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            tokens += ids.shape[1] - 1
    return total, tokens


def harness(loaded):
    """lm-evaluation-harness's rolling log-likelihood of texts, or None when not installed."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1,
              device=str(loaded.device))

    def score(texts: list[str]) -> float:
        requests = [Instance("loglikelihood_rolling", {}, (text,), index)
                    for index, text in enumerate(texts)]
        return -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))
    return score


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--languages", default="en,he,zh")
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--allocator", action="store_true",
                        help="set the C allocator as an audit process does (tune_allocator)")
    args = parser.parse_args()
    if args.allocator:
        tune_allocator()

    loaded = load_model(args.model, args.device)
    corpus = load_corpus().select(args.languages.split(","))
    corpus = corpus.select(units=corpus.sample_units(args.units))
    texts = [t for units in corpus.texts.values() for t in units.values()]
    bare_loop(loaded, texts[:2])  # warm-up
    lm_eval = harness(loaded)

    rounds = []
    for _ in range(args.repeats):  # interleaved: drift is shared by all
        (bare_nll, tokens), bare = timed(bare_loop, loaded, texts)
        with tempfile.TemporaryDirectory() as folder:
            ours, cold = timed(Evaluator(loaded, ResultCache(Path(folder))).evaluate,
                               "bench", texts)
            _, warm = timed(Evaluator(loaded, ResultCache(Path(folder))).evaluate,
                            "bench", texts)
        theirs = timed(lm_eval, texts) if lm_eval else (None, None)
        rounds.append((bare, cold, warm, *theirs))
    bare_s, ours_s, warm_s, harness_nll, harness_s = zip(*rounds, strict=True)
    ratios = [b / o for b, o in zip(bare_s, ours_s, strict=True)]
    our_nll = sum(r.nll for r in ours.values())
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {loaded.device}, torch {torch.__version__}")
    print(f"model {args.model}: {len(texts)} units, {tokens:,} scored tokens, "
          f"{args.repeats} interleaved rounds (median times)")
    print(f"bare loop:  {tokens / statistics.median(bare_s):8.1f} tokens/s")
    print(f"quantfair:  {tokens / statistics.median(ours_s):8.1f} tokens/s")
    if lm_eval:
        print(f"lm-eval:    {tokens / statistics.median(harness_s):8.1f} tokens/s "
              f"(loglikelihood_rolling; NLL relative difference to the bare loop "
              f"{abs(harness_nll[-1] - bare_nll) / bare_nll:.2e})")
    print(f"ratio quantfair / bare per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f}  (target >= 0.98)")
    print(f"warm cache re-run: {max(warm_s):.3f} s  (target < 1 s)")
    print(f"NLL agreement: relative difference {abs(our_nll - bare_nll) / bare_nll:.2e}")


if __name__ == "__main__":
    main()
