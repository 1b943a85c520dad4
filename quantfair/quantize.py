"""Simulated (fake) quantization, and a bank of FP and quantized tensors for cheap swaps."""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import inspect
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from quantfair.errors import UsageError
from quantfair.models import weights_hash
from quantfair.progress import notice
from quantfair.schemes import GGUF_TYPES, QuantScheme
from quantfair.storage import cache_folder
from quantfair.taxonomy import Component, components, num_layers
from quantfair.tensorfile import cached_tensors, map_tensors, remove_tensors, write_tensors
from quantfair.text import one_line

__all__ = ["QuantScheme", "WeightBank", "fake_quantize", "gguf_quantize", "gguf_tensor_type",
           "in_scope", "quantize_component", "stored_bits", "type_bits", "weights_folder"]

GGUF_BLOCK = 32  # weights per block in every GGUF_TYPES format
GGUF_FALLBACK = "F16"  # rows not a multiple of GGUF_BLOCK (llama-quantize's last resort too)

def _grouped(rows: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, int]:
    """Reshape a logical (out, in) matrix into (n_groups, group) rows; returns pad added.
    Zero padding never widens a group's range (both ranges hold 0), so a group at least as
    wide as a row is that row: the same numbers, and no padding allocated for it."""
    if scheme.granularity == "tensor":
        return rows.reshape(1, -1), 0
    if scheme.granularity == "channel" or scheme.group_size >= rows.shape[1]:
        return rows, 0
    pad = -rows.shape[1] % scheme.group_size
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.reshape(-1, scheme.group_size), pad


CHUNK = 1 << 20  # entries rounded at a time: a large tensor's temporaries stay small


def fake_quantize(
    tensor: torch.Tensor, scheme: QuantScheme, transposed: bool = False, inplace: bool = False
) -> torch.Tensor:
    """Quantize then dequantize `tensor` by round-to-nearest; the result has its shape and
    dtype (computed in float32). Matrices are (out, in) unless `transposed` (Conv1D).

    Per group of b = `scheme.bits` bits: symmetric, scale = max|w| / (2^(b-1) - 1) and codes
    round(w / scale) clamped to [-2^(b-1), 2^(b-1) - 1]; asymmetric, the range [min, max]
    widened to hold 0, scale = (max - min) / (2^b - 1), zero point round(-min / scale) and
    codes clamped to [0, 2^b - 1] (the common RTN baseline, e.g. Nagel et al. 2021, "A White
    Paper on Neural Network Quantization"). A group of zeros takes scale 1.

    Channels are output rows; groups run along the input dimension. Vectors (biases, norms)
    are one channel, so "channel" treats them per tensor. Scales come from whole groups; the
    rounding runs CHUNK entries at a time, so its temporaries do not scale with the tensor.
    With `inplace`, the result overwrites `tensor` where its groups are a view of it (no
    second copy of a large tensor; the same values either way).
    """
    logical = tensor.t() if transposed else tensor
    if logical.dim() < 2:
        rows = logical.reshape(1, -1)
    else:
        rows = logical.reshape(logical.shape[0], -1)
    in_features = rows.shape[1]
    groups, pad = _grouped(rows.float(), scheme)
    low, high = torch.aminmax(groups, dim=1)
    if scheme.symmetric:
        qmax = 2 ** (scheme.bits - 1) - 1
        scale = torch.maximum(-low, high) / qmax
    else:
        levels = 2**scheme.bits - 1
        low, high = low.clamp(max=0), high.clamp(min=0)
        scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = None if scheme.symmetric else torch.round(-low / scale)
    flat = groups.reshape(-1)
    dequant = flat if inplace and flat.data_ptr() == tensor.data_ptr() else torch.empty_like(flat)
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start:start + CHUNK]
        group = torch.arange(start, start + part.numel()) // groups.shape[1]
        step = scale[group]
        if zero_point is None:
            codes = torch.clamp(torch.round(part / step), -qmax - 1, qmax)
        else:
            zero = zero_point[group]
            codes = torch.clamp(torch.round(part / step) + zero, 0, levels) - zero
        dequant[start:start + part.numel()] = codes * step
    dequant = dequant.reshape(rows.shape[0], in_features + pad)[:, :in_features]
    dequant = dequant.reshape(logical.shape).to(tensor.dtype)
    return dequant.t().contiguous() if transposed else dequant


