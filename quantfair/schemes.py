"""Quantization schemes as data (no torch here: options are parsed before anything loads)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantfair.errors import UsageError

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
