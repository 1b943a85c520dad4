"""`--quant llama.cpp:TYPE`: llama.cpp's own quantizer run on an F32 GGUF of the FP model, its
output audited as a quantized artifact."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from quantfair.config import RunConfig
from quantfair.errors import UsageError
from quantfair.llamacpp import llama_quantize_binary
from quantfair.schemes import QuantScheme
from quantfair.session import AuditSession


def _config(model: str, quant: str) -> RunConfig:
    settings = {"model": model, "quant": quant, "languages": "en", "units": "1"}
    return RunConfig.build(settings.get)


@pytest.fixture
def copying_quantizer(tmp_path, monkeypatch) -> Path:
    """A stand-in llama-quantize that copies its input (F32 in, F32 out)."""
    binary = tmp_path / "bin" / "llama-quantize"
    binary.parent.mkdir()
    binary.write_text('#!/bin/sh\ncp "$1" "$2"\n')
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("QUANTFAIR_LLAMA_QUANTIZE", str(binary))
    return binary


@pytest.mark.parametrize("text", ["llama.cpp:Q4_K_M", "llama.cpp:q6_k", "LLAMA.CPP:IQ4_XS"])
def test_llama_cpp_scheme_names_round_trip(text):
    scheme = QuantScheme.parse(text)
    assert scheme.from_file and scheme.gguf_type is None
    assert QuantScheme.parse(scheme.name) == scheme
    assert scheme.name == "llama.cpp:" + text.partition(":")[2].upper()


def test_an_unknown_llama_quantize_type_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown llama-quantize type 'Q4_K_X'.*Q4_K_M"):
        QuantScheme.parse("llama.cpp:Q4_K_X")


@pytest.mark.parametrize("kind", ["Q2_K_S", "IQ2_XS"])
def test_a_type_llama_quantize_makes_only_with_an_importance_matrix_is_refused(kind):
    """llama-quantize exits 1 on it ("Please do not use ... without an importance matrix")
    after the F32 file was written for it."""
    with pytest.raises(UsageError, match=f"llama-quantize writes {kind} only with an "
                                         "importance matrix .*: use one of Q4_0, "):
        QuantScheme.parse(f"llama.cpp:{kind.lower()}")


def test_without_llama_quantize_the_run_stops_before_loading(monkeypatch, tmp_path):
    monkeypatch.delenv("QUANTFAIR_LLAMA_QUANTIZE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="quantizer, and there is no llama-quantize on PATH; "
                                         "build it"):
        _config("tiny-llama", "llama.cpp:Q4_K_M")
    monkeypatch.setenv("QUANTFAIR_LLAMA_QUANTIZE", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="quantizer, and QUANTFAIR_LLAMA_QUANTIZE=.*missing is "
                                         "not an executable file; build it"):
        _config("tiny-llama", "llama.cpp:Q4_K_M")
    plain = tmp_path / "llama-quantize"
    plain.write_text("")  # not executable
    monkeypatch.setenv("QUANTFAIR_LLAMA_QUANTIZE", str(plain))
    with pytest.raises(UsageError, match=r"not an executable file \(chmod \+x it if it is "
                                         r"llama-quantize\); build it"):
        _config("tiny-llama", "llama.cpp:Q4_K_M")


def test_a_model_without_a_source_gguf_says_how_to_make_one(copying_quantizer):
    with pytest.raises(UsageError, match="convert_hf_to_gguf.py"):
        AuditSession(_config("tiny-llama", "llama.cpp:Q4_K_M"), announce=lambda _: None)


def test_an_unreadable_quantizer_output_is_one_line_and_never_cached(copying_quantizer,
                                                                      tmp_path):
    from test_gguf import _write_gpt2

    from quantfair.errors import QuantfairError
    from quantfair.llamacpp import llama_cpp_file
    from quantfair.models import _from_config, _tiny_config, load_model

    config = _tiny_config("gpt2")
    config.n_positions = 1024  # transformers reads none from a GPT-2 GGUF
    source = tmp_path / "tiny.gguf"
    _write_gpt2(_from_config(config), source, "F32", embedding="F32")
    loaded = load_model(str(source))
    copying_quantizer.write_text('#!/bin/sh\nhead -c 100000 "$1" > "$2"\n')  # a full disk
    folder = tmp_path / "quantized"
    for _ in range(2):  # the second time too: nothing was kept
        with pytest.raises(QuantfairError, match=r"llama-quantize Q4_K_M exited 0 but wrote an "
                                                 r"unreadable GGUF, not kept: .*truncated"):
            llama_cpp_file(loaded, QuantScheme.parse("llama.cpp:Q4_K_M"), folder, print)
    assert not list(folder.glob("*.gguf"))


def test_a_rebuilt_quantizer_of_the_same_size_and_time_makes_its_own_file(
        copying_quantizer, tmp_path):
    """The file llama-quantize made is kept per binary: another build at the same path, of
    the same size and modification time (`cp -p`, `rsync -a`), must not reuse it."""
    from test_gguf import _write_gpt2

    from quantfair.llamacpp import llama_cpp_file
    from quantfair.models import _from_config, _tiny_config, load_model

    config = _tiny_config("gpt2")
    config.n_positions = 1024
    source = tmp_path / "tiny.gguf"
    _write_gpt2(_from_config(config), source, "F32", embedding="F32")
    loaded = load_model(str(source))
    scheme, folder = QuantScheme.parse("llama.cpp:Q8_0"), tmp_path / "quantized"
    made = []
    for build in ("a", "b"):
        copying_quantizer.write_text(f'#!/bin/sh\ncp "$1" "$2"\ntouch {tmp_path}/ran-{build}\n')
        os.utime(copying_quantizer, ns=(0, 10**18))  # the same modification time
        made.append(llama_cpp_file(loaded, scheme, folder, print))
        assert (tmp_path / f"ran-{build}").exists()  # this build ran, nothing was reused
    assert made[0] != made[1] and all(path.is_file() for path in made)


@pytest.mark.slow
def test_a_failing_quantizer_is_one_line(copying_quantizer, monkeypatch):
    from quantfair.errors import QuantfairError

    copying_quantizer.write_text('#!/bin/sh\necho "main: unsupported model" >&2\nexit 1\n')
    with pytest.raises(QuantfairError, match=r"llama-quantize Q4_K_M failed \(exit 1\): main: "
                                             "unsupported model"):
        AuditSession(_config("smollm2-135m", "llama.cpp:Q4_K_M"), announce=lambda _: None)


@pytest.mark.slow
def test_the_quantizers_f32_input_is_the_fp_reference(copying_quantizer):
    """With a quantizer that copies its F32 input, the artifact is the FP model itself: every
    tensor unquantized and bitwise equal, so equal NLL (the F32 export loses nothing)."""
    session = AuditSession(_config("smollm2-135m", "llama.cpp:Q8_0"), announce=lambda _: None)
    assert session.artifact.type_mix.keys() == {"F32"}
    assert len(session.artifact.unquantized) == len(session.bank.params)
    artifact = session.bank.quantized(session.config.scheme)
    assert artifact.keys() == session.bank.fp.keys()
    assert all(torch.equal(artifact[name], session.bank.fp[name]) for name in artifact)
    measured = session.measure("none")
    # Equal up to float32 summation order, which two passes over the same values at other
    # addresses need not repeat bit for bit (seen once: 1.6e-7 relative); gguf:Q8_0 moves it 2.5e-3.
    np.testing.assert_allclose(measured.nll_q, measured.nll_fp, rtol=1e-6, atol=0)


def _has_llama_quantize() -> bool:
    try:
        return llama_quantize_binary() is not None
    except UsageError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _has_llama_quantize(),
                    reason="no llama-quantize (PATH or QUANTFAIR_LLAMA_QUANTIZE)")
def test_a_real_k_quant_file_is_audited_as_a_pair():
    session = AuditSession(_config("smollm2-135m", "llama.cpp:Q4_K_M"), announce=lambda _: None)
    assert {"Q4_K", "Q6_K"} <= session.artifact.type_mix.keys()
    scheme = session.config.scheme
    q4k = [n for n in session.bank.params if session.bank.bits(n, scheme) == 4.5]
    assert q4k, "no tensor stored in Q4_K (4.5 bits per weight)"
    measured = session.measure("none")
    assert (measured.nll_q > measured.nll_fp).all()
    assert session.artifact.provenance()["label"] == "llama.cpp:Q4_K_M"
