"""Quantized artifacts: a second file of the same model (a GGUF of any type transformers
dequantizes, a safetensors directory, a cached Hugging Face id) whose tensors are the quantized
side of an audit, mapped onto the FP model's parameters by name."""

from __future__ import annotations

import pickle
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from quantfair.errors import QuantfairError, UsageError
from quantfair.export import gguf_names
from quantfair.models import (
    FLOAT_TYPES,
    LoadedModel,
    file_sha256,
    gguf_architecture,
    gguf_checkpoint,
    gguf_tensors,
    gguf_type_mix,
    has_gguf_checkpoint,
    has_tokenizer_files,
    load_tokenizer,
    non_finite_parameter,
    remove_gguf_checkpoint,
    weights_hash,
)
from quantfair.progress import notice
from quantfair.quantize import type_bits
from quantfair.schemes import QuantScheme
from quantfair.storage import is_gguf
from quantfair.taxonomy import components, family_of
from quantfair.tensorfile import TORCH_DTYPES
from quantfair.text import first_line

UNLIKE = 1.0  # median relative error of the weight matrices at which they are another model's


@dataclass
class Artifact:
    """The tensors of a quantized artifact (FP shapes and names, dequantized to fp32) and
    where they came from."""

    scheme: QuantScheme  # `artifact:<label>`: the name its measurements carry in reports
    source: str
    weight_hash: str  # sha256 over every tensor: part of every cache key
    type_mix: dict[str, int]  # storage type -> number of tensors in the file
    unquantized: list[str]  # parameters bitwise equal to the FP reference
    tensors: dict[str, torch.Tensor]
    bits: dict[str, float]  # parameter -> bits per weight as the file stores it
    file_sha256: str | None = None  # of a GGUF file's bytes, as `sha256sum` prints it
    config_differences: list[str] = field(default_factory=list)  # `config_differences`

    def provenance(self) -> dict:
        """The report's `artifact` block."""
        return {"label": self.scheme.artifact or self.scheme.name, "scheme": self.scheme.name,
                "source": self.source, "file_sha256": self.file_sha256,
                "weight_hash": self.weight_hash, "type_mix": self.type_mix,
                "unquantized": self.unquantized}


