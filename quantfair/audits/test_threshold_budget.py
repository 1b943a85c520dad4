"""Threshold and budget: how much to protect, and what it costs."""

from quantfair.audit import Best, Bound, Finding, OverheadBound, audit
from quantfair.strategies import SEED_PARETO


def _stated(reported: str) -> Bound:
    """The seed's overhead, to the precision it states (34.1 means 34.05..34.15)."""
    half_step = 10 ** -len(reported.split(".")[1]) / 2
    return Bound(min=float(reported) - half_step, max=float(reported) + half_step)


test_threshold_sweep = audit(Finding(
    id="threshold_sweep", experiments=("011",),
    claim="Among magnitude thresholds of 1-10%, protecting 5% gives the lowest disparity",
    check=Best(("magnitude:1%", "magnitude:3%", "magnitude:5%", "magnitude:10%"),
               expected="magnitude:5%"),
    families=("gpt2",),
))

test_pareto_overheads = audit(Finding(
    id="pareto_overheads", experiments=("027",),
    claim="The seed's Pareto strategies keep the stated share of GPT-2's parameters in FP",
    check=OverheadBound({expression: {"gpt2": _stated(reported)}
                         for expression, reported in SEED_PARETO.values()}),
    families=("gpt2",), quick=True,
))

test_recommended_budget = audit(Finding(
    id="recommended_budget", experiments=("027", "051"),
    claim="The recommended strategy costs at most 12% of the parameters",
    check=OverheadBound({"recommended": Bound(max=12.0)}),
    quick=True,
))
