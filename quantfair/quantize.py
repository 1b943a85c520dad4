"""Simulated (fake) quantization, and a bank of FP and quantized tensors for cheap swaps."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from quantfair.errors import UsageError
from quantfair.taxonomy import Component, components

GRANULARITIES = ("tensor", "channel", "group")
SCOPES = ("all", "linear")


@dataclass(frozen=True)
class QuantScheme:
    """Round-to-nearest weight quantization, simulated in the model's dtype."""

    bits: int = 4
    granularity: str = "tensor"  # "tensor", "channel" or "group"
    group_size: int = 0  # only for granularity "group"
    symmetric: bool = True
    scope: str = "all"  # "all": every floating parameter (the seed's baseline); "linear": matrices

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise UsageError(f"bits must be between 2 and 8, got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise UsageError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group" and self.group_size < 1:
            raise UsageError(f"group size must be a positive integer, got {self.group_size}")
        if self.scope not in SCOPES:
            raise UsageError(f"scope must be one of {', '.join(SCOPES)}, got '{self.scope}'")

    @property
    def name(self) -> str:
        parts = [f"int{self.bits}"]
        if self.granularity == "channel":
            parts.append("channel")
        elif self.granularity == "group":
            parts.append(f"g{self.group_size}")
        if not self.symmetric:
            parts.append("asym")
        if self.scope != "all":
            parts.append(self.scope)
        return "-".join(parts)

    @classmethod
    def parse(cls, text: str) -> QuantScheme:
        """Parse `int4`, `int4-g128`, `int8-channel`, `int4-g64-asym-linear`, ...; each aspect
        (granularity, symmetry, scope) may be named at most once."""
        head, *options = text.strip().lower().split("-")
        bits = re.fullmatch(r"int([0-9]{1,9})", head)
        if not bits:
            raise UsageError(
                f"unknown quantization scheme '{text}': expected int<bits>[-channel|-g<N>]"
                "[-asym][-linear], e.g. int4, int4-g128, int8-channel"
            )
        fields: dict = {"bits": int(bits[1])}
        named: dict[str, str] = {}  # aspect -> the part that set it
        for option in options:
            group = re.fullmatch(r"g([0-9]{1,9})", option)
            if group:
                aspect, values = "granularity", {"granularity": "group",
                                                 "group_size": int(group[1])}
            elif option in ("channel", "tensor"):
                aspect, values = "granularity", {"granularity": option}
            elif option in ("asym", "sym"):
                aspect, values = "symmetry", {"symmetric": option == "sym"}
            elif option in SCOPES:
                aspect, values = "scope", {"scope": option}
            else:
                raise UsageError(
                    f"quantization scheme '{text}': unknown part '{option}' (valid parts: "
                    "g<N> with N a positive integer, channel, tensor, asym, sym, linear, all)"
                )
            if aspect in named:
                raise UsageError(
                    f"quantization scheme '{text}': '{named[aspect]}' and '{option}' both set "
                    f"the {aspect}; name it once"
                )
            named[aspect] = option
            fields.update(values)
        return cls(**fields)


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


def in_scope(component: Component, scheme: QuantScheme) -> bool:
    """Whether `scheme` quantizes this parameter at all."""
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
        """The scheme's quantized tensors (computed once; out-of-scope parameters stay FP)."""
        if scheme not in self._quantized:
            self._quantized[scheme] = {
                name: fake_quantize(self.fp[name], scheme, part.transposed)
                for name, part in self.parts.items()
                if in_scope(part, scheme) and self.fp[name].is_floating_point()
            }
        return self._quantized[scheme]

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
