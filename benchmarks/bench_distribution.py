"""Cost of the distribution statistics (KL divergence, same top, delta-p) over NLL-only
evaluation, per strategy, with the FP side already cached; the FP model's own statistics,
its FP side built in the same forward; and the FP side's size on disk.

    python benchmarks/bench_distribution.py [--model smollm2-135m] [--languages en,he,zh]
        [--units 4] [--quant int4] [--strategy none --strategy embed] [--repeats 2]

Prints the FP model's statistics with its side built against NLL only, then per strategy
tokens/s of both on the same texts in the same run and their ratio (target <= 1.15x), then
the FP side cache in bytes per token and GB per million tokens.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from quantfair.corpus import load_corpus
from quantfair.evaluate import Evaluator, ResultCache, Swap
from quantfair.models import load_model
from quantfair.quantize import QuantScheme, WeightBank
from quantfair.strategies import StrategyResolver


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--languages", default="en,he,zh")
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--quant", default="int4")
    parser.add_argument("--strategy", action="append", default=[])
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    loaded = load_model(args.model, args.device)
    bank = WeightBank(loaded.model)
    scheme = QuantScheme.parse(args.quant)
    resolver = StrategyResolver(bank, scheme)
    corpus = load_corpus().select(args.languages.split(","))
    corpus = corpus.select(units=corpus.sample_units(args.units))
    texts = [t for units in corpus.texts.values() for t in units.values()]

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {loaded.device}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        evaluator = Evaluator(loaded, ResultCache(Path(folder)))
        tokens = sum(len(evaluator.token_ids(t)) - 1 for t in texts)
        print(f"model {args.model}: {len(texts)} units, {tokens:,} scored tokens, {scheme.name}")
        bank.restore()
        evaluator.evaluate("warm", texts[:1])
        nll = timed(partial(evaluator.evaluate, "fp nll", texts))
        fp = timed(partial(evaluator.evaluate_distribution, "fp", texts))  # the FP head's side
        print(f"FP model, its side built: NLL only {tokens / nll:7.1f} tokens/s, with "
              f"distribution {tokens / fp:7.1f} tokens/s, ratio {fp / nll:.3f}x")
        for strategy in args.strategy or ["none", "embed"]:
            protection = resolver.resolve(strategy)

            def apply(protection=protection) -> None:
                bank.apply(scheme, protection)

            swap = Swap(bank.restore, apply)
            apply()
            evaluator.evaluate_distribution(f"warm {strategy}", texts, swap)  # this head's side
            nll = distribution = float("inf")
            for repeat in range(args.repeats):  # alternate to share drift between both
                config = f"{strategy} {repeat}"  # a fresh name: nothing served from the cache
                nll = min(nll, timed(partial(evaluator.evaluate, config, texts)))
                distribution = min(distribution, timed(
                    partial(evaluator.evaluate_distribution, config, texts, swap)))
            print(f"{strategy:>12}: NLL only {tokens / nll:7.1f} tokens/s, with distribution "
                  f"{tokens / distribution:7.1f} tokens/s, ratio {distribution / nll:.3f}x "
                  "(target <= 1.15x)")
        files = list(evaluator.references.folder.glob("*.npz"))
        base = sum(f.stat().st_size for f in files if f.name.endswith(".base.npz"))
        heads = len({f.name.split(".")[1] for f in files}) - 1
        per_head = (evaluator.references.disk_bytes() - base) / heads
        total = base + per_head
        print(f"FP side cache ({heads} head variants): {base / tokens:.0f} bytes/token shared + "
              f"{per_head / tokens:.0f} bytes/token per head variant = {total / tokens:.0f} "
              f"bytes/token, {total / tokens / 1000:.2f} GB per million tokens with one head")

if __name__ == "__main__":
    main()
