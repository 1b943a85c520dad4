"""Distribution statistics (llama.cpp's KL divergence, same top, delta-p) against a
full-vocabulary float64 computation on two independently loaded models."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantfair import evaluate
from quantfair.config import RunConfig
from quantfair.corpus import load_corpus
from quantfair.evaluate import Evaluator, ResultCache, Swap
from quantfair.metrics import KLD_FLOOR, Measurement
from quantfair.models import load_model
from quantfair.quantize import QuantScheme, WeightBank
from quantfair.session import AuditSession
from quantfair.strategies import StrategyResolver

SCHEMES = ["int4", "int4-g128-linear", "int8-channel"]


def short_corpus(tmp_path: Path, languages: list[str], units: int, chars: int) -> str:
    """A corpus file of the shipped texts cut to `chars` characters (no sliding windows)."""
    corpus = load_corpus().select(languages)
    chosen = corpus.units[:units]
    path = tmp_path / "short.jsonl"
    path.write_text("".join(
        json.dumps({"lang": lang, "unit": unit, "text": corpus.texts[lang][unit][:chars]},
                   ensure_ascii=False) + "\n"
        for lang in corpus.languages for unit in chosen), encoding="utf-8")
    return str(path)


def load(name: str, softcap: float | None = None, head_bias: bool = False):
    """A fresh model; optionally with soft-capped logits or a (seeded) bias on its head."""
    loaded = load_model(name)
    if softcap:
        loaded.model.config.final_logit_softcapping = softcap
    if head_bias:
        head = loaded.model.get_output_embeddings()
        generator = torch.Generator().manual_seed(0)
        head.bias = torch.nn.Parameter(torch.randn(head.out_features, generator=generator),
                                       requires_grad=False)
    return loaded


def log_probs(model, ids: list[int]) -> torch.Tensor:
    """Float64 log-softmax over the full vocabulary at every predicting position."""
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(),
                                 dim=-1)


def full_vocabulary(log_p: torch.Tensor, log_q: torch.Tensor, ids: list[int]
                    ) -> tuple[float, int, float]:
    """Summed KLD, same-top count and summed delta-p over one unit's scored tokens."""
    target = torch.tensor(ids[1:])[:, None]
    kld = (log_p.exp() * (log_p - log_q)).sum().item()
    same_top = int((log_p.argmax(-1) == log_q.argmax(-1)).sum())
    delta_p = (log_q.gather(1, target).exp() - log_p.gather(1, target).exp()).sum().item()
    return kld, same_top, delta_p


def close(value: float, expected: float) -> bool:
    return abs(value - expected) <= 1e-3 * abs(expected) + 1e-6


def assert_matches_full_vocabulary(session: AuditSession, m: Measurement,
                                   fp: dict[str, torch.Tensor], quantized):
    for i, lang in enumerate(m.languages):
        ids = [session.evaluator.token_ids(t) for t in session.corpus.texts[lang].values()]
        sums = [full_vocabulary(fp[str(unit)], log_probs(quantized, unit), unit) for unit in ids]
        tokens = m.tokens[i].sum()
        kld, same_top, delta_p = (sum(column) for column in zip(*sums, strict=True))
        assert close(m.mean_kld()[lang].value, kld / tokens)
        assert close(m.mean_delta_p()[lang].value, delta_p / tokens)
        assert int(m.same_top[i].sum()) == same_top
        assert m.same_top_rate()[lang].value == same_top / tokens


def check_against_full_vocabulary(name: str, schemes: list[str], strategies: list[str],
                                  tmp_path: Path, units: int, chars: int,
                                  **variant) -> AuditSession:
    corpus = short_corpus(tmp_path, ["en", "he"], units, chars)
    session = AuditSession(RunConfig(model=name, corpus=corpus, units=None),
                           announce=lambda _: None, loaded=load(name, **variant))
    fp_model, quantized = load(name, **variant).model, load(name, **variant)
    fp = {str(ids): log_probs(fp_model, ids) for ids in (
        session.evaluator.token_ids(t) for units in session.corpus.texts.values()
        for t in units.values())}
    bank = WeightBank(quantized.model)
    for scheme in map(QuantScheme.parse, schemes):
        for strategy in strategies:
            passes = session.evaluator.forward_passes
            m = session.measure(strategy, scheme, distribution=True)
            bank.apply(scheme, StrategyResolver(bank, scheme).resolve(strategy))
            assert_matches_full_vocabulary(session, m, fp, quantized.model)
        # A later strategy sharing the quantized head reuses its FP side: no FP forward, as
        # many passes as an NLL-only evaluation of the same texts.
        if session.evaluator.exact_head and len(strategies) > 1:
            texts = [t for units in session.corpus.texts.values() for t in units.values()]
            nll_only = Evaluator(session.loaded, ResultCache(tmp_path / f"nll-{scheme}"))
            nll_only.evaluate("fp", texts)
            assert session.evaluator.forward_passes - passes == nll_only.forward_passes
    return session


