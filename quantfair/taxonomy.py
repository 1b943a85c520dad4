"""Map every parameter of a causal LM to a structural component (layer, block, role, kind)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quantfair.errors import QuantfairError

if TYPE_CHECKING:
    from torch import nn

BLOCKS = ("embed", "attn", "mlp", "norm", "head")


@dataclass(frozen=True)
class Component:
    """Where a parameter sits in the architecture."""

    name: str
    layer: int | None
    block: str
    role: str
    kind: str  # "weight" or "bias"
    numel: int
    shape: tuple[int, ...]
    transposed: bool = False  # GPT-2 Conv1D stores (in, out)

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2


# Each family: (pattern over the parameter name without ".weight"/".bias", block, role).
# "{i}" stands for the layer index.
_GPT2 = [
    (r"transformer\.wte", "embed", "tok"),
    (r"transformer\.wpe", "embed", "pos"),
    (r"transformer\.h\.{i}\.ln_1", "norm", "ln_1"),
    (r"transformer\.h\.{i}\.attn\.c_attn", "attn", "qkv"),
    (r"transformer\.h\.{i}\.attn\.c_proj", "attn", "o"),
    (r"transformer\.h\.{i}\.ln_2", "norm", "ln_2"),
    (r"transformer\.h\.{i}\.mlp\.c_fc", "mlp", "fc_in"),
    (r"transformer\.h\.{i}\.mlp\.c_proj", "mlp", "fc_out"),
    (r"transformer\.ln_f", "norm", "ln_f"),
    (r"lm_head", "head", "out"),
]
_OPT = [
    (r"model\.decoder\.embed_tokens", "embed", "tok"),
    (r"model\.decoder\.embed_positions", "embed", "pos"),
    (r"model\.decoder\.project_in", "embed", "proj_in"),
    (r"model\.decoder\.project_out", "head", "proj_out"),
    (r"model\.decoder\.layers\.{i}\.self_attn\.q_proj", "attn", "q"),
    (r"model\.decoder\.layers\.{i}\.self_attn\.k_proj", "attn", "k"),
    (r"model\.decoder\.layers\.{i}\.self_attn\.v_proj", "attn", "v"),
    (r"model\.decoder\.layers\.{i}\.self_attn\.out_proj", "attn", "o"),
    (r"model\.decoder\.layers\.{i}\.self_attn_layer_norm", "norm", "ln_1"),
    (r"model\.decoder\.layers\.{i}\.fc1", "mlp", "fc_in"),
    (r"model\.decoder\.layers\.{i}\.fc2", "mlp", "fc_out"),
    (r"model\.decoder\.layers\.{i}\.final_layer_norm", "norm", "ln_2"),
    (r"model\.decoder\.final_layer_norm", "norm", "ln_f"),
    (r"lm_head", "head", "out"),
]
_GPT_NEOX = [
    (r"gpt_neox\.embed_in", "embed", "tok"),
    (r"gpt_neox\.layers\.{i}\.input_layernorm", "norm", "ln_1"),
    (r"gpt_neox\.layers\.{i}\.attention\.query_key_value", "attn", "qkv"),
    (r"gpt_neox\.layers\.{i}\.attention\.dense", "attn", "o"),
    (r"gpt_neox\.layers\.{i}\.post_attention_layernorm", "norm", "ln_2"),
    (r"gpt_neox\.layers\.{i}\.mlp\.dense_h_to_4h", "mlp", "fc_in"),
    (r"gpt_neox\.layers\.{i}\.mlp\.dense_4h_to_h", "mlp", "fc_out"),
    (r"gpt_neox\.final_layer_norm", "norm", "ln_f"),
    (r"(embed_out|lm_head)", "head", "out"),
]
_BLOOM = [
    (r"transformer\.word_embeddings", "embed", "tok"),
    (r"transformer\.word_embeddings_layernorm", "norm", "ln_emb"),
    (r"transformer\.h\.{i}\.input_layernorm", "norm", "ln_1"),
    (r"transformer\.h\.{i}\.self_attention\.query_key_value", "attn", "qkv"),
    (r"transformer\.h\.{i}\.self_attention\.dense", "attn", "o"),
    (r"transformer\.h\.{i}\.post_attention_layernorm", "norm", "ln_2"),
    (r"transformer\.h\.{i}\.mlp\.dense_h_to_4h", "mlp", "fc_in"),
    (r"transformer\.h\.{i}\.mlp\.dense_4h_to_h", "mlp", "fc_out"),
    (r"transformer\.ln_f", "norm", "ln_f"),
    (r"lm_head", "head", "out"),
]
_LLAMA = [
    (r"model\.embed_tokens", "embed", "tok"),
    (r"model\.layers\.{i}\.self_attn\.q_proj", "attn", "q"),
    (r"model\.layers\.{i}\.self_attn\.k_proj", "attn", "k"),
    (r"model\.layers\.{i}\.self_attn\.v_proj", "attn", "v"),
    (r"model\.layers\.{i}\.self_attn\.o_proj", "attn", "o"),
    (r"model\.layers\.{i}\.mlp\.gate_proj", "mlp", "gate"),
    (r"model\.layers\.{i}\.mlp\.up_proj", "mlp", "up"),
    (r"model\.layers\.{i}\.mlp\.down_proj", "mlp", "fc_out"),
    (r"model\.layers\.{i}\.input_layernorm", "norm", "ln_1"),
    (r"model\.layers\.{i}\.post_attention_layernorm", "norm", "ln_2"),
    (r"model\.norm", "norm", "ln_f"),
    (r"lm_head", "head", "out"),
]
_GEMMA3 = [
    *[row for row in _LLAMA if row[2] not in ("ln_2",)],
    (r"model\.layers\.{i}\.self_attn\.q_norm", "norm", "q_norm"),
    (r"model\.layers\.{i}\.self_attn\.k_norm", "norm", "k_norm"),
    (r"model\.layers\.{i}\.post_attention_layernorm", "norm", "ln_attn_out"),
    (r"model\.layers\.{i}\.pre_feedforward_layernorm", "norm", "ln_2"),
    (r"model\.layers\.{i}\.post_feedforward_layernorm", "norm", "ln_mlp_out"),
]

FAMILY_TABLES: dict[str, list[tuple[str, str, str]]] = {
    "gpt2": _GPT2,
    "opt": _OPT,
    "gpt_neox": _GPT_NEOX,
    "bloom": _BLOOM,
    "llama": _LLAMA,
    "gemma3": _GEMMA3,
}
# Parameters of an image encoder beside a language model (transformers' multimodal models)
VISION = re.compile(r"(^|\.)(vision_tower|vision_model|multi_modal_projector|visual)\.")
# Hugging Face model_type -> family whose naming it shares.
MODEL_TYPES = {
    "gpt2": "gpt2",
    "opt": "opt",
    "gpt_neox": "gpt_neox",
    "bloom": "bloom",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
}

_COMPILED = {
    family: [
        (re.compile("^" + pattern.replace("{i}", r"(?P<layer>\d+)") + r"\.(?P<kind>weight|bias)$"),
            block, role)
        for pattern, block, role in table
    ]
    for family, table in FAMILY_TABLES.items()
}


def family_of(model: nn.Module) -> str:
    """The taxonomy family of a Hugging Face model, or a clear error."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    try:
        return MODEL_TYPES[model_type]
    except KeyError:
        raise QuantfairError(unsupported(model_type)) from None


