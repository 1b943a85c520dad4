"""Peak process memory of an audit run against a bare inference loop on the same model.

    python benchmarks/bench_memory.py [--model smollm2-135m] [--suite quick|all]

Runs, each in a fresh process with a cold results cache: (1) a bare loop that loads the model
and scores the audit languages' texts, the audits' default units (`bench_evaluate.bare_loop`),
(2) the same loop with the C allocator settings an audit process takes
(`quantfair.workers.tune_allocator`), for comparison (the goal is against the plain loop),
(3) the audit suite without gradient selectors (`-k "not gradient"`), (4) the gradient audits
alone, from the whole suite (they hold a gradient copy of the weights, so they are measured
separately). `--per-test` also lists the audits whose peaks are highest, with the memory
at their start (`memory_probe.py`, a pytest plugin sampling inside the pytest process).
Memory is the peak of the process's anonymous (unique, not file-backed) pages,
sampled every 0.1 s with psutil: pages of memory maps that are read but never written (the
weight bank's FP and quantized tensors) are not counted, as the kernel can drop and re-read
them. Prints each peak and its ratio to the bare
loop (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BARE = """
import sys
sys.path.insert(0, {benchmarks!r})
{tune}
from bench_evaluate import bare_loop
from quantfair.config import DEFAULT_LANGUAGES, DEFAULT_UNITS
from quantfair.corpus import load_corpus
from quantfair.models import load_model
loaded = load_model({model!r})
corpus = load_corpus().select(DEFAULT_LANGUAGES.split(","))
corpus = corpus.select(units=corpus.sample_units(DEFAULT_UNITS))
texts = [t for units in corpus.texts.values() for t in units.values()]
bare_loop(loaded, texts)
"""


def anonymous_bytes(process: psutil.Process) -> int:
    """Anonymous resident bytes of `process` and its children (sum over their memory maps)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += sum(m.anonymous for m in member.memory_maps(grouped=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def peak_memory(command: list[str], env: dict[str, str], results: tuple[int, ...] = (0, 1)
                ) -> tuple[int, float, int]:
    """Peak anonymous bytes, wall seconds and exit code of `command`; exits unless the code is
    one of `results` (a bare loop: 0; audits: 1 too, when they found damage)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, anonymous_bytes(process))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    stderr = child.stderr.read() if child.stderr else ""
    if child.returncode not in results:
        sys.exit(f"{' '.join(command)} failed ({child.returncode}):\n{stderr[-3000:]}")
    return peak, time.perf_counter() - start, child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", choices=("quick", "all"), default="quick")
    parser.add_argument("--per-test", action="store_true",
                        help="also list the 8 audits with the highest peaks")
    args = parser.parse_args()

    audit = [sys.executable, "-m", "pytest", "audits/", "--model", args.model, "-q",
             "--no-report", "-p", "no:cacheprovider", "-p", "no:xdist"]
    suite = ["-m", "quick"] if args.suite == "quick" else []
    runs = {
        "bare loop": [sys.executable, "-c", BARE.format(
            benchmarks=str(ROOT / "benchmarks"), model=args.model, tune="")],
        "bare loop, quantfair's malloc settings": [sys.executable, "-c", BARE.format(
            benchmarks=str(ROOT / "benchmarks"), model=args.model,
            tune="from quantfair.workers import tune_allocator; tune_allocator()")],
        "audit suite (no gradient selectors)": [*audit, *suite, "-k", "not gradient",
                                                *(["-p", "memory_probe"] if args.per_test
                                                  else [])],
        "gradient audits alone (whole suite)": [*audit, "-k", "gradient"],
    }
    print(f"model {args.model}, suite {args.suite}, {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB")
    bare = None
    for label, command in runs.items():
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
            probe = Path(folder) / "per-test.json"
            env = {**os.environ, "QUANTFAIR_RESULTS_DIR": folder, "HF_HUB_OFFLINE": "1",
                   "QUANTFAIR_MEMORY_PROBE": str(probe),
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"),
                                                  os.environ.get("PYTHONPATH", "")])}
            peak, wall, code = peak_memory(command, env,
                                           (0,) if label.startswith("bare loop") else (0, 1))
            tests = json.loads(probe.read_text()) if probe.is_file() else []
        bare = bare or peak
        print(f"{label:38s} peak anonymous {peak / 2**20:8.0f} MiB  {wall:6.1f} s  "
              f"exit {code}  ratio to bare loop {peak / bare:.2f}")
        for test in sorted(tests, key=lambda t: -t["peak"])[:8]:
            print(f"    {test['peak'] / 2**20:6.0f} MiB peak, {test['start'] / 2**20:6.0f} at "
                  f"its start  {test['test']}")
    print("goal: audit suite <= 1.3x the bare loop")


if __name__ == "__main__":
    main()
