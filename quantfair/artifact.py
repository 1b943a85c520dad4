"""Quantized artifacts: a second file of the same model (a GGUF of any type transformers
dequantizes, a safetensors directory, a cached Hugging Face id) whose tensors are the quantized
side of an audit, mapped onto the FP model's parameters by name."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from quantfair.errors import QuantfairError, UsageError
from quantfair.models import LoadedModel, gguf_type_mix
from quantfair.schemes import QuantScheme
from quantfair.taxonomy import family_of


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

    def provenance(self) -> dict:
        """The report's `artifact` block."""
        return {"label": self.scheme.artifact, "scheme": self.scheme.name,
                "source": self.source, "weight_hash": self.weight_hash,
                "type_mix": self.type_mix, "unquantized": self.unquantized}


def _read(spec: str):
    """(model, tokenizer, source, type mix) of `spec`; raises QuantfairError when the files
    are missing or leave model weights uninitialised."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(spec)
    kwargs: dict = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"--quantized {spec}: no such GGUF file")
        location, kwargs["gguf_file"] = str(path.parent), path.name
        type_mix = gguf_type_mix(path)
    elif path.is_dir():
        location, type_mix = str(path), _safetensors_type_mix(path)
    else:
        location, kwargs["local_files_only"] = spec, True
        type_mix = {}
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch.float32, output_loading_info=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except OSError as error:
        raise QuantfairError(f"--quantized {spec}: cannot load it ({error})") from None
    if info.get("missing_keys"):
        first = sorted(info["missing_keys"])[0]
        raise QuantfairError(f"--quantized {spec}: the artifact has no tensor for {first}")
    source = str(path.resolve()) if path.exists() else f"Hugging Face cache: {spec}"
    return model, tokenizer, source, type_mix


def _safetensors_type_mix(folder: Path) -> dict[str, int]:
    from safetensors import safe_open

    mix: Counter[str] = Counter()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            mix.update(handle.get_slice(key).get_dtype() for key in handle.keys())  # noqa: SIM118 (no __iter__)
    return dict(mix)


def _first_mismatch(reference: LoadedModel, model: torch.nn.Module, tokenizer) -> str | None:
    """What first differs between the FP model and the artifact, or None."""
    ours, theirs = reference.model.config.model_type, model.config.model_type
    if family_of(model) != reference.family or ours != theirs:
        return f"architecture {theirs}, the model's is {ours}"
    fp_params = dict(reference.model.named_parameters())
    params = dict(model.named_parameters())
    for name, param in fp_params.items():
        if name not in params:
            return f"no tensor {name}"
        if params[name].shape != param.shape:
            return (f"tensor {name} has shape {tuple(params[name].shape)}, the model's "
                    f"{tuple(param.shape)}")
    extra = sorted(set(params) - set(fp_params))
    if extra:
        return f"tensor {extra[0]} that the model does not have"
    vocab, fp_vocab = tokenizer.get_vocab(), reference.tokenizer.get_vocab()
    if vocab != fp_vocab:
        differing = sorted(set(vocab.items()) ^ set(fp_vocab.items()))[0]
        return (f"a different tokenizer vocabulary ({len(vocab):,} vs {len(fp_vocab):,} tokens; "
                f"first difference: {differing[0]!r} -> {differing[1]})")
    return None


def load_artifact(spec: str, label: str, reference: LoadedModel) -> Artifact:
    """Read the artifact `spec` and map it onto `reference`'s parameters by name.

    Raises UsageError (one line, naming the first mismatch) when its architecture, a tensor's
    presence or shape, or its tokenizer vocabulary differs from the FP model's."""
    model, tokenizer, source, type_mix = _read(spec)
    mismatch = _first_mismatch(reference, model, tokenizer)
    if mismatch:
        raise UsageError(f"--quantized {spec} does not pair with {reference.name}: it has "
                         f"{mismatch}")
    device = reference.device
    digest = hashlib.sha256()
    tensors, unquantized = {}, []
    fp_params = dict(reference.model.named_parameters())
    for name, param in model.named_parameters():
        tensor = param.detach().to(device)
        digest.update(name.encode())
        digest.update(tensor.cpu().contiguous().view(torch.uint8).numpy().data)
        if torch.equal(tensor, fp_params[name].detach()):
            unquantized.append(name)
        tensors[name] = tensor
    return Artifact(QuantScheme(artifact=label), source, digest.hexdigest(), type_mix,
                    unquantized, tensors)
