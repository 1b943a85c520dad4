"""Weight statistics and layer criticality."""

from quantfair.audit import Bound, Correlation, Finding, LayerExtreme, LayerValue, audit

test_layer0_few_outliers = audit(Finding(
    id="layer0_few_outliers", experiments=("048",),
    claim="Layer 0 is unique: it has the smallest share of outlier weights",
    seed="L0 unique: low outliers, high sparsity",
    check=LayerExtreme("outlier_share"),
    quick=True,
))

test_layer0_sparse = audit(Finding(
    id="layer0_sparse", experiments=("048",),
    claim="Layer 0 is unique: it has the largest share of near-zero weights",
    seed="L0 unique: low outliers, high sparsity",
    check=LayerExtreme("sparsity", highest=True),
    quick=True,
))

test_criticality_not_quant_error = audit(Finding(
    id="criticality_not_quant_error", experiments=("049",),
    claim="A layer's criticality is not explained by the size of its quantization error",
    seed="Criticality != error magnitude",
    slack="the seed gives no number; 'not explained' is read as |Pearson r| <= 0.5, decided on "
          "r's 95% CI: over the 6 swept layers it can fail (strong r) but not pass, which "
          "needs at least 16 points",
    check=Correlation("quant_error", Bound(min=-0.5, max=0.5)),
))

test_variance_predicts_criticality = audit(Finding(
    id="variance_predicts_criticality", experiments=("057", "058"),
    claim="Layers of higher weight variance are more critical: protecting them lowers "
          "disparity more",
    seed="r = -0.798 variance-disparity (GPT-2)",
    slack="GPT-2 bounded at r <= -0.5 (6 swept layers, not 12); other models only in the "
          "seed's direction (r <= 0); decided on r's 95% CI, so 6 layers pass only when "
          "r < -0.93 (GPT-2) or r < -0.81",
    check=Correlation("variance", {"gpt2": Bound(max=-0.5), "*": Bound(max=0.0)}),
))

test_opt_layer0_low_variance = audit(Finding(
    id="opt_layer0_low_variance", experiments=("061", "062", "063", "064"),
    claim="OPT-125M's layer 0 has low weight variance, unlike GPT-2's",
    seed="OPT Layer 0 has 6x lower variance (0.006 vs 0.039); GPT-2 L0 0.021 in exp 057 and "
         "0.039 in exp 061-064 (the seed's two GPT-2 numbers disagree)",
    slack="OPT bounded at <= 0.012 (2x its 0.006); GPT-2 at >= 0.02 (below both of its numbers)",
    check=LayerValue("variance", {"opt": Bound(max=0.012), "gpt2": Bound(min=0.02)}),
    families=("opt", "gpt2"),
))
