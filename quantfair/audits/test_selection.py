"""Random, magnitude and gradient selection against structural protection."""

from quantfair.audit import Better, Finding, Matched, SelectionOverlap, audit

test_gradient_vs_magnitude = audit(Finding(
    id="gradient_vs_magnitude", experiments=("028b",),
    claim="Gradient-based and magnitude-based selection pick nearly disjoint weights: they "
          "overlap less than two random selections of the same sizes would",
    seed="0% overlap",
    slack="0% exactly is not required: the bound is the overlap of independent random "
          "selections, which tells 'disjoint' from 'unrelated'",
    check=SelectionOverlap("gradient:5%", "magnitude:5%", below_random=True),
))

test_gradient_protection = audit(Finding(
    id="gradient_protection", experiments=("029",),
    claim="Gradient-selected protection beats random protection at the same budget",
    seed="OOM (the seed ran out of memory: no result)",
    slack="the seed could not answer; this audit asks the question it meant to",
    check=Better(Matched("gradient", "recommended"), than=Matched("random", "recommended")),
))

test_random_fails = audit(Finding(
    id="random_fails", experiments=("055",),
    claim="Structured first+last protection beats random protection at the same budget",
    seed="Random 11.4% protection: 44-327x vs L0+L11 0.0x",
    check=Better("L0+Llast", than=Matched("random", "L0+Llast")),
    quick=True,
))

test_magnitude_fails = audit(Finding(
    id="magnitude_fails", experiments=("056",),
    claim="Structured first+last protection beats magnitude-based protection at the same budget",
    seed="Magnitude-based 38.6%: 125,480x (catastrophic) vs L0+L11 11.4%: 0.0x",
    slack="the seed compared at 38.6%, not at equal budget; both are audited",
    check=Better("L0+Llast", than=Matched("magnitude", "L0+Llast")),
))

test_magnitude_fails_at_seed_budget = audit(Finding(
    id="magnitude_fails_at_seed_budget", experiments=("056",),
    claim="First+last protection beats magnitude-based protection of 38.6% of the weights",
    seed="Magnitude-based 38.6%: 125,480x",
    check=Better("L0+Llast", than="magnitude:38.6%"),
))
