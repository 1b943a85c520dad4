"""Simulated (fake) quantization, and a bank of FP and quantized tensors for cheap swaps."""

from __future__ import annotations

import torch
from torch import nn

from quantfair.errors import UsageError
from quantfair.schemes import GGUF_TYPES, QuantScheme
from quantfair.taxonomy import Component, components

__all__ = ["QuantScheme", "WeightBank", "fake_quantize", "gguf_quantize", "gguf_tensor_type",
           "in_scope", "quantize_component"]

GGUF_BLOCK = 32  # weights per block in every GGUF_TYPES format
GGUF_FALLBACK = "F16"  # rows not a multiple of GGUF_BLOCK (llama-quantize's last resort too)

def _grouped(rows: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, int]:
    """Reshape a logical (out, in) matrix into (n_groups, group) rows; returns pad added."""
    if scheme.granularity == "tensor":
        return rows.reshape(1, -1), 0
    if scheme.granularity == "channel":
        return rows, 0
    pad = -rows.shape[1] % scheme.group_size
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))  # zeros never widen a symmetric range
    return rows.reshape(-1, scheme.group_size), pad


def fake_quantize(
    tensor: torch.Tensor, scheme: QuantScheme, transposed: bool = False
) -> torch.Tensor:
    """Quantize then dequantize `tensor`; matrices are (out, in) unless `transposed` (Conv1D).

    Channels are output rows; groups run along the input dimension. Vectors (biases, norms)
    are one channel, so "channel" treats them per tensor.
    """
    logical = tensor.t() if transposed else tensor
    if logical.dim() < 2:
        rows = logical.reshape(1, -1)
    else:
        rows = logical.reshape(logical.shape[0], -1)
    in_features = rows.shape[1]
    groups, pad = _grouped(rows.float(), scheme)
    if scheme.symmetric:
        qmax = 2 ** (scheme.bits - 1) - 1
        scale = groups.abs().amax(dim=1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        dequant = torch.clamp(torch.round(groups / scale), -qmax - 1, qmax) * scale
    else:
        levels = 2**scheme.bits - 1
        low = groups.amin(dim=1, keepdim=True).clamp(max=0)
        high = groups.amax(dim=1, keepdim=True).clamp(min=0)
        scale = (high - low) / levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.round(-low / scale)
        codes = torch.clamp(torch.round(groups / scale) + zero_point, 0, levels)
        dequant = (codes - zero_point) * scale
    dequant = dequant.reshape(rows.shape[0], in_features + pad)[:, :in_features]
    dequant = dequant.reshape(logical.shape).to(tensor.dtype)
    return dequant.t().contiguous() if transposed else dequant


def gguf_tensor_type(component: Component, scheme: QuantScheme) -> str:
    """The GGUF type a parameter takes under a `gguf:` scheme, like `llama-quantize --pure`:
    every 2-D weight in the scheme's type, the token embedding and output head in
    `scheme.embedding_type`, 1-D tensors (norms, biases) and position embeddings F32, and a
    matrix whose input dimension is not a multiple of 32 in F16."""
    if not component.is_matrix or component.kind != "weight" or component.role == "pos":
        return "F32"
    is_embedding = (component.block, component.role) in (("embed", "tok"), ("head", "out"))
    qtype = scheme.embedding_type if is_embedding else str(scheme.gguf_type)
    in_features = component.shape[0 if component.transposed else 1]
    if qtype in GGUF_TYPES and in_features % GGUF_BLOCK:
        return GGUF_FALLBACK
    return qtype


def gguf_quantize(tensor: torch.Tensor, qtype: str, transposed: bool = False) -> torch.Tensor:
    """`tensor` through the gguf package's reference quantizer and dequantizer for `qtype`
    (a GGUF type name such as "Q4_0" or "F16"), bit-exact with it. Blocks run along the input
    dimension: the last one of an (out, in) matrix, the first of a `transposed` (Conv1D)
    one. Returns a tensor of the same shape, dtype and device."""
    from gguf import GGMLQuantizationType, dequantize, quantize

    kind = GGMLQuantizationType[qtype]
    logical = tensor.t() if transposed else tensor
    rows = logical.detach().to(torch.float32).cpu().contiguous().numpy()
    restored = torch.from_numpy(dequantize(quantize(rows, kind), kind).reshape(rows.shape))
    restored = restored.to(tensor.dtype).to(tensor.device)
    return restored.t().contiguous() if transposed else restored


def quantize_component(tensor: torch.Tensor, component: Component,
                       scheme: QuantScheme) -> torch.Tensor:
    """`tensor` (the parameter `component`) quantized by a computed scheme."""
    if scheme.artifact is not None:
        raise UsageError(f"no artifact labelled '{scheme.artifact}' is loaded: its tensors come "
                         "from --quantized FILE --quantized-label LABEL")
    if scheme.gguf_type is not None:
        return gguf_quantize(tensor, gguf_tensor_type(component, scheme), component.transposed)
    return fake_quantize(tensor, scheme, component.transposed)


def in_scope(component: Component, scheme: QuantScheme) -> bool:
    """Whether `scheme` quantizes this parameter at all (an artifact supplies every one)."""
    if scheme.artifact is not None:
        return True
    if scheme.gguf_type is not None:
        return gguf_tensor_type(component, scheme) != "F32"
    if scheme.scope == "all":
        return True
    return component.is_matrix and component.kind == "weight" and component.block in (
        "attn", "mlp", "head")


# A protected set: parameter name -> True (whole tensor) or a boolean mask of kept elements.
Protection = dict[str, "bool | torch.Tensor"]


class WeightBank:
    """Keeps each parameter's FP tensor and its quantized tensor per scheme, so applying a
    (scheme, protection) pair is a copy into the live model, never a reload."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.parts = components(model)
        self.params = dict(model.named_parameters())
        self.fp = {name: p.detach().clone() for name, p in self.params.items()}
        self._quantized: dict[QuantScheme, dict[str, torch.Tensor]] = {}
        self._state: dict[str, object] = {name: None for name in self.params}  # None = FP

    def quantized(self, scheme: QuantScheme) -> dict[str, torch.Tensor]:
        """The scheme's quantized tensors (computed once; out-of-scope parameters stay FP).
        Raises UsageError for an artifact scheme not added with `add_artifact`."""
        if scheme not in self._quantized:
            self._quantized[scheme] = {
                name: quantize_component(self.fp[name], part, scheme)
                for name, part in self.parts.items()
                if in_scope(part, scheme) and self.fp[name].is_floating_point()
            }
        return self._quantized[scheme]

    def add_artifact(self, scheme: QuantScheme, tensors: dict[str, torch.Tensor]) -> None:
        """Serve `tensors` (parameter name -> tensor of the FP parameter's shape, e.g. from a
        quantized file) as the quantized tensors of the artifact scheme `scheme`."""
        self._quantized[scheme] = {name: tensors[name].to(self.fp[name].device,
                                                          self.fp[name].dtype)
                                   for name in self.parts}

    @torch.no_grad()
    def apply(self, scheme: QuantScheme | None, protection: Protection | None = None) -> None:
        """Load FP (scheme None) or `scheme` with `protection` kept in FP into the model."""
        protection = protection or {}
        quantized = self.quantized(scheme) if scheme else {}
        for name, param in self.params.items():
            keep = protection.get(name, False)
            if name not in quantized or keep is True:
                state = None
            elif keep is False:
                state = scheme
            else:
                state = (scheme, id(keep))
            if self._state[name] == state and not isinstance(keep, torch.Tensor):
                continue
            if state is None:
                param.copy_(self.fp[name])
            elif isinstance(keep, torch.Tensor):
                param.copy_(torch.where(keep.to(param.device), self.fp[name], quantized[name]))
            else:
                param.copy_(quantized[name])
            self._state[name] = state

    def layer_matrices(self) -> dict[int, list[Component]]:
        """Each layer's matrix weights (the tensors weight statistics are taken over)."""
        grouped: dict[int, list[Component]] = {}
        for c in self.parts.values():
            if c.layer is not None and c.is_matrix and c.kind == "weight":
                grouped.setdefault(c.layer, []).append(c)
        return dict(sorted(grouped.items()))

    def restore(self) -> None:
        """Put the exact FP weights back."""
        self.apply(None)
