"""Which calibration score ranks protections as the audit units do: NLL change or KL divergence.

    python benchmarks/score_ranking.py [--model smollm2-135m] [--budgets 1,5,12]
        [--schemes int4-g128-linear,gguf:Q4_0] [--languages en,de,ru,he,ar,zh]
        [--calibration-units 4] [--units 22]

For every baseline selector of each cell (scheme, budget; the strategies of
`quantfair suggest`'s comparison, each random seed on its own), the score `suggest` would
give it on its calibration units (mean + worst disparity over the non-reference languages),
once of NLL changes (the audits' disparity) and once of KL divergences, against mean + worst
disparity on the audit units. Prints one markdown row per cell: Spearman's rank correlation of
each score with the audit's, the audit's fairest selector and the one each score ranks
first; then, over all cells, the share of pairs of strategies each score orders as the audit
units do. Measurements come from the results cache where `bench_suggest.py` left them.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.stats import spearmanr

from quantfair.cli import _session, build_parser
from quantfair.config import DEFAULT_UNITS, parse_percent
from quantfair.errors import QuantfairError
from quantfair.suggest import budget_selectors, calibration_score, search_units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", default="1,5,12")
    parser.add_argument("--schemes", default="int4-g128-linear,gguf:Q4_0")
    parser.add_argument("--languages", default="en,de,ru,he,ar,zh")
    parser.add_argument("--calibration-units", type=int, default=4)
    parser.add_argument("--units", type=int, default=DEFAULT_UNITS)
    args = parser.parse_args()
    budgets = args.budgets.split(",")
    for budget in budgets:  # bad input ends the run before a model loads
        parse_percent(f"{budget}%", "--budgets")
    header = ("| scheme | budget | strategies | Spearman, NLL score | Spearman, KL score "
              "| fairest on the audit units | NLL score's first | KL score's first |\n"
              "|---|---|---|---|---|---|---|---|")
    agree = {"NLL": [], "KL": []}
    for scheme in args.schemes.split(","):
        for budget in budgets:
            config = build_parser().parse_args(
                ["suggest", args.model, "--budget", f"{budget}%", "--quant", scheme,
                 "--languages", args.languages, "--units", str(args.units)])
            session = _session(config)
            calibration = search_units(session, args.calibration_units)
            strategies = sorted({s for group in budget_selectors(
                session, parse_percent(config.budget, "--budget")).values() for s in group})
            scores = {"NLL": [], "KL": []}
            audit = []
            for strategy in strategies:
                m = session.measure(strategy, corpus=calibration, distribution=True)
                # Over this measurement's own English, the damage (summed KL divergence,
                # mean + worst) is the score the search used before commit ed1881b.
                score = calibration_score(m)
                scores["NLL"].append(score.value)
                scores["KL"].append(score.damage)
                judged = session.measure(strategy)
                audit.append(judged.mean_draws()[0] + judged.worst_draws()[0])
            audit = np.array(audit)
            firsts = {name: strategies[int(np.argmin(s))] for name, s in scores.items()}
            if header:  # once a cell is measured: bad input has said so by then
                print(header)
                header = ""
            for name, s in scores.items():
                s = np.array(s)
                i, j = np.triu_indices(len(s), 1)
                signs = np.sign(s[i] - s[j]) * np.sign(audit[i] - audit[j])
                agree[name] += list(signs[signs != 0] > 0)
            print(f"| {scheme} | {budget}% | {len(strategies)} | "
                  f"{spearmanr(scores['NLL'], audit).statistic:.2f} | "
                  f"{spearmanr(scores['KL'], audit).statistic:.2f} | "
                  f"`{strategies[int(np.argmin(audit))]}` | `{firsts['NLL']}` | "
                  f"`{firsts['KL']}` |")
            sys.stdout.flush()
    print("\npairs of strategies ordered as on the audit units: " + ", ".join(
        f"{name} score {sum(a)}/{len(a)} ({np.mean(a):.2f})" for name, a in agree.items()))


if __name__ == "__main__":
    try:
        main()
    except QuantfairError as error:  # bad input: one line, as the CLI says it
        sys.exit(f"score_ranking: {error}")
