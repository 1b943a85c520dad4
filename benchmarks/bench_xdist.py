"""The quick audit suite serially and under pytest-xdist, each from a cold results cache.

    python benchmarks/bench_xdist.py [--model smollm2-135m] [--workers 2] [--rounds 3] [--scaling]
                                     [--sharing]

Runs `pytest audits/ --model MODEL -m quick` serially and with `-n WORKERS` in turn, `--rounds`
times, each with QUANTFAIR_RESULTS_DIR pointing to a fresh empty folder (the converted model
under ~/.cache/quantfair may stay warm), and prints the wall times, each round's ratio and the
median ratio (-n WORKERS / serial; goal <= 1.0 on a two-core machine). With `--sharing` the
baseline is `-n WORKERS` with the workers' shared hidden states turned off (`quantfair.prefix`
SHARED_DEPTHS set to 0 by a plugin in each process) instead of the serial run.
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


NO_SHARING = "import quantfair.prefix\nquantfair.prefix.SHARED_DEPTHS = 0\n"


def audit_run(model: str, extra: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Wall time, exit code and last output line of one quick audit run, cold results cache."""
    with tempfile.TemporaryDirectory(prefix="bench-xdist-") as folder:
        env = {**os.environ, **(env or {}),
               "QUANTFAIR_RESULTS_DIR": str(Path(folder) / "results"), "HF_HUB_OFFLINE": "1"}
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


FORWARDS = """
import sys, time, torch
from quantfair.models import load_model
torch.set_num_threads(int(sys.argv[2]))
model = load_model(sys.argv[1]).model
ids = torch.randint(0, 1000, (1, 1024))
with torch.inference_mode():
    model(ids)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 15:
        model(ids)
        count += 1
print(count * ids.shape[1] / (time.perf_counter() - start))
"""


def tokens_per_second(model: str, threads: int, processes: int) -> list[float]:
    """Forward-pass tokens/s (1,024 tokens a pass, 15 s) of `processes` processes side by side,
    each at `threads` torch threads."""
    command = [sys.executable, "-c", FORWARDS, model, str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    running = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    return [float(p.communicate()[0].split()[-1]) for p in running]


def scaling(model: str, workers: int) -> None:
    """What `-n workers` can gain on compute at best: one process at `workers` threads against
    `workers` one-thread processes side by side (the thread share xdist workers take)."""
    one = tokens_per_second(model, 1, 1)[0]
    threaded = tokens_per_second(model, workers, 1)[0]
    side_by_side = tokens_per_second(model, 1, workers)
    print(f"one process, 1 thread: {one:.0f} tokens/s; {workers} threads: {threaded:.0f}; "
          f"{workers} one-thread processes: {' + '.join(f'{t:.0f}' for t in side_by_side)} = "
          f"{sum(side_by_side):.0f}; ceiling of -n {workers} / serial on compute: "
          f"{threaded / sum(side_by_side):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="serial and -n runs taken in turn, this many times (the median "
                             "ratio is reported: single runs on a shared machine vary ~10%%)")
    parser.add_argument("--scaling", action="store_true",
                        help="first measure forward-pass tokens/s of one process at WORKERS "
                             "threads against WORKERS one-thread processes side by side")
    parser.add_argument("--sharing", action="store_true",
                        help="compare -n WORKERS with the shared hidden states of the top "
                             "layer off against on, instead of serial against -n WORKERS")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if args.scaling:
        scaling(args.model, args.workers)
    parallel = ("-n", str(args.workers))
    with tempfile.TemporaryDirectory(prefix="bench-xdist-plugin-") as plugins:
        Path(plugins, "bench_no_sharing.py").write_text(NO_SHARING)
        pythonpath = os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))
        # (label, pytest arguments, environment): the baseline, then what is measured
        runs = ([(f"-n {args.workers}, no shared hidden states",
                  [*parallel, "-p", "bench_no_sharing"], {"PYTHONPATH": pythonpath}),
                 (f"-n {args.workers}", list(parallel), {})] if args.sharing
                else [("serial", [], {}), (f"-n {args.workers}", list(parallel), {})])
        ratios = []
        for round_ in range(1, args.rounds + 1):
            walls = []
            for label, extra, env in runs:
                wall, code, line = audit_run(args.model, extra, env)
                print(f"round {round_} {label}: {wall:7.1f} s  (exit {code}: {line})")
                walls.append(wall)
            ratios.append(walls[1] / walls[0])
            print(f"round {round_} ratio {runs[1][0]} / {runs[0][0]}: {ratios[-1]:.3f}")
    if ratios:
        goal = "" if args.sharing else "  (goal <= 1.0)"
        print(f"median ratio {runs[1][0]} / {runs[0][0]} over {args.rounds} round(s): "
              f"{statistics.median(ratios):.3f}{goal}")


if __name__ == "__main__":
    main()
