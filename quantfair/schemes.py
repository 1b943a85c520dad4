"""Quantization schemes as data (no torch here: options are parsed before anything loads)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantfair.errors import UsageError

GRANULARITIES = ("tensor", "channel", "group")
SCOPES = ("all", "linear")
# llama.cpp block formats the gguf package quantizes bit-exactly (32 weights per block), with
# their nominal bits per weight (scales excluded).
GGUF_TYPES = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8}
# Types the token embedding / output head may take under a gguf: scheme. llama.cpp uses Q6_K
# there, which the gguf package can dequantize but not produce.
EMBEDDING_TYPES = (*GGUF_TYPES, "F16", "F32")
DEFAULT_EMBEDDING_TYPE = "Q8_0"
ARTIFACT = "artifact"
LLAMA_CPP = "llama.cpp"
# Types llama.cpp's llama-quantize writes without an importance matrix (its --help lists them).
LLAMA_QUANTIZE_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M",
                        "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "TQ1_0",
                        "TQ2_0", "IQ4_NL", "IQ4_XS", "F16", "BF16")
# Types it refuses to write without one (tools/quantize/quantize.cpp: "Please do not use ...
# without an importance matrix"), which quantfair does not compute.
IMATRIX_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S")


def _number(digits: str, what: str, scheme: str) -> int:
    """The decimal `digits` of a scheme's part, refused past 18 (no tensor is that wide)."""
    if len(digits.lstrip("0")) > 18:
        raise UsageError(f"quantization scheme '{scheme}': the {what} must be of at "
                         "most 18 digits")
    return int(digits)


