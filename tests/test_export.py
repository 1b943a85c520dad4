"""Export: a protection strategy as a GGUF file that loads back as the audited weights, and as
arguments for llama-quantize and transformers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_gguf import _write_gpt2

from quantfair.cli import main
from quantfair.config import RunConfig
from quantfair.models import _from_config, _tiny_config
from quantfair.session import AuditSession

STRATEGY = "L0+ln_f+biases"


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory) -> Path:
    """A tiny GPT-2 (Conv1D) as an all-F32 GGUF, as convert_hf_to_gguf.py --outtype f32 makes
    them (1024 positions: transformers reads no position count from a GPT-2 GGUF)."""
    config = _tiny_config("gpt2")
    config.n_positions = 1024
    path = tmp_path_factory.mktemp("source") / "tiny-f32.gguf"
    _write_gpt2(_from_config(config), path, "F32", embedding="F32")
    return path


def _session(model: str, **settings: str) -> AuditSession:
    values = {"model": model, "languages": "en", "units": "1", **settings}
    return AuditSession(RunConfig.build(values.get), announce=lambda _: None)


def _export(source: Path, output: Path, *extra: str) -> None:
    assert main(["export", str(source), "--quant", "gguf:Q5_0", "--strategy", STRATEGY,
                 "--languages", "en", "--units", "1", "-o", str(output), *extra]) == 0


def test_exported_types_follow_the_policy_and_the_strategy(f32_gguf, tmp_path, capsys):
    output = tmp_path / "out.gguf"
    _export(f32_gguf, output)
    reader = gguf.GGUFReader(output)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q5_0
    assert "warning" not in capsys.readouterr().err
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    for name, kind in types.items():
        if name.startswith("blk.0.") or name.endswith(".bias") or "norm" in name:
            expected = "F32"  # protected by L0+ln_f+biases, or 1-D
        elif name == "token_embd.weight":
            expected = "Q8_0"
        elif name == "position_embd.weight":
            expected = "F32"
        else:
            expected = "Q5_0"
        assert kind == expected, name
    assert types["blk.1.attn_qkv.weight"] == "Q5_0"
    source_fields = gguf.GGUFReader(f32_gguf).fields
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert tokens == source_fields["tokenizer.ggml.tokens"].contents()


def test_an_export_keeping_nothing_quantized_warns_that_it_is_unprotected(f32_gguf, tmp_path,
                                                                          capsys):
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "ln", "--languages",
                 "en", "--units", "1", "-o", str(tmp_path / "ln.gguf")]) == 0
    assert ("quantfair: warning: ln keeps nothing that gguf:Q5_0 quantizes: the file is the "
            "unprotected one") in capsys.readouterr().err


def test_export_reloads_as_the_audited_weights(f32_gguf, tmp_path):
    output = tmp_path / "out.gguf"
    _export(f32_gguf, output)
    audited = _session(str(f32_gguf), quant="gguf:Q5_0")
    bank = audited.bank
    bank.apply(audited.config.scheme, audited.resolver().resolve(STRATEGY))
    pair = _session(str(f32_gguf), quantized=str(output))
    loaded_back = pair.bank.quantized(pair.config.scheme)
    for name, param in bank.params.items():
        assert torch.equal(loaded_back[name], param.detach()), name
    assert any(not torch.equal(bank.fp[n], p) for n, p in bank.params.items())
    # The report names the file by the digest sha256sum prints for it.
    assert pair.artifact.provenance()["file_sha256"] == hashlib.sha256(
        output.read_bytes()).hexdigest()


def test_protect_as_f16_stores_the_protected_matrices_in_half_precision(f32_gguf, tmp_path,
                                                                       capsys):
    output = tmp_path / "out.gguf"
    _export(f32_gguf, output, "--protect-as", "F16")  # the type's name in any case
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(output).tensors}
    f16 = sum(kind == "F16" for kind in types.values())
    said = capsys.readouterr().out
    assert f"({f16} tensors in F16, norms and biases F32); tensor types F16 {f16}," in said
    assert types["blk.0.attn_qkv.weight"] == "F16"
    assert types["blk.1.attn_qkv.weight"] == "Q5_0"
    # Norms and biases are F32 unprotected: protecting them never lowers them to F16.
    assert types["blk.0.attn_qkv.bias"] == types["blk.1.attn_qkv.bias"] == "F32"
    assert types["blk.0.attn_norm.weight"] == types["blk.1.attn_norm.weight"] == "F32"


def test_emit_llama_quantize_keeps_protected_matrices(capsys):
    assert main(["export", "tiny-llama", "--strategy", "L0+L2.attn.q", "--emit",
                 "llama-quantize", "--languages", "en", "--units", "1"]) == 0
    printed = shlex.split(capsys.readouterr().out)  # as a shell reads the pasted line
    assert printed == ["--tensor-type", r"blk\.0\..*=f32",
                       "--tensor-type", r"^blk\.2\.attn_q\.weight$=f32"]


def test_emit_llama_quantize_under_a_gguf_scheme_names_the_embedding_type(capsys):
    assert main(["export", "tiny-llama", "--strategy", "L0", "--emit", "llama-quantize",
                 "--quant", "gguf:Q4_0-embed-F16", "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert shlex.split(printed.out) == [
        "--token-embedding-type", "f16", "--output-tensor-type", "f16",
        "--tensor-type", r"blk\.0\..*=f32"]
    assert "not a llama.cpp tensor type" not in printed.err
    # audited under a scheme llama.cpp has no type for: the file's numbers are not these
    assert main(["export", "tiny-llama", "--strategy", "L0", "--emit", "llama-quantize",
                 "--quant", "int4-linear", "--languages", "en", "--units", "1"]) == 0
    assert ("quantfair: int4-linear is not a llama.cpp tensor type: llama-quantize rounds the "
            "rest with its own") in capsys.readouterr().err


def test_emit_hf_refuses_a_type_for_what_it_keeps(capsys):
    assert main(["export", "tiny-llama", "--strategy", "L0", "--emit", "HF",  # in any case
                 "--protect-as", "f16", "--languages", "en", "--units", "1"]) == 2
    assert "--protect-as does not apply" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["recommended", "L0+Llast+ln_f+biases"])
def test_a_recipe_term_keeping_nothing_on_this_model_is_no_error(capsys, strategy):
    """tiny-llama has no biases: the recipe, alias or spelled out, is its layers."""
    assert main(["export", "tiny-llama", "--strategy", strategy, "--emit", "llama-quantize",
                 "--languages", "en", "--units", "1"]) == 0
    assert shlex.split(capsys.readouterr().out) == ["--tensor-type", r"blk\.0\..*=f32",
                                                    "--tensor-type", r"blk\.3\..*=f32"]


def test_every_parameter_of_an_architecture_llama_cpp_runs_has_its_own_gguf_name(tiny_models):
    """Pythia (gpt_neox, gguf's `gptneox`) and BLOOM (whose embedding norm the map knows
    without the `transformer.` prefix) failed; llama.cpp has no OPT."""
    from quantfair.errors import UsageError
    from quantfair.export import gguf_names
    from quantfair.taxonomy import components

    for name, loaded in tiny_models.items():
        parts = components(loaded.model)
        if name == "tiny-opt":
            with pytest.raises(UsageError, match="no GGUF architecture 'opt' .llama.cpp cannot"):
                gguf_names(loaded, parts)
            continue
        names = gguf_names(loaded, parts)
        assert len(set(names.values())) == len(parts), name
    bloom = gguf_names(tiny_models["tiny-bloom"], components(tiny_models["tiny-bloom"].model))
    assert bloom["transformer.word_embeddings_layernorm.weight"] == "token_embd_norm.weight"


def test_emit_hf_lists_the_protected_modules(capsys):
    assert main(["export", "tiny-llama", "--strategy", "L1.mlp+ln", "--emit", "hf",
                 "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == [f"model.layers.1.mlp.{m}_proj"
                                       for m in ("gate", "up", "down")]
    # given a list, transformers drops its default skip of lm_head: say what the audit did
    assert ("quantfair: transformers' quantizers skip the output head (lm_head) by default "
            "only where no list is given: with this list they quantize it; this audit "
            "quantized it (int4)" in printed.err)
    # tied to the token embedding, which int4-linear leaves in full precision
    assert main(["export", "tiny-gpt2", "--strategy", "L0", "--emit", "hf", "--quant",
                 "int4-linear", "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()  # listed, so that transformers keeps it as the audit did
    assert json.loads(printed.out) == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                       "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj",
                                       "lm_head"]
    assert "lm_head is listed: this audit kept the output head (int4-linear)" in printed.err
    assert main(["export", "tiny-llama", "--strategy", "head", "--emit", "hf", "--quant",
                 "int4-linear", "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == ["lm_head"] and "output head" not in printed.err
    # the head tied to a protected token embedding: kept with it, so listed with it
    for quant in ("int4", "int4-linear"):
        assert main(["export", "tiny-gpt2", "--strategy", "embed", "--emit", "hf", "--quant",
                     quant, "--languages", "en", "--units", "1"]) == 0
        printed = capsys.readouterr()
        assert json.loads(printed.out) == ["transformer.wte", "transformer.wpe", "lm_head"]
        assert ("quantfair: lm_head is listed: it is tied to the token embedding that embed "
                "keeps") in printed.err
    # an untied head is a matrix of its own, which embed does not keep
    assert main(["export", "tiny-llama", "--strategy", "embed", "--emit", "hf", "--quant",
                 "int4", "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == ["model.embed_tokens"] and "tied" not in printed.err


def test_emit_says_which_parts_of_a_recipe_it_cannot_express(capsys):
    assert main(["export", "tiny-llama", "--strategy", "L1.mlp+magnitude:1%+ln", "--emit",
                 "hf", "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == [f"model.layers.1.mlp.{m}_proj"
                                       for m in ("gate", "up", "down")]
    assert "hf cannot express magnitude:1% (single weights or columns): left out" in printed.err


def test_emit_calibrates_no_selector_it_leaves_out(capsys, tmp_path, monkeypatch):
    """Single-entry selectors are left out of (or refuse) a list by their syntax: computing
    their calibration gradients or activations first was minutes spent for nothing."""
    from quantfair.suggest import Suggestion, save

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path))  # the suggestion saved here
    common = ["--emit", "hf", "--languages", "en", "--units", "1"]
    assert main(["export", "tiny-llama", "--strategy", "L1.mlp+gradient:1%+act:1%",
                 *common]) == 0
    printed = capsys.readouterr()
    assert "cannot express gradient:1% + act:1%" in printed.err
    assert "calibration" not in printed.err
    save(_session("tiny-llama"), Suggestion("tiny-llama", "int4", 0.05, "actgap:5%", 0.05, 1.0))
    assert main(["export", "tiny-llama", "--strategy", "suggested", *common]) == 2
    printed = capsys.readouterr()
    assert "--emit hf cannot express actgap:5%" in printed.err.splitlines()[-1]
    assert printed.err.strip().endswith("search again under a gguf: scheme (quantfair suggest "
                                        "MODEL --quant gguf:Q4_0), whose candidates are whole "
                                        "tensors")  # not "give whole tensors": it gave one
    assert "calibration" not in printed.err.replace("calibration text", "")


@pytest.mark.parametrize("emit", ["hf", "llama-quantize"])
def test_emit_of_nothing_it_can_list_says_so(capsys, emit):
    common = ["--emit", emit, "--languages", "en", "--units", "1"]
    assert main(["export", "tiny-llama", "--strategy", "ln", *common]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() in ("[]", "")
    assert f"{emit} leaves what ln keeps (norms, biases) unquantized anyway" in printed.err
    assert main(["export", "tiny-llama", "--strategy", "none", *common]) == 0
    assert "none protects nothing: nothing to list" in capsys.readouterr().err
    assert main(["export", "tiny-llama", "--strategy", "magnitude:1%", *common]) == 2
    assert f"--emit {emit} cannot express magnitude:1%" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--quant", "int4", "--strategy", "L0"], "give --quant gguf:TYPE"),
    (["--quant", "gguf:Q4_0", "--strategy", "L0", "--strategy", "ln_f"],
     "export takes one --strategy; join terms with +, e.g. L0+ln_f"),
    (["--quant", "gguf:Q4_0", "--strategy", "magnitude:1%"],
     "cannot express magnitude:1%: it keeps single weights or columns"),
    (["--quant", "gguf:Q4_0", "--strategy", "L0+superweights:2"],
     "cannot express L0+superweights:2"),
])
def test_unexportable_requests_are_one_line_errors(f32_gguf, tmp_path, capsys, args, message):
    """...before the model loads."""
    assert main(["export", str(f32_gguf), *args, "--languages", "en", "--units", "1",
                 "-o", str(tmp_path / "x.gguf")]) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert printed[-1].startswith("quantfair: error:") and message in printed[-1]
    assert not any("loading" in line for line in printed), printed


def test_a_model_not_loaded_from_gguf_cannot_be_exported_and_says_so_before_loading(
        tmp_path, capsys):
    assert main(["export", "tiny-llama", "--quant", "gguf:Q4_0", "--strategy", "L0",
                 "-o", str(tmp_path / "x.gguf")]) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert printed == ["quantfair: error: tiny-llama was not loaded from a GGUF file: convert it "
                       "first with llama.cpp's convert_hf_to_gguf.py MODEL_DIR --outtype f32 "
                       "--outfile model-f32.gguf (in the llama.cpp source tree, needs its "
                       "gguf-py), then export model-f32.gguf"], printed


def test_the_source_file_is_never_overwritten(f32_gguf, tmp_path, capsys):
    copy = tmp_path / "model.gguf"
    copy.write_bytes(f32_gguf.read_bytes())
    before = copy.read_bytes()
    assert main(["export", str(copy), "--quant", "gguf:Q5_0", "--strategy", "L0",
                 "--languages", "en", "--units", "1", "-o", str(copy)]) == 2
    printed = capsys.readouterr().err
    assert "is the file the model was loaded from" in printed and "loading" not in printed
    assert copy.read_bytes() == before


def test_an_export_onto_a_symbolic_link_writes_the_file_it_names(f32_gguf, tmp_path):
    """As `cp` and llama.cpp's tools do: the link was replaced by the file, its target left
    as it was."""
    target, link = tmp_path / "releases" / "model-q5.gguf", tmp_path / "current.gguf"
    target.parent.mkdir()
    target.write_bytes(b"the previous release")
    link.symlink_to(target)
    _export(f32_gguf, link)
    assert link.is_symlink() and link.resolve() == target
    assert gguf.GGUFReader(target).tensors
    assert sorted(p.name for p in target.parent.iterdir()) == ["model-q5.gguf"]


def test_an_interrupted_export_leaves_the_old_file_and_no_other(f32_gguf, tmp_path,
                                                                 monkeypatch):
    output = tmp_path / "out.gguf"
    output.write_bytes(b"the previous export")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", interrupted)
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "L0",
                 "--languages", "en", "--units", "1", "-o", str(output)]) == 130
    assert output.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_an_export_onto_a_full_disk_is_one_line_and_exit_2(f32_gguf, tmp_path, monkeypatch,
                                                          capsys):
    """The gguf writer's short write (a full disk) is an OSError without errno: it was
    "unexpected OSError: 497664 requested and 413632 written ... please report it"."""
    output = tmp_path / "out.gguf"

    def short_write(self, *args, **kwargs):
        raise OSError("497664 requested and 413632 written")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", short_write)
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "L0",
                 "--languages", "en", "--units", "1", "-o", str(output)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"quantfair: error: could not write {output}: 497664 requested and 413632 written "
        "(is the disk full?)")
    assert list(tmp_path.iterdir()) == []


def test_a_terminated_export_leaves_the_old_file_and_no_other(f32_gguf, tmp_path, monkeypatch,
                                                               capsys):
    """`timeout` or a cancelled CI job sends SIGTERM: as Ctrl-C, the half-written file goes."""
    output = tmp_path / "out.gguf"
    output.write_bytes(b"the previous export")
    write = gguf.GGUFWriter.write_tensors_to_file

    def terminated(self, *args, **kwargs):
        write(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", terminated)
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "L0",
                 "--languages", "en", "--units", "1", "-o", str(output)]) == 128 + signal.SIGTERM
    assert "quantfair: terminated by SIGTERM" in capsys.readouterr().err
    assert output.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's handler is gone


def test_a_failed_rename_names_the_output_not_the_temporary_file(f32_gguf, tmp_path,
                                                                  monkeypatch, capsys):
    """A file in place that cannot be replaced (`chattr +i`) fails only as the new one is
    put there: said as any failed write, and the old file stays."""
    output, replace = tmp_path / "out.gguf", os.replace
    output.write_bytes(b"the previous export")

    def refuse(source, target):  # the output's rename only: caches written on the way rename too
        if Path(target) != output:
            return replace(source, target)
        raise PermissionError(1, "Operation not permitted", source, target)

    monkeypatch.setattr(os, "replace", refuse)
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "L0",
                 "--languages", "en", "--units", "1", "-o", str(output)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"quantfair: error: could not write {output}: Operation not permitted")
    assert output.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_weights_with_nan_are_one_line_wherever_the_file_is_read(f32_gguf, tmp_path, capsys):
    """A damaged file (random bytes over its blocks) dequantizes to NaN or infinities: an
    export would copy them, an audit would compare them as weights."""
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(f32_gguf.read_bytes())
    reader = gguf.GGUFReader(damaged, "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    tensor.data[0, :3] = [np.nan, np.inf, -np.inf]
    tensor.data.flush()
    del reader, tensor
    common = ["--languages", "en,de", "--units", "1"]
    for args in (["export", str(damaged), "--quant", "gguf:Q5_0", "--strategy", "L0", "-o",
                  str(tmp_path / "out.gguf")],
                 ["measure", str(damaged)]):
        assert main([*args, *common]) == 2
        assert (f"{damaged}: parameter transformer.h.1.mlp.c_fc.weight holds NaN or infinite "
                "values (a damaged file?)") in capsys.readouterr().err
    assert not (tmp_path / "out.gguf").exists()
    assert main(["measure", str(f32_gguf), "--quantized", str(damaged), *common]) == 2
    assert (f"--quantized {damaged}: tensor transformer.h.1.mlp.c_fc.weight holds NaN or "
            "infinite values") in capsys.readouterr().err


def test_large_finite_weights_are_not_taken_for_infinite_ones():
    from quantfair.models import non_finite_parameter

    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(3e38)  # finite, but their float32 sum is not
    assert non_finite_parameter(layer) is None
    with torch.no_grad():
        layer.bias[1] = float("nan")
    assert non_finite_parameter(layer) == "bias"


def test_an_export_has_the_permissions_a_new_file_gets(f32_gguf, tmp_path):
    output = tmp_path / "out.gguf"
    _export(f32_gguf, output)
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture
def suggested_l1(f32_gguf):
    """A cached `quantfair suggest` result for the GGUF under gguf:Q5_0: L1."""
    from quantfair.suggest import Suggestion, save

    session = _session(str(f32_gguf), quant="gguf:Q5_0")
    save(session, Suggestion(model="tiny", scheme="gguf:Q5_0", budget=0.05, strategy="L1",
                             overhead=0.05, score=1.0, languages=["en", "de"],
                             calibration_units=["article_30"]))


def test_the_suggested_strategy_is_named_with_its_budget_and_languages(f32_gguf, suggested_l1,
                                                                        capsys):
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "suggested",
                 "--emit", "llama-quantize", "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert ("--strategy suggested is L1, the latest suggestion for gguf:Q5_0 (budget 5%, en,de)"
            in printed.err)
    assert shlex.split(printed.out) == ["--token-embedding-type", "q8_0",
                                        "--output-tensor-type", "q8_0",
                                        "--tensor-type", r"blk\.1\..*=f32"]
    assert "warning" not in printed.err


def test_a_suggestion_its_audit_units_found_less_fair_than_none_is_warned_of_on_export(
        f32_gguf, capsys):
    """The recipe leaves for llama.cpp or transformers here: what the search's held-out check
    said against it is said again (it was printed once, by `quantfair suggest`)."""
    from quantfair.suggest import Suggestion, save

    def row(label: str, mean_vs_none: tuple[float, float] | None) -> dict:
        disparity = {"value": 2.0, "low": 1.5, "high": 2.5}
        versus = {} if mean_vs_none is None else {
            "mean_vs_none": {"value": sum(mean_vs_none) / 2, "low": mean_vs_none[0],
                             "high": mean_vs_none[1]},
            "worst_vs_none": {"value": 0.0, "low": -0.3, "high": 0.3},
            "english_vs_none": {"value": 0.0, "low": -0.01, "high": 0.01}}
        return {"label": label, "strategies": ["L1" if versus else label], "overhead": 0.05,
                "storable": True,
                "english_degradation": 0.1, "mean_disparity": disparity,
                "worst_disparity": disparity, **versus}

    session = _session(str(f32_gguf), quant="gguf:Q5_0")
    for mean_vs_none, warned in (((0.1, 0.7), True), ((-0.1, 0.7), False)):
        save(session, Suggestion(model="tiny", scheme="gguf:Q5_0", budget=0.05, strategy="L1",
                                 overhead=0.05, score=1.0, languages=["en", "de"],
                                 calibration_units=["article_30"],
                                 audit_units=[f"article_{i}" for i in range(1, 9)],
                                 comparison=[row("suggested", mean_vs_none), row("none", None)]))
        capsys.readouterr()
        assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy",
                     "suggested", "--emit", "hf", "--languages", "en", "--units", "1"]) == 0
        said = ("quantfair: warning: on the search's held-out audit units the suggestion is "
                "significantly less fair than no protection (mean disparity)")
        assert (said in capsys.readouterr().err) == warned


def test_a_protected_token_embedding_gets_one_type_in_the_recipe(f32_gguf, capsys):
    """`--token-embedding-type q8_0` beside `--tensor-type token_embd=f32` would leave the
    embedding's type to llama-quantize's order of precedence."""
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "embed.tok",
                 "--emit", "llama-quantize", "--languages", "en", "--units", "1"]) == 0
    assert shlex.split(capsys.readouterr().out) == [
        "--output-tensor-type", "q8_0", "--tensor-type", r"^token_embd\.weight$=f32"]


def test_measure_takes_the_suggested_strategy_too(f32_gguf, suggested_l1, capsys):
    assert main(["measure", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "suggested",
                 "--strategy", "L1", "--strategy", "suggested", "--languages", "en,de",
                 "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("--strategy suggested is L1") == 1
    assert printed.out.count("| L1 ") == 2  # en and de, once: the suggestion is L1
    assert "warning" not in printed.err  # one unit, not the one it was searched on


def test_measure_warns_where_it_measures_languages_the_search_did_not(f32_gguf, suggested_l1,
                                                                     capsys):
    assert main(["measure", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "suggested",
                 "--languages", "en,he,de,ar", "--units", "1"]) == 0
    assert ("quantfair: warning: the suggestion was searched without these languages of this "
            "command, so it was not fitted to them: he, ar"
            in capsys.readouterr().err)


def test_inspect_and_export_of_whole_tensors_warn_of_no_language(f32_gguf, suggested_l1, capsys):
    """Which languages a command names changes nothing of L1: no 'not fitted' warning."""
    for command in (["inspect"], ["export", "--emit", "hf"]):
        assert main([command[0], str(f32_gguf), *command[1:], "--quant", "gguf:Q5_0",
                     "--strategy", "suggested", "--languages", "en,he", "--units", "1"]) == 0
        assert "warning" not in capsys.readouterr().err


def test_a_calibrated_suggestion_measured_on_other_text_says_its_entries_may_differ(
        f32_gguf, capsys):
    """act: chooses its columns on the session's calibration text: other languages, other
    columns than the search scored."""
    from quantfair.suggest import Suggestion, save

    searched = _session(str(f32_gguf), quant="gguf:Q5_0", languages="en,de")
    save(searched, Suggestion(model="tiny", scheme="gguf:Q5_0", budget=0.05,
                              strategy="L1+act:1%", overhead=0.05, score=1.0,
                              languages=["en", "de"], calibration_units=["article_30"],
                              selector_texts=searched.selector_texts_digest()))
    warning = "warning: its act:1% chooses entries on the calibration text of the languages"
    for languages, warned in (("en,de", False), ("en,he", True)):
        assert main(["measure", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy",
                     "suggested", "--languages", languages, "--units", "1"]) == 0
        err = capsys.readouterr().err
        assert (warning in err) == warned, err
    assert "give --languages en,de --units" in err
    # a list of whole tensors leaves the entries out: which ones does not matter there
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "suggested",
                 "--emit", "hf", "--languages", "en,he", "--units", "1"]) == 0
    err = capsys.readouterr().err
    assert "hf cannot express act:1%" in err and warning not in err


def test_measure_warns_where_its_units_include_those_of_the_search(f32_gguf, suggested_l1,
                                                                   capsys):
    assert main(["measure", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "suggested",
                 "--languages", "en,de", "--units", "0"]) == 0
    assert ("quantfair: warning: the suggestion was searched on article_30, which these units "
            "include: not a held-out measurement") in capsys.readouterr().err


def test_inspect_sizes_the_suggested_strategy_and_calibration_selectors(f32_gguf, suggested_l1,
                                                                       capsys):
    assert main(["inspect", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "suggested",
                 "--strategy", "L0", "--strategy", "act:5%", "--languages", "en,de",
                 "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert "--strategy suggested is L1" in printed.err
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip()
            for line in printed.out.splitlines() if line.startswith("| ")}
    assert rows["L1"] == rows["L0"] != "0.000%"  # equal layers of the tiny model
    assert 0 < float(rows["act:5%"].rstrip("%")) <= 5


def test_a_missing_suggestion_names_the_scheme_that_has_one(f32_gguf, suggested_l1, capsys):
    assert main(["inspect", str(f32_gguf), "--quant", "gguf:Q4_0", "--strategy", "suggested",
                 "--languages", "en,de", "--units", "1"]) == 2
    assert ("no suggestion cached for tiny-f32 with gguf:Q4_0 in float32: run `quantfair "
            "suggest` first (there is one under --quant gguf:Q5_0) (a search is kept per model, "
            "scheme and --dtype)") in capsys.readouterr().err


def test_a_missing_suggestion_names_the_dtype_that_has_one(f32_gguf, tmp_path, monkeypatch,
                                                         capsys):
    """Weights loaded in another dtype hash to another results folder, so a search in float32
    is not found under bfloat16; it is named, and another model's search is not."""
    from quantfair.suggest import Suggestion, save

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path))  # not the other tests' folder
    session = _session(str(f32_gguf), quant="gguf:Q5_0")
    save(session, Suggestion(model=session.loaded.name, scheme="gguf:Q5_0", budget=0.05,
                             strategy="L1", overhead=0.05, score=1.0))
    another = tmp_path / "another-model" / "suggested-gguf:Q5_0.json"
    another.parent.mkdir()
    another.write_text('{"model": "another", "scheme": "gguf:Q5_0", "dtype": "float16"}')
    assert main(["inspect", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "suggested",
                 "--dtype", "bfloat16", "--languages", "en", "--units", "1"]) == 2
    error = capsys.readouterr().err
    assert ("in bfloat16: run `quantfair suggest` first (there is one under --dtype float32)"
            in error)
    assert "--dtype float16" not in error


