"""LayerNorms and biases: tiny in size, large in effect."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_layernorm_matters = audit(Finding(
    id="layernorm_matters", experiments=("026",),
    claim="Layer 0 with its norms beats layer 0's attention and MLP without them",
    seed="LayerNorms: 0.03% of the model, 9.1x disparity reduction in Layer 0",
    check=Better("L0", than="L0.attn+L0.mlp"),
))

test_biases_matter = audit(Finding(
    id="biases_matter", experiments=("039",),
    claim="Keeping the biases in full precision lowers disparity (models that have biases)",
    seed="Biases: 0.082% of the model; quantizing them adds +52.6x disparity",
    check=Better("biases", than="none"),
    families=("gpt2", "opt", "gpt_neox", "bloom"),
))

test_optimal_minimal = audit(Finding(
    id="optimal_minimal", experiments=("040",),
    claim="First + last layer + biases keeps GPT-2's disparity moderate",
    seed="L0+L11+biases = 11.4x",
    slack="bounded per language at 15x (1.3x the seed's average), for 8-unit samples",
    check=LanguageBound("L0+Llast+biases", "seed_disparity", {"gpt2": Bound(max=15.0)}),
    families=("gpt2",),
))
