"""Component breakdown inside layers 0 and the last layer."""

from quantfair.audit import Better, Bound, Finding, ValueWeightRatio, audit

test_layer0_synergy = audit(Finding(
    id="layer0_synergy", experiments=("031",),
    claim="Layer 0's components do not add up: the whole layer beats its MLP alone",
    seed="l0_mlp_all: 84.1x; l0_full: 3.6x",
    check=Better("L0", than="L0.mlp"),
))

test_layer0_mlp_fc = audit(Finding(
    id="layer0_mlp_fc", experiments=("031",),
    claim="On GPT-2, layer 0's MLP output projection is worth more than its input projection",
    seed="l0_mlp_fc: 151.6x (HARMFUL!); l0_mlp_proj: 36.2x",
    check=Better("L0.mlp.fc_out", than="L0.mlp.fc_in"),
    families=("gpt2",),
))

test_attention_components_l0 = audit(Finding(
    id="attention_components_l0", experiments=("038",),
    claim="In GPT-2's layer 0, the QKV projection matters more than the output projection",
    seed="L0 QKV > proj",
    check=Better("L0.attn.qkv", than="L0.attn.o"),
    families=("gpt2",),
))

test_attention_components_last = audit(Finding(
    id="attention_components_last", experiments=("038",),
    claim="In GPT-2's last layer it is the opposite: the output projection matters more",
    seed="L11 opposite",
    check=Better("Llast.attn.o", than="Llast.attn.qkv"),
    families=("gpt2",),
))

test_head_granularity = audit(Finding(
    id="head_granularity", experiments=("054",),
    claim="GPT-2's last-layer V weights are about 3x larger than its Q and K weights",
    seed="L11 V weights 3x larger",
    slack="'about 3x' is bounded at >= 2x",
    check=ValueWeightRatio({"gpt2": Bound(min=2.0)}),
    families=("gpt2",),
))
