"""Cross-architecture: BLOOM, Pythia and OPT, where the seed's recipe does not transfer."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_bloom_baseline = audit(Finding(
    id="bloom_baseline", experiments=("018",),
    claim="BLOOM (which ran out of memory in the seed) also shows disparity under INT4",
    check=LanguageBound("none", "disparity", Bound(min=1.0)),
    families=("bloom",),
))

test_pythia_baseline = audit(Finding(
    id="pythia_baseline", experiments=("019",),
    claim="Pythia (whose tokenization failed in the seed) also shows disparity under INT4",
    check=LanguageBound("none", "disparity", Bound(min=1.0)),
    families=("gpt_neox",),
))

test_gpt2_recipe_fails_on_opt = audit(Finding(
    id="gpt2_recipe_fails_on_opt", experiments=("061", "062", "063", "064"),
    claim="GPT-2's first+last recipe leaves OPT-125M with a large disparity (seed: 35.6x)",
    check=LanguageBound("L0+Llast", "seed_disparity", {"opt": Bound(min=10.0)}),
    families=("opt",),
))

test_opt_critical_layers = audit(Finding(
    id="opt_critical_layers", experiments=("061", "062", "063", "064"),
    claim="OPT-125M's critical layers are 4 and 9, not 0 and 11",
    check=Better("L4+L9", than="L0+Llast"),
    families=("opt",), layers=12,
))