@pytest.mark.parametrize("name, scheme", [
    *((name, scheme) for name in ("tiny-gpt2", "tiny-llama") for scheme in SCHEMES),
    *((name, "int4") for name in ("tiny-opt", "tiny-gpt_neox", "tiny-bloom", "tiny-gemma3")),
])
def test_statistics_equal_a_full_vocabulary_computation(name, scheme, tmp_path):
    session = check_against_full_vocabulary(name, [scheme], ["none", "L0"], tmp_path, units=2,
                                            chars=50)
    assert session.evaluator.exact_head


@pytest.mark.parametrize("name, variant", [("tiny-llama", {"head_bias": True}),
                                           ("tiny-gemma3", {"softcap": 3.0})])
def test_statistics_hold_across_blocks_of_positions_and_vocabulary(name, variant, tmp_path,
                                                                    monkeypatch):
    # Logits a few positions at a time, u = W^T p_fp a few vocabulary rows at a time.
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(evaluate, "MIN_BLOCK_ROWS", 3)
    monkeypatch.setattr(evaluate, "LOGITS_BLOCK_BYTES", 1)
    hidden = load(name).model.get_output_embeddings().weight.shape[1]
    monkeypatch.setattr(evaluate, "VOCAB_SLAB_BYTES", 8 * hidden * 7)  # 7 rows of the head
    session = check_against_full_vocabulary(name, ["int4"], ["none", "L0"], tmp_path, units=2,
                                            chars=50, **variant)
    assert session.evaluator.block_rows == 3
    assert session.evaluator.exact_head == ("softcap" not in variant)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_head_bias_enters_through_p_fp_dot_b(scheme, tmp_path):
    session = check_against_full_vocabulary("tiny-llama", [scheme], ["none", "L0"], tmp_path,
                                            units=2, chars=50, head_bias=True)
    assert session.evaluator.exact_head


def test_soft_capped_head_falls_back_to_an_fp_forward(tmp_path, monkeypatch):
    # Soft-capping changes the outputs, not the weights the result cache is keyed by.
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    session = check_against_full_vocabulary("tiny-gemma3", ["int4"], ["none", "L0"], tmp_path,
                                            units=2, chars=50, softcap=3.0)
    assert not session.evaluator.exact_head


def test_fp_against_itself_has_zero_kld_and_the_same_top_everywhere(tmp_path):
    corpus = short_corpus(tmp_path, ["en", "he"], 2, 50)
    session = AuditSession(RunConfig(model="tiny-llama", corpus=corpus, units=None),
                           announce=lambda _: None, loaded=load_model("tiny-llama"))
    session.measure("none", distribution=True)
    texts = [t for units in session.corpus.texts.values() for t in units.values()]
    evaluator, restore = session.evaluator, session.bank.restore
    restore()
    # Once through the FP side's own forward, once through its cached u = W^T p_fp.
    again = evaluator.evaluate_distribution("fp again", texts, Swap(restore, restore))
    for results in (evaluator.cached_distribution("fp", texts), again):
        for r in results.values():
            assert abs(r.kld) <= 1e-6 * r.tokens and np.abs(r.kld_values).max() < 1e-5
            assert r.same_top == r.tokens and abs(r.delta_p) <= 1e-6 * r.tokens


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_in_half_precision_an_unchanged_model_has_zero_kld(dtype, tmp_path, monkeypatch):
    """The model's logits are rounded to its dtype: a cross term taken from the head's input,
    not rounded, once left up to 8e-3 nats per token where every weight was kept."""
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    corpus = short_corpus(tmp_path, ["en", "he"], 2, 50)
    session = AuditSession(RunConfig(model="tiny-llama", corpus=corpus, units=None,
                                     dtype=dtype), announce=lambda _: None)
    kept = session.measure("all+embed+head+ln_f", QuantScheme.parse("int4"), distribution=True)
    assert np.array_equal(kept.nll_q, kept.nll_fp)
    assert max(np.abs(values).max() for values in kept.kld_tokens) < 1e-6
    assert session.evaluator.exact_head and not session.evaluator.caches_fp_side


