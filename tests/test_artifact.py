"""Quantized-artifact pairs: the quantized side of an audit read from a second file of the same
model, mapped by parameter name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantfair.config import RunConfig
from quantfair.errors import QuantfairError, UsageError
from quantfair.models import load_model
from quantfair.quantize import WeightBank
from quantfair.schemes import QuantScheme
from quantfair.session import AuditSession

pytest_plugins = ["pytester"]
Q4_0 = QuantScheme.parse("gguf:Q4_0")


def _save_quantized(name: str, folder: Path) -> dict[str, torch.Tensor]:
    """Save tiny model `name` with its gguf:Q4_0 tensors as a safetensors directory; returns
    the tensors saved."""
    loaded = load_model(name)
    bank = WeightBank(loaded.model)
    bank.apply(Q4_0)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return {n: p.detach().clone() for n, p in loaded.model.named_parameters()}


def _config(model: str, quantized: str, **extra: str) -> RunConfig:
    settings = {"model": model, "quantized": quantized, "languages": "en,de", "units": "2",
                **extra}
    return RunConfig.build(settings.get)


def _session(config: RunConfig) -> AuditSession:
    return AuditSession(config, announce=lambda _: None)


@pytest.mark.parametrize(("model", "layer0"), [("tiny-llama", ".layers.0."),
                                                ("tiny-gpt2", ".h.0.")])
def test_pair_serves_the_artifact_tensors_and_protection_takes_fp(tmp_path, model, layer0):
    saved = _save_quantized(model, tmp_path / "q")
    session = _session(_config(model, str(tmp_path / "q"), **{"quantized-label": "rc1"}))
    scheme = session.config.scheme
    assert scheme.name == "artifact:rc1"
    bank = session.bank
    quantized = bank.quantized(scheme)
    assert all(torch.equal(quantized[n], saved[n]) for n in bank.params)
    bank.apply(scheme, session.resolver().resolve("L0"))
    for name, param in bank.params.items():
        expected = bank.fp[name] if layer0 in name else saved[name]
        assert torch.equal(param.detach(), expected), name
    bank.restore()
    # under gguf: schemes 1-D tensors and position embeddings stay F32: exactly those unchanged
    assert set(session.artifact.unquantized) == {
        n for n, p in bank.fp.items() if p.dim() == 1 or n.endswith("wpe.weight")}


def test_an_artifact_with_quantized_biases_is_served_as_stored(tmp_path):
    """Formats that quantize 1-D tensors too: the pair takes the artifact's biases and norms,
    and protecting `biases` takes the FP ones."""
    loaded = load_model("tiny-gpt2")
    with torch.no_grad():
        for param in loaded.model.parameters():
            if param.dim() == 1:
                param.copy_(torch.round(param * 8) / 8 + 1 / 16)  # a coarse grid, off the FP
    loaded.model.save_pretrained(tmp_path / "q")
    loaded.tokenizer.save_pretrained(tmp_path / "q")
    saved = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    session = _session(_config("tiny-gpt2", str(tmp_path / "q")))
    bank, scheme = session.bank, session.config.scheme
    quantized = bank.quantized(scheme)
    vectors = [n for n in bank.params if bank.fp[n].dim() == 1]
    assert vectors and all(torch.equal(quantized[n], saved[n]) for n in vectors)
    assert not any(torch.equal(saved[n], bank.fp[n]) for n in vectors)
    assert not set(vectors) & set(session.artifact.unquantized)
    bank.apply(scheme, session.resolver().resolve("biases"))
    for name in vectors:
        expected = bank.fp[name] if name.endswith(".bias") else saved[name]
        assert torch.equal(bank.params[name].detach(), expected), name
    bank.restore()


def test_pair_measures_the_same_nll_as_the_computed_scheme(tmp_path):
    _save_quantized("tiny-llama", tmp_path / "q")
    pair = _session(_config("tiny-llama", str(tmp_path / "q"))).measure("none")
    computed = _session(RunConfig.build({"model": "tiny-llama", "quant": "gguf:Q4_0",
                                         "languages": "en,de", "units": "2"}.get))
    expected = computed.measure("none")
    assert (pair.nll_q == expected.nll_q).all()
    assert (pair.nll_fp == expected.nll_fp).all()
    assert (pair.nll_q != pair.nll_fp).any()


def test_the_artifact_hash_keys_the_cache_not_the_label(tmp_path, monkeypatch):
    # Its own results: FP numbers cached by another test's batches may differ by ~1e-7.
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    _save_quantized("tiny-llama", tmp_path / "a")
    first = _session(_config("tiny-llama", str(tmp_path / "a"))).measure("none")
    loaded = load_model("tiny-llama")
    loaded.model.save_pretrained(tmp_path / "b")  # same label, FP weights: a different file
    loaded.tokenizer.save_pretrained(tmp_path / "b")
    second = _session(_config("tiny-llama", str(tmp_path / "b"))).measure("none")
    assert (second.nll_q == second.nll_fp).all()
    assert (first.nll_q != second.nll_q).any()


def test_other_architecture_is_one_clear_error(tmp_path):
    _save_quantized("tiny-gpt2", tmp_path / "gpt2")
    with pytest.raises(UsageError, match="architecture gpt2, the model's is llama"):
        _session(_config("tiny-llama", str(tmp_path / "gpt2")))


def test_missing_tensor_is_named(tmp_path):
    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantfairError, match="model.layers.1.mlp.up_proj.weight"):
        _session(_config("tiny-llama", str(folder)))


def test_a_tensor_the_model_does_not_have_is_named(tmp_path):
    """As in a GGUF file: loading left the tensor unread (a scale of a format not read, or
    another model's layer), so what was audited was not the file."""
    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight_scale"] = torch.ones(1)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UsageError, match=re.escape(
            "does not pair with tiny-llama: it has tensor "
            "model.layers.1.mlp.up_proj.weight_scale that the model does not have")):
        _session(_config("tiny-llama", str(folder)))