def unsupported(model_type: str) -> str:
    """The line refusing a transformers `model_type` quantfair does not map."""
    return (f"unsupported architecture '{model_type}': quantfair maps "
            f"{', '.join(sorted(MODEL_TYPES))}")


def _conv1d_names(model: nn.Module) -> set[str]:
    return {
        f"{module_name}.weight"
        for module_name, module in model.named_modules()
        if type(module).__name__ == "Conv1D"
    }


def components(model: nn.Module) -> dict[str, Component]:
    """Every unique parameter (a tied tensor once) mapped to its component, in model order."""
    family = family_of(model)
    rules = _COMPILED[family]
    transposed = _conv1d_names(model)
    mapped: dict[str, Component] = {}
    unmapped: list[str] = []
    for name, param in model.named_parameters():  # named_parameters already skips tied duplicates
        for pattern, block, role in rules:
            match = pattern.match(name)
            if match:
                layer = match.groupdict().get("layer")
                mapped[name] = Component(
                    name=name,
                    layer=int(layer) if layer is not None else None,
                    block=block,
                    role=role,
                    kind=match["kind"],
                    numel=param.numel(),
                    shape=tuple(param.shape),
                    transposed=name in transposed,
                )
                break
        else:
            unmapped.append(name)
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (" ..." if len(unmapped) > 5 else "")
        if any(VISION.search(name) for name in unmapped):  # Gemma 3 4B and larger
            raise QuantfairError(
                f"{family} model is multimodal ({unmapped[0]}, ...: a vision tower): quantfair "
                "audits text-only causal language models (model_type gemma3_text for Gemma 3, "
                "as its 270M and 1B checkpoints are)")
        raise QuantfairError(f"{family} model has {len(unmapped)} unmapped parameter(s): {shown}")
    return mapped


def num_layers(parts: dict[str, Component]) -> int:
    layers = [c.layer for c in parts.values() if c.layer is not None]
    return max(layers) + 1 if layers else 0
