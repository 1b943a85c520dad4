"""Issue 10: every bad input is one clear line, no number is stale, nothing computed is lost."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import escape
from test_cli import run_cli, run_cli_process

from quantfair.audit import Bound, Case, Correlation, LanguageBound
from quantfair.corpus import language
from quantfair.errors import QuantfairError, UsageError
from quantfair.metrics import TOO_FEW_UNITS, Measurement, correlation

OK_CORPUS = [{"lang": "en", "unit": "u1", "text": "Hello world."},
             {"lang": "de", "unit": "u1", "text": "Hallo Welt."}]


def one_line_error(result: subprocess.CompletedProcess, *needles: str,
                   after_work: bool = False) -> str:
    """The run failed with one non-empty stderr line holding every needle (the last line, after
    progress messages, when `after_work`)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("quantfair: error:")]
    assert errors == lines[-1:] if after_work else errors == lines, result.stderr
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def ok_corpus(tmp_path) -> Path:
    path = tmp_path / "ok.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in OK_CORPUS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    """tiny-gpt2 saved as an ordinary model directory, with its tokenizer files."""
    from quantfair.models import load_model

    folder = tmp_path_factory.mktemp("models") / "m1"
    loaded = load_model("tiny-gpt2")
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


# -- 1. same weights, different tokenizer ----------------------------------------------------

def test_a_changed_tokenizer_never_reuses_cached_numbers(tmp_path, saved_tiny, ok_corpus):
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    shutil.copytree(saved_tiny, m1)
    shutil.copytree(saved_tiny, m2)
    tokenizer = json.loads((m2 / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Lowercase"}
    (m2 / "tokenizer.json").write_text(json.dumps(tokenizer))

    def nll_fp(model: Path, cache: Path) -> dict:
        out = tmp_path / f"{model.name}-{cache.name}.json"
        result = run_cli("measure", str(model), "--corpus", str(ok_corpus), "--json", str(out),
                         env={"QUANTFAIR_RESULTS_DIR": str(cache)})
        assert result.returncode == 0, result.stderr
        return {r["language"]: r["nll_fp"] for r in json.loads(out.read_text())["records"]}

    shared = tmp_path / "shared"
    first, second = nll_fp(m1, shared), nll_fp(m2, shared)
    cold = nll_fp(m2, tmp_path / "cold")  # m2 scored with nothing cached
    assert second == cold
    assert second != first


def test_the_cache_key_covers_tokenizer_window_and_prefix(tiny_models, tmp_path):
    from tokenizers import normalizers

    from quantfair.evaluate import Evaluator, ResultCache
    from quantfair.models import byte_tokenizer

    loaded = tiny_models["tiny-gpt2"]
    base = Evaluator(loaded, ResultCache(tmp_path))
    key = base.unit_key("Hello world.")
    assert Evaluator(loaded, ResultCache(tmp_path)).unit_key("Hello world.") == key

    lowered = byte_tokenizer()
    lowered.backend_tokenizer.normalizer = normalizers.Lowercase()
    original = loaded.tokenizer
    try:
        loaded.tokenizer = lowered
        assert Evaluator(loaded, ResultCache(tmp_path)).unit_key("Hello world.") != key
    finally:
        loaded.tokenizer = original
    narrow = Evaluator(loaded, ResultCache(tmp_path))
    narrow.window = 64
    assert narrow.unit_key("Hello world.") != key
    other_prefix = Evaluator(loaded, ResultCache(tmp_path))
    other_prefix.prefix = 0
    assert other_prefix.unit_key("Hello world.") != key


def test_a_quantizer_that_rounds_otherwise_never_reuses_cached_numbers(tmp_path, monkeypatch):
    """An upgrade of quantfair or of the gguf package that changes the rounding changes the
    quantizer's version: results cached under the old one are not served."""
    from quantfair import quantize, session
    from quantfair.config import RunConfig

    def nll_q(results: str):
        monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / results))
        config = RunConfig.build({"model": "tiny-gpt2", "languages": "en,he", "units": "2",
                                  "quant": "int4-channel"}.get)
        return session.AuditSession(config, announce=lambda _: None).measure("none").nll_q

    before = nll_q("shared")
    rounding = quantize.fake_quantize
    monkeypatch.setattr(quantize, "fake_quantize",
                        lambda tensor, *args, **kwargs: rounding(tensor * 1.5, *args, **kwargs))
    monkeypatch.setattr(quantize, "QUANTIZER_DIGEST", "0123456789ab")
    monkeypatch.setattr(session, "QUANTIZER_DIGEST", "0123456789ab", raising=False)
    after = nll_q("shared")
    np.testing.assert_array_equal(after, nll_q("cold"))
    assert not np.array_equal(after, before)


def test_tokenizers_without_a_rust_pipeline_are_identified_by_their_files():
    from transformers import ByT5Tokenizer

    from quantfair.evaluate import tokenizer_identity

    plain = ByT5Tokenizer()
    assert not hasattr(plain, "backend_tokenizer")
    assert tokenizer_identity(plain) == tokenizer_identity(ByT5Tokenizer())
    assert tokenizer_identity(plain) != tokenizer_identity(ByT5Tokenizer(extra_ids=10))


# -- 2. languages without metadata -----------------------------------------------------------

class _Context:
    def __init__(self, measurement: Measurement) -> None:
        self.measurement = measurement
        self.corpus_languages = measurement.languages

    def measure(self, strategy, scheme=None, length=None, distribution=False) -> Measurement:
        return self.measurement


def _measurement(deltas: dict[str, list[float]]) -> Measurement:
    """FP NLL 10 per unit, the quantized NLL 10 + delta; 100 tokens per unit."""
    languages = tuple(deltas)
    delta = np.array([deltas[lang] for lang in languages], dtype=float)
    fp = np.full_like(delta, 10.0)
    tokens = np.full_like(delta, 100.0)
    return Measurement(languages, fp, fp + delta, tokens, tokens * 2, tokens * 3)


def test_unknown_languages_are_left_out_of_the_resource_class_correlation():
    # Known classes 5, 5, 3, 2 with disparities rising as the class falls (r < 0); two unknown
    # codes with huge disparities would, counted as class -1, pull r further down.
    deltas = {"en": [1.0, 1.2, 0.8], "de": [1.1, 1.3, 0.9], "fr": [1.0, 1.1, 0.9],
              "he": [3.0, 3.2, 2.8], "sw": [5.0, 5.5, 4.5], "pt-BR": [1.0, 1.1, 0.9],
              "xx": [1.2, 1.0, 1.1]}
    m = _measurement(deltas)
    check = Correlation("resource_class", Bound(max=-0.9))
    outcome = check.run(_Context(m), Case("resource_class-none", "none"), Bound(max=-0.9))
    disparity = m.disparity()
    known = ["de", "fr", "he", "sw"]
    expected = correlation([5, 5, 3, 2], [disparity[lg].value for lg in known])["pearson_r"]
    assert outcome.value == pytest.approx(expected)
    assert "pt-BR" in outcome.detail and "xx" in outcome.detail and "left out" in outcome.detail


def test_one_language_under_two_codes_is_one_point_of_the_resource_class_correlation():
    """A user corpus with `he` and `heb` (ISO 639-3 heb): counted twice, Hebrew's class
    weighed double and the p-value rested on a point that is not there."""
    from quantfair.charts import resource

    deltas = {"en": [1.0, 1.2, 0.8], "de": [1.1, 1.3, 0.9], "ru": [1.6, 1.5, 1.9],
              "he": [3.0, 3.2, 2.8], "heb": [2.0, 2.4, 2.2], "sw": [5.0, 5.5, 4.5],
              "eng": [1.2, 1.1, 1.0]}  # English again: the reference, no point
    m = _measurement(deltas)
    check = Correlation("resource_class", Bound(max=-0.9))
    outcome = check.run(_Context(m), Case("resource_class-none", "none"), Bound(max=-0.9))
    disparity = {lang: estimate.value for lang, estimate in m.disparity().items()}
    hebrew = (disparity["he"] + disparity["heb"]) / 2
    expected = correlation([5, 4, 3, 2], [disparity["de"], disparity["ru"], hebrew,
                                          disparity["sw"]])
    assert outcome.value == pytest.approx(expected["pearson_r"])
    assert "over 4 points" in outcome.detail and "languages de,ru,he+heb,sw" in outcome.detail
    fertility = Correlation("fertility", Bound(max=0))._series(_Context(m))
    # one point per language there too; English again is compared with nothing
    assert fertility[2] == "languages de,ru,he+heb,sw" and len(fertility[0]) == 4
    rows = [{"scheme": "int4", "strategy": "none", "language": lang, "disparity": value,
             "undefined": None, "overhead": 0.0, "fertility": 1.0}
            for lang, value in disparity.items()]
    chart = resource({"settings": {"scheme": "int4"}, "measurements": rows})
    assert chart["correlation"]["n"] == 4  # the chart's r is the audit's
    assert chart["correlation"]["pearson_r"] == pytest.approx(expected["pearson_r"])
    assert "he+heb" in chart["svg"]


def test_variants_of_one_language_given_different_classes_stay_two_points(monkeypatch):
    """pt-BR and pt-PT, both ISO 639-3 por, in classes 1 and 4 by their languages file: one
    point took the class of whichever code came first, so r depended on --languages' order;
    English under another code (`eng`) is the reference, measured against itself, no point."""
    from quantfair import corpus
    from quantfair.corpus import Language, resource_points

    monkeypatch.setattr(corpus, "_USER", {
        "pt-BR": Language("pt-BR", "Portuguese", "Latn", "Indo-European (Romance)", 1, "por"),
        "pt-PT": Language("pt-PT", "Portuguese", "Latn", "Indo-European (Romance)", 4, "por"),
        "pt-AO": Language("pt-AO", "Portuguese", "Latn", "Indo-European (Romance)", 4, "por")})
    values = {"pt-BR": 3.0, "de": 1.5, "eng": 1.0, "pt-PT": 2.0, "pt-AO": 1.0, "he": 4.0}
    points, left_out = resource_points(values)
    assert sorted(points) == [("de", 5.0, 1.5), ("he", 3.0, 4.0), ("pt-BR", 1.0, 3.0),
                              ("pt-PT+pt-AO", 4.0, 1.5)] and left_out == []
    backwards, _ = resource_points(dict(reversed(values.items())))
    assert sorted((x, y) for _, x, y in backwards) == sorted((x, y) for _, x, y in points)


def test_the_html_resource_chart_leaves_out_and_names_unknown_languages():
    from quantfair.charts import resource

    rows = [{"scheme": "int4", "strategy": "none", "language": lang, "disparity": value,
             "undefined": None, "overhead": 0.0, "fertility": 1.0}
            for lang, value in [("en", 1.0), ("de", 1.1), ("he", 2.0), ("sw", 3.0),
                                ("xx", 0.5)]]
    chart = resource({"settings": {"scheme": "int4"}, "measurements": rows})
    assert chart["left_out"] == ["xx"]
    assert chart["correlation"]["n"] == 3 and "over the 3 languages drawn" in chart["svg"]
    labels = set(re.findall(r"<text[^>]*>\s*([a-z]{2})\s*</text>", chart["svg"]))
    assert labels == {"de", "he", "sw"}


def test_the_resource_chart_correlates_the_audits_points_and_names_those_it_cannot_draw():
    """A disparity below 0 (one of the two losses fell) is in r, as in the audit, though the
    log axis cannot draw it."""
    from quantfair.charts import resource

    values = [("en", 1.0), ("de", 1.1), ("ru", 1.5), ("he", -1.5), ("sw", 3.0)]
    rows = [{"scheme": "int4", "strategy": "none", "language": lang, "disparity": value,
             "undefined": None, "overhead": 0.0, "fertility": 1.0} for lang, value in values]
    chart = resource({"settings": {"scheme": "int4"}, "measurements": rows})
    classes = [language(lang).resource_class for lang, _ in values[1:]]
    expected = correlation(classes, [value for _, value in values[1:]])
    assert chart["correlation"]["n"] == 4
    assert chart["correlation"]["pearson_r"] == pytest.approx(expected["pearson_r"])
    assert chart["not_drawn"] == ["he"] and chart["svg"]
    labels = set(re.findall(r"<text[^>]*>\s*([a-z]{2})\s*</text>", chart["svg"]))
    assert labels == {"de", "ru", "sw"}


# -- 3. a strategy that keeps nothing ---------------------------------------------------------

