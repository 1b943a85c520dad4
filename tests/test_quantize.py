import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.pytorch_utils import Conv1D

from quantfair.errors import UsageError
from quantfair.quantize import QuantScheme, fake_quantize

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def matrices(draw):
    rows = draw(st.integers(1, 6))
    cols = draw(st.integers(1, 20))
    values = draw(st.lists(finite, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols)


@st.composite
def schemes(draw, symmetric=None):
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    return QuantScheme(
        bits=draw(st.integers(2, 8)),
        granularity=granularity,
        group_size=draw(st.integers(1, 8)) if granularity == "group" else 0,
        symmetric=draw(st.booleans()) if symmetric is None else symmetric,
    )


def _groups(x: torch.Tensor, scheme: QuantScheme) -> list[torch.Tensor]:
    if scheme.granularity == "tensor":
        return [x.flatten()]
    if scheme.granularity == "channel":
        return list(x)
    return [g for row in x for g in row.split(scheme.group_size)]


@settings(max_examples=200, deadline=None)
@given(matrices(), schemes())
def test_at_most_two_to_the_bits_levels_per_group(x, scheme):
    for group in _groups(fake_quantize(x, scheme), scheme):
        assert group.unique().numel() <= 2**scheme.bits


@settings(max_examples=200, deadline=None)
@given(matrices(), schemes(symmetric=True))
def test_symmetric_error_is_at_most_half_a_step(x, scheme):
    q = fake_quantize(x, scheme)
    qmax = 2 ** (scheme.bits - 1) - 1
    for original, quantized in zip(_groups(x, scheme), _groups(q, scheme)):
        scale = original.abs().max() / qmax
        assert torch.all((original - quantized).abs() <= scale / 2 * (1 + 1e-5) + 1e-30)


@settings(max_examples=200, deadline=None)
@given(matrices(), schemes())
def test_quantization_is_idempotent(x, scheme):
    once = fake_quantize(x, scheme)
    twice = fake_quantize(once, scheme)
    # Equal up to the float rounding of a recomputed scale (a relative ulp or two).
    torch.testing.assert_close(twice, once, rtol=1e-6, atol=1e-30)


@settings(max_examples=200, deadline=None)
@given(matrices(), schemes())
def test_zeros_stay_zero_and_shape_dtype_are_kept(x, scheme):
    x[:, 0] = 0
    for dtype in (torch.float32, torch.float64):
        q = fake_quantize(x.to(dtype), scheme)
        assert q.shape == x.shape and q.dtype == dtype
        assert torch.all(q[:, 0] == 0)


@settings(max_examples=100, deadline=None)
@given(matrices(), schemes())
def test_conv1d_and_linear_agree_on_the_same_logical_weight(weight, scheme):
    out_features, in_features = weight.shape
    linear = torch.nn.Linear(in_features, out_features)
    conv = Conv1D(out_features, in_features)
    with torch.no_grad():
        linear.weight.copy_(weight)
        conv.weight.copy_(weight.t())
    from_linear = fake_quantize(linear.weight, scheme)
    from_conv = fake_quantize(conv.weight, scheme, transposed=True)
    assert torch.equal(from_conv.t(), from_linear)


@settings(max_examples=100, deadline=None)
@given(matrices(), schemes(), st.integers(1, 7))
def test_rounding_in_chunks_equals_rounding_at_once(x, scheme, chunk):
    """Chunks of any size, across group boundaries: the same bits as one pass."""
    import quantfair.quantize as quantize

    whole = fake_quantize(x, scheme)
    original, quantize.CHUNK = quantize.CHUNK, chunk
    try:
        assert torch.equal(fake_quantize(x, scheme), whole)
    finally:
        quantize.CHUNK = original


@settings(max_examples=100, deadline=None)
@given(matrices(), schemes(), st.booleans(), st.integers(1, 7))
def test_rounding_in_place_gives_the_same_bits(x, scheme, transposed, chunk):
    """In place or not, chunked or not, Conv1D layout or not: the same result."""
    import quantfair.quantize as quantize

    expected = fake_quantize(x, scheme, transposed)
    own = x.clone()
    original, quantize.CHUNK = quantize.CHUNK, chunk
    try:
        result = fake_quantize(own, scheme, transposed, inplace=True)
    finally:
        quantize.CHUNK = original
    assert torch.equal(result, expected)


def test_rounding_in_place_reuses_the_storage_of_a_large_tensor():
    x = torch.randn(64, 256)
    result = fake_quantize(x, QuantScheme.parse("int4-g128"), inplace=True)
    assert result.data_ptr() == x.data_ptr()


def test_group_padding_quantizes_the_tail_instead_of_skipping_it():
    x = torch.linspace(-1, 1, 10).reshape(1, 10)
    q = fake_quantize(x, QuantScheme(bits=2, granularity="group", group_size=4))
    assert not torch.equal(q[:, 8:], x[:, 8:])  # last, shorter group is quantized too


@pytest.mark.parametrize("symmetry", ["sym", "asym"])
def test_a_group_wider_than_the_row_is_the_row(symmetry):
    """Not a padded group of 10^12 entries per row (which cannot be allocated)."""
    x = torch.randn(4, 48)
    channel = fake_quantize(x, QuantScheme.parse(f"int4-channel-{symmetry}"))
    for group in ("g48", "g64", "g999999999999"):
        assert torch.equal(fake_quantize(x, QuantScheme.parse(f"int4-{group}-{symmetry}")),
                           channel)


def test_a_group_size_is_read_whatever_its_leading_zeros():
    assert QuantScheme.parse("int4-g" + "0" * 20 + "128").group_size == 128


@pytest.mark.parametrize("text", ["int0", "int9", "int4-g0", "fp4", "int4-channels"])
def test_bad_schemes_are_usage_errors(text):
    with pytest.raises(UsageError):
        QuantScheme.parse(text)


@pytest.mark.parametrize(("text", "example"), [
    ("gguf:Q4_K", "llama.cpp:Q4_K_M"), ("gguf:Q3", "llama.cpp:Q3_K_M"),
    ("gguf:Q6_K", "llama.cpp:Q6_K"), ("gguf:F16", None), ("gguf:BF16", None), ("gguf:", None)])
def test_a_type_only_llama_quantize_makes_points_to_its_scheme(text, example):
    """F16 and BF16 quantize nothing, and an empty type is no prefix of every type."""
    with pytest.raises(UsageError) as error:
        QuantScheme.parse(text)
    if example:
        assert str(error.value).endswith(f", e.g. scheme {example}")
    else:
        assert "llama.cpp" not in str(error.value)


def test_scheme_names_round_trip():
    for text in ["int4", "int4-g128", "int8-channel", "int3-g64-asym-linear"]:
        assert QuantScheme.parse(text).name == text


@pytest.mark.parametrize("scheme", ["int4-channel", "int4-g16"])
def test_the_bank_quantizes_conv1d_along_its_logical_rows(scheme):
    """GPT-2's Conv1D stores (in, out): per-channel and grouped scales belong to output
    channels / input groups of the logical (out, in) matrix, exactly as for nn.Linear."""
    from quantfair.models import load_model
    from quantfair.quantize import WeightBank

    bank = WeightBank(load_model("tiny-gpt2").model)
    parsed = QuantScheme.parse(scheme)
    quantized = bank.quantized(parsed)
    name = "transformer.h.0.mlp.c_fc.weight"
    assert bank.parts[name].transposed
    logical = bank.fp[name].t().contiguous()
    assert torch.equal(quantized[name], fake_quantize(logical, parsed).t())


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges where this process maps the file `path` (from /proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        lines = maps.read().splitlines()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def test_the_bank_maps_the_fp_reference_and_quantized_tensors_instead_of_copying(tmp_path):
    """Lean memory: the bank's FP and quantized tensors live in memory maps of its files (no
    copy in process memory), and putting FP back after a quantized apply is bitwise exact."""
    from quantfair.models import load_model
    from quantfair.quantize import WeightBank

    model = load_model("tiny-gpt2").model
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    bank = WeightBank(model, tmp_path)
    scheme = QuantScheme.parse("int4-g16")
    quantized = bank.quantized(scheme)
    for stem, tensors in (("fp", bank.fp), (f"{scheme.name}-*", quantized)):
        (path,) = tmp_path.glob(f"{stem}.safetensors")
        ranges = _mapped_ranges(path)
        assert ranges, f"{path.name} is not memory-mapped"
        for name, tensor in tensors.items():
            begin, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
            assert any(lo <= begin and end <= hi for lo, hi in ranges), name
    bank.apply(scheme, {"transformer.h.0.mlp.c_fc.weight": True})
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, original[n])]
    assert "transformer.h.1.mlp.c_fc.weight" in changed
    bank.restore()
    for name, param in model.named_parameters():
        assert torch.equal(param, original[name]), name


