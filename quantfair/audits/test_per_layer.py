"""Per-layer MLP and attention: which single layer is worth protecting."""

from quantfair.audit import LAYER_SWEEP, Best, Better, Bound, Finding, LanguageBound, audit

MLP_SWEEP = tuple(f"{layer}.mlp" for layer in LAYER_SWEEP)
ATTN_SWEEP = tuple(f"{layer}.attn" for layer in LAYER_SWEEP)
OPT_MLP_SWEEP = tuple(f"L{layer}.mlp" for layer in (0, 4, 7, 11))
SWEEP_SLACK = ("the seed swept every layer; the audit sweeps layers 0, 1, 2, middle, "
               "second-to-last and last")

test_mlp_over_attention = audit(Finding(
    id="mlp_over_attention", experiments=("012",),
    claim="On GPT-2, protecting every MLP beats protecting every attention block",
    seed="MLP only: 20x, Attention: 291x",
    check=Better("all.mlp", than="all.attn"),
    families=("gpt2",),
))

test_attention_over_mlp_opt = audit(Finding(
    id="attention_over_mlp_opt", experiments=("014",),
    claim="On OPT, the opposite: protecting attention beats protecting the MLPs",
    seed="OPT-125M: best component Attention (model-dependent)",
    check=Better("all.attn", than="all.mlp"),
    families=("opt",),
))

test_hybrid = audit(Finding(
    id="hybrid", experiments=("013",),
    claim="Layer 0 plus every MLP brings GPT-2 near parity",
    seed="Layer 0 + MLP = 1.4x",
    slack="bounded per language at 2x: the seed's 1.4x was an average; 8-unit samples",
    check=LanguageBound("L0+all.mlp", "seed_disparity", {"gpt2": Bound(max=2.0)}),
    families=("gpt2",),
))

test_per_layer_mlp = audit(Finding(
    id="per_layer_mlp", experiments=("017",),
    claim="Layer 0's MLP is the best single MLP to protect on GPT-2",
    seed="GPT-2 MLP: L0 (139x) > L2 (152x) > L3 (188x) > ... > L1 (381x)",
    slack=SWEEP_SLACK,
    check=Best(MLP_SWEEP, expected="L0.mlp"),
    families=("gpt2",),
))

test_anti_critical_mlp = audit(Finding(
    id="anti_critical_mlp", experiments=("017",),
    claim="Layer 1's MLP is anti-critical on GPT-2: protecting it gives the worst disparity",
    seed="Anti-critical layer GPT-2: Layer 1, 381x (vs 214x baseline)",
    slack=SWEEP_SLACK,
    check=Best(MLP_SWEEP, expected="L1.mlp", worst=True),
    families=("gpt2",),
))

test_opt_best_mlp = audit(Finding(
    id="opt_best_mlp", experiments=("017",),
    claim="On OPT-125M, layer 11's MLP is the best single MLP to protect",
    seed="OPT MLP: L11 (92x) > L4 (96x) > L0 (116x) > ... > L7 (245x)",
    slack="swept over the layers the seed names (0, 4, 7, 11)",
    check=Best(OPT_MLP_SWEEP, expected="L11.mlp"),
    families=("opt",), layers=12,
))

test_opt_anti_critical_mlp = audit(Finding(
    id="opt_anti_critical_mlp", experiments=("017", "020"),
    claim="On OPT-125M, layer 7's MLP is anti-critical: protecting it gives the worst disparity",
    seed="Anti-critical layer OPT: Layer 7, 245x (vs 153x baseline)",
    slack="swept over the layers the seed names (0, 4, 7, 11)",
    check=Best(OPT_MLP_SWEEP, expected="L7.mlp", worst=True),
    families=("opt",), layers=12,
))

test_per_layer_attention = audit(Finding(
    id="per_layer_attention", experiments=("020",),
    claim="Layer 0's attention is the best single attention block to protect (GPT-2 and OPT)",
    seed="GPT-2 Attn: L0 (54x) > L2 (114x) ...; OPT Attn: L0 (101x) > L1 (117x) ...",
    slack=SWEEP_SLACK,
    check=Best(ATTN_SWEEP, expected="L0.attn"),
    families=("gpt2", "opt"),
))

test_anti_critical_attention = audit(Finding(
    id="anti_critical_attention", experiments=("020",),
    claim="Layer 1's attention is anti-critical on GPT-2",
    seed="GPT-2 Attn: ... > L1 (421x)",
    slack=SWEEP_SLACK,
    check=Best(ATTN_SWEEP, expected="L1.attn", worst=True),
    families=("gpt2",),
))

test_combined_critical = audit(Finding(
    id="combined_critical", experiments=("021",),
    claim="Combining layer 0's attention and MLP beats the better of the two alone",
    seed="Combined critical: 4.8x",
    slack="compared with the better single component, as the seed did; its 4.8x is not bounded "
          "(GPT-2's number, of no use on other models)",
    check=Better("L0.attn+L0.mlp", than=("L0.attn", "L0.mlp")),
))

test_mlp_depth = audit(Finding(
    id="mlp_depth", experiments=("041",),
    claim="Protecting only the last layer's MLP is harmful on GPT-2: worse than no protection",
    seed="L11 MLP harmful (306.9x)",
    check=Better("none", than="Llast.mlp"),
    families=("gpt2",),
))
