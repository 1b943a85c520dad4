"""Baseline disparity: INT4 quantization hurts other languages more than English."""

from quantfair.audit import Better, Bound, Deterministic, Finding, LanguageBound, audit

BASELINE = ("001", "002", "003", "004", "005", "006", "007", "008", "009", "010")

test_baseline_disparity = audit(Finding(
    id="baseline_disparity", experiments=BASELINE,
    claim="Quantizing every parameter loses more information on each language than on English",
    seed="78-214x disparity (GPT-2, OPT-125M, Pythia-160M); Hebrew 971,648% degradation",
    slack="bounded at > 1x (more than English) on every model: the seed's magnitudes are "
          "GPT-2's, bounded on GPT-2 models only (baseline_seed_disparity, in the whole "
          "suite, not -m quick)",
    check=LanguageBound("none", "disparity", Bound(min=1.0)),
    quick=True,
))

test_baseline_seed_disparity = audit(Finding(
    id="baseline_seed_disparity", experiments=BASELINE,
    claim="On GPT-2, per-token degradation of other languages is tens of times English's",
    seed="78-214x disparity",
    slack="bound 10x, not 78x: the seed averaged longer texts and low-resource languages; "
          "per language over 8 units a single language can sit well below the average",
    check=LanguageBound("none", "seed_disparity", {"gpt2": Bound(min=10.0)}),
    families=("gpt2",),
))

test_robustness = audit(Finding(
    id="robustness", experiments=("016",),
    claim="Measurements are reproducible: re-scoring without the cache, in another batch "
          "composition, gives the same losses",
    seed="0% CV",
    slack="0% to the seed's one decimal is < 0.05%: bounded at 5e-4 relative, since padded "
          "batches legitimately change float rounding",
    check=Deterministic("none"),
    quick=True,
))

test_layer0_across_languages = audit(Finding(
    id="layer0_across_languages", experiments=("022", "024"),
    claim="Keeping layer 0 in full precision lowers the disparity of every language",
    seed="3.8x (6 langs); Arabic 92x -> 1.5x, Chinese 29x -> 0.7x, Hebrew 214x -> 5.9x",
    check=Better("L0", than="none", per_language=True),
))
