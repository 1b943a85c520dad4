"""`quantfair suggest` against every baseline selector at equal budgets, on held-out units.

    python benchmarks/bench_suggest.py [--model smollm2-135m] [--budgets 5,12,1]
        [--schemes int4-g128-linear,gguf:Q4_0] [--languages en,de,ru,he,ar,zh,ja,ko]
        [--calibration-units 4] [--units 8]

Runs `quantfair suggest` once per scheme and budget (each process shares the results cache,
so the FP reference is computed once), then prints one markdown table per run: every
selector's overhead, mean and worst-language disparity on the audit units with 95% CIs, and
the paired bootstrap differences suggested - baseline and baseline - none (which selectors
are fairer than no protection at all). Acceptance per run: no difference's CI lies above 0,
the suggestion's point estimates are at or below the best baseline's, and its CI against
`none` lies below 0; under a block format (whole tensors only) also against the
baselines such a file can store. Wall time of each search is printed. `--units` audit units
per language (the corpus's 31 less the selectors' 5 and the search's calibration units at
most): more audit units, tighter comparisons.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quantfair.config import DEFAULT_UNITS
from quantfair.report import fairer_than_none
from quantfair.report import interval_text as cell

ROOT = Path(__file__).resolve().parent.parent


def _defined(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def verdict(comparison: list[dict], storable: bool = False) -> str:
    """The acceptance notes against every baseline (`storable`: only those the scheme can
    store), "met" when there are none."""
    ours = comparison[0]
    baselines = [b for b in comparison[1:] if b["storable"] or not storable]
    notes = []
    for name in ("mean", "worst"):  # None: undefined (English's NLL change within noise)
        above = [b["label"] for b in baselines
                 if _defined(b[f"{name}_difference"]["low"]) and b[f"{name}_difference"]["low"] > 0]
        if above:
            notes.append(f"{name}: significantly worse than {', '.join(above)}")
        values = [b[f"{name}_disparity"]["value"] for b in baselines if b["label"] != "none"]
        best = min((v for v in values if _defined(v)), default=None)
        value = ours[f"{name}_disparity"]["value"]
        if not _defined(value):
            notes.append(f"{name}: undefined")
        elif best is not None and value > best + 1e-12:
            notes.append(f"{name}: point estimate above the best baseline's ({best:.3f})")
        none = next(b for b in baselines if b["label"] == "none")
        high = none[f"{name}_difference"]["high"]
        if not _defined(high) or high >= 0:
            notes.append(f"{name}: not significantly below none")
    return "; ".join(notes) or "met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", default="5,12,1")
    parser.add_argument("--schemes", default="int4-g128-linear,gguf:Q4_0")
    parser.add_argument("--languages", default="en,de,ru,he,ar,zh,ja,ko")
    parser.add_argument("--calibration-units", type=int, default=4,
                        help="held-out units per language the search scores candidates on")
    parser.add_argument("--units", type=int, default=DEFAULT_UNITS,
                        help="audit units per language the suggestion is judged on")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-suggest-") as folder:
        for budget in args.budgets.split(","):
            for scheme in args.schemes.split(","):
                out = Path(folder) / "suggestion.json"
                command = [sys.executable, "-m", "quantfair.cli", "suggest", args.model,
                           "--budget", f"{budget}%", "--quant", scheme,
                           "--languages", args.languages, "--json", str(out),
                           "--calibration-units", str(args.calibration_units),
                           "--units", str(args.units)]
                start = time.perf_counter()
                done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - start
                if done.returncode != 0:  # its progress and errors went to stderr
                    sys.exit(f"{' '.join(command)} failed ({done.returncode})")
                result = json.loads(out.read_text())
                print(f"\n### {scheme}, budget {budget}%: suggested `{result['strategy']}` "
                      f"({100 * result['overhead']:.3f}% of parameters; search and "
                      f"comparison {wall:.0f} s, {result['forward_passes']:,} forward passes, "
                      f"{args.calibration_units} calibration units and {args.units} audit "
                      "units per language)\n")
                print("| selector | strategy | overhead | mean disparity | worst disparity "
                      "| suggested - it (mean) | suggested - it (worst) | it - none (mean) "
                      "| it - none (worst) |")
                print("|---|---|---|---|---|---|---|---|---|")
                for row in result["comparison"]:
                    print(f"| {row['label']} | `{', '.join(row['strategies'])}` | "
                          f"{100 * row['overhead']:.3f}% | {cell(row['mean_disparity'])} | "
                          f"{cell(row['worst_disparity'])} | "
                          f"{cell(row.get('mean_difference'))} | "
                          f"{cell(row.get('worst_difference'))} | "
                          f"{cell(row.get('mean_vs_none'))} | "
                          f"{cell(row.get('worst_vs_none'))} |")
                print(f"\nacceptance: {verdict(result['comparison'])}")
                print(fairer_than_none(result["comparison"]))
                if not all(row["storable"] for row in result["comparison"]):
                    print("acceptance against the baselines a file of this format can store "
                          f"(whole tensors): {verdict(result['comparison'], True)}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
