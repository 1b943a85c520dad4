"""Export a protection strategy: a GGUF file (protected tensors F32/F16, the rest in a block
format), `--tensor-type` overrides for llama.cpp's `llama-quantize`, or a
`modules_to_not_convert` list for transformers' quantizers."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch

from quantfair.errors import QuantfairError, UsageError
from quantfair.models import LoadedModel
from quantfair.quantize import Protection, gguf_tensor_type
from quantfair.schemes import QuantScheme, check_block_format
from quantfair.storage import atomic_path
from quantfair.strategy_syntax import element_terms
from quantfair.taxonomy import Component

PROTECT_TYPES = ("F32", "F16")
# transformers' model_type -> the gguf package's architecture name, where they differ
_GGUF_ARCHITECTURES = {"gemma3_text": "gemma3", "gpt_neox": "gptneox"}  # HF -> gguf names


def check_export_source(name: str, source: Path | None, output: str | Path) -> None:
    """UsageError unless model `name` was loaded from the GGUF file `source` (export
    re-quantizes that file's tensors) and `output` is another file."""
    if source is None:
        raise UsageError(f"{name} was not loaded from a GGUF file: convert it first "
                         "with llama.cpp's convert_hf_to_gguf.py MODEL_DIR --outtype f32 "
                         "--outfile model-f32.gguf (in the llama.cpp source tree, needs its "
                         "gguf-py), then export model-f32.gguf")
    if Path(output).resolve() == Path(source).resolve():
        raise UsageError(f"-o {output} is the file the model was loaded from: write another")


def whole_tensors(protection: Protection) -> list[str]:
    """The protected parameter names; raises UsageError for element masks, which no GGUF or
    transformers quantizer can store (they are simulated in audits only)."""
    masked = [name for name, keep in protection.items() if isinstance(keep, torch.Tensor)]
    if masked:
        raise UsageError(f"element-level protection ({masked[0]}, ...) cannot be exported: "
                         "GGUF and transformers keep whole tensors; use structural terms such "
                         "as L0, ln, biases, embed")
    return [name for name, keep in protection.items() if keep is True]


def expressible(resolver, strategy: str) -> tuple[list[str], list[str]]:
    """The whole tensors `strategy` keeps, and its selectors of single entries
    (`element_terms`, which no GGUF file or transformers quantizer can store), left
    unresolved: a calibrated one would compute its calibration for nothing. (parameter
    names, terms)."""
    terms, element = element_terms(strategy)
    whole = "+".join(t for t in terms if t not in element) or "none"
    return whole_tensors(resolver.resolve(whole)), element


def gguf_names(loaded: LoadedModel, parts: dict[str, Component]) -> dict[str, str]:
    """Each parameter's GGUF tensor name (`model.layers.0.self_attn.q_proj.weight` ->
    `blk.0.attn_q.weight`), from the gguf package's name map; raises UsageError when the
    package has no mapping for the architecture or a parameter."""
    import gguf

    config = loaded.model.config
    model_type = _GGUF_ARCHITECTURES.get(config.model_type, config.model_type)
    architectures = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if model_type not in architectures:
        raise UsageError(f"the gguf package knows no GGUF architecture '{model_type}' "
                         "(llama.cpp cannot run this model)")
    layers = 1 + max((c.layer for c in parts.values() if c.layer is not None), default=-1)
    name_map = gguf.get_tensor_name_map(architectures[model_type], layers)
    names = {}
    for name in parts:
        base, _, suffix = name.rpartition(".")
        # the map knows some names without the base model's prefix (BLOOM's
        # transformer.word_embeddings_layernorm)
        mapped = name_map.get_name(base) or name_map.get_name(base.partition(".")[2])
        if mapped is None:
            raise UsageError(f"the gguf package has no GGUF name for {name} ({model_type})")
        names[name] = f"{mapped}.{suffix}"
    return names


def llama_quantize_overrides(protected: list[str], parts: dict[str, Component],
                             names: dict[str, str], protect_as: str) -> list[str]:
    """`--tensor-type REGEX=TYPE` arguments (argv items: print them with `shlex.join`, or a
    shell strips the regexes' backslashes) keeping the protected matrices in `protect_as`
    (1-D tensors llama-quantize never quantizes); a layer whose matrices are all protected is
    one `blk\\.N\\..*` pattern. They need an F32/F16 input GGUF: llama-quantize refuses to
    re-quantize a quantized one."""
    matrices = [name for name in protected if parts[name].is_matrix]
    kind = protect_as.lower()
    overrides = []
    by_layer: dict[int | None, list[str]] = {}
    for name in matrices:
        by_layer.setdefault(parts[name].layer, []).append(name)
    for layer, chosen in by_layer.items():
        in_layer = [n for n, c in parts.items() if c.layer == layer and c.is_matrix]
        if layer is not None and set(chosen) == set(in_layer):
            overrides += ["--tensor-type", f"blk\\.{layer}\\..*={kind}"]
            continue
        for n in chosen:
            overrides += ["--tensor-type", f"^{re.escape(names[n])}$={kind}"]
    return overrides


def modules_to_not_convert(protected: list[str], parts: dict[str, Component]) -> list[str]:
    """Module names (without .weight/.bias) for transformers' `modules_to_not_convert` /
    `llm_int8_skip_modules`: the protected matrices' modules (quantizers touch only those)."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in protected
                              if parts[name].is_matrix))


def export_gguf(loaded: LoadedModel, parts: dict[str, Component], scheme: QuantScheme,
                protected: list[str], output: Path, protect_as: str = "F32",
                file_type=None) -> dict[str, int]:
    """Write `output`: the source GGUF's metadata and tokenizer, `general.file_type` set to
    the scheme's type (or `file_type`, a gguf.LlamaFileType), protected parameters in
    `protect_as` (those the policy keeps in F32, such as norms and biases, stay F32), every
    other tensor typed by the
    scheme's tensor policy (see `quantize.gguf_tensor_type`). Tensors are re-quantized from
    the source file, dequantized in its own layout (Q/K rows stay permuted as llama.cpp wants
    them): the FP reference is that very file, dequantized. Returns the written type mix.

    Raises UsageError without a gguf: scheme, for a `protect_as` other than F32 or F16, for
    a model not loaded from a GGUF file (make one with llama.cpp's convert_hf_to_gguf.py
    --outtype f32) or `output` that is that file, for an architecture or parameter with no
    GGUF name, or when the file lacks a parameter; QuantfairError when `output` cannot be
    written."""
    import gguf

    check_block_format(scheme)
    if protect_as not in PROTECT_TYPES:
        raise UsageError(f"--protect-as must be f32 or f16, got {protect_as.lower()}")
    check_export_source(loaded.name, loaded.gguf_source, output)
    reader = gguf.GGUFReader(loaded.gguf_source)
    by_gguf_name = {gguf_name: name for name, gguf_name in gguf_names(loaded, parts).items()}
    in_file = {tensor.name for tensor in reader.tensors}
    missing = sorted(set(by_gguf_name) - in_file)
    if missing:
        raise UsageError(f"{loaded.gguf_source.name} has no tensor {missing[0]} "
                         f"({by_gguf_name[missing[0]]})")
    try:  # (the file put in place last: an immutable file there fails only then)
        with atomic_path(Path(output)) as temporary:  # whole or not at all, even on Ctrl-C
            return _write_gguf(reader, temporary, scheme, parts, by_gguf_name, set(protected),
                               protect_as, file_type)
    except OSError as error:  # the writer's short write (a full disk) has no errno
        raise QuantfairError(f"could not write {output}: "
                             f"{error.strerror or f'{error} (is the disk full?)'}") from None


def _write_gguf(reader, output: Path, scheme: QuantScheme, parts: dict[str, Component],
                by_gguf_name: dict[str, str], keep: set[str], protect_as: str,
                file_type) -> dict[str, int]:
    import gguf

    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(output), architecture)
    # Metadata copy as in the gguf package's gguf_new_metadata.py, file type rewritten.
    for field in reader.fields.values():
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) \
                or field.name.startswith("GGUF."):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_file_type(file_type or gguf.LlamaFileType[f"MOSTLY_{scheme.gguf_type}"])
    written: Counter[str] = Counter()
    for tensor in reader.tensors:
        name = by_gguf_name.get(tensor.name)
        if name is None:  # not a parameter (e.g. rope factors): copied as it is
            kind = tensor.tensor_type
            data = tensor.data
        else:
            policy = gguf_tensor_type(parts[name], scheme)  # protection never lowers F32
            kind = gguf.GGMLQuantizationType[
                protect_as if name in keep and policy != "F32" else policy]
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            data = gguf.quants.quantize(values, kind)
        writer.add_tensor(tensor.name, data, raw_dtype=kind)
        written[kind.name] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dict(written)

