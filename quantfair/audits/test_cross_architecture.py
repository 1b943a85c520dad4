"""Cross-architecture: BLOOM, Pythia and OPT, where the seed's recipe does not transfer."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_bloom_baseline = audit(Finding(
    id="bloom_baseline", experiments=("018",),
    claim="BLOOM also shows disparity under INT4",
    seed="OOM (the seed ran out of memory: no result)",
    slack="the seed could not answer; this audit asks whether BLOOM shows disparity at all",
    check=LanguageBound("none", "disparity", Bound(min=1.0)),
    families=("bloom",),
))

test_pythia_baseline = audit(Finding(
    id="pythia_baseline", experiments=("019",),
    claim="Pythia also shows disparity under INT4",
    seed="Tokenization issues (no result)",
    slack="the seed could not answer; this audit asks whether Pythia shows disparity at all",
    check=LanguageBound("none", "disparity", Bound(min=1.0)),
    families=("gpt_neox",),
))

test_gpt2_recipe_fails_on_opt = audit(Finding(
    id="gpt2_recipe_fails_on_opt", experiments=("061", "062", "063", "064"),
    claim="GPT-2's first+last recipe leaves OPT-125M with a large disparity",
    seed="GPT-2's L0+L11 config: 35.6x disparity on OPT (fails!)",
    slack="bounded at >= 10x per language: 'large', well below the seed's average 35.6x",
    check=LanguageBound("L0+Llast", "seed_disparity", {"opt": Bound(min=10.0)}),
    families=("opt",),
))

test_opt_critical_layers = audit(Finding(
    id="opt_critical_layers", experiments=("061", "062", "063", "064"),
    claim="OPT-125M's critical layers are 4 and 9, not 0 and 11",
    seed="OPT critical layers: L4 and L9, not L0 and L11",
    check=Better("L4+L9", than="L0+Llast"),
    families=("opt",), layers=12,
))

test_opt_best_config = audit(Finding(
    id="opt_best_config", experiments=("061", "062", "063", "064"),
    claim="Even OPT-125M's best configuration (layers 4 and 9) leaves a large disparity",
    seed="Best OPT config achieves only 26.9x disparity vs GPT-2's 1.04x",
    slack="bounded at >= 10x per language: 'large', well below the seed's average 26.9x",
    check=LanguageBound("L4+L9", "seed_disparity", {"opt": Bound(min=10.0)}),
    families=("opt",), layers=12,
))