def gguf_tensor_type(component: Component, scheme: QuantScheme) -> str:
    """The GGUF type a parameter takes under a `gguf:` scheme, like `llama-quantize --pure
    --token-embedding-type E --output-tensor-type E`: every 2-D weight in the scheme's type,
    the token embedding and output head in `scheme.embedding_type` (E), 1-D tensors (norms,
    biases) and position embeddings F32, and a matrix whose input dimension is not a multiple
    of 32 in F16."""
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


def type_bits(qtype: str) -> float:
    """Bits per weight of a GGUF tensor type, scales included: bytes per block x 8 / weights
    per block, from the gguf package's GGML_QUANT_SIZES (Q4_0: 18 bytes per 32 weights, 4.5)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    return 8.0 * size / block


def stored_bits(component: Component, scheme: QuantScheme) -> float:
    """Bits per weight `component` takes when stored quantized under a computed `scheme`: a
    simulated scheme's nominal bits (scales excluded), a `gguf:` scheme's tensor type's exact
    bits (`type_bits`)."""
    if scheme.gguf_type is not None:
        return type_bits(gguf_tensor_type(component, scheme))
    return float(scheme.bits)


def _no_artifact(scheme: QuantScheme) -> UsageError:
    if scheme.llama_type is not None:
        return UsageError(f"{scheme.name} is made by llama-quantize once per run: give it as "
                          "the run's --quant")
    return UsageError(f"no artifact labelled '{scheme.artifact}' is loaded: its tensors come "
                      "from --quantized FILE --quantized-label LABEL")


def quantize_component(tensor: torch.Tensor, component: Component,
                       scheme: QuantScheme) -> torch.Tensor:
    """`tensor` (the parameter `component`) quantized by a computed scheme."""
    if scheme.from_file:
        raise _no_artifact(scheme)
    if scheme.gguf_type is not None:
        return gguf_quantize(tensor, gguf_tensor_type(component, scheme), component.transposed)
    return fake_quantize(tensor, scheme, component.transposed)


def in_scope(component: Component, scheme: QuantScheme) -> bool:
    """Whether `scheme` quantizes this parameter at all (a file supplies every one)."""
    if scheme.from_file:
        return True
    if scheme.gguf_type is not None:
        return gguf_tensor_type(component, scheme) != "F32"
    if scheme.scope == "all":
        return True
    return component.is_matrix and component.kind == "weight" and component.block in (
        "attn", "mlp", "head")


# A protected set: parameter name -> True (whole tensor) or a boolean mask of kept elements.
Protection = dict[str, "bool | torch.Tensor"]


def has_element_masks(protection: Protection) -> bool:
    """Whether `protection` keeps single entries of some tensor (not only whole tensors)."""
    return any(isinstance(keep, torch.Tensor) for keep in protection.values())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# Part of every quantized-tensor file's name: a change to how tensors are quantized (these
# functions, or the gguf package) never serves a file computed the old way.
QUANTIZER_DIGEST = hashlib.sha256("".join(
    [*(inspect.getsource(f) for f in (_grouped, fake_quantize, gguf_tensor_type, gguf_quantize,
                                      quantize_component, in_scope)),
     _version("gguf")]).encode()).hexdigest()[:12]


def _mask_digest(keep: torch.Tensor) -> str:
    """Content hash of a mask of kept entries (the tensors composed for it follow from it)."""
    return hashlib.sha256(keep.detach().cpu().contiguous().numpy()).hexdigest()[:24]


def weights_folder(weight_hash: str) -> Path:
    """Where the bank of the model with this weight hash keeps its tensor files."""
    return cache_folder("weights") / weight_hash[:16]


class WeightBank:
    """Each parameter's FP tensor and its quantized tensor per scheme, so applying a
    (scheme, protection) pair points the live model's parameters at them, never a reload.

    The tensors live in files under `folder` (default: the cache, keyed by the weights' hash)
    read through memory maps (`quantfair.tensorfile`): the FP reference and each scheme's
    tensors cost page cache, not process memory, and processes sharing the cache quantize a
    scheme once. Where the cache cannot be written they are kept in memory instead."""

    def __init__(self, model: nn.Module, folder: Path | None = None) -> None:
        self.model = model
        self.parts = components(model)
        self.params = dict(model.named_parameters())
        self.folder = folder or weights_folder(weights_hash(model))
        layout = {name: p.detach() for name, p in self.params.items()}
        self.fp = self._stored("fp", layout, layout.__getitem__)
        self._quantized: dict[QuantScheme, dict[str, torch.Tensor]] = {}
        self._artifact_bits: dict[QuantScheme, dict[str, float]] = {}
        self._artifact_hash: dict[QuantScheme, str] = {}
        self._artifact_unquantized: dict[QuantScheme, frozenset[str]] = {}
        self._state: dict[str, object] = dict.fromkeys(self.params, "loaded")  # None = FP
        self.restore()  # the parameters read the FP file from now on

    def _stored(self, stem: str | None, layout: dict[str, torch.Tensor],
                produce: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors `produce` makes for `layout`'s names, memory-mapped from the file `stem`
        (written once; None: a temporary file, gone when the tensors are), or in memory
        where the cache cannot be written."""
        if self.folder is not None:
            try:
                if stem is not None:
                    return cached_tensors(self.folder / f"{stem}.safetensors", layout, produce)
                self.folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".composed-") as file:
                    write_tensors(Path(file.name), layout, produce)
                    return map_tensors(Path(file.name))  # the map outlives the name
            except OSError as error:
                notice(one_line(f"quantfair: keeping weights in memory: cannot write "
                                f"{self.folder} ({error.strerror or error})"))
                self.folder = None
        return {name: produce(name).detach().clone() for name in layout}

    def quantized(self, scheme: QuantScheme) -> dict[str, torch.Tensor]:
        """The scheme's quantized tensors (computed once; out-of-scope parameters stay FP).
        Raises UsageError for an artifact scheme not added with `add_artifact`."""
        if scheme not in self._quantized:
            if scheme.from_file:
                raise _no_artifact(scheme)
            layout = {name: self.fp[name] for name, part in self.parts.items()
                      if in_scope(part, scheme) and self.fp[name].is_floating_point()}
            base = re.sub(r"[^A-Za-z0-9_.+-]", "_", scheme.name)
            self._quantized[scheme] = self._stored(
                f"{base}-{QUANTIZER_DIGEST}", layout,
                lambda name: quantize_component(self.fp[name], self.parts[name], scheme))
            if self.folder is not None:  # files of other quantizer versions are stale
                for stale in self.folder.glob(f"{glob.escape(base)}-*.safetensors"):
                    if re.fullmatch(rf"{re.escape(base)}-(?!{QUANTIZER_DIGEST})[0-9a-f]{{12}}",
                                    stale.stem):
                        remove_tensors(stale)
        return self._quantized[scheme]

    def add_artifact(self, scheme: QuantScheme, tensors: dict[str, torch.Tensor],
                     weight_hash: str, bits: dict[str, float],
                     unquantized: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """Serve `tensors` (parameter name -> tensor of the FP parameter's shape, e.g. from a
        quantized file whose content hash is `weight_hash`, which stores parameter `name`
        in `bits[name]` bits per weight and leaves those named in `unquantized` as in the FP
        model) as the quantized tensors of the artifact scheme `scheme`; returns them as the
        bank keeps them (memory-mapped), so the caller can let the originals go."""
        self._artifact_bits[scheme] = bits
        self._artifact_hash[scheme] = weight_hash
        self._artifact_unquantized[scheme] = frozenset(unquantized)
        layout = {name: self.fp[name] for name in self.parts}
        self._quantized[scheme] = self._stored(
            f"artifact-{weight_hash[:16]}", layout,
            lambda name: tensors[name].detach().to("cpu", self.fp[name].dtype))
        return self._quantized[scheme]

    def quantizes(self, component: Component, scheme: QuantScheme) -> bool:
        """Whether `scheme` changes this parameter: `in_scope`, and for an artifact whether its
        file's tensor differs from the FP model's (a GGUF file keeps norms in F32)."""
        if scheme.from_file:
            return component.name not in self._artifact_unquantized.get(scheme, ())
        return in_scope(component, scheme)

    def bits(self, name: str, scheme: QuantScheme) -> float:
        """Bits per weight of parameter `name` as `scheme` stores it (an artifact: as its file
        does; `stored_bits` otherwise)."""
        if scheme.from_file:
            if scheme not in self._artifact_bits:
                raise _no_artifact(scheme)
            return self._artifact_bits[scheme][name]
        return stored_bits(self.parts[name], scheme)

    @torch.no_grad()
    def apply(self, scheme: QuantScheme | None, protection: Protection | None = None) -> None:
        """Put FP (scheme None) or `scheme` with `protection` kept in FP into the model. On the
        bank's device and dtype a parameter is pointed at the bank's tensor (no copy: it reads
        the memory map); elsewhere (a GPU) the tensor is copied into it. Parameters with an
        element mask get tensors composed of both (`_partly_kept`), written to a temporary
        file and mapped, so they too stay out of process memory."""
        protection = protection or {}
        quantized = self.quantized(scheme) if scheme else {}
        sources, masked = {}, {}
        for name in self.params:
            keep = protection.get(name, False)
            if name not in quantized or keep is True:
                state, sources[name] = None, self.fp[name]
            elif keep is False:
                state, sources[name] = scheme, quantized[name]
            else:
                state, masked[name] = (scheme, _mask_digest(keep)), keep
            if self._state[name] == state and not isinstance(keep, torch.Tensor):
                sources.pop(name)
            self._state[name] = state
        if masked:
            sources.update(self._stored(None, {n: self.fp[n] for n in masked},
                                        lambda n: self._partly_kept(n, scheme, masked[n].cpu())))
        for name, source in sources.items():
            param = self.params[name]
            if param.device == source.device and param.dtype == source.dtype:
                param.data = source
            else:
                param.copy_(source)

    def prefix_keys(self) -> list[str]:
        """For k = 0..L (L decoder layers): an identity of the current state of every weight
        that the input of layer k depends on (embeddings and layers below k; k = L: the last
        layer's output, which the final norm and head do not touch). For
        `prefix.HiddenStates`."""
        layers = num_layers(self.parts)
        by_layer: list[list[str]] = [[] for _ in range(layers + 1)]  # 0: before layer 0
        for name, part in self.parts.items():
            if part.layer is not None:
                by_layer[part.layer + 1].append(name)
            elif part.block != "head" and part.role != "ln_f":
                by_layer[0].append(name)
        digest, keys = hashlib.sha256(), []
        for names in by_layer:
            for name in names:
                state = self._state[name]
                scheme = state[0] if isinstance(state, tuple) else state
                artifact = self._artifact_hash.get(scheme, "")
                digest.update(f"{name}={state!r}{artifact};".encode())
            keys.append(digest.hexdigest())
        return keys

    def _partly_kept(self, name: str, scheme: QuantScheme, keep: torch.Tensor) -> torch.Tensor:
        """Parameter `name` with the entries of the mask `keep` in FP and the rest quantized
        by `scheme`. Under round-to-nearest schemes the kept entries are left out of their
        group's scale (quantized as zeros, which widen no range: symmetric scales span
        max |w|, asymmetric ones always include 0), as outlier-keeping methods store them
        (e.g. SpQR, OWQ); otherwise keeping an outlier under a per-tensor scale would change
        nothing else. Block formats and artifacts have one type per tensor, so there the
        kept entries only replace the stored ones."""
        fp = self.fp[name]
        if not scheme.keeps_entries:
            return torch.where(keep, fp, self.quantized(scheme)[name])
        rest = fake_quantize(fp.masked_fill(keep, 0), scheme, self.parts[name].transposed,
                             inplace=True)
        return torch.where(keep, fp, rest, out=rest)

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