def test_a_second_bank_reads_the_quantized_file_instead_of_quantizing_again(tmp_path,
                                                                            monkeypatch):
    from quantfair import quantize
    from quantfair.models import load_model

    model = load_model("tiny-gpt2").model
    scheme = QuantScheme.parse("int4-g16")
    first = quantize.WeightBank(model, tmp_path).quantized(scheme)

    def refuse(*args):
        raise AssertionError("quantized again")

    monkeypatch.setattr(quantize, "quantize_component", refuse)
    second = quantize.WeightBank(model, tmp_path).quantized(scheme)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_an_unwritable_weight_cache_keeps_the_bank_in_memory(tmp_path, capsys):
    from quantfair.models import load_model
    from quantfair.quantize import WeightBank

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = load_model("tiny-gpt2").model
    bank = WeightBank(model, blocker / "weights")
    bank.apply(QuantScheme.parse("int4-g16"))
    bank.restore()
    assert capsys.readouterr().err.count("keeping weights in memory") == 1
    assert all(torch.equal(p, bank.fp[n]) for n, p in model.named_parameters())


def test_what_a_weights_file_says_is_said_with_the_sessions_lines(tmp_path, monkeypatch,
                                                                  capsys):
    """Under pytest, a line on stderr is captured: a weights file damaged and written again
    in an audit (the FP one as the session starts, a quantized one as it measures) said
    nothing on the terminal."""
    from quantfair.config import RunConfig
    from quantfair.session import AuditSession

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    config = RunConfig(model="tiny-gpt2", scheme=QuantScheme(bits=4), languages=("en", "de"),
                       units=2)
    for attempt in range(2):
        monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / f"results-{attempt}"))
        said = []
        AuditSession(config, announce=said.append).measure("none")
        files = sorted((tmp_path / "cache" / "weights").rglob("*.safetensors"))
        assert [path.name.split("-")[0] for path in files] == ["fp.safetensors", "int4"]
        for path in files:
            path.write_bytes(path.read_bytes()[:-8])  # cut short
    assert [line for line in said if "is not as it was written" in line] == [
        f"quantfair: {path} is not as it was written (cut short, edited, of other tensors, or "
        "by an older quantfair): writing it again" for path in files]
    assert "not as it was written" not in capsys.readouterr().err


