"""Threshold and budget: how much to protect, what it costs, and what the seed's Pareto
strategies achieve."""

from quantfair.audit import Best, Bound, Finding, MeanBound, OverheadBound, audit
from quantfair.seed import SEED_PARETO_FRONTIER
from quantfair.strategy_syntax import SEED_PARETO

# The seed's Pareto table: strategy -> average low-resource disparity (per-token definition).
SEED_PARETO_DISPARITY = {s: disparity for s, (_, disparity) in SEED_PARETO_FRONTIER.items()}


def _stated(reported: str) -> Bound:
    """The seed's overhead, to the precision it states (34.1 means 34.05..34.15)."""
    half_step = 10 ** -len(reported.split(".")[1]) / 2
    return Bound(min=float(reported) - half_step, max=float(reported) + half_step)


def _pareto_bound(strategy: str, seed: float) -> Bound:
    if strategy == "none":
        return Bound(min=seed / 2)
    return Bound(max=max(1.5 * seed, 1.5))


test_threshold_sweep = audit(Finding(
    id="threshold_sweep", experiments=("011",),
    claim="Among magnitude thresholds of 1-10%, protecting 5% gives the lowest disparity",
    seed="1% -> 100x, 3% -> 60x, 5% -> 45x (optimal), 10% -> 102x",
    check=Best(("magnitude:1%", "magnitude:3%", "magnitude:5%", "magnitude:10%"),
               expected="magnitude:5%"),
    families=("gpt2",),
))

test_pareto_overheads = audit(Finding(
    id="pareto_overheads", experiments=("027",),
    claim="The seed's Pareto strategies keep the stated share of GPT-2's parameters in FP",
    seed="0.002%, 1.90%, 5.70%, 11.39%, 11.46%, 11.42%, 34.1%",
    slack="each bound is the seed's value to the precision it states",
    check=OverheadBound({expression: {"gpt2": _stated(reported)}
                         for expression, reported in SEED_PARETO.values()}),
    families=("gpt2",), layers=12, quick=True,  # the shares of GPT-2 124M's parameters
))

test_pareto_disparities = audit(Finding(
    id="pareto_disparities", experiments=("027",),
    claim="The seed's Pareto strategies reach their stated disparities on GPT-2",
    seed=", ".join(f"{s} {v}x" for s, v in SEED_PARETO_DISPARITY.items()) + "; the seed "
         "contradicts itself on L0+L11: 15.1x in this table, 0.7x in finding 9 (exp 032); "
         "this audit checks the table's 15.1x (output_layer_synergy checks 032's claim)",
    slack="the seed averaged low-resource languages, the audit every audited language: bounds "
          "are 1.5x the seed's value (at least 1.5x), and at least half of it for none",
    check=MeanBound({s: {"gpt2": _pareto_bound(s, v)} for s, v in SEED_PARETO_DISPARITY.items()}),
    families=("gpt2",),
))

test_recommended_budget = audit(Finding(
    id="recommended_budget", experiments=("027", "051"),
    claim="The recommended strategy costs at most 12% of the parameters",
    seed="L0+L11+ln_f+biases: 11.46% overhead",
    slack="bounded at 12% on every model: a budget, not GPT-2's exact share",
    check=OverheadBound({"recommended": Bound(max=12.0)}),
    quick=True,
))
