"""GGUF block formats as schemes: quantfair's tensors equal those of a GGUF file the gguf package
writes here and transformers loads back (an independent path), bit for bit."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM

from quantfair.errors import UsageError
from quantfair.models import load_model
from quantfair.quantize import WeightBank, gguf_quantize
from quantfair.schemes import QuantScheme

ROUND_TRIP_TYPES = ("Q4_0", "Q5_0", "Q5_1", "Q8_0")
BYTE_TOKENS = sorted(pre_tokenizers.ByteLevel.alphabet())  # the tiny models' byte vocabulary


def _write_gpt2(model: torch.nn.Module, path: Path, qtype: str, embedding: str = "Q8_0",
                scores: bool = True, leave_out: str = "") -> None:
    """A GPT-2 GGUF the way llama.cpp lays it out, typed by hand from the documented policy:
    matrices (out, in) in `qtype`, token embedding in `embedding`, vectors and positions F32;
    its tokenizer has no merges (and, without `scores`, no scores either). Parameter
    `leave_out` is not written."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(BYTE_TOKENS + [f"<t{i}>" for i in range(256, config.vocab_size)])
    writer.add_token_merges([])
    if scores:
        writer.add_token_scores([0.0] * config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, config.n_layer)
    for name, param in model.named_parameters():
        if name == leave_out:
            continue
        base, suffix = name.rsplit(".", 1)
        array = param.detach().numpy()
        if name.endswith("wpe.weight") or array.ndim == 1:
            kind = GGMLQuantizationType.F32
        elif name.endswith("wte.weight"):
            kind = GGMLQuantizationType[embedding]
        else:
            kind = GGMLQuantizationType[qtype]
            array = array.T.copy()  # Conv1D stores (in, out); GGUF rows run along the input
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", gguf.quants.quantize(array, kind),
                          raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_requantized(source: Path, path: Path, qtype: str) -> None:
    """Copy a GGUF's metadata and re-quantize its tensors (dequantized in their GGUF layout)
    by the documented policy: token embedding Q8_0, vectors F32, every other matrix `qtype`."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if values.ndim == 1:
            kind = GGMLQuantizationType.F32
        elif tensor.name == "token_embd.weight":
            kind = GGMLQuantizationType.Q8_0
        else:
            kind = GGMLQuantizationType[qtype]
        writer.add_tensor(tensor.name, gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _assert_bank_matches(model: torch.nn.Module, loaded_back: torch.nn.Module,
                         scheme: QuantScheme) -> None:
    bank = WeightBank(model)
    quantized = bank.quantized(scheme)
    reference = dict(loaded_back.named_parameters())
    assert set(reference) == set(bank.params)
    changed = 0
    for name in bank.params:
        ours = quantized.get(name, bank.fp[name])
        assert torch.equal(ours, reference[name].detach()), name
        changed += not torch.equal(ours, bank.fp[name])
    assert changed > len(bank.params) // 4  # the matrices really were quantized


@pytest.mark.parametrize("qtype", ROUND_TRIP_TYPES)
def test_gguf_scheme_equals_a_gguf_file_on_conv1d_gpt2(tmp_path, qtype):
    model = load_model("tiny-gpt2").model
    path = tmp_path / f"tiny-{qtype}.gguf"
    _write_gpt2(model, path, qtype)
    # transformers maps gpt2.context_length to no GPT-2 setting: the shapes come from our config
    loaded_back = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, config=model.config, dtype=torch.float32)
    _assert_bank_matches(model, loaded_back, QuantScheme.parse(f"gguf:{qtype}"))


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ROUND_TRIP_TYPES)
def test_gguf_scheme_equals_a_gguf_file_on_the_embedded_model(tmp_path, qtype):
    from quantfair.models import _smollm2_gguf

    loaded = load_model("smollm2-135m", device="cpu")
    path = tmp_path / f"smollm2-{qtype}.gguf"
    _write_requantized(_smollm2_gguf(), path, qtype)
    loaded_back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                       dtype=torch.float32)
    _assert_bank_matches(loaded.model, loaded_back, QuantScheme.parse(f"gguf:{qtype}"))


def test_type_mix_is_parsed_once_per_file_version(tmp_path, monkeypatch):
    from quantfair.models import gguf_type_mix

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    model = load_model("tiny-gpt2").model
    path = tmp_path / "tiny.gguf"
    _write_gpt2(model, path, "Q4_0")
    first = gguf_type_mix(path)
    assert first["Q4_0"] == 2 * model.config.n_layer * 2  # attention and MLP: two each
    monkeypatch.setattr(gguf, "GGUFReader", None)  # a second read must not parse
    assert gguf_type_mix(path) == first
    monkeypatch.undo()
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    _write_gpt2(model, path, "Q8_0")  # the same path, rewritten: never the stale answer
    assert "Q4_0" not in gguf_type_mix(path)


def _gpt2_pair(tmp_path: Path, qtype: str, **write) -> tuple[torch.nn.Module, Path, Path]:
    """A tiny GPT-2 (1,024 positions, as transformers reads a GPT-2 GGUF), its F32 GGUF and a
    `qtype` GGUF of the same weights."""
    from quantfair.models import _from_config, _tiny_config

    config = _tiny_config("gpt2")
    config.n_positions = 1024
    model = _from_config(config)
    source, artifact = tmp_path / "f32.gguf", tmp_path / "quantized.gguf"
    _write_gpt2(model, source, "F32", embedding="F32")
    _write_gpt2(model, artifact, qtype, **write)
    return model, source, artifact


def _artifact_tensors(source: Path, artifact: Path) -> dict[str, torch.Tensor]:
    from quantfair.config import RunConfig
    from quantfair.session import AuditSession

    settings = {"model": str(source), "quantized": str(artifact), "languages": "en",
                "units": "1"}
    session = AuditSession(RunConfig.build(settings.get), announce=lambda _: None)
    return {n: t.clone() for n, t in session.bank.quantized(session.config.scheme).items()}


def test_gguf_files_are_parsed_once_and_a_rewritten_file_is_read_again(tmp_path,
                                                                        monkeypatch):
    """transformers parses a GGUF's metadata in Python on every load (a minute for Gemma 3's
    vocabulary): the model and the artifact are read from dequantized copies after the first
    run, keyed by the files' bytes."""
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    model, source, artifact = _gpt2_pair(tmp_path, "Q4_0")
    first = _artifact_tensors(source, artifact)
    with monkeypatch.context() as patched:
        patched.setattr(gguf, "GGUFReader", None)  # a second run must not parse either file
        assert all(torch.equal(t, first[n]) for n, t in _artifact_tensors(source, artifact).items())
    _write_gpt2(model, artifact, "Q8_0")  # rewritten in place: never the older copy
    rewritten = _artifact_tensors(source, artifact)
    assert any(not torch.equal(t, first[n]) for n, t in rewritten.items())


