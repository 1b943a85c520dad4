"""Recommended configurations: the seed's answer, and whether it holds here."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_recommended_beats_none = audit(Finding(
    id="recommended_beats_none", experiments=("051",),
    claim="The recommended strategy (L0+Llast+ln_f+biases) lowers every language's disparity",
    check=Better("recommended", than="none", per_language=True),
    quick=True,
))

test_recommended_bound = audit(Finding(
    id="recommended_bound", experiments=("051",),
    claim="With the recommended strategy GPT-2's per-token disparity stays low (seed: 3.4x)",
    check=LanguageBound("L0+Llast+ln_f+biases", "seed_disparity", {"gpt2": Bound(max=5.0)}),
    families=("gpt2",),
))

test_final_validation = audit(Finding(
    id="final_validation", experiments=("060",),
    claim="The recommended strategy brings GPT-2's disparity near parity (seed: 1.04x)",
    check=LanguageBound("L0+Llast+ln_f+biases", "disparity", {"gpt2": Bound(max=1.5)}),
    families=("gpt2",),
))
