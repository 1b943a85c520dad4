"""Per-layer MLP and attention: which single layer is worth protecting."""

from quantfair.audit import LAYER_SWEEP, Best, Better, Bound, Finding, LanguageBound, audit

MLP_SWEEP = tuple(f"{layer}.mlp" for layer in LAYER_SWEEP)
ATTN_SWEEP = tuple(f"{layer}.attn" for layer in LAYER_SWEEP)

test_mlp_over_attention = audit(Finding(
    id="mlp_over_attention", experiments=("012",),
    claim="On GPT-2, protecting every MLP beats protecting every attention block",
    check=Better("all.mlp", than="all.attn"),
    families=("gpt2",),
))

test_attention_over_mlp_opt = audit(Finding(
    id="attention_over_mlp_opt", experiments=("014",),
    claim="On OPT, the opposite: protecting attention beats protecting the MLPs",
    check=Better("all.attn", than="all.mlp"),
    families=("opt",),
))

test_hybrid = audit(Finding(
    id="hybrid", experiments=("013",),
    claim="Layer 0 plus every MLP brings GPT-2 near parity (seed: 1.4x)",
    check=LanguageBound("L0+all.mlp", "seed_disparity", {"gpt2": Bound(max=2.0)}),
    families=("gpt2",),
))

test_per_layer_mlp = audit(Finding(
    id="per_layer_mlp", experiments=("017",),
    claim="Layer 0's MLP is the best single MLP to protect on GPT-2",
    check=Best(MLP_SWEEP, expected="L0.mlp"),
    families=("gpt2",),
))

test_anti_critical_mlp = audit(Finding(
    id="anti_critical_mlp", experiments=("017",),
    claim="Layer 1's MLP is anti-critical on GPT-2: protecting it gives the worst disparity",
    check=Best(MLP_SWEEP, expected="L1.mlp", worst=True),
    families=("gpt2",),
))

test_per_layer_attention = audit(Finding(
    id="per_layer_attention", experiments=("020",),
    claim="Layer 0's attention is the best single attention block to protect (GPT-2 and OPT)",
    check=Best(ATTN_SWEEP, expected="L0.attn"),
    families=("gpt2", "opt"),
))

test_anti_critical_attention = audit(Finding(
    id="anti_critical_attention", experiments=("020",),
    claim="Layer 1's attention is anti-critical on GPT-2",
    check=Best(ATTN_SWEEP, expected="L1.attn", worst=True),
    families=("gpt2",),
))

test_combined_critical = audit(Finding(
    id="combined_critical", experiments=("021",),
    claim="Combining layer 0's attention and MLP beats protecting its MLP alone",
    check=Better("L0.attn+L0.mlp", than="L0.mlp"),
))

test_mlp_depth = audit(Finding(
    id="mlp_depth", experiments=("041",),
    claim="Protecting only the last layer's MLP is harmful on GPT-2: worse than no protection",
    check=Better("none", than="Llast.mlp"),
    families=("gpt2",),
))