def test_head_on_a_tied_model_names_the_token_embedding():
    one_line_error(run_cli("inspect", "tiny-gpt2", "--strategy", "head"),
                   "head", "token embedding", "embed.tok", after_work=True)


def test_a_strategy_that_keeps_nothing_on_this_model_is_a_usage_error(tiny_models):
    from quantfair.quantize import QuantScheme, WeightBank
    from quantfair.strategies import StrategyResolver

    llama = StrategyResolver(WeightBank(tiny_models["tiny-llama"].model), QuantScheme())
    with pytest.raises(UsageError, match="keeps no parameter"):
        llama.resolve("biases")  # Llama has no biases
    assert llama.resolve("none") == {}
    assert llama.resolve("recommended")  # its biases term is empty, the rest is not


# -- 4. fewer than two units ------------------------------------------------------------------

def test_one_unit_gives_no_interval_and_undefined_ratios(ok_corpus, tmp_path):
    out = tmp_path / "one.json"
    result = run_cli("measure", "tiny-gpt2", "--corpus", str(ok_corpus), "--json", str(out))
    assert result.returncode == 0, result.stderr
    for record in json.loads(out.read_text())["records"]:
        assert record["undefined"] == TOO_FEW_UNITS
        assert record["disparity_low"] is None and record["disparity_high"] is None
        assert record["seed_disparity_low"] is None
    assert TOO_FEW_UNITS in result.stdout


def test_audits_on_one_unit_say_too_few_units():
    m = _measurement({"en": [1.0], "he": [3.0]})
    assert m.degradation()["he"].low is None and m.degradation()["he"].high is None
    assert m.mean_disparity().undefined == TOO_FEW_UNITS
    outcome = LanguageBound("none").run(_Context(m), Case("none-he", "none", "he"), Bound(min=1))
    assert not outcome.passed and TOO_FEW_UNITS in outcome.detail


# -- 5. damaged model inputs ------------------------------------------------------------------

def _small_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_a_truncated_gguf_is_one_line(tmp_path, keep):
    whole = _small_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: int(len(whole) * keep)])
    one_line_error(run_cli("inspect", str(cut)), str(cut), "the gguf package cannot read this "
                   "GGUF file (", "); it may be truncated or damaged (download or copy it again) "
                   "or newer than the package (upgrade gguf)")


@pytest.mark.parametrize(("content", "said"), [
    (b"", "is empty (0 bytes), not a GGUF file"),
    (b"a text file\n" * 100, "is not a GGUF file (it does not start with GGUF's magic bytes)")])
def test_an_empty_file_or_another_format_named_gguf_is_said_to_be_so(tmp_path, content, said):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    one_line_error(run_cli("inspect", str(path)), f"{path} {said}")


def test_a_gguf_the_user_may_not_read_is_said_to_be_so_not_damaged(tmp_path, monkeypatch):
    import gguf

    from quantfair.models import gguf_tensors

    path = _small_gguf(tmp_path / "model.gguf")
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):  # chmod 000 does not stop root, who runs these tests
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(gguf, "GGUFReader", refuse)
    with pytest.raises(QuantfairError, match="permission denied") as error:
        gguf_tensors(path)
    assert "damaged" not in str(error.value)


def test_a_model_directory_without_tokenizer_files_is_one_line(tmp_path, saved_tiny):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved_tiny / name, bare / name)
    one_line_error(run_cli("inspect", str(bare)), f"{bare} has no tokenizer (none of "
                   "tokenizer.json,", "tokenizer.save_pretrained(path)", after_work=True)


def test_a_model_whose_config_disagrees_with_its_tensors_is_one_line(tmp_path, saved_tiny):
    """transformers' RuntimeError pointed at a report its logging level hid: "unexpected
    error ... please report it", exit 3."""
    edited = tmp_path / "edited"
    shutil.copytree(saved_tiny, edited)
    config = json.loads((edited / "config.json").read_text())
    inner = config.get("n_inner") or 4 * config["n_embd"]
    config["n_inner"] = inner + 8
    (edited / "config.json").write_text(json.dumps(config))
    one_line_error(run_cli("inspect", str(edited)), f"{edited}: tensor transformer.h.",
                   f"where its config gives ({inner + 8}",
                   "the config is not the weights'", after_work=True)


def test_an_architecture_quantfair_does_not_map_is_refused_before_loading(tmp_path, saved_tiny,
                                                                           monkeypatch):
    """It was refused once the whole model had loaded (minutes for a 7B Falcon)."""
    from quantfair import models

    other = tmp_path / "falcon"
    shutil.copytree(saved_tiny, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))

    def loading(*args, **kwargs):
        raise AssertionError("loaded")

    monkeypatch.setattr(models, "_from_pretrained", loading)
    one_line_error(run_cli("inspect", str(other)), f"{other}: unsupported architecture "
                   "'falcon': quantfair maps bloom, gemma3, gemma3_text, gpt2,")


@pytest.mark.parametrize(("cached", "env", "said"), [
    ("", {}, "is not in the local Hugging Face cache and the Hub (127.0.0.1) cannot be "
     "reached"),
    ("all but the weights", {}, "is in the local Hugging Face cache only in part (a file it "
     "needs is missing) and the Hub (127.0.0.1) cannot be reached"),
    ("", {"HF_HUB_OFFLINE": "False"}, "the Hub (127.0.0.1) cannot be reached"),
    ("", {"TRANSFORMERS_OFFLINE": "1"}, "and downloads are off")],
    ids=["not-cached", "cached-in-part", "offline-false", "transformers-offline"])
def test_a_hub_id_without_network_is_one_line_at_once(tmp_path, saved_tiny, cached, env, said):
    """With HF_HUB_OFFLINE unset and no network, huggingface_hub retried every file a load
    asks for five times with back-off: 50 s and a dozen log lines for an id not cached,
    four minutes and ~100 lines for one cached in part, then the line."""
    hub = tmp_path / "hf" / "hub" / "models--myorg--tiny"
    snapshot = hub / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0" * 40)
    for file in saved_tiny.iterdir() if cached else ():
        if file.suffix != ".safetensors":
            shutil.copy(file, snapshot / file.name)
    result = run_cli_process("inspect", "myorg/tiny", env={
        "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", **env})
    line = one_line_error(result, "model 'myorg/tiny' ", said, after_work=True)
    assert "Retrying" not in result.stderr, result.stderr
    assert line


def test_a_hub_id_cached_without_its_tokenizer_is_said_so(tmp_path):
    """A Llama's was "its tokenizer data is damaged; copy or download it again"."""
    from quantfair.models import load_model

    hub = tmp_path / "hf" / "hub" / "models--myorg--tiny"
    load_model("tiny-llama").model.save_pretrained(hub / "snapshots" / ("0" * 40))
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0" * 40)
    result = run_cli_process("inspect", "myorg/tiny", env={"HF_HOME": str(tmp_path / "hf")})
    one_line_error(result, "myorg/tiny: the Hugging Face cache holds no tokenizer for it "
                   "(none of tokenizer.json,", "hf download myorg/tiny", after_work=True)


def test_a_checkpoint_its_own_code_cannot_run_is_one_line_before_any_audit(tmp_path):
    """A Qwen2 config of sliding-attention layers without a window: transformers' TypeError
    in every audit's forward, "unexpected TypeError ... please report it"."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from quantfair.models import byte_tokenizer

    folder = tmp_path / "qwen2"
    config = Qwen2Config(vocab_size=260, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         layer_types=["sliding_attention"] * 2, use_sliding_window=True,
                         sliding_window=None)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    one_line_error(run_cli("inspect", str(folder)), "qwen2: the model fails on a forward of "
                   "8 tokens, before any audit (TypeError: ", "its config or checkpoint is "
                   "one this transformers version does not run", after_work=True)


def test_a_model_directory_with_a_safetensors_file_cut_short_is_one_line(tmp_path, saved_tiny):
    cut = tmp_path / "cut"
    shutil.copytree(saved_tiny, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    one_line_error(run_cli("inspect", str(cut)), str(cut), "damaged or cut short",
                   after_work=True)


@pytest.mark.parametrize("damage", ["config.json", "tokenizer.json", "missing weights"])
def test_a_damaged_model_directory_is_one_line_naming_it(tmp_path, saved_tiny, damage):
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    if damage == "missing weights":
        (broken / "model.safetensors").unlink()
    else:
        (broken / damage).write_text("garbage{")
    result = run_cli("inspect", str(broken))
    what = "build its tokenizer" if damage == "tokenizer.json" else "load it"
    one_line_error(result, f"{broken}: transformers cannot {what}", after_work=True)
    assert result.returncode == 2  # bad input, not an unexpected error (3)


@pytest.mark.parametrize("change", ["cut short", "config edited", "weights rewritten",
                                    "older mark", "another source", "another source, cp -p"])
def test_a_converted_copy_changed_since_is_converted_again(tmp_path, saved_tiny, monkeypatch,
                                                           capsys, change):
    """The `complete` mark says a conversion finished, what it wrote and of which bytes; a
    copy cut short since (a full disk, a sync tool) or edited in place, or one of the file an
    upgrade of its package replaced (the embedded models' copies are named by the model: the
    old weights were measured and nothing said), must not be loaded as the model."""
    from quantfair import models

    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF, version 1")
    cached = tmp_path / "models" / "m"
    shutil.copytree(saved_tiny, cached)
    (cached / "complete").write_text(json.dumps({
        "source": "m.gguf", "source_sha256": models.file_sha256(source),
        "files": models._contents(cached)}))
    converted = []
    monkeypatch.setattr(models, "_convert", lambda gguf, where: converted.append(where))
    models._convert_once(source, cached)
    assert converted == []  # as written: loaded as it is
    weights, config = cached / "model.safetensors", cached / "config.json"
    if change == "cut short":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif change == "config edited":
        config.write_text(config.read_text().replace("{", '{"rms_norm_eps": 0.5, ', 1))
    elif change == "weights rewritten":  # the same length, other bytes
        data = bytearray(weights.read_bytes())
        data[-4:] = b"\x00\x00\xc0\x7f"
        weights.write_bytes(bytes(data))
    elif change == "older mark":
        (cached / "complete").write_text("m.gguf")
    else:  # `cp -p` or a reproducible build keeps its size and modification time: this
        before = source.stat()  # process, which hashed it, must not take the old hash
        source.write_bytes(b"GGUF, version 2")
        if change.endswith("cp -p"):
            os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    models._convert_once(source, cached)
    assert converted == [cached]
    assert (f"{source} is not the file {cached} was converted from (its bytes changed"
            if change.startswith("another source") else
            f"{cached} was changed, cut short or damaged since it was converted") in \
        capsys.readouterr().err


def test_a_full_disk_while_converting_a_gguf_is_one_line_naming_the_cache(tmp_path,
                                                                         monkeypatch):
    """safetensors' I/O errors are no OSErrors: a full disk was "unexpected SafetensorError
    ... please report it" (exit 3)."""
    import safetensors.torch
    from safetensors import SafetensorError
    from test_gguf import _write_gpt2

    from quantfair import models

    config = models._tiny_config("gpt2")
    config.n_positions = 1024
    source = tmp_path / "m.gguf"
    _write_gpt2(models._from_config(config), source, "F32", embedding="F32")

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    cached = tmp_path / "models" / "m"
    cached.parent.mkdir()
    with pytest.raises(QuantfairError, match=r"^cannot write the quantfair cache at .*models "
                       r"\(No space left on device \(os error 28\)\); set "):
        models._convert(source, cached)
    assert list(cached.parent.iterdir()) == []


@pytest.mark.parametrize("spec, hint", [("gemma3-270", " (did you mean gemma3-270m?)"),
                                        ("tiny-lama", " (did you mean tiny-llama?)"),
                                        ("no-such-org/model", "")])
def test_a_model_name_close_to_a_known_one_names_it(spec, hint):
    from quantfair.errors import QuantfairError
    from quantfair.models import load_model

    with pytest.raises(QuantfairError) as raised:
        load_model(spec)
    assert str(raised.value).startswith(f"model '{spec}'{hint} is not in the local Hugging Face")


# -- 6. scheme strings ------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, message", [
    ("int4-g-8", "unknown part"),
    ("int4-g" + "9" * 20, "the group size must be of at most 18 digits"),
    ("int" + "4" * 20, "the bits must be of at most 18 digits"),
    ("int" + "4" * 18, "bits must be between 2 and 8, got 444444444444444444"),
    ("int4-g16-channel", "both set the granularity"),
    ("int4-sym-asym", "both set the symmetry"),
    ("int4-linear-linear", "both set the scope"),
])
def test_malformed_or_contradictory_schemes_are_one_line(scheme, message):
    one_line_error(run_cli("inspect", "tiny-gpt2", "--quant", scheme), scheme, message)