def test_a_new_distribution_version_never_serves_cached_statistics(tmp_path, monkeypatch):
    """Bumped as its comment asks (statistics defined anew), the version once renamed only the
    FP side's folder: the per-unit statistics of the old definition were still served."""
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    corpus = short_corpus(tmp_path, ["en", "he"], 2, 50)

    def cached() -> int:
        session = AuditSession(RunConfig(model="tiny-gpt2", corpus=corpus, units=None),
                               announce=lambda _: None)
        session.measure("none", distribution=True)
        return session.evaluator.units_computed

    computed = cached()
    assert computed > 0 and cached() == 0
    monkeypatch.setattr(evaluate, "DISTRIBUTION_VERSION", "next")
    assert cached() == computed


def test_kld_does_not_depend_on_unit_order(tmp_path):
    loaded = load_model("tiny-gpt2")
    bank = WeightBank(loaded.model)
    texts = [t[:50] for t in load_corpus().select(["en", "zh"]).texts["zh"].values()][:4]
    fp = Evaluator(loaded, ResultCache(tmp_path / "a")).evaluate_distribution("fp", texts)
    scheme = QuantScheme.parse("int4")

    def measure(order: list[str], folder: str):
        bank.restore()
        evaluator = Evaluator(loaded, ResultCache(tmp_path / folder))
        evaluator.evaluate_distribution("fp", order)
        bank.apply(scheme)
        return evaluator.evaluate_distribution("q", order, Swap(bank.restore,
                                                                 lambda: bank.apply(scheme)))

    forward, backward = measure(texts, "b"), measure(texts[::-1], "c")
    assert forward == backward and set(fp) == set(forward)
    grid = np.array([[forward[t].kld for t in texts]])
    tokens = np.array([[forward[t].tokens for t in texts]], dtype=float)

    def measurement(columns: list[int]) -> Measurement:
        zeros = np.zeros_like(grid[:, columns])
        return Measurement(("en",), zeros, zeros, tokens[:, columns], tokens[:, columns],
                           tokens[:, columns], kld=grid[:, columns], same_top=zeros,
                           delta_p=zeros, delta_p_sq=zeros, kld_tokens=(np.concatenate(
                               [forward[texts[c]].kld_values for c in columns]),))

    ordered, shuffled = measurement([0, 1, 2, 3]), measurement([2, 0, 3, 1])
    assert ordered.mean_kld()["en"].value == pytest.approx(shuffled.mean_kld()["en"].value)
    assert ordered.kld_percentiles() == shuffled.kld_percentiles()


def test_an_fp_reference_removed_or_edited_in_the_cache_is_built_again(tmp_path,
                                                                         monkeypatch):
    """A cleanup job deleting the FP side while a run used it crashed the run (an
    AttributeError on None); a side edited in place (a valid file with other numbers) gave
    other KL divergences, which then entered the results cache."""
    import shutil

    loaded = load_model("tiny-gpt2")
    bank = WeightBank(loaded.model)
    texts = [t[:60] for t in load_corpus().select(["en", "he"]).texts["he"].values()][:3]
    scheme = QuantScheme.parse("int4")

    def measure(folder: str, meddle=None):
        bank.restore()
        evaluator = Evaluator(loaded, ResultCache(tmp_path / folder))
        evaluator.evaluate_distribution("fp", texts)
        bank.apply(scheme)
        swap = Swap(bank.restore, lambda: bank.apply(scheme))
        evaluator.evaluate_distribution("q", texts, swap)  # the FP side for int4's head
        if meddle:
            meddle(evaluator.references.folder)
        return evaluator.evaluate_distribution("q again", texts, swap)

    clean = measure("clean")

    def halve(folder: Path) -> None:
        for path in folder.glob("*.base.npz"):
            with np.load(path) as stored:
                kept = {name: stored[name] for name in stored.files}
            kept["plogp"] = kept["plogp"] * 0.5
            with open(path, "wb") as file:
                np.savez(file, **kept)

    assert measure("edited", halve) == clean
    original = Evaluator._distribution_units

    def deleting(self, *args, **kwargs):  # between the check for the FP side and its use
        shutil.rmtree(self.references.folder, ignore_errors=True)  # none yet for "fp"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "_distribution_units", deleting)
    assert measure("deleted") == clean


