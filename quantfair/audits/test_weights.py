"""Weight statistics and layer criticality."""

from quantfair.audit import Bound, Correlation, Finding, LayerExtreme, audit

test_layer0_few_outliers = audit(Finding(
    id="layer0_few_outliers", experiments=("048",),
    claim="Layer 0 is unique: it has the smallest share of outlier weights",
    check=LayerExtreme("outlier_share"),
    quick=True,
))

test_layer0_sparse = audit(Finding(
    id="layer0_sparse", experiments=("048",),
    claim="Layer 0 is unique: it has the largest share of near-zero weights",
    check=LayerExtreme("sparsity", highest=True),
    quick=True,
))

test_criticality_not_quant_error = audit(Finding(
    id="criticality_not_quant_error", experiments=("049",),
    claim="A layer's criticality is not explained by the size of its quantization error",
    check=Correlation("quant_error", Bound(min=-0.5, max=0.5)),
))

test_variance_predicts_criticality = audit(Finding(
    id="variance_predicts_criticality", experiments=("057", "058"),
    claim="Layers of higher weight variance are more critical: protecting them lowers "
          "disparity more (seed: r = -0.798 on GPT-2)",
    check=Correlation("variance", {"gpt2": Bound(max=-0.5), "*": Bound(max=0.0)}),
))
