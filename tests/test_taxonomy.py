import pytest
import torch

from quantfair.errors import QuantfairError
from quantfair.models import load_model
from quantfair.quantize import WeightBank
from quantfair.taxonomy import BLOCKS, components, num_layers
from quantfair.weights import value_weight_ratio

FAMILIES = {
    "tiny-gpt2": "gpt2",
    "tiny-opt": "opt",
    "tiny-gpt_neox": "gpt_neox",
    "tiny-bloom": "bloom",
    "tiny-llama": "llama",
    "tiny-gemma3": "gemma3",
}


def test_findings_know_every_taxonomy_family():
    """A finding's per-family bounds and `families` are checked against `audit.FAMILIES`,
    kept free of torch: a family added to the taxonomy is added there too."""
    from quantfair import audit, taxonomy

    assert set(audit.FAMILIES) == set(taxonomy.FAMILY_TABLES) == set(FAMILIES.values())


@pytest.mark.parametrize("name", FAMILIES)
def test_every_parameter_is_mapped_and_blocks_add_up(tiny_models, name):
    loaded = tiny_models[name]
    parts = components(loaded.model)
    assert loaded.family == FAMILIES[name]
    unique = {id(p): p for p in loaded.model.parameters()}
    assert len(parts) == len(unique)
    per_block = {block: sum(c.numel for c in parts.values() if c.block == block)
                 for block in BLOCKS}
    assert sum(per_block.values()) == sum(p.numel() for p in unique.values())
    assert per_block["attn"] > 0 and per_block["mlp"] > 0 and per_block["norm"] > 0
    assert num_layers(parts) == 4
    for layer in range(4):
        assert {c.block for c in parts.values() if c.layer == layer} == {"attn", "mlp", "norm"}


def test_tiny_models_have_valid_configs_and_gemma3_both_attention_kinds(tiny_models, tmp_path):
    """tiny-gemma3 kept 26 layer types for 4 layers, all four local: transformers refused to
    save it, and no global-attention layer was ever run."""
    for loaded in tiny_models.values():
        loaded.model.config.validate()
    assert tiny_models["tiny-gemma3"].model.config.layer_types == [
        "sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    tiny_models["tiny-gemma3"].model.save_pretrained(tmp_path)


def test_gpt2_conv1d_is_marked_transposed(tiny_models):
    parts = components(tiny_models["tiny-gpt2"].model)
    assert parts["transformer.h.0.attn.c_attn.weight"].transposed
    assert parts["transformer.h.0.mlp.c_fc.weight"].transposed
    assert not parts["transformer.wte.weight"].transposed


# Where each family's fused attention projection keeps V, from its transformers forward:
# GPT-2 splits c_attn's outputs into q, k, v; GPT-NeoX and BLOOM view them per head,
# [heads, 3, head_dim] (`qkv.view(..., heads, 3 * head_size).chunk(3, -1)` and
# `fused_qkv.view(..., num_heads, 3, head_dim)`).
FUSED_V = {
    "tiny-gpt2": lambda w, heads: w[:, 2 * w.shape[1] // 3:],  # Conv1D: (in, out)
    "tiny-gpt_neox": lambda w, heads: w.view(heads, 3, -1, w.shape[1])[:, 2],
    "tiny-bloom": lambda w, heads: w.view(heads, 3, -1, w.shape[1])[:, 2],
}


@pytest.mark.parametrize("name", sorted(FUSED_V))
def test_the_value_weight_ratio_finds_v_in_a_fused_projection(name):
    """GPT-NeoX's and BLOOM's were split in three along the outputs, as GPT-2's: each third
    mixing Q, K and V rows."""
    loaded = load_model(name)
    parts = components(loaded.model)
    last = max(c.layer for c in parts.values() if c.layer is not None)
    (fused,) = [c.name for c in parts.values()
                if c.layer == last and c.role == "qkv" and c.kind == "weight"]
    with torch.no_grad():
        weight = dict(loaded.model.named_parameters())[fused]
        weight.fill_(1.0)
        FUSED_V[name](weight, loaded.model.config.num_attention_heads).fill_(-4.0)
    assert value_weight_ratio(WeightBank(loaded.model)) == pytest.approx(4.0)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-opt", "tiny-bloom", "tiny-gemma3"])
def test_tied_head_is_one_parameter(tiny_models, name):
    model = tiny_models[name].model
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    parts = components(model)
    assert not [c for c in parts.values() if c.block == "head"]
    assert len([c for c in parts.values() if c.role == "tok"]) == 1


def test_untied_head_is_its_own_component(tiny_models):
    parts = components(tiny_models["tiny-llama"].model)
    assert parts["lm_head.weight"].block == "head"


def test_a_multimodal_checkpoint_is_said_to_be_one(tiny_models):
    """A Gemma 3 of 4B parameters or more loads with its vision tower: "62 unmapped
    parameter(s)" where `gemma3` is among the types quantfair maps."""
    model = tiny_models["tiny-gemma3"].model
    tower = torch.nn.Module()
    tower.register_parameter("patch", torch.nn.Parameter(torch.zeros(3)))
    model.model.vision_tower = tower
    with pytest.raises(QuantfairError, match=r"gemma3 model is multimodal "
                       r"\(model\.vision_tower\.patch, \.\.\.: a vision tower\): quantfair "
                       "audits text-only causal language models"):
        components(model)


def test_unmapped_parameter_is_named(tiny_models):
    model = tiny_models["tiny-llama"].model
    model.register_parameter("mystery", torch.nn.Parameter(torch.zeros(3)))
    try:
        with pytest.raises(QuantfairError, match="mystery"):
            components(model)
    finally:
        del model.mystery