# -- 7. unusable cache location ---------------------------------------------------------------

def test_a_cache_dir_that_is_a_file_is_one_line_and_reads_still_run(tmp_path, ok_corpus):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = {"QUANTFAIR_CACHE_DIR": str(blocker), "QUANTFAIR_RESULTS_DIR": ""}
    one_line_error(run_cli("measure", "tiny-gpt2", "--corpus", str(ok_corpus), env=env),
                   f"{blocker} is not a directory",
                   f"set QUANTFAIR_CACHE_DIR (now {blocker}) to a writable directory",
                   after_work=True)
    assert run_cli("inspect", "tiny-gpt2", env=env).returncode == 0
    assert run_cli("corpus", "--model", "tiny-gpt2", "--corpus", str(ok_corpus),
                   env=env).returncode == 0


def test_the_default_cache_unwritable_names_where_it_is(tmp_path, ok_corpus):
    """Without QUANTFAIR_CACHE_DIR the cache is under XDG_CACHE_HOME where that is set: the
    line says so, not ~/.cache."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = {"XDG_CACHE_HOME": str(blocker), "QUANTFAIR_CACHE_DIR": "", "QUANTFAIR_RESULTS_DIR": ""}
    one_line_error(run_cli("measure", "tiny-gpt2", "--corpus", str(ok_corpus), env=env),
                   f"set QUANTFAIR_CACHE_DIR (unset: {blocker / 'quantfair'}) to a writable "
                   "directory", after_work=True)


def test_a_file_written_whole_never_replaces_a_device_or_pipe(tmp_path):
    """Written whole means a temporary file renamed over the path: over /dev/null (as root)
    or a pipe, that would remove the device, not write to it."""
    from quantfair.storage import atomic_write

    pipe = tmp_path / "model.gguf"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match="not a regular file"):
        atomic_write(pipe, b"GGUF")
    assert pipe.is_fifo() and os.listdir(tmp_path) == ["model.gguf"]


def test_a_read_only_cache_names_the_path_and_variable(tmp_path, monkeypatch):
    from quantfair.evaluate import ResultCache, UnitResult

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(Path, "mkdir", refuse)
    cache = ResultCache(tmp_path / "results" / "abc")
    assert cache.load("fp") == {}  # reading needs no write
    with pytest.raises(QuantfairError, match="QUANTFAIR_RESULTS_DIR") as error:
        cache.store("fp", {"k": UnitResult(1.0, 1, 1, 1)})
    assert str(tmp_path / "results" / "abc") in str(error.value)
    assert "Permission denied" in str(error.value)


# -- 8. lone surrogates ----------------------------------------------------------------------

def test_an_escaped_lone_surrogate_is_rejected_with_file_and_line(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"lang": "en", "unit": "u1", "text": "Hello world."}\n'
                    '{"lang": "de", "unit": "u1", "text": "Hallo \\ud800 Welt."}\n')
    one_line_error(run_cli("measure", "tiny-gpt2", "--corpus", str(path)),
                   f"{path}:2:", "surrogate")


def test_bom_crlf_and_line_separators_inside_text_are_kept_byte_exact(tmp_path):
    from quantfair.corpus import load_corpus

    texts = {"en": "Hello\u2028world\u0085.", "de": "Gru\u0308\u00dfe\u2029Welt."}  # NFD u
    lines = [json.dumps({"lang": lg, "unit": "u1", "text": t}, ensure_ascii=False)
             for lg, t in texts.items()]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    corpus = load_corpus(path)
    assert corpus.texts == {lg: {"u1": t} for lg, t in texts.items()}


# -- 10, 11. report files and baselines -------------------------------------------------------

def _report(deltas: dict[str, list[float]], units: list[str] | None = None) -> dict:
    """A report of one measurement (`_measurement(deltas)`, int4, no protection) of the
    named `units` (default article_00, article_01, ...) and one audit that passed."""
    from quantfair.report import RunRecord, build_report, measurement_records
    from quantfair.strategies import Overhead

    m = _measurement(deltas)
    units = units or [f"article_{j:02d}" for j in range(m.units)]
    rows = measurement_records(m, units=units, strategy="none", scheme="int4", length="medium",
                               overhead=Overhead(0, 10, 0.0))
    audits = [{"nodeid": "audits/test_x.py::test_y[none-he]", "outcome": "passed",
               "value": 2.5, "low": 2.0, "high": 3.0, "experiments": ["001"]}]
    selection = {"invocation": ["pytest"], "collected": 1, "selected": 1, "deselected": 0,
                 "not_run": 0}
    return build_report(RunRecord(
        model={"name": "tiny-gpt2"}, settings={"model": "tiny-gpt2", "scheme": "int4",
                                               "languages": list(deltas), "units": m.units},
        audits=audits, rows=rows, processes=[], selection=selection, incomplete=[],
        duration_s=1.0))


@pytest.fixture
def report_pair(tmp_path) -> tuple[Path, dict]:
    report = _report({"en": [1.0, 1.2, 0.8], "he": [3.0, 3.2, 2.8]})
    path = tmp_path / "old.json"
    path.write_text(json.dumps(report))
    return path, report


def _format4(report: dict) -> dict:
    """`report` as format 4 wrote it, without per-unit values: compared on point estimates."""
    return {**report, "schema": "quantfair-report/4", "measurements": [
        {k: v for k, v in row.items() if k != "per_unit"} for row in report["measurements"]]}


def test_a_value_that_is_not_finite_is_written_as_null_not_lost_with_the_report(
        tmp_path, report_pair):
    """JSON has no infinity: one in a comparison row once stopped the report being written."""
    from quantfair.report import compare, write_report

    _, report = report_pair
    report["comparison"] = compare(report, report)
    report["comparison"]["rows"][1].update(old=float("inf"), change=float("nan"))
    json_path, _ = write_report(report, tmp_path / "r.json", latest=False)
    row = json.loads(json_path.read_text())["comparison"]["rows"][1]
    assert row["old"] is None and row["change"] is None and row["new"] > 0


def test_one_strategy_name_of_two_strategies_is_not_compared(report_pair):
    """`random@budget(candidate)` of one --strategy and of another: two random selections
    under one name were compared as one (a growth "not significant" between them)."""
    from quantfair.report import compare, comparison_notes

    _, old = report_pair
    new = copy.deepcopy(old)
    for report, share in ((old, "6.6734%"), (new, "2.94331%")):
        report["measurements"][1].update(strategy="random@budget(candidate)",
                                         resolved=f"random:{share}@0")
    comparison = compare(old, new)
    key = "int4/random@budget(candidate)/medium/he"
    assert comparison["strategy_changed"] == [f"{key} (random:6.6734%@0 -> random:2.94331%@0)"]
    assert key not in [row["key"] for row in comparison["rows"]]
    assert any(line.startswith("1 measurement(s) or audit(s) of another strategy under the same")
               for line in comparison_notes(comparison, ", ".join))
    new["measurements"][1]["resolved"] = "random:6.6734%@0"  # the same selection: compared
    assert key in [row["key"] for row in compare(old, new)["rows"]]


@pytest.mark.parametrize("given", [{"strategy": "L1"}, {"strategy": "suggested",
                                                        "suggestion": {"strategy": "L1"}}])
def test_audits_of_two_candidates_are_not_compared(report_pair, given):
    """`candidate_beats_none` of --strategy L0 passed, of another strategy failed: that was a
    regression of the model."""
    from quantfair.report import compare

    _, old = report_pair
    nodeid = "audits/test_suggested.py::test_candidate_beats_none[candidate<none]"
    old["audits"] = [{"nodeid": nodeid, "strategy": "candidate", "outcome": "passed"}]
    old["settings"]["strategy"] = "L0"
    new = copy.deepcopy(old)
    new["audits"][0]["outcome"] = "failed"
    assert compare(old, new)["regressions"] == [f"audit {nodeid}: passed -> failed"]
    new["settings"]["strategy"] = given["strategy"]
    new["suggestion"] = given.get("suggestion")
    comparison = compare(old, new)
    assert comparison["regressions"] == [] and comparison["audits"] == []
    assert comparison["strategy_changed"] == [f"{nodeid} (L0 -> L1)"]
    old["settings"]["strategy"], new["settings"]["strategy"] = "L0+L1", "L1 + L0"
    new["suggestion"] = None  # the same strategy in other words: compared
    assert compare(old, new)["regressions"] == [f"audit {nodeid}: passed -> failed"]


def test_a_written_report_is_valid_against_the_shipped_schema(report_pair):
    from quantfair.report import load_report

    path, report = report_pair
    assert load_report(path) == report


@pytest.mark.parametrize("damage, where", [
    (lambda r: r["measurements"][0].pop("language"), "'language' is a required property"),
    # what the HTML and the comparison read: no row without its NLLs and perplexities
    (lambda r: r["measurements"][0].pop("nll_fp"), "'nll_fp' is a required property"),
    (lambda r: r["measurements"][-1].pop("ppl_q"), "'ppl_q' is a required property"),
    (lambda r: r["measurements"][-1].pop("per_unit"), "'per_unit' is a required property"),
    (lambda r: r["measurements"][-1]["per_unit"]["nll_q"].pop(),
     "measurement int4/none/medium/he: per_unit holds 3 unit names, 3 nll_fp, 2 nll_q, 3 tokens "
     "values for "
     "3 units (edited or damaged)"),
    (lambda r: r["measurements"][0]["per_unit"]["nll_q"].__setitem__(0, 99.0),
     "measurement int4/none/medium/en: its nll_q, 33, is not the sum of its per_unit values, "
     "121 (edited or damaged)"),
    (lambda r: r["measurements"][0].update(disparity="high"), "disparity"),
    # a number read by the gate, edited alone: refused as the report is read, before a run
    (lambda r: r["measurements"][-1].update(degradation=r["measurements"][-1]["degradation"]
                                            + 0.5),
     "measurement int4/none/medium/he: its degradation, "),
    (lambda r: r["measurements"][0]["per_unit"]["unit"].__setitem__(0, ""), "per_unit.unit"),
    (lambda r: r["audits"][0].pop("outcome"), "'outcome' is a required property"),
    (lambda r: r.pop("settings"), "'settings' is a required property"),
    # what the page's provenance reads
    (lambda r: r.update(processes=[{"pid": 1, "loads": 1, "device": "cpu", "threads": "2"}]),
     ".processes[0].threads: '2' is not of type 'integer'"),
    (lambda r: r.update(processes=[{"pid": 1, "loads": 1}]), "'device' is a required property"),
    (lambda r: r.update(processes=[{"pid": 1, "device": ""}]),
     ".processes[0].device: '' should be non-empty"),
    (lambda r: r.update(schema="quantfair-report/0"), "re-run the audit"),
    (lambda r: r.update(schema="quantfair-report/7"), "a newer quantfair wrote it; upgrade "
                                                      "quantfair to read it"),
    (lambda r: r["measurements"].append(dict(r["measurements"][-1])),
     "measurement int4/none/medium/he appears 2 times"),
    (lambda r: r["audits"].append({**r["audits"][0], "outcome": "failed"}),  # which would count?
     "audit audits/test_x.py::test_y[none-he] appears 2 times (a report has one per test id)"),
])
def test_report_files_with_missing_or_mistyped_fields_are_one_line(tmp_path, report_pair,
                                                                   damage, where):
    old, report = report_pair
    damage(report)
    new = tmp_path / "new.json"
    new.write_text(json.dumps(report))
    one_line_error(run_cli("report", str(old), str(new)), str(new), where)


@pytest.mark.parametrize("text, why", [
    ('{"schema": "quantfair-report/4", "measurements": [', "Expecting value at line 1 column"),
    ('{"schema": "quantfair-report/4", "value": NaN}', "NaN is not JSON"),
    ('{"schema": "quantfair-report/4", "a": "b', "Unterminated string starting at line 1 "
                                                 "column 39"),  # not "at at"
    (b"\xff\xfe{}", "not UTF-8 text"),
    ("[" * 100_000, "nested too deeply"),
    ('{"schema": "quantfair-report/4", "audits": [{"a": 1, "a": 2}]}',
     'key "a" given twice in one object'),  # json would keep the last silently
])
def test_a_report_that_is_not_json_says_why(tmp_path, report_pair, text, why):
    old, _ = report_pair
    bad = tmp_path / "bad.json"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    one_line_error(run_cli("report", str(old), str(bad)), f"{bad} is not a JSON report: {why}")


def test_a_report_saved_with_a_byte_order_mark_reads_as_without(tmp_path, report_pair):
    """As a corpus does: some editors write a BOM at the start of a UTF-8 file."""
    old, _ = report_pair
    new, marked = tmp_path / "new.json", tmp_path / "marked.json"
    new.write_bytes(old.read_bytes())
    marked.write_bytes(b"\xef\xbb\xbf" + old.read_bytes())
    plain, with_mark = run_cli("report", str(old), str(new)), run_cli("report", str(old),
                                                                       str(marked))
    assert with_mark.returncode == plain.returncode != 2, with_mark.stderr
    assert with_mark.stdout.replace("marked", "new") == plain.stdout


def test_a_baseline_that_shares_nothing_fails(tmp_path, report_pair):
    from quantfair.report import NothingShared, compare

    old, report = report_pair
    other = {**report, "measurements": [{**r, "scheme": "int8"} for r in report["measurements"]],
             "audits": [{**a, "nodeid": a["nodeid"] + "-other"} for a in report["audits"]]}
    with pytest.raises(NothingShared):
        compare(report, other)
    new = tmp_path / "new.json"
    new.write_text(json.dumps(other))
    one_line_error(run_cli("report", str(old), str(new)), "nothing was compared")
    assert run_cli("report", str(old), str(old)).returncode == 0


def test_report_paths_are_checked_before_the_comparison_is_printed(tmp_path, report_pair,
                                                                    monkeypatch, capsys):
    from quantfair import cli, storage

    old, report = report_pair
    one_line_error(run_cli("report", str(old), ""), "NEW is empty; give the path of a JSON report")
    one_line_error(run_cli("report", " ", str(old)), "OLD is empty")
    folder = tmp_path / "read-only"
    folder.mkdir()
    new = folder / "new.json"
    new.write_text(json.dumps(report))
    probe = storage.probe_writable

    def refuse(directory, make=True):
        if Path(directory) == folder:
            raise PermissionError(13, "Permission denied")
        probe(directory, make)

    monkeypatch.setattr(storage, "probe_writable", refuse)
    assert cli.main(["report", str(old), str(new)]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""  # nothing printed that the run then fails to keep
    assert (f"the comparison's HTML {folder / 'new-vs-baseline.html'}: cannot write in {folder}"
            in printed.err and printed.err.strip().endswith("give --output elsewhere"))
    assert cli.main(["report", str(old), str(new), "--output", str(tmp_path / "c.html")]) == 0


def _compared(tmp_path: Path, old: Path, report: dict):
    """`quantfair report OLD NEW` with `report` as NEW: (NEW's path, the run, its HTML)."""
    new = tmp_path / "new.json"
    new.write_text(json.dumps(report))
    printed = run_cli("report", str(old), str(new))
    return new, printed, new.with_name("new-vs-baseline.html").read_text()


def test_the_report_command_writes_no_page_into_the_cache_beside_a_report_there(
        tmp_path, report_pair):
    """Its page goes beside the report read where no --output is given, which is refused in
    quantfair's caches as --output there is."""
    old, report = report_pair
    cache = tmp_path / "cache"
    inside = cache / "models" / "n.json"
    inside.parent.mkdir(parents=True)
    inside.write_text(json.dumps(report))
    for args in (("report", str(inside)), ("report", str(old), str(inside))):
        one_line_error(run_cli(*args, env={"QUANTFAIR_CACHE_DIR": str(cache)}),
                       "is in quantfair's cache", ": give --output elsewhere")
    assert [path.name for path in inside.parent.iterdir()] == ["n.json"]


def test_the_report_command_compares_a_strict_run_as_its_run_did(tmp_path, report_pair):
    """`quantfair report OLD NEW` once compared NEW of a `--quantfair-strict` run leniently:
    an audit passed before and inconclusive now was no regression there (exit 0), while the
    run itself had gated it as one. `--strict` compares a lenient run's report so."""
    old, report = report_pair
    undecided = {**report, "audits": [{**report["audits"][0], "outcome": "inconclusive"}]}
    new, lenient, page = _compared(tmp_path, old, undecided)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "1 audit(s) passed in the baseline and are inconclusive now (a regression with " \
           "--strict): audits/test_x.py::test_y[none-he]" in lenient.stdout
    asked = run_cli("report", str(old), str(new), "--strict")
    assert asked.returncode == 1 and "passed -> inconclusive" in asked.stdout
    # the page names the option that would count it, as printed (not pytest's)
    assert "now (a regression with --strict)" in page and "--quantfair-strict" not in page
    one_line_error(run_cli("report", str(new), "--strict"),
                   "--strict applies to a comparison: give OLD.json and NEW.json")
    strict = {**undecided, "settings": {**undecided["settings"], "strict": True}}
    _, gated, _ = _compared(tmp_path, old, strict)
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "passed -> inconclusive" in gated.stdout


# English's NLL change on 8 units, and Hebrew's, unlike from unit to unit (as texts are)
EN = [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.0]
HE = [1.0, 5.0, 2.0, 6.0, 1.5, 4.0, 3.0, 2.5]


def test_a_baseline_gate_decides_growth_on_the_paired_units(tmp_path):
    """Hebrew's damage 30% up on every unit: a regression, though the units spread Hebrew's
    disparity so far that the two runs' own CIs overlap; the same growth in the point
    estimate alone, from units moving both ways, is undecided (a regression only with
    --quantfair-strict), where a report without per-unit values fails on it."""
    from quantfair.report import compare, no_regression_line

    base = _report({"en": EN, "he": HE})
    grown = _report({"en": EN, "he": [1.3 * d for d in HE]})
    he = [r for r in (base, grown) for r in r["measurements"] if r["language"] == "he"]
    assert he[1]["disparity_low"] < he[0]["disparity_high"]  # overlapping estimates
    regressed = compare(base, grown)
    assert len(regressed["regressions"]) == 1
    assert re.fullmatch(r"disparity int4/none/medium/he: 3\.125 -> 4\.062, above the "
                        r"baseline's \+10% \(3\.438\) by 0\.625 \[95% CI 0\.\d+, 0\.\d+\]",
                        regressed["regressions"][0])
    assert regressed["point_compared"] == [] and regressed["growth_undecided"] == []
    # +15% on average: 8 units up and down by up to 3.5 nats
    mixed = _report({"en": EN, "he": [4.5, 1.5, 5.5, 2.5, 5.0, 0.5, 6.0, 3.25]})
    assert mixed["measurements"][1]["disparity"] == pytest.approx(1.15 * 3.125)
    undecided = compare(base, mixed)
    assert undecided["regressions"] == []
    assert re.fullmatch(r"int4/none/medium/he \(by 0\.156\d \[95% CI -[\d.]+, [\d.]+\]\)",
                        undecided["growth_undecided"][0])
    strict = compare(base, mixed, strict=True)["regressions"]
    assert len(strict) == 1 and strict[0].endswith("(not significant; a regression when strict)")
    assert compare(_format4(base), _format4(mixed))["regressions"] == [  # point estimates
        "disparity int4/none/medium/he: 3.125 -> 3.594, above the baseline's +10% (3.438)"]
    assert no_regression_line(compare(base, mixed)) == (
        "0 regressions against the baseline (1 growth(s) beyond 10%, the tolerance, not "
        "significant)")
    assert no_regression_line(compare(base, base)) == (
        "0 regressions against the baseline (no growth beyond 10%, the tolerance)")
    assert compare(base, base)["regressions"] == []
    assert all(row["beyond"]["high"] < 0 for row in compare(base, base)["rows"])
    # what `quantfair report` and the HTML say of each
    old = tmp_path / "old.json"
    old.write_text(json.dumps(base))
    _, printed, html = _compared(tmp_path, old, grown)
    assert printed.returncode == 1
    assert "above the baseline's +10% (3.438) by 0.625 [95% CI" in printed.stdout
    assert "<th>beyond the tolerance [95% CI]</th>" in html
    _, printed, html = _compared(tmp_path, old, mixed)
    note = "1 growth(s) beyond the tolerance not significant on the paired units"
    assert printed.returncode == 0 and note in printed.stdout and note in html
    assert "0 regressions: no disparity grew significantly beyond 10%, the tolerance (for " \
           "English, and where the baseline's disparity is undefined, the degradation; 1 " \
           "growth(s) beyond it, not significant), and no audit stopped passing" in printed.stdout
    assert re.search(r"No significant regression against the baseline of [^<]*; 1 growth\(s\) "
                     r"beyond the tolerance not significant on the paired units, a regression "
                     r"under --strict: int4/none/medium/he \(by 0\.156", html)
    _, printed, html = _compared(tmp_path, old, _format4(base))
    note = ("2 measurement(s) compared on point estimates, without CIs: a report before "
            "format 5 keeps no per-unit values")
    assert printed.returncode == 0 and note in printed.stdout and note in html


def test_a_baseline_gate_says_a_grown_degradation_in_points_and_refuses_edited_numbers(
        tmp_path):
    """English's damage 30% up on every unit, Hebrew's alike: the disparities stay, English's
    degradation regresses, its growth beyond the tolerance in percentage points (not a
    relative growth). A stored disparity that its per-unit values do not give is an edited
    report: refused, not compared."""
    from quantfair.report import compare

    base = _report({"en": EN, "he": HE})
    grown = _report({"en": [1.3 * d for d in EN], "he": [1.3 * d for d in HE]})
    assert len(regressions := compare(base, grown)["regressions"]) == 1
    assert re.fullmatch(r"degradation int4/none/medium/en: 1\.0\d*% -> 1\.3\d*%, above the "
                        r"baseline's \+10% \(1\.1\d*%\) by 0\.2\d* percentage points "
                        r"\[95% CI 0\.\d+, 0\.\d+\]",
                        regressions[0]), regressions
    written = tmp_path / "base.json"
    written.write_text(json.dumps(base))
    _, printed, html = _compared(tmp_path, written, grown)  # the page in the same units
    assert printed.returncode == 1
    assert re.search(r"<td>int4/none/medium/en</td><td>degradation \(%; beyond: points\)</td>"
                     r'<td class="num">1\.005</td><td class="num">1\.308</td>', html)
    edited = json.loads(json.dumps(base))
    edited["measurements"][1]["disparity"] *= 0.7  # Hebrew's, as if fairer
    old = tmp_path / "old.json"
    old.write_text(json.dumps(edited))
    new = tmp_path / "new.json"
    new.write_text(json.dumps(base))
    one_line_error(run_cli("report", str(old), str(new)), "old.json is not a valid "
                   "quantfair-report/6 report: measurement int4/none/medium/he: its disparity, "
                   "2.1875, is not what its totals give (3.125) (edited or damaged)")


def test_a_report_whose_gates_its_measurements_do_not_give_is_refused(tmp_path):
    """A release gate's audit of Hebrew beside its measurement: a baseline emptied of its
    measurements once compared its audits alone ("No regression"), and one whose gate was
    edited passed as it stood. Each edit is refused when the report is read, as is a
    `created` that is no date; the report as written, or with a bound written to 6
    significant digits that its value meets, is read."""
    from quantfair.report import load_report

    base = _report({"en": EN, "he": HE})
    he = base["measurements"][1]["disparity"]  # 3.125
    base["audits"].append({
        "nodeid": "audits/test_release.py::test_release_disparity[none-he]",
        "outcome": "passed", "experiments": ["release"], "quantity": "disparity",
        "strategy": "none", "language": "he", "length": None, "value": he, "bound": "<= 4"})
    path = tmp_path / "base.json"
    gate = "audit audits/test_release.py::test_release_disparity[none-he]"
    for edit, why in (
            (lambda r: r.update(measurements=[]),
             f"{gate}: its report has no measurement of none in he to give its disparity"),
            (lambda r: r["measurements"].pop(1),
             f"{gate}: its report has no measurement of none in he to give its disparity"),
            (lambda r: r["audits"][1].update(strategy="L0"),
             f"{gate}: its report has no measurement of L0 in he to give its disparity"),
            # a gate of its own scheme, given another scheme's value
            (lambda r: r["audits"][1].update(scheme="int8"),
             f"{gate}: its report has no measurement of none under int8 in he to give its "
             "disparity"),
            (lambda r: (r["measurements"][1].update(scheme="int8"),  # none of the run's
                        r["audits"][1].update(scheme=None)),
             f"{gate}: its report has no measurement of none under int4 in he to give its "
             "disparity"),
            (lambda r: r["audits"][1].update(outcome="failed"),
             f"{gate}: failed with disparity 3.125 against <= 4"),
            (lambda r: r["audits"][1].update(bound="<= 3"),
             f"{gate}: passed with disparity 3.125 against <= 3"),
            (lambda r: r["audits"][1].update(value=2.5),
             f"{gate}: its disparity, 2.5, is no measurement's"),
            (lambda r: r["audits"][1].update(value=None),
             f"{gate}: passed with no disparity")):
        edited = json.loads(json.dumps(base))
        edit(edited)
        path.write_text(json.dumps(edited))
        with pytest.raises(QuantfairError) as refused:
            load_report(path)
        assert str(refused.value) == (f"{path} is not a valid quantfair-report/6 report: {why} "
                                      "(edited or damaged)")
    path.write_text(json.dumps({**base, "created": "not a date"}))
    with pytest.raises(QuantfairError, match=r"report: \.created: 'not a date' is not an ISO "
                       r"8601 date and time$"):
        load_report(path)
    # a gate of the run's scheme says so (null); one written before audits recorded their
    # scheme has no key, and any scheme's measurement may give its value
    path.write_text(json.dumps({**base, "audits": [base["audits"][0],
                                                   {**base["audits"][1], "scheme": None}]}))
    assert load_report(path)["audits"][1]["scheme"] is None
    # a bound of the candidate (--strategy) is measured under the strategy it stands for
    candidate = json.loads(json.dumps(base))
    candidate["audits"][1]["strategy"] = "candidate"
    path.write_text(json.dumps(candidate))
    assert load_report(path)["audits"][1]["strategy"] == "candidate"
    for bound, outcome in (("<= 4", "passed"), ("<= 3.12500", "passed"), ("in [1, 3]", "failed"),
                           (">= 3.125", "passed"), ("a bound of one's own", "failed")):
        base["audits"][1].update(bound=bound, outcome=outcome)
        path.write_text(json.dumps(base))
        assert load_report(path)["audits"][1]["bound"] == bound


def test_a_release_gate_left_out_of_the_run_is_a_regression_only_when_strict():
    """Hebrew dropped from --languages: its release gate, passed in the baseline, is not run
    now. Listed, saying strict would count it; under --quantfair-strict a regression, as a
    maximum no longer given (passed -> skipped) is there. A seed finding's audit left out,
    or a gate of a language still audited (cut off), stays listed only."""
    from quantfair.report import compare, comparison_notes

    base = _report({"en": EN, "he": HE})
    base["audits"] += [{"nodeid": f"audits/test_release.py::test_release_disparity[none-{lang}]",
                        "outcome": "passed", "experiments": ["release"], "language": lang}
                       for lang in ("he", "de")]
    base["settings"]["languages"] = ["en", "de", "he"]
    now = {**base, "audits": [a for a in base["audits"] if a["nodeid"].endswith("[none-de]")],
           "settings": {**base["settings"], "languages": ["en", "de"]}}
    lenient, strict = compare(base, now), compare(base, now, strict=True)
    left_out = ["test_release.py::test_release_disparity[none-he]", "test_x.py::test_y[none-he]"]
    assert lenient["not_run"] == strict["not_run"] == left_out
    assert lenient["regressions"] == [] and strict["gates_dropped"] == []
    assert strict["regressions"] == ["audit audits/test_release.py::test_release_disparity"
                                     "[none-he]: passed -> not run (he not audited)"]
    assert "1 release gate(s) passed in the baseline, of a language this run does not audit " \
           "(a regression with --quantfair-strict): audits/test_release.py::test_release_" \
           "disparity[none-he] (he not audited)" in comparison_notes(lenient)
    # Hebrew audited, its gate cut off by a stop or left out by -k: the run is incomplete,
    # not regressed
    cut_off = {**now, "settings": base["settings"]}
    assert compare(base, cut_off, strict=True)["regressions"] == []
    assert compare(base, cut_off)["gates_dropped"] == []


def test_a_baseline_gate_pairs_only_units_of_the_same_text():
    """Units whose token counts differ are other text (or another tokenizer): their point
    estimates are compared, and the comparison says why."""
    from quantfair.report import compare

    base = _report({"en": EN, "he": HE})
    grown = _report({"en": EN, "he": [1.3 * d for d in HE]})
    for row in grown["measurements"]:
        row["per_unit"]["tokens"][0] += 1
    compared = compare(base, grown)
    assert compared["point_compared"] == ["int4/none/medium/en", "int4/none/medium/he"]
    assert compared["point_compared_why"] == (
        "English's units differ (another text or tokenizer) or hold an infinite loss")
    assert compared["regressions"] == ["disparity int4/none/medium/he: 3.125 -> 4.062, above "
                                       "the baseline's +10% (3.438)"]


def test_a_baseline_gate_pairs_the_units_both_runs_measured_by_name(tmp_path):
    """A run on 4 of the baseline's 8 units (another --units): both sides rebuilt on those 4
    and paired there, not the run's 4-unit estimate set against the baseline's 8-unit one;
    without unit names (format 5) or with none in common, point estimates, and why."""
    from quantfair.report import compare

    base = _report({"en": EN, "he": HE})
    odd = [1, 3, 5, 7]  # article_01, ...: the run's units
    grown = _report({"en": [EN[j] for j in odd], "he": [1.3 * HE[j] for j in odd]},
                    units=[f"article_{j:02d}" for j in odd])
    compared = compare(base, grown)
    assert compared["point_compared"] == []
    assert compared["paired_on_shared_units"] == (
        "4 units both runs measured (of 8 and 4 per language; below 6 no exact paired test "
        "reaches 5%: read a decision on them as a machinery check)")
    he = next(row for row in compared["rows"] if row["key"].endswith("/he"))
    on_odd = sum(HE[j] for j in odd) / sum(EN[j] for j in odd)
    assert he["old"] == pytest.approx(on_odd) and he["new"] == pytest.approx(1.3 * on_odd)
    assert len(compared["regressions"]) == 1
    assert compared["regressions"][0].startswith("disparity int4/none/medium/he: 4.487 -> "
                                                 "5.833, above the baseline's +10% (4.936) by "
                                                 "0.8974 [95% CI")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(base))
    _, printed, html = _compared(tmp_path, old, grown)
    note = "paired on the 4 units both runs measured (of 8 and 4 per language; below 6"
    assert printed.returncode == 1 and note in printed.stdout and note.capitalize() in html
    six = _report({"en": EN[:6], "he": HE[:6]}, units=[f"article_{j:02d}" for j in range(6)])
    assert compare(base, six)["paired_on_shared_units"] == ("6 units both runs measured (of 8 "
                                                            "and 6 per language)")
    # a report before format 6 does not name its units; no unit in common
    unnamed = {**base, "measurements": [{**row, "per_unit": {
        k: v for k, v in row["per_unit"].items() if k != "unit"}} for row in base["measurements"]]}
    elsewhere = _report({"en": EN[:4], "he": HE[:4]}, units=[f"preamble_{j}" for j in range(4)])
    for baseline, run, why in (
            (unnamed, grown, "the two runs measured 8 and 4 units per language (a report "
                             "before format 6 does not name them)"),
            (base, elsewhere, "the two runs measured no unit in common (of 8 and 4 per "
                              "language)")):
        compared = compare(baseline, run)
        assert len(compared["point_compared"]) == 2 and compared["paired_on_shared_units"] is None
        assert compared["point_compared_why"] == why