def test_a_suggestion_for_an_artifact_is_named_by_its_label_not_as_a_quant(
        f32_gguf, tmp_path, monkeypatch, capsys):
    """`--quant artifact:release` is not an option a user can give: the artifact comes from
    --quantized."""
    from quantfair.suggest import Suggestion, _path, save

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path))  # not the other tests' folder
    session = _session(str(f32_gguf), quant="gguf:Q5_0")
    save(session, Suggestion(model="tiny", scheme="artifact:release", budget=0.05,
                             strategy="L1", overhead=0.05, score=1.0))
    _path(session).rename(_path(session).with_name("suggested-artifact:release-0123.json"))
    assert main(["inspect", str(f32_gguf), "--quant", "gguf:Q4_0", "--strategy", "suggested",
                 "--languages", "en,de", "--units", "1"]) == 2
    assert ("run `quantfair suggest` first (there is one under --quantized FILE "
            "--quantized-label release)") in capsys.readouterr().err
    # export writes from the FP model: it takes no --quantized, so none is named
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q4_0", "--strategy", "suggested",
                 "--emit", "hf", "--languages", "en,de", "--units", "1"]) == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert "run `quantfair suggest` first (a search is kept" in said and "--quantized" not in said
    assert main(["inspect", str(f32_gguf), "--quant", "artifact:release"]) == 2
    assert ("--quant artifact:release: an artifact's scheme comes from --quantized FILE (with "
            "--quantized-label release)") in capsys.readouterr().err
    assert main(["inspect", str(f32_gguf), "--quant", "Artifact:"]) == 2
    assert capsys.readouterr().err.endswith(
        "--quant Artifact:: an artifact's scheme comes from --quantized FILE\n")


