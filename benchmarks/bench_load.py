"""Loading the embedded model: converting the GGUF (first use) against the safetensors cache.

    python benchmarks/bench_load.py [--model smollm2-135m]

Prints both times and their ratio; target: the cached load under 3 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from quantfair.models import load_model


def timed_load(model: str) -> float:
    start = time.perf_counter()
    load_model(model)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["QUANTFAIR_CACHE_DIR"] = cache  # a cold cache, whatever the user has
        cold = timed_load(args.model)
        warm = min(timed_load(args.model) for _ in range(3))
    print(f"{args.model}: first load (GGUF -> safetensors cache) {cold:.2f} s")
    print(f"{args.model}: cached load {warm:.2f} s  (target < 3 s)")
    print(f"speed-up {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