def _read(spec: str, sha256: str | None):
    """(model, tokenizer, source, type mix, safetensors dtypes: `_safetensors_dtypes`, empty
    but for a safetensors directory, the names of the file's tensors loading left unread) of
    `spec` (a GGUF file's `sha256` keys its converted copy); raises QuantfairError when the
    files are missing or leave model weights uninitialised."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(spec)
    kwargs: dict = {}
    dtypes: dict[str, str] = {}
    if is_gguf(path) and not path.is_file():
        raise UsageError(f"--quantized {spec}: no such GGUF file")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if is_gguf(path):
            type_mix = gguf_type_mix(path)  # its header read before the file is dequantized
            location = str(gguf_checkpoint(path, sha256))
        elif path.is_dir():
            dtypes = _safetensors_dtypes(path)
            location, type_mix = str(path), dict(Counter(dtypes.values()))
        else:
            location, kwargs["local_files_only"] = spec, True
            type_mix = {}
        model, info = AutoModelForCausalLM.from_pretrained(  # a mismatch named below
            location, dtype=torch.float32, output_loading_info=True,
            ignore_mismatched_sizes=True, **kwargs)
        # A folder saved without its tokenizer is audited with the model's (none compared),
        # as is a Hub id cached without one (dequantized checkpoints often ship none)
        # (a GGUF file's location is its converted copy, which holds its tokenizer)
        tokenizer = load_tokenizer(location, **kwargs) if has_tokenizer_files(location) else None
    except SafetensorError as error:  # a weights file cut short or overwritten
        raise UsageError(f"--quantized {spec}: a safetensors file is damaged or cut short "
                         f"({error}): copy or download it again") from None
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        # ValueError: a damaged config.json; UnpicklingError: a pytorch_model.bin of other
        # objects than tensors (torch's weights_only load) or not a pickle at all
        why = first_line(error) or type(error).__name__
        raise UsageError(f"--quantized {spec}: cannot load it ({why})") from None
    if info.get("mismatched_keys"):
        name, stored, configured = sorted(info["mismatched_keys"])[0]
        raise UsageError(f"--quantized {spec}: cannot load it (tensor {name} of shape "
                         f"{tuple(stored)}, where its own config gives {tuple(configured)})")
    if info.get("missing_keys"):
        first = sorted(info["missing_keys"])[0]
        raise UsageError(f"--quantized {spec}: the artifact has no tensor for {first}")
    source = str(path.resolve()) if path.exists() else f"Hugging Face cache: {spec}"
    return model, tokenizer, source, type_mix, dtypes, sorted(info.get("unexpected_keys", ()))


def _safetensors_dtypes(folder: Path) -> dict[str, str]:
    """Each tensor's safetensors dtype (`F32`, `BF16`, `I8`, ...) in the folder's files."""
    from safetensors import safe_open

    dtypes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (no __iter__)
                dtypes[key] = handle.get_slice(key).get_dtype()
    return dtypes


def _integer_parameter(dtypes: dict[str, str], names: Iterable[str]) -> str | None:
    """The first of the parameters `names` that a safetensors directory of these `dtypes`
    stores in an integer type (packed codes, as GPTQ, AWQ or bitsandbytes write them), or
    None: loading reads such codes as if they were weights. Keys may lack or add a prefix
    (`transformer.`)."""
    integer = {key: dtype for key, dtype in dtypes.items() if not dtype.startswith(("F", "BF"))}
    for name in names:
        for key, dtype in integer.items():
            if key == name or name.endswith("." + key) or key.endswith("." + name):
                return f"{key} ({dtype})"
    return None


def _unlike(reference: LoadedModel, tensors: dict[str, torch.Tensor]) -> str | None:
    """Why the artifact's weight matrices cannot be a quantization of the FP model's (another
    model's weights of the same shapes), or None: their median relative error (Frobenius norm
    of the difference over the FP tensor's) is at least `UNLIKE`. Rounding to a grid that holds
    0 moves no weight further than its own size, so a quantization stays below 1 (int2 per
    tensor 0.88 on Gaussian weights, Q4_0 0.09); another model's weights of the same
    initialisation give ~1.4 (sqrt 2)."""
    errors = {}
    for name, param in reference.model.named_parameters():
        norm = float(param.detach().norm())
        if param.dim() >= 2 and norm > 0:
            errors[name] = float((tensors[name] - param.detach()).norm()) / norm
    median = float(np.median(list(errors.values()))) if errors else 0.0
    if median < UNLIKE:
        return None
    worst = max(errors, key=errors.__getitem__)
    return (f"weights unlike the model's: a median relative error of {median:.0%} over "
            f"{len(errors)} weight matrices ({worst}: {errors[worst]:.0%}), where quantizing "
            "leaves well under 100%")


def _stored_bits(spec: str, reference: LoadedModel, dtypes: dict[str, str]
                 ) -> dict[str, float]:
    """Each parameter's bits per weight in the artifact: its GGUF tensor type's (`type_bits`;
    names from the gguf package's map, else the file's mean over quantized tensors), or its
    safetensors dtype's (`dtypes`); 16 where the file does not say."""
    parts = components(reference.model)
    path = Path(spec)
    if is_gguf(path):
        tensors = gguf_tensors(path)
        try:
            return {name: type_bits(tensors[gguf_name]["type"]) if gguf_name in tensors else 16.0
                    for name, gguf_name in gguf_names(reference, parts).items()}
        except UsageError:  # no name map for this architecture: the file's mean
            quantized = [t for t in tensors.values() if t["type"] not in FLOAT_TYPES]
            mean = (8.0 * sum(t["bytes"] for t in quantized)
                    / max(1, sum(t["elements"] for t in quantized))) if quantized else 16.0
            return dict.fromkeys(parts, mean)
    widths = {key: 8.0 * TORCH_DTYPES[dtype].itemsize for key, dtype in dtypes.items()
              if dtype in TORCH_DTYPES}
    return {name: widths.get(name, 16.0) for name in parts}


def _first_mismatch(reference: LoadedModel, model: torch.nn.Module, tokenizer) -> str | None:
    """What first differs between the FP model and the artifact, or None."""
    ours, theirs = reference.model.config.model_type, model.config.model_type
    if family_of(model) != reference.family or ours != theirs:
        return f"architecture {theirs}, the model's is {ours}"
    layers = [getattr(m.config, "num_hidden_layers", None) for m in (model, reference.model)]
    if None not in layers and layers[0] != layers[1]:
        return f"{layers[0]} layers in its config, the model's {layers[1]}"
    fp_params = dict(reference.model.named_parameters())
    params = dict(model.named_parameters())
    for name, param in fp_params.items():
        if name not in params:
            return f"no tensor {name}"
        if params[name].shape != param.shape:
            return (f"tensor {name} of shape {tuple(params[name].shape)}, the model's "
                    f"{tuple(param.shape)}")
    extra = sorted(set(params) - set(fp_params))
    if extra:
        return f"tensor {extra[0]} that the model does not have"
    vocab, fp_vocab = tokenizer and tokenizer.get_vocab(), reference.tokenizer.get_vocab()
    if tokenizer and vocab != fp_vocab:
        theirs_by_id = {i: token for token, i in vocab.items()}
        ours_by_id = {i: token for token, i in fp_vocab.items()}
        first = min((i for i in theirs_by_id.keys() | ours_by_id.keys()
                     if theirs_by_id.get(i) != ours_by_id.get(i)), default=None)

        def said(token: str | None) -> str:
            return "no token" if token is None else repr(token)

        where = ("" if first is None else  # else tokens sharing an id differ
                 f"; id {first} is {said(theirs_by_id.get(first))} in the artifact's, "
                 f"{said(ours_by_id.get(first))} in the model's")
        return (f"a different tokenizer vocabulary ({len(vocab):,} tokens, the model's "
                f"{len(fp_vocab):,}{where})")
    return None


def _same_header(spec: str, reference: LoadedModel) -> None:
    """Raises UsageError where the GGUF file `spec` is of another architecture than the
    model, its token embedding (`token_embd.weight`) of another size or its layers
    (`blk.N.*`) of another count, read from its header. The architecture
    (`general.architecture`) against the model's own GGUF file's, or else its transformers
    model type, which transformers takes from that field (up to separators and a "_text"
    suffix: qwen2moe -> qwen2_moe, gemma3 -> gemma3_text). A llama file's is not judged:
    transformers loads Mistral models from those too."""
    path = Path(spec)
    if not is_gguf(path) or not path.is_file():
        return
    theirs = gguf_architecture(path)
    if reference.gguf_source is not None:
        ours = gguf_architecture(reference.gguf_source)
        differ = ours != theirs
    else:
        ours = reference.model.config.model_type

        def key(name: str) -> str:
            return re.sub(r"[^a-z0-9]", "", name.lower()).removesuffix("text")

        differ = theirs != "llama" and key(ours) != key(theirs)
    if theirs and ours and differ:
        raise UsageError(f"--quantized {spec} does not pair with {reference.name}: it has "
                         f"architecture {theirs}, the model's is {ours}")
    tensors = gguf_tensors(path)
    embedding = tensors.get("token_embd.weight")  # llama.cpp's names, in every file
    shape = list(reference.model.get_input_embeddings().weight.shape)
    if embedding and embedding["shape"] != shape:
        raise UsageError(f"--quantized {spec} does not pair with {reference.name}: its token "
                         f"embedding has shape {tuple(embedding['shape'])} (vocabulary, "
                         f"width), the model's {tuple(shape)}")
    blocks = {int(found[1]) for name in tensors if (found := re.match(r"blk\.(\d+)\.", name))}
    layers = getattr(reference.model.config, "num_hidden_layers", None)
    if blocks and layers and max(blocks) + 1 != layers:
        raise UsageError(f"--quantized {spec} does not pair with {reference.name}: it has "
                         f"{max(blocks) + 1} layers (blk.0 to blk.{max(blocks)}), the model's "
                         f"{layers}")


def load_artifact(spec: str, scheme: QuantScheme, reference: LoadedModel) -> Artifact:
    """Read the artifact `spec` and map it onto `reference`'s parameters by name, as the
    quantized tensors of `scheme` (`artifact:<label>` or `llama.cpp:<TYPE>`).

    Raises UsageError (one line, naming the first mismatch) when its architecture, a tensor's
    presence or shape, or its tokenizer vocabulary differs from the FP model's, when it stores
    a parameter in an integer type, or when its weights are too far from the model's to be
    their quantization (`_unlike`), and QuantfairError when it cannot be read. The converted
    copy of a GGUF file refused (4 bytes per parameter of the cache) is removed if this call
    made it (one made before, e.g. of the file loaded as a model, stays)."""
    _same_header(spec, reference)  # before a whole file is dequantized for nothing
    path = Path(spec)
    sha256 = file_sha256(path) if is_gguf(path) and path.is_file() else None
    made = sha256 is not None and not has_gguf_checkpoint(sha256)
    try:
        model, tokenizer, source, type_mix, dtypes, unread = _read(spec, sha256)
        tensors = {name: param.detach() for name, param in model.named_parameters()}
        refusal = _refusal(spec, reference, model, tokenizer, dtypes, tensors, unread)
        if refusal:
            raise UsageError(refusal)
    except QuantfairError:
        if made:  # the copy converted for it is of no further use
            remove_gguf_checkpoint(sha256)
            # after "converting ... (later runs load that copy)"
            notice(f"quantfair: {path.name} is refused, so its converted copy is removed")
        raise
    fp_params = dict(reference.model.named_parameters())
    unquantized = [name for name, tensor in tensors.items()
                   if torch.equal(tensor, fp_params[name].detach().to(tensor.device))]
    return Artifact(scheme, source, weights_hash(model), type_mix,
                    unquantized, tensors, _stored_bits(spec, reference, dtypes), sha256,
                    config_differences(model.config, reference.model.config))


# Settings of a model's config that change what it computes from the same tensors.
COMPUTING = re.compile(r"eps|act|rope|theta|scaling|head|softcap|scalar|window|rotary")


def config_differences(artifact, model) -> list[str]:
    """`name (artifact's, the model's)` for each setting of the two transformers configs
    that changes what the model computes (`COMPUTING`: norm epsilons, activations, RoPE,
    attention heads, soft caps) and differs. An audit maps the artifact's tensors onto the
    model and computes with the model's config: a file shipped with another config runs
    otherwise (said, not refused: the tensors are what quantization changed)."""
    ours, theirs = model.to_dict(), artifact.to_dict()
    return [f"{key} ({theirs[key]!r}, the model's {ours[key]!r})" for key in sorted(ours)
            if key in theirs and COMPUTING.search(key) and theirs[key] != ours[key]]


def _refusal(spec: str, reference: LoadedModel, model, tokenizer, dtypes: dict[str, str],
             tensors: dict[str, torch.Tensor], unread: list[str]) -> str | None:
    """Why the artifact read from `spec` cannot be audited against `reference` (`load_artifact`),
    or None. `unread`: the file's tensors that loading did not read (a format's scales,
    another model's layer): what would be audited is not the file."""
    mismatch = _first_mismatch(reference, model, tokenizer) or (
        unread and f"tensor {unread[0]} that the model does not have")
    if mismatch:
        return f"--quantized {spec} does not pair with {reference.name}: it has {mismatch}"
    integer = _integer_parameter(dtypes, dict(reference.model.named_parameters()))
    if integer:
        return (f"--quantized {spec}: tensor {integer} is stored in an integer type; packed "
                "checkpoints (GPTQ, AWQ, bitsandbytes) are not read: save a dequantized copy in "
                "a float type")
    if name := non_finite_parameter(model):
        return f"--quantized {spec}: tensor {name} holds NaN or infinite values (a damaged file?)"
    unlike = _unlike(reference, tensors)
    if unlike:
        return f"--quantized {spec} does not pair with {reference.name}: it has {unlike}"
    return None