def test_hf_models_are_told_how_to_make_an_f32_gguf(tmp_path, capsys):
    assert main(["export", "tiny-llama", "--quant", "gguf:Q4_0", "--strategy", "L0",
                 "--languages", "en", "--units", "1", "-o", str(tmp_path / "x.gguf")]) == 2
    assert "convert_hf_to_gguf.py" in capsys.readouterr().err



@pytest.mark.slow
def test_export_of_the_embedded_model_reloads_as_the_audited_weights(tmp_path):
    output = tmp_path / "smollm2-fair.gguf"
    assert main(["export", "smollm2-135m", "--quant", "gguf:Q4_0", "--strategy", "L0+ln_f",
                 "--languages", "en", "--units", "1", "--device", "cpu", "-o", str(output)]) == 0
    audited = _session("smollm2-135m", quant="gguf:Q4_0", device="cpu")
    bank = audited.bank
    bank.apply(audited.config.scheme, audited.resolver().resolve("L0+ln_f"))
    pair = _session("smollm2-135m", quantized=str(output), device="cpu")
    loaded_back = pair.bank.quantized(pair.config.scheme)
    for name, param in bank.params.items():  # q/k rows went through llama.cpp's permutation
        assert torch.equal(loaded_back[name], param.detach()), name


def test_a_refused_gguf_artifact_leaves_no_converted_copy(f32_gguf, tmp_path, monkeypatch,
                                                          capsys):
    """The copy an artifact is dequantized into costs 4 bytes per parameter of the cache: one
    refused after converting (here, a NaN) is removed."""
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    config = _tiny_config("gpt2")
    config.n_positions = 1024
    model = _from_config(config)
    with torch.no_grad():
        dict(model.named_parameters())["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")
    damaged = tmp_path / "damaged.gguf"
    _write_gpt2(model, damaged, "F32", embedding="F32")
    assert main(["measure", str(f32_gguf), "--quantized", str(damaged), "--languages", "en,de",
                 "--units", "1"]) == 2
    said = capsys.readouterr().err.splitlines()
    assert "holds NaN or infinite values" in said[-1]  # the error is the last line
    assert "quantfair: damaged.gguf is refused, so its converted copy is removed" in said
    copies = tmp_path / "cache" / "gguf-checkpoints"
    assert not (copies / hashlib.sha256(damaged.read_bytes()).hexdigest()[:24]).exists()
    assert copies.is_dir()  # where the copy was made