def test_a_half_precision_run_quantizes_in_float32_then_casts():
    from quantfair.config import RunConfig
    from quantfair.session import AuditSession

    config = RunConfig.build({"model": "tiny-llama", "dtype": "bfloat16", "languages": "en",
                              "units": "1"}.get)
    session = AuditSession(config, announce=lambda _: None)
    bank, scheme = session.bank, QuantScheme.parse("int4-g16")
    name = "model.layers.0.mlp.up_proj.weight"
    assert bank.params[name].dtype == torch.bfloat16
    expected = fake_quantize(bank.fp[name].float(), scheme).to(torch.bfloat16)
    assert torch.equal(bank.quantized(scheme)[name], expected)
    measured = session.measure("none", scheme)
    assert (measured.nll_q != measured.nll_fp).all()
    assert session.config.settings()["dtype"] == "bfloat16"


def test_an_unknown_dtype_is_a_usage_error():
    from quantfair.config import RunConfig

    with pytest.raises(UsageError, match="--dtype int8: use one of float32, bfloat16, float16"):
        RunConfig.build({"model": "tiny-llama", "dtype": "int8"}.get)


def test_kept_entries_are_left_out_of_their_groups_scale(tmp_path):
    """Keeping an outlier in FP under a per-tensor scale must shrink the scale of the rest
    (the entries are quantized as if the outlier were 0), not only restore the outlier."""
    from quantfair.models import load_model
    from quantfair.quantize import WeightBank

    model = load_model("tiny-llama").model
    name = "model.layers.0.mlp.up_proj.weight"
    weight = dict(model.named_parameters())[name]
    with torch.no_grad():
        weight[3, 5] = 50 * weight.abs().max()
    fp = weight.detach().clone()
    bank, scheme = WeightBank(model, tmp_path), QuantScheme.parse("int4")  # one scale
    keep = torch.zeros_like(fp, dtype=torch.bool)
    keep[3, 5] = True
    bank.apply(scheme, {name: keep})
    applied = dict(model.named_parameters())[name].detach()
    rest = fp.clone()
    rest[3, 5] = 0
    expected = fake_quantize(rest, scheme)
    expected[3, 5] = fp[3, 5]
    assert torch.equal(applied, expected)
    others = ~keep
    whole_tensor_error = (bank.quantized(scheme)[name] - fp)[others].abs().max()
    assert (applied - fp)[others].abs().max() < 0.1 * whole_tensor_error