def synthetic(kld_en: float) -> Measurement:
    """Two languages x two units with hand-computable statistics."""
    tokens = np.array([[10.0, 10.0], [20.0, 20.0]])
    n_bytes = np.array([[40.0, 40.0], [40.0, 40.0]])
    kld = np.array([[kld_en, kld_en], [3.0, 5.0]])
    return Measurement(
        ("en", "he"), nll_fp=np.zeros((2, 2)), nll_q=np.array([[1.0, 1.0], [4.0, 4.0]]),
        tokens=tokens, bytes=n_bytes, chars=n_bytes, kld=kld,
        same_top=np.array([[9.0, 10.0], [10.0, 10.0]]),
        delta_p=np.array([[-0.1, -0.1], [-0.4, 0.0]]),
        delta_p_sq=np.array([[0.02, 0.02], [0.16, 0.0]]),
        kld_tokens=(np.full(20, kld_en / 10), np.arange(40) / 100))


def test_distribution_metrics_on_hand_computed_numbers():
    m = synthetic(kld_en=1.0)
    assert m.mean_kld()["he"].value == pytest.approx(8 / 40)
    assert m.kld_per_byte()["he"].value == pytest.approx(8 / 80)
    assert m.kld_disparity()["he"].value == pytest.approx((8 / 80) / (2 / 80))
    assert m.kld_disparity()["en"].defined
    assert m.same_top_rate()["en"].value == pytest.approx(19 / 20)
    assert m.mean_delta_p()["he"].value == pytest.approx(-0.4 / 40)
    assert m.rms_delta_p()["en"].value == pytest.approx((0.04 / 20) ** 0.5)
    assert m.ln_ppl_ratio()["he"].value == pytest.approx(8 / 40)
    tails = m.kld_percentiles()["he"]
    assert tails["max"] == pytest.approx(0.39) and tails["median"] == pytest.approx(0.195)
    assert tails["p90"] == pytest.approx(np.percentile(np.arange(40) / 100, 90))


def test_kld_disparity_is_undefined_below_the_floor():
    m = synthetic(kld_en=KLD_FLOOR)  # 2e-4 nats over 20 tokens: below the floor per token
    assert not m.kld_disparity()["he"].defined
    assert "below" in m.kld_disparity()["he"].undefined


def test_nll_only_measurements_say_how_to_get_distribution_statistics():
    m = synthetic(1.0)
    bare = Measurement(m.languages, m.nll_fp, m.nll_q, m.tokens, m.bytes, m.chars)
    with pytest.raises(ValueError, match="distribution=True"):
        bare.mean_kld()


@pytest.mark.slow
def test_smollm2_statistics_equal_a_full_vocabulary_computation(tmp_path):
    session = check_against_full_vocabulary("smollm2-135m", SCHEMES, ["none"], tmp_path,
                                            units=2, chars=150)
    assert session.evaluator.exact_head


def test_records_and_the_html_heatmap_carry_kld_disparity():
    from types import SimpleNamespace

    from quantfair.html import heatmap
    from quantfair.report import measurement_records

    m = synthetic(kld_en=1.0)
    names = [f"u{j}" for j in range(m.units)]
    records = measurement_records(m, units=names, strategy="none", scheme="int4", length="medium",
                                  overhead=SimpleNamespace(fraction=0.0, bytes_fraction=0.0))
    he = records[1]
    assert he["kld_disparity"] == pytest.approx(4.0) and he["kld_undefined"] is None
    assert he["kld_max"] == pytest.approx(0.39) and he["same_top"] == pytest.approx(0.5)
    bare = Measurement(m.languages, m.nll_fp, m.nll_q, m.tokens, m.bytes, m.chars)
    empty = measurement_records(bare, units=names, strategy="none", scheme="int4", length="medium",
                                overhead=SimpleNamespace(fraction=0.0, bytes_fraction=0.0))
    assert set(empty[1]) == set(he) and empty[1]["kld_mean"] is None
    cell = heatmap({"settings": {"scheme": "int4"}, "measurements": records})["rows"][0]["cells"][0]
    assert cell["kld"].startswith("4.00 [") and "KLD disparity 4.00" in cell["title"]