def test_a_refused_gguf_artifact_keeps_a_converted_copy_made_before(f32_gguf, tmp_path,
                                                                     monkeypatch, capsys):
    """A GGUF converted before (here, as a model of its own) and then refused as another
    model's artifact keeps its copy: only a copy made for the refused artifact is removed."""
    from quantfair.models import gguf_checkpoint, has_gguf_checkpoint

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    config = _tiny_config("gpt2")
    config.n_positions = 1024
    other = tmp_path / "other.gguf"
    _write_gpt2(_from_config(config, seed=1), other, "F32", embedding="F32")
    sha256 = hashlib.sha256(other.read_bytes()).hexdigest()
    gguf_checkpoint(other)
    assert main(["measure", str(f32_gguf), "--quantized", str(other), "--languages", "en,de",
                 "--units", "1"]) == 2
    said = capsys.readouterr().err
    assert "does not pair with tiny-f32" in said and "converted copy is removed" not in said
    assert has_gguf_checkpoint(sha256)


def test_an_embedded_models_own_gguf_as_an_artifact_is_not_converted_again(tmp_path,
                                                                          monkeypatch):
    """The embedded model's file given as `--quantized` was converted a second time, under
    gguf-checkpoints/, beside the copy under models/ the model is read from (538 MB)."""
    from quantfair import models
    from quantfair.storage import cache_folder

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    config = _tiny_config("gpt2")
    config.n_positions = 1024
    own = tmp_path / "own.gguf"
    _write_gpt2(_from_config(config), own, "Q8_0", embedding="F32")
    embedded = cache_folder("models") / models.SMOLLM2
    models._convert_once(own, embedded)  # as `_embedded` converts the package's file
    sha256 = hashlib.sha256(own.read_bytes()).hexdigest()
    assert models.gguf_checkpoint(own) == embedded and models.has_gguf_checkpoint(sha256)
    assert not (tmp_path / "cache" / "gguf-checkpoints").exists()
    other = tmp_path / "other.gguf"
    _write_gpt2(_from_config(config, seed=1), other, "Q8_0", embedding="F32")
    assert models.gguf_checkpoint(other).parent.name == "gguf-checkpoints"


