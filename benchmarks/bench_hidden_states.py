"""Hidden-state reuse (`quantfair.prefix`) against plain re-evaluation, on `suggest`'s search.

    python benchmarks/bench_hidden_states.py [--model smollm2-135m] [--quant int4-g128-linear]
        [--budget 12] [--languages en,he,zh] [--units 2] [--rounds 2]

Each round runs the search (portfolio, structural greedy steps, refinement) on calibration
units twice, in fresh processes with empty results caches (FP reference included): once with
the reuse off (QUANTFAIR_HIDDEN_STATES_MB=0), once on, in alternating order. Prints the wall
time of each search, the ratio on/off per round and its median, the share of decoder-layer
passes the reuse left out, and the largest relative difference between the two runs'
candidate scores, which must stay within 1e-5 (the reuse is exact by construction).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quantfair.config import HIDDEN_STATES_MB, HIDDEN_STATES_VARIABLE

ROOT = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    from quantfair.config import RunConfig
    from quantfair.session import AuditSession
    from quantfair.suggest import Search, search_units

    settings = {"model": args.model, "quant": args.quant, "languages": args.languages}
    session = AuditSession(RunConfig.build(settings.get), announce=lambda _: None)
    start = time.perf_counter()
    search = Search(session, args.budget / 100, search_units(session, args.units))
    chosen, _, trace = search.run(lambda _: None)
    wall = time.perf_counter() - start
    states = session.evaluator.hidden_states
    print(json.dumps({"wall": wall, "chosen": "+".join(chosen) or "none",
                      "scores": {s.strategy: s.score for s in trace},
                      "passes": session.evaluator.forward_passes,
                      "skipped": states.layers_skipped if states else 0,
                      "run": states.layers_run if states else 0}))


def run(args: argparse.Namespace, reuse: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-hidden-") as results:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "QUANTFAIR_RESULTS_DIR": results,
               HIDDEN_STATES_VARIABLE: os.environ.get(HIDDEN_STATES_VARIABLE,
                                                      str(HIDDEN_STATES_MB)) if reuse else "0"}
        command = [sys.executable, __file__, "--child", "--model", args.model, "--quant",
                   args.quant, "--budget", str(args.budget), "--languages", args.languages,
                   "--units", str(args.units)]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"search failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quant", default="int4-g128-linear")
    parser.add_argument("--budget", type=float, default=12.0, help="percent of parameters")
    parser.add_argument("--languages", default="en,he,zh")
    parser.add_argument("--units", type=int, default=2, help="calibration units per language")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    ratios, difference = [], 0.0
    for round_ in range(args.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        runs = {reuse: run(args, reuse) for reuse in order}
        off, on = runs[False], runs[True]
        assert on["scores"].keys() == off["scores"].keys(), "the searches took other paths"
        difference = max([difference] + [abs(on["scores"][s] - v) / max(abs(v), 1e-12)
                                         for s, v in off["scores"].items() if v == v])
        ratios.append(on["wall"] / off["wall"])
        skipped = on["skipped"] / max(1, on["skipped"] + on["run"])
        print(f"round {round_ + 1}: plain {off['wall']:.1f} s, reuse {on['wall']:.1f} s "
              f"(ratio {ratios[-1]:.3f}); {len(on['scores'])} candidates, {on['passes']:,} "
              f"forward passes, {100 * skipped:.1f}% of decoder-layer passes left out; "
              f"suggested {on['chosen']}", flush=True)
    print(f"median ratio reuse / plain: {statistics.median(ratios):.3f} over {args.rounds} "
          f"round(s); largest relative score difference {difference:.2e} (limit 1e-5)")
    if difference > 1e-5:
        sys.exit("the reuse changed a score by more than 1e-5")


if __name__ == "__main__":
    main()