def test_files_of_another_quantizer_version_are_removed_and_other_schemes_kept(tmp_path):
    from quantfair.models import load_model
    from quantfair.quantize import QUANTIZER_DIGEST, WeightBank

    stale = tmp_path / "int4-0123456789ab.safetensors"
    other_scheme = tmp_path / f"int4-g16-{QUANTIZER_DIGEST}.safetensors"
    for path in (stale, other_scheme):
        path.write_bytes(b"")
    stale_record = tmp_path / f".{stale.name}.written"
    stale_record.write_text("0 0")
    WeightBank(load_model("tiny-gpt2").model, tmp_path).quantized(QuantScheme.parse("int4"))
    assert not stale.exists() and not stale_record.exists() and other_scheme.exists()
    assert (tmp_path / f"int4-{QUANTIZER_DIGEST}.safetensors").exists()


def test_a_weight_file_cut_short_edited_or_of_other_tensors_is_written_again(tmp_path, capsys):
    """The weight bank's files are a cache: a damaged one is rewritten, not read as weights
    (nor a crash on reshaping its missing bytes), and so is one edited in place."""
    from quantfair.tensorfile import cached_tensors

    layout = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
              "b": torch.ones(4, dtype=torch.float16)}
    path = tmp_path / "w.safetensors"
    cached_tensors(path, layout, layout.__getitem__)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])
    again = cached_tensors(path, layout, layout.__getitem__)
    assert all(torch.equal(again[name], layout[name]) for name in layout)
    assert path.read_bytes() == whole and "not as it was written" in capsys.readouterr().err
    other = {"a": torch.zeros(3, dtype=torch.float32)}
    assert torch.equal(cached_tensors(path, other, other.__getitem__)["a"], other["a"])
    assert torch.equal(cached_tensors(path, layout, layout.__getitem__)["a"], layout["a"])
    cached_tensors(path, layout, lambda name: layout[name] + 1)  # whole: not written again
    assert path.read_bytes() == whole and capsys.readouterr().err.count("not as it was") == 2
    with open(path, "r+b") as handle:  # same length, same header, one value changed
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\xff\xff\xff\x7f")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert path.read_bytes() != whole
    cached_tensors(path, layout, layout.__getitem__)
    assert path.read_bytes() == whole and "not as it was written" in capsys.readouterr().err
