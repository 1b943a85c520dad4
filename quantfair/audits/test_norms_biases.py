"""LayerNorms and biases: tiny in size, large in effect."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_layernorm_matters = audit(Finding(
    id="layernorm_matters", experiments=("026",),
    claim="Layer 0 with its norms beats layer 0's attention and MLP without them",
    check=Better("L0", than="L0.attn+L0.mlp"),
))

test_biases_matter = audit(Finding(
    id="biases_matter", experiments=("039",),
    claim="Keeping the biases in full precision lowers disparity (models that have biases)",
    check=Better("biases", than="none"),
    families=("gpt2", "opt", "gpt_neox", "bloom"),
))

test_optimal_minimal = audit(Finding(
    id="optimal_minimal", experiments=("040",),
    claim="First + last layer + biases keeps GPT-2's disparity moderate (seed: 11.4x)",
    check=LanguageBound("L0+Llast+biases", "seed_disparity", {"gpt2": Bound(max=15.0)}),
    families=("gpt2",),
))