def test_a_gguf_model_is_said_dequantized_only_where_its_file_is_quantized(tmp_path,
                                                                           monkeypatch):
    from quantfair.models import load_model

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    _, source, artifact = _gpt2_pair(tmp_path, "Q4_0")
    assert load_model(str(source)).weights_note == "read from f32.gguf (F32: not quantized)"
    assert load_model(str(artifact)).weights_note == "dequantized from quantized.gguf"


def test_gguf_files_named_in_upper_case_are_read_as_gguf(tmp_path, monkeypatch):
    """`MODEL.GGUF` is a GGUF file as much as `model.gguf` is, as a model and as an artifact."""
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    _, source, artifact = _gpt2_pair(tmp_path, "Q4_0")
    lower = _artifact_tensors(source, artifact)
    upper = source.rename(tmp_path / "F32.GGUF"), artifact.rename(tmp_path / "QUANTIZED.Gguf")
    assert all(torch.equal(t, lower[n]) for n, t in _artifact_tensors(*upper).items())


def test_a_gguf_lacking_a_tensor_is_named(tmp_path, monkeypatch):
    """Loaded without it, transformers leaves the parameter at random initial values."""
    from quantfair.errors import QuantfairError

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    _, source, artifact = _gpt2_pair(tmp_path, "Q4_0", leave_out="transformer.h.1.mlp.c_fc.weight")
    with pytest.raises(QuantfairError, match=r"quantized\.gguf: the GGUF has no tensor for "
                                             r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        _artifact_tensors(source, artifact)


def test_a_gguf_of_another_size_is_refused_from_its_header(tmp_path, monkeypatch):
    """Another model's file of the same architecture was converted whole (a 135M model took
    24 s) before its first tensor was found to differ: its header tells, naming the token
    embedding's shape (its count of elements read alike for a wider embedding and a larger
    vocabulary)."""
    from quantfair.errors import UsageError
    from quantfair.models import _from_config, _tiny_config

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    _, source, _ = _gpt2_pair(tmp_path, "Q4_0")
    config = _tiny_config("gpt2")
    config.n_positions, config.n_embd = 1024, 2 * config.n_embd
    wider = tmp_path / "wider.gguf"
    _write_gpt2(_from_config(config), wider, "Q4_0")
    with pytest.raises(UsageError, match=(
            rf"wider\.gguf does not pair with f32: its token embedding has shape "
            rf"\({config.vocab_size}, {config.n_embd}\) \(vocabulary, width\), the model's "
            rf"\({config.vocab_size}, {config.n_embd // 2}\)$")):
        _artifact_tensors(source, wider)
    config = _tiny_config("gpt2")
    config.n_positions, config.n_layer = 1024, config.n_layer + 1
    deeper = tmp_path / "deeper.gguf"
    _write_gpt2(_from_config(config), deeper, "Q4_0")
    with pytest.raises(UsageError, match=(
            rf"deeper\.gguf does not pair with f32: it has {config.n_layer} layers \(blk\.0 to "
            rf"blk\.{config.n_layer - 1}\), the model's {config.n_layer - 1}$")):
        _artifact_tensors(source, deeper)
    converted = list((tmp_path / "cache" / "gguf-checkpoints").glob("[!.]*"))  # not locks
    assert len(converted) == 1  # the model's own file; the refused one never converted


def test_a_gguf_tokenizer_lacking_a_field_transformers_needs_is_named(tmp_path, capsys):
    """transformers builds a merges-less GGUF tokenizer from its scores: without them its
    KeyError was reported as an unexpected error."""
    from quantfair.cli import main

    path = tmp_path / "tiny.gguf"
    _write_gpt2(load_model("tiny-gpt2").model, path, "Q8_0", scores=False)
    assert main(["measure", str(path), "--languages", "en,de", "--units", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"quantfair: error: {path}: transformers cannot build its tokenizer: "
                    "the GGUF has no tokenizer.ggml.scores")
    # as an artifact (dequantized once to a checkpoint, tokenizer first): the same line
    assert main(["measure", "tiny-gpt2", "--quantized", str(path), "--units", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == last


def test_blocks_run_along_the_input_dimension_of_conv1d():
    weight = torch.randn(64, 96)  # Conv1D (in=64, out=96)
    expected = gguf_quantize(weight.t().contiguous(), "Q4_0").t()
    assert torch.equal(gguf_quantize(weight, "Q4_0", transposed=True), expected)
    assert not torch.equal(gguf_quantize(weight, "Q4_0"), expected)


def test_blocks_of_32_are_quantized_independently():
    row = torch.cat([torch.linspace(-1, 1, 32), torch.linspace(-100, 100, 32)]).reshape(1, 64)
    out = gguf_quantize(row, "Q8_0")
    assert torch.equal(out[:, :32], gguf_quantize(row[:, :32].contiguous(), "Q8_0"))
    assert torch.equal(out[:, 32:], gguf_quantize(row[:, 32:].contiguous(), "Q8_0"))
    # 8-bit codes with an fp16 scale per block: the error is within half a step of that block
    assert (out[:, :32] - row[:, :32]).abs().max() <= 0.5 / 127 * 1.01
    assert (out[:, 32:] - row[:, 32:]).abs().max() <= 50 / 127 * 1.01


def test_tensor_policy_on_gpt2():
    bank = WeightBank(load_model("tiny-gpt2").model)
    from quantfair.quantize import gguf_tensor_type

    scheme = QuantScheme.parse("gguf:Q5_1-embed-F16")
    types = {name: gguf_tensor_type(part, scheme) for name, part in bank.parts.items()}
    assert types["transformer.wte.weight"] == "F16"
    assert types["transformer.wpe.weight"] == "F32"
    assert types["transformer.h.0.ln_1.weight"] == "F32"
    assert types["transformer.h.0.attn.c_attn.bias"] == "F32"
    assert types["transformer.h.0.attn.c_attn.weight"] == "Q5_1"
    assert types["transformer.h.3.mlp.c_proj.weight"] == "Q5_1"


def test_rows_not_a_multiple_of_32_fall_back_to_f16():
    from quantfair.quantize import gguf_tensor_type
    from quantfair.taxonomy import Component

    odd = Component("model.layers.0.mlp.up_proj.weight", 0, "mlp", "up", "weight", 40 * 48,
                    (40, 48))
    conv = Component("transformer.h.0.mlp.c_fc.weight", 0, "mlp", "fc_in", "weight", 48 * 64,
                     (48, 64), transposed=True)
    scheme = QuantScheme.parse("gguf:Q4_0")
    assert gguf_tensor_type(odd, scheme) == "F16"
    assert gguf_tensor_type(conv, scheme) == "F16"  # input dimension 48 (Conv1D rows)


@pytest.mark.parametrize("text", ["gguf:Q4_0", "gguf:Q8_0-embed-F32", "gguf:q5_1-embed-q4_0"])
def test_gguf_scheme_names_round_trip(text):
    scheme = QuantScheme.parse(text)
    assert QuantScheme.parse(scheme.name) == scheme
    assert scheme.name.startswith("gguf:")


@pytest.mark.parametrize("text", ["gguf:Q6_K", "gguf:Q4_K_M", "gguf:Q4_0-embed-Q6_K"])
def test_formats_the_package_cannot_produce_are_usage_errors(text):
    with pytest.raises(UsageError, match="Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"):
        QuantScheme.parse(text)


def test_gguf_quantize_is_the_package_reference():
    values = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    kind = GGMLQuantizationType.Q5_0
    expected = gguf.quants.dequantize(gguf.quants.quantize(values, kind), kind)
    assert np.array_equal(gguf_quantize(torch.from_numpy(values), "Q5_0").numpy(), expected)


def test_requantizing_to_the_source_type_or_across_minimum_offset_grids_warns(tiny_models):
    loaded = tiny_models["tiny-llama"]
    loaded.gguf_types = {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    try:
        assert "almost no" in loaded.requantization_warning(QuantScheme.parse("gguf:Q4_1"))
        assert "systematic" in loaded.requantization_warning(QuantScheme.parse("gguf:Q5_1"))
        for other in ("gguf:Q4_0", "gguf:Q5_0", "gguf:Q8_0", "int4"):
            assert loaded.requantization_warning(QuantScheme.parse(other)) == "", other
    finally:
        loaded.gguf_types = {}


def _outward_slope(weights: torch.Tensor, kind: str) -> float:
    """Least-squares slope of the quantization error on each weight's offset from the centre
    of its block of 32 (> 0: the weights grow)."""
    blocks = weights.reshape(-1, 32)
    error = (gguf_quantize(weights, kind) - weights).reshape(-1, 32)
    offset = blocks - (blocks.amax(1, keepdim=True) + blocks.amin(1, keepdim=True)) / 2
    return float((error * offset).sum() / (offset * offset).sum())


def test_q5_1_of_weights_dequantized_from_q4_1_grows_them_as_its_warning_says():
    """The premise of the warning above: Q4_1's levels round outwards onto Q5_1's in every
    block, where original weights and the other formats show no such bias."""
    weights = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 256))
                               .astype(np.float32))
    from_q4_1 = gguf_quantize(weights, "Q4_1")
    assert _outward_slope(from_q4_1, "Q5_1") > 0.01
    assert abs(_outward_slope(weights, "Q5_1")) < 0.002
    for kind in ("Q4_0", "Q5_0", "Q8_0"):
        assert abs(_outward_slope(from_q4_1, kind)) < 0.005, kind


def test_embedding_type_option_builds_the_scheme():
    from quantfair.config import RunConfig

    settings = {"model": "tiny-gpt2", "quant": "gguf:Q4_0", "embedding-type": "f16"}
    config = RunConfig.build(settings.get)
    assert config.scheme == QuantScheme.gguf("Q4_0", "F16")
    settings["quant"] = "gguf:q4_0-embed-F16"  # the same type, twice: no conflict
    assert RunConfig.build(settings.get).scheme == QuantScheme.gguf("Q4_0", "F16")
    settings["embedding-type"] = "Q8_0"  # the default, given: it undid -embed-F16 silently
    with pytest.raises(UsageError, match="--embedding-type Q8_0 contradicts --quant "
                                         "gguf:q4_0-embed-F16: give the embedding type once"):
        RunConfig.build(settings.get)
    settings["quant"] = "int4"
    with pytest.raises(UsageError, match="--embedding-type applies to gguf"):
        RunConfig.build(settings.get)
