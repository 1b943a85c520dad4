"""A quantfair command beside one busy core: torch's default threads against one thread.

    python benchmarks/bench_busy_core.py [--rounds 2]

What `tests/conftest.py` acts on: under `pytest -n 2` on two cores, a process a test starts
runs beside the other test worker's busy core. Each round times `quantfair suggest` on a tiny
model (cold results cache) while a Python loop keeps one core busy, first with torch's default
threads (all cores), then with OMP_NUM_THREADS=1 (the share the test session hands it), and
prints both wall times and their ratio (one thread / default; below 1 where the share helps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMAND = [sys.executable, "-m", "quantfair.cli", "suggest", "tiny-llama", "--budget", "30%",
           "--languages", "en,he,zh", "--calibration-units", "2"]


def timed(threads: str | None) -> float:
    """Wall time of COMMAND with OMP_NUM_THREADS `threads` (None: unset), cold results cache."""
    with tempfile.TemporaryDirectory(prefix="bench-busy-") as folder:
        env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
        env.update(QUANTFAIR_RESULTS_DIR=folder, HF_HUB_OFFLINE="1")
        if threads is not None:
            env["OMP_NUM_THREADS"] = threads
        start = time.perf_counter()
        subprocess.run(COMMAND, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; one kept busy by a Python loop; {' '.join(COMMAND[1:])}")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    ratios = []
    try:
        for round_ in range(1, args.rounds + 1):
            default, single = timed(None), timed("1")
            ratios.append(single / default)
            print(f"round {round_}: default threads {default:.1f} s, one thread {single:.1f} s, "
                  f"ratio {ratios[-1]:.2f}")
    finally:
        busy.kill()
    print(f"median ratio one thread / default threads: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