def test_on_shared_units_a_disparity_is_defined_or_not_on_those_units():
    """The run's 4 units hold the baseline's 2 unchanged, and two more on which English's
    loss falls as much as it rises: undefined over the run's 4 units, Hebrew's disparity is
    defined on the 2 compared, and the same there, so no regression (it once read as
    "2.5 -> undefined"), whichever report is the baseline."""
    from quantfair.report import compare, comparison_notes

    two = ["article_01", "article_03"]
    base = _report({"en": [1.0, 1.0], "he": [3.0, 2.0]}, units=two)
    run = _report({"en": [-4.0, 1.0, 2.0, 1.0], "he": [1.0, 3.0, 1.0, 2.0]},
                  units=["article_00", "article_01", "article_02", "article_03"])
    assert run["measurements"][1]["undefined"] and not base["measurements"][1]["undefined"]
    for old, new in ((base, run), (run, base)):
        compared = compare(old, new)
        assert compared["regressions"] == [] and compared["point_compared"] == []
        he = next(row for row in compared["rows"] if row["key"].endswith("/he"))
        assert he["quantity"] == "disparity" and he["old"] == he["new"] == pytest.approx(2.5)
    assert compare(base, run)["undefined_in_baseline"] == []
    # undefined there, a disparity is said to be undefined on those units, not in the baseline
    notes = comparison_notes({"baseline_created": "t", "rows": [], "audits": [],
                              "paired_on_shared_units": "2 units both runs measured",
                              "degradation_compared": ["int4/none/medium/he"]})
    assert ("1 disparity(ies) undefined in the baseline on the units both runs measured: the "
            "language's degradation is checked for growth instead: int4/none/medium/he") in notes