def test_a_tensor_unlike_its_own_config_is_named(tmp_path):
    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    rows, columns = tensors[name].shape
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantfairError, match=re.escape(
            f"cannot load it (tensor {name} of shape ({rows - 1}, {columns}), where its own "
            f"config gives ({rows}, {columns}))")):
        _session(_config("tiny-llama", str(folder)))


@pytest.mark.parametrize("written", ["random bytes", "a pickle of other objects"])
def test_a_pytorch_bin_that_is_no_plain_weights_file_is_one_clear_error(tmp_path, written):
    """torch's weights-only load refuses both (UnpicklingError): it was an unexpected error,
    its message with terminal colour codes."""
    import argparse

    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    if written == "random bytes":
        weights.write_bytes(bytes(range(256)) * 8)
    else:
        torch.save({"args": argparse.Namespace(lr=1.0)}, weights)
    with pytest.raises(QuantfairError, match=r"^--quantized .*: cannot load it \(") as error:
        _session(_config("tiny-llama", str(folder)))
    assert "\x1b" not in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(QuantfairError, match=r": transformers cannot load it: \w") as error:
        load_model(str(folder))  # the folder as the model itself: one line too
    assert "\x1b" not in str(error.value) and "\n" not in str(error.value)


def test_an_artifact_shipped_with_a_config_that_computes_otherwise_is_said(tmp_path):
    """Its tensors are audited under the model's config: an edited norm epsilon gave the
    numbers of the file without it, without a word."""
    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    config = json.loads((folder / "config.json").read_text())
    was, config["rms_norm_eps"] = config["rms_norm_eps"], 0.5
    config["use_cache"] = not config.get("use_cache", True)  # computes alike: not said
    (folder / "config.json").write_text(json.dumps(config))
    said = []
    session = AuditSession(_config("tiny-llama", str(folder)), announce=said.append)
    assert session.artifact.config_differences == [f"rms_norm_eps (0.5, the model's {was!r})"]
    assert f"quantfair: warning: the artifact's config differs from the model's in " \
        f"rms_norm_eps (0.5, the model's {was!r}): the audit computes with the model's " \
        "config and the artifact's tensors" in said


