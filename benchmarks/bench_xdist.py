"""The quick audit suite serially and under pytest-xdist, each from a cold results cache.

    python benchmarks/bench_xdist.py [--model smollm2-135m] [--workers 2] [--rounds 3]

Runs `pytest audits/ --model MODEL -m quick` serially and with `-n WORKERS` in turn, `--rounds`
times, each with QUANTFAIR_RESULTS_DIR pointing to a fresh empty folder (the converted model
under ~/.cache/quantfair may stay warm), and prints the wall times, each round's ratio and the
median ratio (-n WORKERS / serial; goal <= 1.0 on a two-core machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def audit_run(model: str, extra: list[str]) -> tuple[float, int, str]:
    """Wall time, exit code and last output line of one quick audit run, cold results cache."""
    with tempfile.TemporaryDirectory(prefix="bench-xdist-") as folder:
        env = {**os.environ, "QUANTFAIR_RESULTS_DIR": str(Path(folder) / "results"),
               "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "pytest", "audits/", "--model", model, "-m", "quick",
                   "-q", "-p", "no:cacheprovider",
                   "--report", str(Path(folder) / "report.json"), *extra]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if result.returncode not in (0, 1):  # 1: some audits found damage, which is a result
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}"
                 f"\n{result.stderr[-3000:]}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return wall, result.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="serial and -n runs taken in turn, this many times (the median "
                             "ratio is reported: single runs on a shared machine vary ~10%%)")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    ratios = []
    for round_ in range(1, args.rounds + 1):
        serial, serial_code, serial_line = audit_run(args.model, [])
        print(f"round {round_} serial: {serial:7.1f} s  (exit {serial_code}: {serial_line})")
        parallel, parallel_code, parallel_line = audit_run(args.model,
                                                           ["-n", str(args.workers)])
        print(f"round {round_} -n {args.workers}:   {parallel:7.1f} s  (exit {parallel_code}: "
              f"{parallel_line})")
        ratios.append(parallel / serial)
        print(f"round {round_} ratio -n {args.workers} / serial: {ratios[-1]:.3f}")
    print(f"median ratio -n {args.workers} / serial over {args.rounds} round(s): "
          f"{statistics.median(ratios):.3f}  (goal <= 1.0)")


if __name__ == "__main__":
    main()