def test_audits_not_passed_in_the_baseline_that_changed_outcome_are_named():
    """An audit failed in the baseline and passing now was in the JSON's audit list only; one
    skipped now (its maximum no longer given) says why, not to read as an improvement."""
    from quantfair.report import compare, comparison_notes

    def run(outcomes: dict[str, tuple]) -> dict:
        report = _report({"en": EN, "he": HE})
        report["audits"] = [{"nodeid": f"a.py::{name}", "outcome": outcome, "bound": bound,
                             "message": message, "experiments": ["001"]}
                            for name, (outcome, bound, message) in outcomes.items()]
        return report

    old = run({"fixed": ("failed", "<= 2", ""), "same": ("failed", "<= 2", ""),
               "lost": ("passed", "<= 2", ""), "decided": ("inconclusive", "<= 2", ""),
               "rebound": ("failed", "<= 2", ""), "unset": ("failed", "<= 2", "")})
    new = run({"fixed": ("passed", "<= 2", ""), "same": ("failed", "<= 2", ""),
               "lost": ("failed", "<= 2", ""), "decided": ("failed", "<= 2", ""),
               "rebound": ("passed", "<= 5", ""),
               "unset": ("skipped", None, "no release bound for kld_disparity")})
    compared = compare(old, new)
    assert compared["outcome_changed"] == [
        "a.py::fixed (failed -> passed)", "a.py::decided (inconclusive -> failed)",
        "a.py::unset (failed -> skipped: no release bound for kld_disparity)"]
    assert compared["regressions"] == ["audit a.py::lost: passed -> failed"]
    assert ("3 audit(s) not passed in the baseline changed outcome: a.py::fixed (failed -> "
            "passed), a.py::decided (inconclusive -> failed), a.py::unset (failed -> skipped: "
            "no release bound for kld_disparity)") in comparison_notes(compared, ", ".join)
    assert not any("changed outcome" in line for line in comparison_notes(compare(old, old)))


def test_growth_within_float_noise_is_no_regression_and_a_real_one_prints_apart():
    from quantfair.report import compare

    def rows(disparity: float) -> dict:
        return {"measurements": [{"scheme": "int4", "strategy": "none", "length": "medium",
                                  "language": "ru", "disparity": disparity}], "audits": []}

    # float32 summation order (batches, threads) moves a number by ~1e-9 to 1e-7 relative
    assert compare(rows(5.151), rows(5.151 * (1 + 1e-7)), tolerance=0)["regressions"] == []
    assert compare(rows(5.151), rows(5.151 * (1 + 3e-5)), tolerance=0)["regressions"] == [
        "disparity int4/none/medium/ru: 5.151 -> 5.1512, above the baseline's +0% (5.151)"]


def test_a_regression_fails_the_compared_report_whose_audits_passed(tmp_path, report_pair):
    old, report = report_pair
    report = _format4(report)
    grown = {**report, "measurements": [
        {**r, "disparity": r["disparity"] * 1.5} if r.get("disparity") else r
        for r in report["measurements"]]}
    new, printed, html = _compared(tmp_path, old, grown)
    assert printed.returncode == 1 and "REGRESSION: disparity" in printed.stdout
    assert 'data-verdict="failed"' in html and "RELEASE GATE FAILED" in html


def test_a_baseline_of_an_incomplete_run_is_said_to_be_one(tmp_path, report_pair):
    _, report = report_pair
    stopped = tmp_path / "stopped.json"
    stopped.write_text(json.dumps({**report, "verdict": "incomplete",
                                   "incomplete": ["the run was terminated by SIGTERM"]}))
    _, printed, html = _compared(tmp_path, stopped, report)
    assert printed.returncode == 0, printed.stderr
    assert ("the baseline is of an incomplete run (the run was terminated by SIGTERM): what "
            "it did not measure is not compared") in printed.stdout
    assert "The baseline is of an incomplete run" in html