def test_a_config_of_other_layers_is_named_before_its_tensors(tmp_path):
    """A config.json of fewer layers beside all of the tensors said "no tensor
    model.layers.3...", a tensor the file holds."""
    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] -= 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=f"{config['num_hidden_layers']} layers in its config, "
                                         f"the model's {config['num_hidden_layers'] + 1}$"):
        _session(_config("tiny-llama", str(folder)))


def test_other_vocabulary_is_one_clear_error(tmp_path):
    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    tokenizer = load_model("tiny-llama").tokenizer
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(folder)
    size = len(tokenizer)
    with pytest.raises(UsageError, match=rf"a different tokenizer vocabulary \({size:,} tokens, "
                       rf"the model's {size - 1:,}; id {size - 1} is '<extra>' in the "
                       r"artifact's, no token in the model's\)"):
        _session(_config("tiny-llama", str(folder)))


def _merge_of_unknown_tokens(folder: Path) -> None:
    """A merge whose result is in no vocabulary: `tokenizers` refuses the file with a bare
    Exception ("Token ... out of vocabulary"), as for a GGUF whose token strings were edited."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["merges"] = [list(data["model"]["vocab"])[:2]]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda folder: (folder / "model.safetensors").write_bytes(b"\x10" * 1000),
     "a safetensors file is damaged or cut short"),
    (lambda folder: (folder / "tokenizer.json").write_text("{bad"),
     "cannot build its tokenizer .*damaged"),
    (_merge_of_unknown_tokens, "cannot build its tokenizer \\(Token .* out of vocabulary"),
], ids=["weights cut short", "tokenizer not JSON", "tokenizer merges unknown tokens"])
def test_a_damaged_artifact_is_one_clear_error(tmp_path, damage, message):
    folder = tmp_path / "q"
    _save_quantized("tiny-llama", folder)
    damage(folder)
    with pytest.raises(QuantfairError, match=message):
        _session(_config("tiny-llama", str(folder)))


def test_an_artifact_saved_without_its_tokenizer_is_audited_with_the_models(tmp_path):
    folder = tmp_path / "q"
    tensors = _save_quantized("tiny-llama", folder)
    for path in folder.glob("tokenizer*"):
        path.unlink()
    session = _session(_config("tiny-llama", str(folder)))
    assert torch.equal(session.artifact.tensors["model.layers.0.mlp.up_proj.weight"],
                       tensors["model.layers.0.mlp.up_proj.weight"])


def test_a_hub_id_cached_without_its_tokenizer_is_audited_with_the_models(tmp_path):
    """As a folder is: its tokenizer was loaded from nothing and the artifact refused as
    "tokenizer data is damaged"."""
    from test_cli import run_cli_process

    hub = tmp_path / "hf" / "hub" / "models--myorg--q"
    _save_quantized("tiny-llama", hub / "snapshots" / ("0" * 40))
    for path in (hub / "snapshots" / ("0" * 40)).glob("*"):
        if path.name.startswith(("tokenizer", "special_tokens")):
            path.unlink()
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0" * 40)
    result = run_cli_process("measure", "tiny-llama", "--quantized", "myorg/q", "--languages",
                             "en,de", "--units", "2", env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    assert "loading the quantized artifact myorg/q" in result.stderr


@pytest.mark.parametrize(("settings", "message"), [
    ({"quant": "int4"}, "give --quant or --quantized, not both"),
    ({"embedding-type": "F16"}, "give --embedding-type or --quantized, not both"),
    ({"quantized": "missing.gguf"}, "no such GGUF file"),
])
def test_bad_pair_settings_fail_before_loading(tmp_path, settings, message):
    values = {"model": "tiny-llama", "quantized": str(tmp_path), **settings}
    with pytest.raises(UsageError, match=message):
        RunConfig.build(values.get)
    with pytest.raises(UsageError, match="--quantized-label names"):
        RunConfig.build({"model": "tiny-llama", "quantized-label": "x"}.get)


def _plain_nll(model: torch.nn.Module, tokenizer, text: str) -> float:
    """Summed next-token NLL of `text` after the BOS token, in one forward pass."""
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return torch.nn.functional.cross_entropy(
        logits.float(), torch.tensor(ids[1:]), reduction="sum").item()


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["gguf package", "quantfair export"])
def test_pair_on_the_embedded_model_matches_a_plain_transformers_loop(tmp_path, writer):
    from test_gguf import _write_requantized
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantfair.cli import main
    from quantfair.models import _smollm2_gguf

    source = _smollm2_gguf()
    artifact = tmp_path / "smollm2-Q4_0.gguf"
    if writer == "gguf package":
        _write_requantized(source, artifact, "Q4_0")
    else:
        assert main(["export", "smollm2-135m", "--quant", "gguf:Q4_0", "--strategy", "L0",
                     "--languages", "en", "--units", "1", "--device", "cpu",
                     "-o", str(artifact)]) == 0
    session = _session(_config("smollm2-135m", str(artifact), device="cpu"))
    measured = session.measure("none")

    def independent(path: Path) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                    dtype=torch.float32).eval()

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    for index, (fp_model, nll) in enumerate([(independent(source), measured.nll_fp),
                                             (independent(artifact), measured.nll_q)]):
        for row, lang in enumerate(measured.languages):
            for column, unit in enumerate(session.corpus.units):
                text = session.corpus.texts[lang][unit]
                expected = _plain_nll(fp_model, tokenizer, text)
                assert nll[row, column] == pytest.approx(expected, rel=1e-5), (index, lang, unit)
    assert (measured.nll_q != measured.nll_fp).all()
    # the overhead counts the file's own types: Q4_0 is 4.5 bits per weight, F32 32
    assert session.bank.bits("model.layers.1.self_attn.q_proj.weight", session.config.scheme) \
        == 4.5
    layer0 = 32.0 if writer == "quantfair export" else 4.5
    assert session.bank.bits("model.layers.0.self_attn.q_proj.weight", session.config.scheme) \
        == layer0


def test_release_gate_compares_artifacts_by_label(pytester, tmp_path):
    """Two releases, two different files, one label: the second run's report names its own
    artifact and is compared with the first's measurements row by row."""
    from test_plugin import QUICK_FILES, load, run

    _save_quantized("tiny-llama", tmp_path / "v1")
    loaded = load_model("tiny-llama")  # v2: an FP "release", another file and hash
    loaded.model.save_pretrained(tmp_path / "v2")
    loaded.tokenizer.save_pretrained(tmp_path / "v2")
    args = [QUICK_FILES[1], "--model", "tiny-llama", "-k", "baseline_disparity",
            "--languages", "en,de", "--units", "4", "--quantized-label", "release"]
    run(pytester, *args, "--quantized", str(tmp_path / "v1"), "--report", "v1.json")
    run(pytester, *args, "--quantized", str(tmp_path / "v2"), "--report", "v2.json",
        "--baseline", "v1.json")
    v1, v2 = load(pytester.path / "v1.json"), load(pytester.path / "v2.json")
    assert v1["model"]["artifact"]["source"] == str((tmp_path / "v1").resolve())
    assert v2["model"]["artifact"]["source"] == str((tmp_path / "v2").resolve())
    assert v1["model"]["artifact"]["weight_hash"] != v2["model"]["artifact"]["weight_hash"]
    assert v2["model"]["artifact"]["type_mix"] == {"F32": 39}
    assert {row["scheme"] for row in v2["measurements"]} == {"artifact:release"}
    compared = {row["key"] for row in v2["comparison"]["rows"]}
    assert "artifact:release/none/medium/de" in compared
    # under another label, or of no artifact, nothing could be compared: refused before any
    # audit, with the fix
    other = run(pytester, *args[:-1], "other", "--quantized", str(tmp_path / "v2"),
                "--report", "v3.json", "--baseline", "v1.json")
    assert other.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in other.stderr.lines if line] == [
        "ERROR: --baseline v1.json: the baseline audited artifact:release, this run "
        "artifact:other: none of the artifact's measurements could be compared; audit it "
        "with --quantized-label release, the baseline's, to compare an artifact with the "
        "release before it"]
    assert not (pytester.path / "v3.json").exists()
    computed = run(pytester, *args[:-2], "--report", "v3.json", "--baseline", "v1.json")
    assert computed.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in computed.stderr.lines if line] == [
        "ERROR: --baseline v1.json: the baseline audited artifact:release, this run int4: none "
        "of the artifact's measurements could be compared; give --quantized with the artifact "
        "and --quantized-label release to compare an artifact with it"]
    # a baseline that also measured a computed scheme is compared on it: a warning, up front
    both = load(pytester.path / "v1.json")
    both["measurements"].append({**both["measurements"][0], "scheme": "int8"})
    (pytester.path / "both.json").write_text(json.dumps(both))
    other = run(pytester, *args[:-1], "other", "--quantized", str(tmp_path / "v2"),
                "--report", "v3.json", "--baseline", "both.json")
    lines = other.stdout.lines
    said = lines.index("quantfair: warning: the baseline audited artifact:release, this run "
                       "artifact:other: none of the artifact's measurements will be "
                       "compared; audit it with --quantized-label release, the baseline's, "
                       "to compare an artifact with the release before it")
    assert said < next(i for i, line in enumerate(lines) if "test_baseline.py" in line)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_an_artifact_of_another_model_stops_the_run_as_a_usage_error(pytester, tmp_path,
                                                                       workers):
    """Found once the model has loaded, a bad setting is wrong for every audit: one error per
    process, then the run stops with pytest's usage-error exit, its report incomplete."""
    from test_plugin import QUICK_FILES, load, run

    _save_quantized("tiny-gpt2", tmp_path / "other")
    result = run(pytester, *QUICK_FILES, "--model", "tiny-llama", "--languages", "en,de",
                 "--units", "2", "--quantized", str(tmp_path / "other"), "--report", "r.json",
                 *workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stdout.lines if line.startswith("ERROR ")]
    assert 1 <= len(errors) <= (2 if workers else 1), errors
    out = result.stdout.str()
    assert "During handling" not in out and "\nE   " not in out, out
    report = load(pytester.path / "r.json")
    assert report["verdict"] == "incomplete" and report["incomplete"][0] == (
        f"stopped by a bad setting: --quantized {tmp_path / 'other'} does not pair with "
        "tiny-llama: it has architecture gpt2, the model's is llama")