def test_a_sessions_gguf_conversions_are_said_where_it_says_its_lines(f32_gguf, tmp_path,
                                                                      monkeypatch, capsys):
    """Under pytest, lines on stderr are captured: a minute's conversion of Gemma 3 in an
    audit's session fixture said nothing on the terminal."""
    other = tmp_path / "other.gguf"
    _export(f32_gguf, other)
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))  # neither converted
    capsys.readouterr()
    said = []
    settings = {"model": str(f32_gguf), "quantized": str(other), "languages": "en",
                "units": "1"}
    AuditSession(RunConfig.build(settings.get), announce=said.append)
    assert [line.split(" once to ")[0] for line in said if "converting" in line] == [
        "quantfair: converting tiny-f32.gguf", "quantfair: converting other.gguf"]
    assert "converting" not in capsys.readouterr().err


def _one_tensor_gguf(path: Path, architecture: str, monkeypatch) -> Path:
    """A GGUF file of `architecture` with one tensor; converting any file to a checkpoint
    fails the test from here on."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file,
                  writer.write_tensors_to_file):
        write()
    writer.close()

    def converted(source, *args):
        raise AssertionError(f"{source} was dequantized")

    monkeypatch.setattr("quantfair.artifact.gguf_checkpoint", converted)
    return path


def test_a_gguf_of_another_architecture_is_refused_before_it_is_dequantized(
        f32_gguf, tmp_path, monkeypatch, capsys):
    """The header says what the file is: a Llama GGUF beside a GPT-2 model is one line, and
    no time goes into converting it (nothing is written to the cache)."""
    other = _one_tensor_gguf(tmp_path / "llama.gguf", "llama", monkeypatch)
    assert main(["measure", str(f32_gguf), "--quantized", str(other), "--languages", "en,de",
                 "--units", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "does not pair with tiny-f32: it has architecture llama, the model's is gpt2")


def test_a_gguf_of_another_architecture_than_a_hugging_face_model_is_refused_first(
        tmp_path, monkeypatch, capsys):
    """Beside a model that is no GGUF file, the header is read against its model type (a
    Llama file is not judged there: transformers makes Mistral models of those too)."""
    other = _one_tensor_gguf(tmp_path / "gemma3.gguf", "gemma3", monkeypatch)
    for model in ("tiny-gpt2", "tiny-gemma3"):
        assert main(["measure", model, "--quantized", str(other), "--languages", "en,de",
                     "--units", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not pair with tiny-gpt2: it has architecture gemma3, the model's is gpt2" in err
    # gemma3 -> gemma3_text: the same architecture, refused by its embedding's size, still
    # from the header (converting it would fail the test)
    assert "does not pair with tiny-gemma3: its token embedding has shape (4, 8)" in err


def test_a_gguf_rewritten_with_its_old_size_and_time_is_read_again(f32_gguf, tmp_path):
    """`cp -p`, tar and reproducible builds keep a file's size and modification time: the
    tensor types (and so overheads) come from the bytes now there, not the file before."""
    from quantfair import models

    path, other = tmp_path / "release.gguf", tmp_path / "l1.gguf"
    _export(f32_gguf, path)  # layer 0 kept in F32
    assert main(["export", str(f32_gguf), "--quant", "gguf:Q5_0", "--strategy", "L1",
                 "--languages", "en", "--units", "1", "-o", str(other)]) == 0
    assert models.gguf_tensors(path)["blk.0.attn_qkv.weight"]["type"] == "F32"
    times = os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns
    assert os.path.getsize(other) == os.path.getsize(path)
    other.replace(path)
    os.utime(path, ns=times)
    models._sha256.cache_clear()  # another process: nothing remembered but the cache on disk
    assert models.gguf_tensors(path)["blk.0.attn_qkv.weight"]["type"] == "Q5_0"


def test_emit_llama_quantize_under_a_llama_cpp_scheme_has_no_note_of_another_type(
        f32_gguf, tmp_path, monkeypatch, capsys):
    """llama.cpp:TYPE is the type llama-quantize writes: its arguments apply as audited."""
    binary = tmp_path / "llama-quantize"  # a stand-in that copies its F32 input
    binary.write_text('#!/bin/sh\ncp "$1" "$2"\n')
    binary.chmod(0o755)
    monkeypatch.setenv("QUANTFAIR_LLAMA_QUANTIZE", str(binary))
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["export", str(f32_gguf), "--strategy", "L0", "--emit", "llama-quantize",
                 "--quant", "llama.cpp:Q8_0", "--languages", "en", "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert r"blk\.0\..*=f32" in printed.out
    assert "not a llama.cpp tensor type" not in printed.err


def test_a_recipe_for_llama_quantize_needs_no_llama_quantize_here(tmp_path, monkeypatch,
                                                                   capsys):
    """The recipe names tensors: it is made where llama.cpp is not built (the file it is for
    may be quantized elsewhere). A suggestion is still looked up by the scheme's file."""
    monkeypatch.delenv("QUANTFAIR_LLAMA_QUANTIZE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["export", "tiny-llama", "--strategy", "L0+L2.attn.q", "--emit",
                 "llama-quantize", "--quant", "llama.cpp:Q4_K_M", "--languages", "en",
                 "--units", "1"]) == 0
    printed = capsys.readouterr()
    assert shlex.split(printed.out) == ["--tensor-type", r"blk\.0\..*=f32",
                                        "--tensor-type", r"^blk\.2\.attn_q\.weight$=f32"]
    assert "llama-quantize" not in printed.err
    assert not list(tmp_path.glob("cache/**/*.gguf"))  # no file was made for it
    assert main(["export", "tiny-llama", "--strategy", "suggested", "--emit", "llama-quantize",
                 "--quant", "llama.cpp:Q4_K_M", "--languages", "en", "--units", "1"]) == 2
    assert "there is no llama-quantize on PATH" in capsys.readouterr().err


def test_protecting_what_an_artifact_already_keeps_is_said_to_change_nothing(f32_gguf, tmp_path,
                                                                             capsys):
    output = tmp_path / "out.gguf"
    _export(f32_gguf, output)  # layer 0 kept in F32
    capsys.readouterr()
    assert main(["measure", str(f32_gguf), "--quantized", str(output), "--strategy", "L0+L1",
                 "--strategy", "L1", "--languages", "en,de", "--units", "1"]) == 0
    said = capsys.readouterr().err
    noted = re.findall(r"quantfair: (\S+) protects (\d+) of its (\d+) matrices where the "
                       r"artifact already has the FP model's values \(e\.g\. (\S+)\)", said)
    assert len(noted) == 1, said  # L1 alone is quantized in the artifact
    strategy, kept, matrices, example = noted[0]
    assert strategy == "L0+L1" and 2 * int(kept) == int(matrices) > 0  # layer 0's half
    assert ".0." in example