def test_an_incomplete_new_report_cannot_pass_the_gate(tmp_path, report_pair):
    """NEW stopped before its audit: no regression among what it measured, yet the gate
    fails (exit 3, not 0), saying why, and names the baseline's audit it did not run."""
    old, report = report_pair
    stopped = {**report, "audits": [], "verdict": "incomplete",
               "incomplete": ["the run was interrupted (Ctrl-C)"]}
    _, printed, html = _compared(tmp_path, old, stopped)
    assert printed.returncode == 3, printed.stderr
    assert "0 regressions: no disparity grew beyond 10%, the tolerance (for English, and " \
           "where the baseline's disparity is undefined, the degradation), and no audit " \
           "stopped passing" in printed.stdout
    not_run = f"1 baseline audit(s) not run in the run of {tmp_path / 'new.json'}: test_x.py::"
    assert f"{not_run}test_y[none-he]" in printed.stdout
    assert not_run.capitalize() in html  # the page names them too
    assert f"compared with the baseline of {report['created']} ({old})" in printed.stdout
    assert printed.stderr.count("\n") == 1
    assert "verdict incomplete (the run was interrupted (Ctrl-C))" in printed.stderr
    assert 'data-verdict="incomplete"' in html
    assert (f"No regression against the baseline of {report['created']} in what this "
            "incomplete run measured (2 measurements and 0 audits compared)") in html
    # stopped before its first measurement: what it is comes first, not "nothing shared"
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**stopped, "measurements": []}))
    printed = run_cli("report", str(old), str(empty))
    assert printed.returncode == 3
    assert "cannot pass a release gate; and the gate was not checked: the baseline" in \
        printed.stderr and printed.stderr.strip().endswith("nothing was compared")
    assert printed.stderr.count("\n") == 1
    # its run, against the same baseline, said why already: said once
    why = printed.stderr.strip().partition("; and the gate was not checked: ")[2]
    empty.write_text(json.dumps({**stopped, "measurements": [],
                                 "incomplete": [f"baseline: {why}"]}))
    printed = run_cli("report", str(old), str(empty))
    assert printed.returncode == 3 and printed.stderr.count(why) == 1


def test_one_report_is_rendered_as_html_again(tmp_path, report_pair):
    old, report = report_pair
    printed = run_cli("report", str(old))
    assert printed.returncode == 0, printed.stderr
    html = old.with_suffix(".html").read_text()
    assert 'data-verdict="passed"' in html and "Comparison with baseline" not in html
    elsewhere = tmp_path / "again.htm"
    assert run_cli("report", str(old), "--output", str(elsewhere)).returncode == 0
    assert elsewhere.read_text() == html
    for args, message in (((str(old), "--tolerance", "0.2"), "--tolerance applies to a "
                           "comparison: give OLD.json and NEW.json"),
                          ((str(old), "--output", str(old)), "name it .html"),
                          ((str(old), "--output", str(tmp_path / "r.json")), "name it .html"),
                          ((str(old.with_suffix(".html")),), f"{old.with_suffix('.html')} is an "
                           "HTML page; give its JSON report"),
                          ((str(old), str(old.with_suffix(".html"))), "is an HTML page")):
        one_line_error(run_cli("report", *args), message)


def test_a_comparison_without_regressions_names_the_new_reports_own_failures(tmp_path,
                                                                            report_pair):
    """Exit 0 says nothing regressed, not that the new run's audits passed."""
    old, report = report_pair
    failing = {**report, "audits": [{**a, "outcome": "failed"} for a in report["audits"]]}
    new = tmp_path / "new.json"
    new.write_text(json.dumps(failing))
    printed = run_cli("report", str(old), str(new))
    assert printed.returncode == 1  # passed -> failed is a regression
    assert "failed in its own run" not in printed.stdout
    printed = run_cli("report", str(new), str(new))  # failed in both: no regression
    assert printed.returncode == 0, printed.stderr
    assert f"note: 1 audit of {new} failed in its own run (its exit was 1): this exit code " \
        f"says only that nothing regressed against {new}" in printed.stdout
    errored = {**failing, "audits": [*failing["audits"],
                                     {**report["audits"][0], "outcome": "error",
                                      "nodeid": "audits/test_x.py::test_z[none-he]"}]}
    new.write_text(json.dumps(errored))  # its own exit was 3, and so is this one's
    printed = run_cli("report", str(new), str(new))
    assert printed.returncode == 3 and "verdict error" in printed.stderr, printed.stderr
    assert "its exit was 1" not in printed.stdout


def test_a_gate_decided_under_another_maximum_is_said_and_not_a_regression(tmp_path,
                                                                            report_pair):
    """A tightened --quantfair-max-* failed the same value as a regression; a loosened one
    passed it without a word: the maxima are settings, and a changed bound is said."""
    old, report = report_pair
    gated = {**report, "settings": {**report["settings"], "release_maxima": "disparity 3"},
             "audits": [{**a, "bound": "<= 3"} for a in report["audits"]]}
    old.write_text(json.dumps(gated))
    tighter = {**gated, "settings": {**gated["settings"], "release_maxima": "disparity 2"},
               "audits": [{**a, "bound": "<= 2", "outcome": "failed"} for a in gated["audits"]]}
    new, printed, html = _compared(tmp_path, old, tighter)
    assert printed.returncode == 0, printed.stdout
    assert "baseline measured otherwise: release_maxima: disparity 3 -> disparity 2" \
        in printed.stdout
    assert ("1 audit(s) decided under another bound than in the baseline, not compared: "
            "audits/test_x.py::test_y[none-he] (passed under <= 3, failed under <= 2)") \
        in printed.stdout
    assert "decided under another bound than in the baseline" in html


def test_the_examples_in_the_release_maxima_help_are_accepted():
    """`--max-degradation`'s help offered 2.0, which a degradation refuses (200%?)."""
    import re

    from quantfair.config import OPTIONS, RunConfig

    for name in (n for n in OPTIONS if n.startswith("max-")):
        examples = re.search(r"e\.g\. (\S+) or (\S+)", OPTIONS[name].help).groups()
        for example in examples:
            assert RunConfig.build({"model": "tiny-gpt2", name: example}.get).release_bounds


def test_the_release_maxima_are_among_the_settings_a_report_records():
    from quantfair.config import RunConfig

    given = {"model": "tiny-gpt2", "max-disparity": "2.0,he=3", "max-degradation": "0.1"}
    assert RunConfig.build(given.get).settings()["release_maxima"] == (
        "disparity 2,he=3; degradation 0.1")
    assert "release_maxima" not in RunConfig.build({"model": "tiny-gpt2"}.get).settings()


def test_a_comparison_says_when_the_new_run_failed_without_a_failed_audit(tmp_path,
                                                                         report_pair):
    """A --quantfair-strict run failed on its inconclusive audits; compared without a
    regression it exited 0 with no word."""
    old, report = report_pair
    strict = {**report, "settings": {**report["settings"], "strict": True},
              "audits": [{**a, "outcome": "inconclusive"} for a in report["audits"]]}
    strict["audits"][0]["outcome"] = "inconclusive"
    old.write_text(json.dumps(strict))
    _, printed, _ = _compared(tmp_path, old, strict)
    assert printed.returncode == 0
    assert "note: the run of " in printed.stdout and "failed (1 audit(s) were inconclusive, " \
        "which fails the run under --quantfair-strict; its exit was 1)" in printed.stdout


def test_a_report_rendered_again_takes_its_verdict_counts_and_headline_from_its_audits(
        tmp_path, report_pair):
    old, report = report_pair
    failing = {**report, "audits": [{**a, "outcome": "failed"} for a in report["audits"]]}
    failing["summary"] = {**failing["summary"], "headline": "All good",
                          "counts": {**failing["summary"]["counts"], "passed": 11, "failed": 0}}
    old.write_text(json.dumps(failing))
    printed = run_cli("report", str(old), "-o", str(tmp_path / "again.html"))
    assert printed.returncode == 0, printed.stderr
    html = (tmp_path / "again.html").read_text()
    assert "All good" not in html and "FAILED &mdash;" in html and "11 passed" not in html
    assert "verdict: failed: " in printed.stdout and "All good" not in printed.stdout


@pytest.mark.parametrize("given, tolerance", [("0.25", 0.25), ("25%", 0.25)])
def test_the_tolerance_is_a_fraction_or_a_percentage(tmp_path, report_pair, given, tolerance):
    old, _ = report_pair
    printed = run_cli("report", str(old), str(old), "--tolerance", given)
    assert printed.returncode == 0, printed.stderr
    assert f"beyond {100 * tolerance:g}%" in printed.stdout


@pytest.mark.parametrize("option, given", [("tolerance", "10"), ("max-degradation", "5"),
                                           ("max-degradation", "0.05,he=5")])
def test_a_bare_relative_number_above_1_is_refused_as_a_likely_percentage(option, given):
    """`--tolerance 10` was 1000%: a gate that never fails, without a word."""
    from quantfair.config import RunConfig

    with pytest.raises(UsageError, match=r"a bare number is a fraction \(\d+ is \d+00%\); "
                                         r"write \d+% for \d+ percent"):
        RunConfig.build({"model": "tiny-gpt2", "languages": "en,he", option: given}.get)


def test_a_degradation_maximum_is_a_fraction_or_a_percentage():
    from quantfair.config import RunConfig

    given = {"model": "tiny-gpt2", "languages": "en,he", "max-degradation": "50%,he=0.8"}
    assert RunConfig.build(given.get).release_bounds["degradation"] == {"*": 0.5, "he": 0.8}


def test_a_report_compared_with_itself_says_so(report_pair):
    old, _ = report_pair
    printed = run_cli("report", str(old), str(old))
    assert printed.returncode == 0, printed.stderr
    assert f"note: {old} is compared with itself: nothing can differ" in printed.stdout
    copy = old.with_name("copy.json")
    copy.write_bytes(old.read_bytes())
    printed = run_cli("report", str(old), str(copy))
    assert printed.returncode == 0, printed.stderr
    assert f"note: {copy} is a copy of {old} (the same report, created " in printed.stdout


def test_an_undefined_disparity_is_not_compared_as_a_number(tmp_path, report_pair):
    """A row keeps its disparity's number beside the reason it is undefined: the gate must
    read the reason (undefined in the baseline: the language's degradation is compared
    instead; defined -> undefined: a regression)."""
    from quantfair.report import compare

    old, report = report_pair[0], _format4(report_pair[1])
    reason = "en loss change is within noise (95% CI includes 0)"

    def undefined(grown: float, worse: float = 1.0, audit: str = "passed") -> dict:
        return {**report, "audits": [{**a, "outcome": audit} for a in report["audits"]],
                "measurements": [
                    {**r, "disparity": r["disparity"] * grown, "undefined": reason,
                     "degradation": r["degradation"] * worse} if r["language"] != "en" else r
                    for r in report["measurements"]]}

    he = next(r for r in report["measurements"] if r["language"] == "he")
    assert he["degradation"] > 0
    assert compare(undefined(1.0), undefined(10.0))["regressions"] == []
    within = compare(undefined(1.0), undefined(1.0, worse=1.05))  # the default tolerance: 10%
    assert within["regressions"] == [] and within["undefined_in_baseline"] == []
    assert within["degradation_compared"] == ["int4/none/medium/he"]
    worse = compare(undefined(1.0), undefined(1.0, worse=1.5))
    assert worse["regressions"] == [
        f"degradation int4/none/medium/he: {he['degradation']:.1%} -> "
        f"{1.5 * he['degradation']:.1%}, above the baseline's +10% "
        f"({1.1 * he['degradation']:.1%})"]
    lost = {**report, "measurements": [{k: v for k, v in r.items() if k != "degradation"
                                         or r["language"] == "en"}
                                        for r in report["measurements"]]}
    assert compare(undefined(1.0), lost)["regressions"] == [
        f"degradation int4/none/medium/he: {he['degradation']:.1%} -> undefined"]
    baseline = tmp_path / "undefined.json"
    baseline.write_text(json.dumps(undefined(1.0)))
    _, printed, html = _compared(tmp_path, baseline, undefined(1.0, worse=1.5))
    assert printed.returncode == 1 and "REGRESSION: degradation" in printed.stdout
    note = ("1 disparity(ies) undefined in the baseline: the language's degradation is "
            "checked for growth instead")
    assert note in printed.stdout and escape(note) in html
    regressions = compare(report, undefined(1.0, worse=0.5))["regressions"]
    # a ratio undefined now says why, and the language's own damage on both sides
    en = next(r for r in report["measurements"] if r["language"] == "en")
    assert regressions == [
        f"disparity int4/none/medium/he: {he['disparity']:.4g} -> undefined ({reason}; "
        f"degradation of he {he['degradation']:.1%} -> {0.5 * he['degradation']:.1%}, of en "
        f"{en['degradation']:.1%} -> {en['degradation']:.1%})"]
    # paired on the units both runs measured, the degradations are each run's own
    from quantfair.report import _undefined_why
    assert _undefined_why(he, {**he, "undefined": reason}, en, en, True).startswith(
        f" ({reason}; degradation over each run's own units of he ")
    _, printed, html = _compared(tmp_path, old, undefined(1.0))  # the HTML renders them
    assert printed.returncode == 1 and "REGRESSION: disparity" in printed.stdout
    assert "-&gt; undefined (en loss change is within noise" in html