def test_a_damaged_artifact_stops_the_run_with_one_line(pytester, tmp_path):
    """Not a usage error in itself, but as wrong for every audit: one error, no traceback."""
    from test_plugin import QUICK_FILES, load, run

    _save_quantized("tiny-llama", tmp_path / "q")
    (tmp_path / "q" / "model.safetensors").write_bytes(b"\x10" * 1000)
    result = run(pytester, *QUICK_FILES, "--model", "tiny-llama", "--languages", "en,de",
                 "--units", "2", "--quantized", str(tmp_path / "q"), "--report", "r.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stdout.lines if line.startswith("ERROR ")]
    assert len(errors) == 1, errors
    assert "Traceback" not in result.stdout.str() and "\nE   " not in result.stdout.str()
    assert load(pytester.path / "r.json")["incomplete"][0].startswith(
        f"stopped by a bad setting: --quantized {tmp_path / 'q'}: a safetensors file is damaged")


def test_an_artifact_equal_to_the_fp_model_is_said_to_measure_nothing(tmp_path):
    _save_quantized("tiny-llama", tmp_path / "quantized")
    loaded = load_model("tiny-llama")
    loaded.model.save_pretrained(tmp_path / "fp")
    loaded.tokenizer.save_pretrained(tmp_path / "fp")
    said = []
    session = AuditSession(_config("tiny-llama", str(tmp_path / "fp")), announce=said.append)
    assert "equals the FP model in every tensor" in session.scheme_warning
    assert f"quantfair: warning: {session.scheme_warning}" in said
    assert _session(_config("tiny-llama", str(tmp_path / "quantized"))).scheme_warning == ""


def test_a_suggestion_is_kept_per_artifact_file_not_per_label(tmp_path):
    from quantfair.suggest import Suggestion, load_suggestion, no_suggestion, save

    _save_quantized("tiny-llama", tmp_path / "v1")
    loaded = load_model("tiny-llama")  # v2: another file under the same (default) label
    loaded.model.save_pretrained(tmp_path / "v2")
    loaded.tokenizer.save_pretrained(tmp_path / "v2")
    v1, v2 = (_session(_config("tiny-llama", str(tmp_path / v))) for v in ("v1", "v2"))
    assert v1.config.scheme.name == v2.config.scheme.name
    save(v1, Suggestion(model="tiny-llama", scheme=v1.config.scheme.name, budget=0.05,
                        strategy="L0", overhead=0.0, score=1.0))
    assert load_suggestion(v1)["strategy"] == "L0"
    assert load_suggestion(v2) is None
    assert "for this artifact file" in str(no_suggestion(v2))


def test_suggest_does_not_try_tensors_an_artifact_leaves_as_in_the_fp_model(tmp_path):
    """Q4_0 keeps norms in F32: keeping them from the FP model changes nothing, so the search
    must not spend forward passes on them (as under --quant gguf:Q4_0)."""
    from quantfair.suggest import Search

    _save_quantized("tiny-llama", tmp_path / "q4")
    session = _session(_config("tiny-llama", str(tmp_path / "q4")))
    assert "model.norm.weight" in session.artifact.unquantized
    search = Search(session, 0.5, session.calibration)
    assert search._new([], ["ln", "ln_f", "L0.ln", "L0"]) == ["L0"]


def test_tensors_an_artifact_leaves_as_in_the_fp_model_are_not_counted_as_quantized(tmp_path):
    """A GGUF file keeps norms in F32: keeping them "in full precision" costs nothing, and the
    share of an entry selector is of the tensors the file did quantize, as under the scheme."""
    _save_quantized("tiny-llama", tmp_path / "q4")
    artifact = _session(_config("tiny-llama", str(tmp_path / "q4")))
    computed = _session(RunConfig.build({"model": "tiny-llama", "quant": "gguf:Q4_0",
                                         "languages": "en,de", "units": "2"}.get))
    assert artifact.overhead("ln").bytes_fraction == 0.0  # was negative: F32 counted as codes
    # a float32 file stores its quantized tensors in 32 bits: keeping layer 0 in full
    # precision adds nothing to it (it read -17% storage)
    assert artifact.overhead("L0").fraction > 0 and artifact.overhead("L0").bytes_fraction == 0
    assert ([c.name for c in artifact.resolver()._quantized_parts()]
            == [c.name for c in computed.resolver()._quantized_parts()])
    assert artifact.entry_percent(0.01) == computed.entry_percent(0.01)


def test_a_checkpoint_storing_weights_as_integers_is_one_clear_error(tmp_path):
    """Packed codes read as weights gave perplexities of 1e19 and exit 0."""
    _save_quantized("tiny-llama", tmp_path / "int8")
    file = tmp_path / "int8" / "model.safetensors"
    tensors = {name: t.round().to(torch.int8) if t.dim() == 2 else t
               for name, t in load_file(file).items()}
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(UsageError, match=r"tensor model\.\S+ \(I8\) is stored in an integer "
                                         r"type; packed checkpoints"):
        _session(_config("tiny-llama", str(tmp_path / "int8")))


def test_another_models_weights_of_the_same_shapes_do_not_pair(tmp_path):
    """A stale or wrong file of the same architecture must not pass for the model's artifact;
    a real quantization pairs (the other tests), however coarse (int2, per tensor)."""
    loaded = load_model("tiny-llama")
    torch.manual_seed(1)
    with torch.no_grad():
        for param in loaded.model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn_like(param) * param.std())
    loaded.model.save_pretrained(tmp_path / "other")
    loaded.tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(UsageError, match="does not pair with tiny-llama: it has weights unlike "
                                         "the model's: a median relative error of 14[0-9]%"):
        _session(_config("tiny-llama", str(tmp_path / "other")))
    coarse = load_model("tiny-llama")
    WeightBank(coarse.model).apply(QuantScheme.parse("int2"))
    coarse.model.save_pretrained(tmp_path / "int2")
    coarse.tokenizer.save_pretrained(tmp_path / "int2")
    assert _session(_config("tiny-llama", str(tmp_path / "int2"))).artifact is not None
