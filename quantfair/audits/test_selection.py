"""Random, magnitude and gradient selection against structural protection."""

from quantfair.audit import Better, Bound, Finding, Matched, SelectionOverlap, audit

test_gradient_vs_magnitude = audit(Finding(
    id="gradient_vs_magnitude", experiments=("028b",),
    claim="Gradient-based and magnitude-based selection pick almost disjoint weights",
    check=SelectionOverlap("gradient:5%", "magnitude:5%", Bound(max=0.10)),
))

test_gradient_protection = audit(Finding(
    id="gradient_protection", experiments=("029",),
    claim="Gradient-selected protection beats random protection at the same budget",
    check=Better(Matched("gradient", "recommended"), than=Matched("random", "recommended")),
))

test_random_fails = audit(Finding(
    id="random_fails", experiments=("055",),
    claim="Structured first+last protection beats random protection at the same budget",
    check=Better("L0+Llast", than=Matched("random", "L0+Llast")),
    quick=True,
))

test_magnitude_fails = audit(Finding(
    id="magnitude_fails", experiments=("056",),
    claim="Structured first+last protection beats magnitude-based protection at the same budget",
    check=Better("L0+Llast", than=Matched("magnitude", "L0+Llast")),
))