def test_a_degradation_within_noise_in_the_baseline_regresses_only_to_measured_damage(
        report_pair):
    """A baseline's damage whose CI includes 0 has no relative growth: -0.01% -> 0.2% is noise
    at any tolerance (a Q8 release gated against the previous one), damage the run can tell
    from 0 is a regression; a row without a CI (an older report) keeps the relative rule."""
    from quantfair.report import compare

    report = _format4(report_pair[1])

    def english(degradation: float, low: float | None, high: float | None) -> dict:
        return {**report, "measurements": [
            {**r, "degradation": degradation, "degradation_low": low, "degradation_high": high}
            if r["language"] == "en" else r for r in report["measurements"]]}

    noise = english(-0.0001, -0.0015, 0.0017)
    assert compare(noise, english(0.002, -0.001, 0.005), tolerance=10)["regressions"] == []
    assert compare(noise, english(0.011, 0.002, 0.02))["regressions"] == [
        "degradation int4/none/medium/en: -0.010% (within noise) -> 1.1% "
        "[95% CI 0.20%, 2.0%]"]
    assert compare(english(0.01, 0.002, 0.02), english(0.0115, 0.003, 0.02))["regressions"]
    assert compare(english(0.0001, None, None), english(0.002, None, None))["regressions"]


def test_a_baseline_in_which_nothing_could_regress_is_a_gate_not_checked(tmp_path,
                                                                         report_pair):
    """Disparities undefined without a degradation beside them, and no audit that passed:
    a gate that compared nothing, not a pass."""
    from quantfair.report import NothingShared, compare

    _, report = report_pair

    def bare(audit: str) -> dict:
        return {**report, "audits": [{**a, "outcome": audit} for a in report["audits"]],
                "measurements": [
                    {**r, "degradation": None, "undefined": "noise"}
                    for r in report["measurements"]]}

    assert compare(bare("passed"), report)["undefined_in_baseline"] == ["int4/none/medium/he"]
    common = len(report["measurements"])  # English's row among them
    with pytest.raises(NothingShared, match=f"nothing in the baseline .* could regress: its "
                       f"{common} measurement"):
        compare(bare("inconclusive"), report)
    baseline = tmp_path / "bare.json"
    baseline.write_text(json.dumps(bare("inconclusive")))
    new = tmp_path / "new.json"
    new.write_text(json.dumps(report))
    printed = run_cli("report", str(baseline), str(new))
    assert printed.returncode == 2 and printed.stderr.count("\n") == 1
    assert "could regress" in printed.stderr


def test_a_comparison_names_contents_changed_under_the_same_paths(report_pair):
    from quantfair.report import compare

    _, report = report_pair
    same = {**report, "settings": {**report["settings"], "corpus_digest": "c1"},
            "model": {**report["model"], "weight_hash": "w1", "artifact": {"weight_hash": "a1"}}}
    other = {**same, "settings": {**same["settings"], "corpus_digest": "c2"},
             "model": {**same["model"], "weight_hash": "w2", "artifact": {"weight_hash": "a2"}}}
    assert compare(same, same)["differences"] == []
    assert compare(same, other)["differences"] == [
        "corpus text: c1 -> c2", "model weights: w1 -> w2", "artifact weights: a1 -> a2"]
    assert compare(report, other)["differences"] == []  # a baseline that did not record them
    # the digest is of the audited selection: other languages are said, not a changed text
    # (the fixture audits en and he)
    fewer = {**other, "settings": {**other["settings"], "languages": ["en", "xx"]}}
    assert "corpus text: c1 -> c2" not in compare(same, fewer)["differences"]
    assert any(line.startswith("languages: ") for line in compare(same, fewer)["differences"])
    he_int8 = {**report, "measurements": [{**r, "scheme": "int8"} if r["language"] == "he"
                                          else r for r in report["measurements"]]}
    assert compare(report, he_int8)["not_compared"] == ["int4/none/medium/he"]


def test_a_gate_that_compared_no_number_is_not_passed(tmp_path, report_pair):
    """A scheme (or an artifact's label) changed between the baseline and the run: every
    measurement misses its counterpart, and the audits alone passing is no pass."""
    from quantfair.report import NothingShared, compare

    old, report = report_pair
    int8 = {**report, "settings": {**report["settings"], "scheme": "int8"},
            "measurements": [{**r, "scheme": "int8"} for r in report["measurements"]]}
    with pytest.raises(NothingShared, match=r"shares no measurement with this run .*: its "
                       r"numbers were not compared \(measured otherwise: scheme: int4 -> int8\)"):
        compare(report, int8)
    assert "--quantized-label" not in str(pytest.raises(NothingShared, compare, report,
                                                        int8).value)
    labelled = [{**report, "settings": {**report["settings"], "scheme": f"artifact:{label}"},
                 "measurements": [{**r, "scheme": f"artifact:{label}"}
                                  for r in report["measurements"]]}
                for label in ("release", "other")]
    with pytest.raises(NothingShared, match=r"scheme: artifact:release -> artifact:other\); "
                       r"audit it with --quantized-label release, the baseline's, to "
                       r"compare"):
        compare(*labelled)
    failed = {**int8, "audits": [{**a, "outcome": "failed"} for a in report["audits"]]}
    assert compare(report, failed)["regressions"]  # an audit that stopped passing still fails
    new = tmp_path / "new.json"
    new.write_text(json.dumps(int8))
    one_line_error(run_cli("report", str(old), str(new)), "its numbers were not compared")
    # audits of weight statistics measure nothing: their outcomes are what is compared
    weights = {**report, "measurements": []}
    assert compare(weights, weights)["audits"] and compare(weights, weights)["rows"] == []


def test_damage_growing_alike_in_every_language_is_a_regression_of_englishs(report_pair):
    """The disparities stay as they were when every language's NLL change grows fivefold:
    English's degradation is compared too."""
    from quantfair.report import compare

    report = _format4(report_pair[1])
    worse = {**report, "measurements": [{**r, "degradation": 5 * r["degradation"]}
                                        for r in report["measurements"]]}
    en = next(r for r in report["measurements"] if r["language"] == "en")
    assert compare(report, worse)["regressions"] == [
        f"degradation int4/none/medium/en: {en['degradation']:.1%} -> "
        f"{5 * en['degradation']:.1%}, above the baseline's +10% "
        f"({1.1 * en['degradation']:.1%})"]
    assert compare(worse, report)["regressions"] == []  # less damage is no regression


def test_a_baseline_of_another_model_is_refused(report_pair):
    """A release of the same model keeps its architecture; a baseline of another one (the
    embedded model's report as a tiny model's baseline) compares nothing meaningful."""
    from quantfair.report import NothingShared, compare

    _, report = report_pair
    facts = {"family": "gpt2", "layers": 2, "parameters": 1000, "vocabulary": 260}
    mine = {**report, "model": {**report["model"], **facts}}
    checkpoint = {**mine, "model": {**mine["model"], "weight_hash": "another"}}
    assert compare(mine, checkpoint)["regressions"] == []  # new weights, same model
    other = {**mine, "model": {**mine["model"], "layers": 30, "family": "llama"}}
    with pytest.raises(NothingShared, match="the baseline is of another model .*llama, 30 "
                       "layers, 1,000 parameters, vocabulary 260.* than this run \\(gpt2, 2 "
                       "layers"):
        compare(other, mine)
    assert compare(report, mine)["regressions"] == []  # a baseline without the facts


def test_the_same_file_given_by_another_path_is_no_difference(report_pair):
    """`--quantized smol.gguf` from its folder against a baseline of `/rel/smol.gguf`: the
    same contents, so not 'measured otherwise'; other contents under another path are."""
    from quantfair.report import compare

    _, report = report_pair

    def run(path: str, weights: str) -> dict:
        return {**report, "settings": {**report["settings"], "quantized": path},
                "model": {**report["model"], "artifact": {"weight_hash": weights}}}

    assert compare(run("/rel/smol.gguf", "aa"), run("smol.gguf", "aa"))["differences"] == []
    assert compare(run("/rel/smol.gguf", "aa"), run("other.gguf", "bb"))["differences"] == [
        "quantized: /rel/smol.gguf -> other.gguf", "artifact weights: aa -> bb"]


def test_languages_given_in_another_order_are_no_difference(report_pair):
    """`--languages he,ar` and `ar,he` (or selectors written in another order) measure the
    same; another set of languages is a difference."""
    from quantfair.report import compare

    _, report = report_pair

    def run(*languages: str) -> dict:
        return {**report, "settings": {**report["settings"], "languages": ["en", *languages]}}

    assert compare(run("he", "ar"), run("ar", "he"))["differences"] == []
    assert compare(run("he", "ar"), run("he", "fa"))["differences"] == [
        "languages: en,he,ar -> en,he,fa"]


def test_weights_read_in_another_dtype_are_not_said_to_be_other_weights(report_pair):
    """The same file in bfloat16 hashes otherwise: the dtype is the difference, not the
    model's weights."""
    from quantfair.report import compare

    _, report = report_pair

    def run(dtype: str, weights: str) -> dict:
        return {**report, "settings": {**report["settings"], "dtype": dtype},
                "model": {**report["model"], "weight_hash": weights}}

    assert compare(run("float32", "aa"), run("bfloat16", "bb"))["differences"] == [
        "dtype: float32 -> bfloat16"]
    assert compare(run("float32", "aa"), run("float32", "bb"))["differences"] == [
        "model weights: aa -> bb"]


def test_a_comparison_names_settings_that_differ_rows_not_made_and_matches_audits_by_file(
        tmp_path, report_pair):
    """A gate that compared other languages, units or another model must say so; audits
    collected with --pyargs (test_x.py::...) match those collected from audits/."""
    from quantfair.report import compare, comparison_notes

    old, report = report_pair
    other = {**report, "settings": {**report["settings"], "model": "tiny-opt", "units": 8,
                                    "languages": ["en", "ar"]},
             "measurements": [r for r in report["measurements"] if r["language"] == "en"]
             + [{**r, "language": "ar"} for r in report["measurements"] if r["language"] == "he"],
             "audits": [{**a, "nodeid": a["nodeid"].removeprefix("audits/"), "outcome": "failed"}
                        for a in report["audits"]]}
    comparison = compare(report, other)
    assert comparison["differences"] == ["model: tiny-gpt2 -> tiny-opt",
                                         "languages: en,he -> en,ar", "units: 3 -> 8"]
    assert comparison["not_compared"] and all(
        key.endswith("/he") for key in comparison["not_compared"])
    assert comparison["regressions"] == ["audit test_x.py::test_y[none-he]: passed -> failed"]
    notes = comparison_notes(comparison)
    assert ("baseline measured otherwise: model: tiny-gpt2 -> tiny-opt; languages: en,he -> "
            "en,ar; units: 3 -> 8") in notes
    assert any(line.startswith(f"{len(comparison['not_compared'])} baseline measurement(s) "
                               "not made in this run: ") for line in notes)
    every = {**other, "settings": {**other["settings"], "units": None}}  # --units 0
    assert "units: 3 -> all" in compare(report, every)["differences"]
    new, printed, html = _compared(tmp_path, old, other)
    assert printed.returncode == 1 and "baseline measured otherwise: model" in printed.stdout
    assert f"({old}): 1 measurements, 1 audits." in html and "languages: en,he -&gt; en,ar" in html
    assert "1 regression(s), each a disparity grown beyond" in html  # an audit counted
    # the table scrolls on a narrow window, never cutting its columns off
    assert '<div class="wide"><table><thead><tr><th>scheme/strategy/length/language' in html
    new.with_suffix(".html").write_text("the run's own report")
    linked = tmp_path / "linked.html"
    os.link(new.with_suffix(".html"), linked)  # the same file under another name
    for output in (new, new.with_suffix(".html"), old.with_suffix(".html"), linked):
        one_line_error(run_cli("report", str(old), str(new), "--output", str(output)),
                       "would overwrite a report it compares")
    assert new.with_suffix(".html").read_text() == "the run's own report"
    missing = tmp_path / "no" / "r.html"
    one_line_error(run_cli("report", str(old), str(new), "--output", str(missing)),
                   f"--output {missing}: no directory {missing.parent}")
    one_line_error(run_cli("report", str(old), str(new), "--output", str(tmp_path / "c.json")),
                   "the comparison is an HTML page; name it .html")
    assert not (tmp_path / "c.json").exists()
    assert json.loads(new.read_text()) == other


