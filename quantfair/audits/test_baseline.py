"""Baseline disparity: INT4 quantization hurts other languages more than English."""

from quantfair.audit import Better, Bound, Deterministic, Finding, LanguageBound, audit

test_baseline_disparity = audit(Finding(
    id="baseline_disparity", experiments=("001", "002", "003", "004", "005", "006", "007", "008",
                                          "009", "010"),
    claim="Quantizing every parameter loses more information on each language than on English",
    check=LanguageBound("none", "disparity", Bound(min=1.0)),
    quick=True,
))

test_baseline_seed_disparity = audit(Finding(
    id="baseline_seed_disparity", experiments=("001", "002", "003", "004", "005", "006", "007",
                                               "008", "009", "010"),
    claim="On GPT-2, per-token degradation of other languages is tens of times English's "
          "(seed: 78-214x)",
    check=LanguageBound("none", "seed_disparity", {"gpt2": Bound(min=10.0)}),
    families=("gpt2",),
))

test_robustness = audit(Finding(
    id="robustness", experiments=("016",),
    claim="Measurements are deterministic: re-scoring gives identical losses (0% CV)",
    check=Deterministic("none"),
    quick=True,
))

test_layer0_across_languages = audit(Finding(
    id="layer0_across_languages", experiments=("022", "024"),
    claim="Keeping layer 0 in full precision lowers the disparity of every language",
    check=Better("L0", than="none", per_language=True),
))
