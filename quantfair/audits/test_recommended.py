"""Recommended configurations: the seed's answer, and whether it holds here."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_recommended_beats_none = audit(Finding(
    id="recommended_beats_none", experiments=("051",),
    claim="The recommended strategy (L0+Llast+ln_f+biases) lowers every language's disparity",
    seed="none 206.9x -> L0+L11+ln_f+biases 3.4x (average low-resource disparity)",
    check=Better("recommended", than="none", per_language=True),
    quick=True,
))

test_recommended_bound = audit(Finding(
    id="recommended_bound", experiments=("051",),
    claim="With the recommended strategy GPT-2's per-token disparity stays low",
    seed="3.4x (the seed's disparity: per-token degradation ratio, averaged over low-resource "
         "languages)",
    slack="bounded per language at 5x: 1.5x the seed's average, for 8-unit samples and "
          "languages above the average",
    check=LanguageBound("L0+Llast+ln_f+biases", "seed_disparity", {"gpt2": Bound(max=5.0)}),
    families=("gpt2",),
))

test_final_validation = audit(Finding(
    id="final_validation", experiments=("060",),
    claim="The recommended strategy brings GPT-2 near parity",
    seed="1.04x disparity achieved (the seed's per-token degradation ratio)",
    slack="bounded per language at 1.5x, for 8-unit samples; the same per-token definition as "
          "051 (seed_disparity)",
    check=LanguageBound("L0+Llast+ln_f+biases", "seed_disparity", {"gpt2": Bound(max=1.5)}),
    families=("gpt2",),
))