# -- rules: tracebacks only when asked --------------------------------------------------------

def test_quantfair_debug_shows_the_traceback():
    quiet = run_cli("inspect", "tiny-gpt2", "--quant", "int4-g-8")
    one_line_error(quiet, "int4-g-8")
    loud = run_cli_process("inspect", "tiny-gpt2", "--quant", "int4-g-8",
                           env={"QUANTFAIR_DEBUG": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "UsageError" in loud.stderr
    off = run_cli("inspect", "tiny-gpt2", "--quant", "int4-g-8", env={"QUANTFAIR_DEBUG": "false"})
    one_line_error(off, "int4-g-8")  # read as huggingface_hub reads HF_HUB_OFFLINE


@pytest.mark.parametrize("error, code, message", [
    (TypeError("'NoneType' object is not subscriptable"), 3, "unexpected TypeError"),
    (FileNotFoundError(2, "No such file or directory", "/nowhere/x.json"), 2, "/nowhere/x.json"),
    (MemoryError(), 2, "out of memory"),
])
def test_any_failure_of_a_subcommand_is_one_line(monkeypatch, capsys, error, code, message):
    from quantfair import cli

    def fail(args):
        raise error

    monkeypatch.delenv("QUANTFAIR_DEBUG", raising=False)
    monkeypatch.setattr(cli, "cmd_inspect", fail)
    assert cli.main(["inspect", "tiny-gpt2"]) == code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantfair: error:") and message in lines[0]


# -- concurrency: two processes, one cache folder ---------------------------------------------

RACE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from quantfair.evaluate import ResultCache, UnitResult
    from quantfair.models import load_model
    from quantfair.quantize import QuantScheme, WeightBank
    from quantfair.strategies import StrategyResolver, protection_key

    folder, worker = Path(sys.argv[1]), sys.argv[2]
    bank = WeightBank(load_model("tiny-gpt2").model)

    def together(step):  # both processes reach each step before either goes on
        (folder / f"step-{step}-{worker}").touch()
        deadline = time.time() + 60
        while len(list(folder.glob(f"step-{step}-*"))) < 2:
            if time.time() > deadline:
                sys.exit(f"the other process never reached step {step}")
            time.sleep(0.0005)

    keys = []
    for step in range(25):
        together(step)
        resolver = StrategyResolver(bank, QuantScheme(), selector_cache=(folder / "masks", "r"))
        keys.append(protection_key(resolver.resolve(f"random:30%@{step}")))
        ResultCache(folder / "results").store("fp", {
            f"{worker}-{step}-{i}": UnitResult(float(i), i, i, i) for i in range(300)})
    print(json.dumps(keys))
""")


def test_two_processes_sharing_a_cache_never_corrupt_it(tmp_path, tiny_models):
    from quantfair.evaluate import ResultCache
    from quantfair.quantize import QuantScheme, WeightBank
    from quantfair.strategies import StrategyResolver, protection_key

    script = tmp_path / "race.py"
    script.write_text(RACE)
    folder = tmp_path / "cache"
    folder.mkdir()
    workers = [subprocess.Popen([sys.executable, str(script), str(folder), name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr
    resolver = StrategyResolver(WeightBank(tiny_models["tiny-gpt2"].model), QuantScheme())
    expected = [protection_key(resolver.resolve(f"random:30%@{step}")) for step in range(25)]
    assert [json.loads(stdout) for stdout, _ in outputs] == [expected, expected]
    stored = ResultCache(folder / "results").load("fp")
    assert len(stored) == 2 * 25 * 300
    assert not [p for p in (folder / "masks").iterdir() if p.suffix != ".npz"]


SHARED = """
import json, sys, time
from pathlib import Path
from quantfair.storage import shared_json

folder = Path(sys.argv[1])
def compute():
    with open(folder / "computed", "a") as log:
        log.write(sys.argv[2] + "\\n")
    time.sleep(1)  # the other process arrives meanwhile
    return {"by": sys.argv[2]}
print(json.dumps(shared_json(folder / "fact.json", compute)))
"""


def test_a_shared_fact_is_computed_by_one_of_two_processes(tmp_path):
    runs = [subprocess.Popen([sys.executable, "-c", SHARED, str(tmp_path), name],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert len((tmp_path / "computed").read_text().split()) == 1
    assert outputs[0][0] == outputs[1][0]


@pytest.mark.parametrize("damage", [
    lambda kept: {**kept, "value": {"sparsity": 0.9}},  # a number edited: its digest differs
    lambda kept: None, lambda kept: [], lambda kept: {"sparsity": 0.1}])  # not of this form
def test_a_shared_fact_edited_or_malformed_is_computed_again(tmp_path, damage):
    """The layer statistics' file once flipped an audit when a number in it was edited, and
    crashed the run's end (no report) when it held `null`."""
    from quantfair.storage import shared_json

    path = tmp_path / "fact.json"
    assert shared_json(path, lambda: {"sparsity": 0.1}) == {"sparsity": 0.1}
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    assert shared_json(path, lambda: {"sparsity": 0.2}) == {"sparsity": 0.2}
    assert shared_json(path, lambda: {"sparsity": 0.3}) == {"sparsity": 0.2}  # kept, once whole


# -- property tests: corpus loader, scheme and strategy parsers -------------------------------

ODD = ["\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\r", "\n", "\r\n", "e\u0301", "\ufeff",
       "\u0000", '"', "\\", " "]
TEXT = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(ODD)),
                min_size=1, max_size=12).map("".join).filter(str.strip)
CORRUPTIONS = ("invalid_utf8", "truncated", "surrogate", "not_a_string")


@st.composite
def jsonl_corpora(draw):
    """(file bytes, expected texts or None, the 1-based line that must be named)."""
    languages = ["en", *draw(st.lists(st.sampled_from(["de", "he", "pt-BR", "xx"]),
                                      max_size=2, unique=True))]
    units = draw(st.lists(TEXT, min_size=1, max_size=3, unique=True))
    texts = {lg: {u: draw(TEXT) for u in units} for lg in languages}
    records = draw(st.permutations([{"lang": lg, "unit": u, "text": t}
                                    for lg, by_unit in texts.items() for u, t in by_unit.items()]))
    lines = [json.dumps(r, ensure_ascii=draw(st.booleans())).encode() for r in records]
    corruption = draw(st.sampled_from((None, *CORRUPTIONS)))
    bad_line = draw(st.integers(0, len(lines) - 1))
    record = records[bad_line]
    if corruption == "invalid_utf8":
        at = draw(st.integers(0, len(lines[bad_line])))
        lines[bad_line] = lines[bad_line][:at] + b"\xff" + lines[bad_line][at:]
    elif corruption == "truncated":
        lines[bad_line] = lines[bad_line][: draw(st.integers(1, len(lines[bad_line]) - 1))]
    elif corruption == "surrogate":
        lines[bad_line] = json.dumps({**record, "text": record["text"] + "\ud800"}).encode()
    elif corruption == "not_a_string":
        lines[bad_line] = json.dumps({**record, "text": 5}).encode()
    data = draw(st.sampled_from([b"\n", b"\r\n"])).join(lines) + draw(
        st.sampled_from([b"", b"\n", b"\r\n"]))
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data, None if corruption else texts, bad_line + 1


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=jsonl_corpora())
def test_the_corpus_loader_loads_exactly_the_units_or_names_file_and_line(tmp_path, case):
    from quantfair.corpus import load_corpus

    data, expected, line = case
    path = tmp_path / "random.jsonl"
    path.write_bytes(data)
    if expected is not None:
        assert load_corpus(path).texts == expected
    else:
        with pytest.raises(QuantfairError) as error:
            load_corpus(path)
        assert str(error.value).startswith(f"{path}:{line}: ")


@st.composite
def valid_schemes(draw):
    from quantfair.quantize import QuantScheme

    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    return QuantScheme(bits=draw(st.integers(2, 8)), granularity=granularity,
                       group_size=draw(st.integers(1, 4096)) if granularity == "group" else 0,
                       symmetric=draw(st.booleans()), scope=draw(st.sampled_from(["all",
                                                                                  "linear"])))


SCHEME_PARTS = ["int4", "int8", "int", "g128", "g-8", "g0", "g", "channel", "tensor", "asym",
                "sym", "linear", "all", "-", "", "٤", "INT4", " "]


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=20),
                      st.lists(st.sampled_from(SCHEME_PARTS), max_size=5).map("-".join)),
       scheme=valid_schemes())
def test_scheme_strings_round_trip_or_are_usage_errors(text, scheme):
    from quantfair.quantize import QuantScheme

    assert QuantScheme.parse(scheme.name) == scheme
    try:
        parsed = QuantScheme.parse(text)
    except UsageError:
        return
    assert QuantScheme.parse(parsed.name) == parsed


STRATEGY_PIECES = ["L0", "L11", "L-2", "L99", "Llast", "Lmid", "even", "odd", "all", "ln", "ln_f",
                   "biases", "embed", "embed.tok", "embed.pos", "head", "none", "recommended",
                   "layer0", ".attn", ".mlp", ".ln", ".qkv", ".fc_in", ".weight", ".bias",
                   "random:5%@1", "random:", "magnitude:2%", "magnitude:150%", "variance:top2",
                   "variance:top0", "gradient:1%", "+", " ", ".", ":", "%", "@", "L", "٣"]


@pytest.fixture(scope="module")
def gpt2_resolver():
    from quantfair.models import load_model
    from quantfair.quantize import QuantScheme, WeightBank
    from quantfair.strategies import StrategyResolver

    return StrategyResolver(WeightBank(load_model("gpt2", random_weights=True).model),
                            QuantScheme())


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=20),
                      st.lists(st.sampled_from(STRATEGY_PIECES), max_size=6).map("".join)))
def test_strategy_strings_round_trip_or_are_usage_errors(gpt2_resolver, text):
    from quantfair.strategies import protection_key
    from quantfair.strategy_syntax import check_strategy_syntax

    try:
        canonical = check_strategy_syntax(text)
    except UsageError:
        with pytest.raises(UsageError):
            gpt2_resolver.resolve(text)  # what the syntax check refuses, no model accepts
        return
    assert check_strategy_syntax(canonical) == canonical
    try:
        protection = gpt2_resolver.resolve(text)
    except UsageError:
        return  # valid syntax naming what this model lacks (L99, a role, calibration text)
    assert protection_key(gpt2_resolver.resolve(canonical)) == protection_key(protection)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("outcome", ["inconclusive", "skipped"])  # skipped: e.g. a release
def test_an_audit_that_passed_and_is_undecided_now_is_listed(strict, outcome,  # bound dropped
                                                             report_pair):
    from quantfair.html import render_html
    from quantfair.report import compare, comparison_notes

    def report(outcome: str) -> dict:
        whole = report_pair[1]
        return {**whole, "audits": [{**whole["audits"][0], "nodeid": "audits/test_x.py::test_y[a]",
                                     "outcome": outcome}]}

    comparison = compare(report("passed"), report(outcome), strict=strict)
    notes = "\n".join(comparison_notes(comparison))
    listed = (f"1 audit(s) passed in the baseline and are {outcome} now (a regression with "
              "--quantfair-strict): audits/test_x.py::test_y[a]")
    if strict:  # a regression, listed as one
        assert comparison["regressions"] == [
            f"audit audits/test_x.py::test_y[a]: passed -> {outcome}"]
        assert f"{outcome} now" not in notes
    else:
        assert comparison["regressions"] == []
        assert listed in notes
        assert listed in render_html({**report(outcome), "comparison": comparison})