@dataclass(frozen=True)
class QuantScheme:
    """Weight quantization, simulated in the model's dtype: round-to-nearest (`int4-g128`),
    a llama.cpp block format computed with the gguf package (`gguf:Q4_0`, `gguf_type` set), or
    the tensors of a quantized artifact named by its label (`artifact:release`), or a file
    llama.cpp's own quantizer makes from the FP model (`llama.cpp:Q4_K_M`, `llama_type` set)."""

    bits: int = 4
    granularity: str = "tensor"  # "tensor", "channel" or "group"
    group_size: int = 0  # only for granularity "group"
    symmetric: bool = True
    scope: str = "all"  # "all": every floating parameter (the seed's baseline); "linear": matrices
    gguf_type: str | None = None  # a GGUF_TYPES block format instead of round-to-nearest
    embedding_type: str = DEFAULT_EMBEDDING_TYPE  # gguf only: token embedding and output head
    artifact: str | None = None  # label of a --quantized artifact supplying the tensors
    llama_type: str | None = None  # a LLAMA_QUANTIZE_TYPES type made by llama-quantize

    def __post_init__(self) -> None:
        if self.llama_type in IMATRIX_TYPES:
            raise UsageError(f"llama-quantize writes {self.llama_type} only with an importance "
                             "matrix (llama-imatrix), which quantfair does not compute: use "
                             "one of " + ", ".join(LLAMA_QUANTIZE_TYPES))
        if self.llama_type is not None and self.llama_type not in LLAMA_QUANTIZE_TYPES:
            raise UsageError(f"unknown llama-quantize type '{self.llama_type}': use one of "
                             f"{', '.join(LLAMA_QUANTIZE_TYPES)}")
        if self.gguf_type is not None and self.gguf_type not in GGUF_TYPES:
            made = [t for t in LLAMA_QUANTIZE_TYPES if self.gguf_type and t.startswith(
                self.gguf_type) and t not in (*GGUF_TYPES, "F16", "BF16")]
            example = next((t for t in made if t.endswith("_M")), made[-1] if made else "")
            raise UsageError(f"unknown GGUF type '{self.gguf_type}': quantfair computes "
                             f"{', '.join(GGUF_TYPES)}" + (
                                 f"; llama.cpp's quantizer makes {', '.join(made)}, e.g. "
                                 f"scheme llama.cpp:{example}" if made else ""))
        if self.embedding_type not in EMBEDDING_TYPES:
            raise UsageError(f"unknown embedding type '{self.embedding_type}': use one of "
                             f"{', '.join(EMBEDDING_TYPES)} (llama.cpp's Q6_K cannot be "
                             "produced by the gguf package)")
        if self.artifact is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.artifact):
            raise UsageError(f"artifact label '{self.artifact}' must be ASCII letters, digits, "
                             "'.', '_' or '-'")
        if not 2 <= self.bits <= 8:
            raise UsageError(f"bits must be between 2 and 8, got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise UsageError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group" and self.group_size < 1:
            raise UsageError(f"group size must be a positive integer, got {self.group_size}")
        if self.scope not in SCOPES:
            raise UsageError(f"scope must be one of {', '.join(SCOPES)}, got '{self.scope}'")

    @property
    def from_file(self) -> bool:
        """Whether the quantized tensors come from a file (an artifact, or llama-quantize's
        output) rather than being computed here."""
        return self.artifact is not None or self.llama_type is not None

    @property
    def keeps_entries(self) -> bool:
        """Whether single entries of a tensor can stay in full precision with the rest quantized
        around them (round-to-nearest schemes); block formats and files have one type per
        tensor."""
        return self.gguf_type is None and not self.from_file

    @property
    def name(self) -> str:
        """Canonical text; `QuantScheme.parse(scheme.name) == scheme` for every scheme
        `parse` makes (one built field by field may hold fields its kind ignores, such as a
        group size beside per-channel scales, which the name leaves out)."""
        if self.artifact is not None:
            return f"{ARTIFACT}:{self.artifact}"
        if self.llama_type is not None:
            return f"{LLAMA_CPP}:{self.llama_type}"
        if self.gguf_type is not None:
            embedding = self.embedding_type
            return f"gguf:{self.gguf_type}" + (
                "" if embedding == DEFAULT_EMBEDDING_TYPE else f"-embed-{embedding}")
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

    @property
    def description(self) -> str:
        """What the scheme does, in words, for a reader of a report."""
        if self.artifact is not None:
            return "the tensors of the quantized file audited (--quantized)"
        if self.llama_type is not None:
            return (f"llama.cpp's {self.llama_type}, a file its llama-quantize made from the FP "
                    "model")
        if self.gguf_type is not None:
            return (f"llama.cpp's {self.gguf_type} block format (32 weights a block), computed "
                    f"here; token embedding and output head {self.embedding_type}")
        per = {"tensor": "tensor", "channel": "output row",
               "group": f"group of {self.group_size} weights"}[self.granularity]
        where = ("every floating parameter (embeddings and norms too)" if self.scope == "all"
                 else "the attention, MLP and output head matrices")
        return (f"{self.bits}-bit round to nearest, simulated here: "
                f"{'symmetric' if self.symmetric else 'asymmetric'}, one scale per {per}, "
                f"over {where}")

    @classmethod
    def gguf(cls, qtype: str, embedding_type: str = DEFAULT_EMBEDDING_TYPE) -> QuantScheme:
        """A llama.cpp block format, e.g. `QuantScheme.gguf("Q4_0")`."""
        return cls(bits=GGUF_TYPES.get(qtype, 4), gguf_type=qtype, embedding_type=embedding_type)

    @classmethod
    def parse(cls, text: str) -> QuantScheme:
        """Parse `int4`, `int4-g128`, `int8-channel`, `int4-g64-asym-linear`, `gguf:Q4_0`,
        `gguf:Q5_1-embed-F16`, `artifact:release`, `llama.cpp:Q4_K_M`; each aspect of an RTN
        scheme (granularity, symmetry, scope) may be named at most once. Raises UsageError."""
        text = text.strip()
        if text.lower().startswith(f"{ARTIFACT}:"):
            return cls(artifact=text.partition(":")[2])
        if text.lower().startswith(f"{LLAMA_CPP}:"):
            return cls(llama_type=text.partition(":")[2].upper())
        if text.lower().startswith("gguf:"):
            qtype, _, embedding = text[5:].upper().partition("-EMBED-")
            return cls.gguf(qtype, embedding or DEFAULT_EMBEDDING_TYPE)
        head, *options = text.lower().split("-")
        bits = re.fullmatch(r"int([0-9]+)", head)
        if not bits:
            raise UsageError(
                f"unknown quantization scheme '{text}': expected int<bits>[-channel|-g<N>]"
                "[-asym][-linear], gguf:<TYPE>[-embed-<TYPE>] or llama.cpp:<TYPE>, e.g. int4, "
                f"int4-g128, int8-channel, gguf:Q4_0 (GGUF types: {', '.join(GGUF_TYPES)}), "
                "llama.cpp:Q4_K_M"
            )
        fields: dict = {"bits": _number(bits[1], "bits", text)}
        named: dict[str, str] = {}  # aspect -> the part that set it
        for option in options:
            group = re.fullmatch(r"g([0-9]+)", option)
            if group:
                aspect, values = "granularity", {
                    "granularity": "group", "group_size": _number(group[1], "group size", text)}
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
        try:
            return cls(**fields)
        except UsageError as error:  # bits or group size out of range
            raise UsageError(f"quantization scheme '{text}': {error}") from None


def check_block_format(scheme: QuantScheme) -> None:
    """UsageError unless `scheme` is a GGUF block format (`gguf:TYPE`), the only kind
    `quantfair export` writes a file in."""
    if scheme.gguf_type is None:
        raise UsageError(f"export writes GGUF block formats: give --quant gguf:TYPE, not "
                         f"{scheme.name}")
