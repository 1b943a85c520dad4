import copy
import json
import math
import re
from dataclasses import replace
from importlib import resources

import jsonschema
import numpy as np
import pytest
import torch
from markupsafe import escape

from quantfair.cli import main
from quantfair.config import RunConfig
from quantfair.errors import UsageError
from quantfair.html import render_html
from quantfair.metrics import Measurement
from quantfair.models import load_model
from quantfair.quantize import QuantScheme
from quantfair.report import (
    RunRecord,
    build_report,
    fairer_than_none,
    interval_text,
    less_fair_than_none,
    raises_english_damage,
    suggestion_warnings,
    write_report,
)
from quantfair.session import AuditSession
from quantfair.strategy_syntax import check_strategy_syntax
from quantfair.suggest import (
    WIDTH,
    Score,
    Search,
    Step,
    Suggestion,
    _checksum,
    _difference,
    budget_selectors,
    calibration_score,
    compare_on_audit_units,
    confirmation_pool,
    load_suggestion,
    no_suggestion,
    save,
    search_pool,
    search_units,
    suggest,
)
from quantfair.suggest import _path as suggestion_path
from quantfair.summary import FEW_UNITS
from quantfair.weights import layer_variance_ranking

AUDIT_UNITS = [f"article_{i}" for i in range(1, 9)]  # a saved search's eight audit units


def _report_of_no_run(scheme: str = "int4") -> dict:
    """A report of tiny-llama under `scheme` with nothing measured, to hold a suggestion."""
    return build_report(RunRecord(settings={"model": "tiny-llama", "scheme": scheme}, audits=[],
                                  rows=[], model={"name": "tiny-llama"}, processes=[],
                                  selection=None, incomplete=[], duration_s=1.0))


def session_for(loaded, units=4, bits=4, scheme=None) -> AuditSession:
    config = RunConfig(model=loaded.name, scheme=scheme or QuantScheme(bits=bits),
                       languages=("en", "he", "zh"), units=units)
    return AuditSession(config, announce=lambda message: None, loaded=loaded)


def test_languages_given_in_another_order_calibrate_on_the_same_text(tiny_models):
    """`--languages he,zh` and `zh,he`: calibrated selectors (act:, gradient:, ...) choose on
    the same text, so a suggestion searched under one order serves the other."""
    loaded = tiny_models["tiny-llama"]
    digests = {AuditSession(RunConfig(model=loaded.name, scheme=QuantScheme(bits=4),
                                      languages=languages, units=4),
                            announce=lambda message: None, loaded=loaded
                            ).selector_texts_digest()
               for languages in (("en", "he", "zh"), ("en", "zh", "he"))}
    assert len(digests) == 1


PLANTED = 5  # the intermediate unit of layer 2's MLP carrying the planted weights


@pytest.fixture
def planted():
    """A tiny Llama with heavy-tailed layer-2 MLP weights: one huge weight in up_proj and in
    down_proj, both on an intermediate unit whose gate is zero, so the FP model ignores them,
    while a per-tensor scale is set by them and rounds the rest of the MLP to zero: under
    per-tensor INT8 (nearly lossless elsewhere) quantizing that layer then dominates the
    damage (under INT4 every layer of a random model is broken, and it does not)."""
    loaded = load_model("tiny-llama")
    params = dict(loaded.model.named_parameters())
    with torch.no_grad():
        params["model.layers.2.mlp.gate_proj.weight"][PLANTED, :] = 0.0
        params["model.layers.2.mlp.up_proj.weight"][PLANTED, 0] = 1000.0
        params["model.layers.2.mlp.down_proj.weight"][0, PLANTED] = 1000.0
    return loaded


def test_suggest_picks_the_planted_sensitive_layer_first(planted):
    """Keeping the planted layer removes nearly all the damage and raises disparity (the
    other layers' small damage falls on English less): it breaks the model, so the structural
    search keeps it first all the same; the whole search keeps its planted weights (here by
    magnitude selection, which removes still more)."""
    session = session_for(planted, bits=8)
    search = Search(session, 0.40, search_units(session, 3))
    chosen, _, _ = search.greedy([], search.none, search.structural, "structural", 1)
    assert chosen[0] in ("L2", "L2.mlp")
    result = suggest(session, 0.40, calibration_units=3)
    protection = session.resolver().resolve(result.strategy)
    for name, entry in (("up_proj", (PLANTED, 0)), ("down_proj", (0, PLANTED))):
        keep = protection[f"model.layers.2.mlp.{name}.weight"]
        assert keep is True or bool(keep[entry])
    assert result.overhead <= 0.40
    assert set(result.calibration_units).isdisjoint(session.corpus.units)
    assert session.selector_units  # the selectors' own calibration text is not scored on
    assert set(result.calibration_units).isdisjoint(session.selector_units)
    assert all(row["storable"] for row in result.comparison[1:])  # int4 keeps single entries
    labels = [row["label"] for row in result.comparison]
    assert labels[:3] == ["suggested", "none", "seed recipe"]
    assert {"act", "actgap", "magnitude", "gradient", "random (3 seeds)",
            "superweights"} <= set(labels)
    suggested_undefined = result.comparison[0]["mean_disparity"]["undefined"]
    defined = 0
    for row in result.comparison[1:]:
        difference = row["mean_difference"]
        if suggested_undefined or row["mean_disparity"]["undefined"]:
            assert difference["undefined"]  # never a number from an undefined ratio
        else:
            defined += 1
            assert difference["low"] <= difference["value"] <= difference["high"]
    assert defined or suggested_undefined
    # Each row's difference from no protection: the suggestion's is the none row's
    # suggested - none, on the same resampled units; none has none.
    rows = {row["label"]: row for row in result.comparison}
    for name in ("mean", "worst"):
        assert rows["suggested"][f"{name}_vs_none"] == rows["none"][f"{name}_difference"]
        assert f"{name}_vs_none" not in rows["none"]
        assert f"{name}_vs_none" in rows["magnitude"]
    assert load_suggestion(session)["strategy"] == result.strategy
    # One searched with another score (before, the KL divergence's) is not this search's.
    path = suggestion_path(session)
    data = json.loads(path.read_text())
    for older in ({**data, "score_definition": "mean + worst KL disparity"},
                  {k: v for k, v in data.items() if k != "score_definition"}):
        path.write_text(json.dumps({**older, "checksum": _checksum(older)}))
        assert load_suggestion(session) is None
        assert "was searched by another version of quantfair)" in str(no_suggestion(session))
    # One kept before the parts of the model's computation were: either may have changed.
    older = {**data, "evaluator": "0" * 16}
    del older["computed_with"]
    path.write_text(json.dumps({**older, "checksum": _checksum(older)}))
    assert "was searched with another version of quantfair or of the model's settings" in str(
        no_suggestion(session))
    # One edited or damaged in place is not taken for a search's result, and said to be so.
    for damaged, why in (({**data, "strategy": "L0+L1"}, "is damaged or was edited"),
                         (json.dumps(data)[:40], "is damaged")):
        path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
        assert load_suggestion(session) is None
        assert f"({path} {why}): run `quantfair suggest` first" in str(no_suggestion(session))
    path.write_text(json.dumps(data))
    assert load_suggestion(session)["strategy"] == result.strategy


def test_a_search_phase_says_its_time_so_far_and_about_how_long_it_takes(tiny_models,
                                                                         monkeypatch, tmp_path):
    """On the calibration units at the search's pace; on other units at the pace of passes
    that ran every layer, the FP reference counted: the search reuses the hidden states of
    the layers its candidates share, so its pace put the finalists' round at half its time."""
    from quantfair.corpus import Corpus

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path))  # nothing cached
    session = session_for(tiny_models["tiny-llama"])
    calibration = search_units(session, 2)
    search = Search(session, 0.05, calibration)
    # its first measurement ran every layer, the FP side's too: not the search's pace
    assert search._paces == [] and search._fresh_pace > 0
    search.score(["L1"])
    assert len(search._paces) == 1
    search.score(["L1"])  # read back from the cache: no pace (a resumed search said "0 s")
    assert len(search._paces) == 1
    assert Search(session, 0.05, calibration)._fresh_pace is None  # the same, cached
    said = []
    search.announce = said.append
    audit = session.corpus
    pool = Corpus({lang: {**calibration.texts[lang], **audit.texts[lang]}
                   for lang in audit.languages}, audit.source)
    assert search._tokens(pool) == search._tokens(audit) + search._tokens(calibration)
    assert search._tokens(pool, leave_out=calibration) == search._tokens(audit)
    # 30 s each, and a selector's one-off calibration: not the pace
    per_token = 30.0 / search._tokens(calibration)
    search._started, search._paces = 0.0, [per_token, per_token, 20 * per_token]
    # the pool's units not calibrated on: 2 finalists, none and the FP side, 45 s each
    search._fresh_pace = 45.0 / search._tokens(audit)
    monkeypatch.setattr("quantfair.suggest.time.monotonic", lambda: 60.0)
    search.phase("each of 4 layers kept alone", 4)
    search.phase("2 finalists", 3, pool)
    assert said == [
        "quantfair suggest: each of 4 layers kept alone, about 2 min at the pace so far "
        "(60 s so far)",
        "quantfair suggest: 2 finalists, about 3 min at the pace so far (60 s so far)"]


def test_a_greedy_step_names_its_number_of_candidates_in_words(tiny_models, monkeypatch):
    session = session_for(tiny_models["tiny-llama"])
    search = Search(session, 0.3, search_units(session, 2))
    said = []
    monkeypatch.setattr(search, "phase", lambda text, count, *rest: said.append(text))
    options = iter([["L0"], ["L1", "L2"], []])
    search.greedy([], search.score([]), lambda chosen: next(options), "layers", 1)
    assert said[0] == "layers step 1, 1 candidate"
    assert said[1:] in ([], ["layers step 2, 2 candidates"])  # as far as a step improved


def test_whole_layers_are_tried_in_the_order_of_their_measured_score(tiny_models):
    """Every layer is measured alone, those over the budget too (they order the halves tried
    once no whole layer fits): the structural search tries the lowest-scoring layers first,
    not the highest-variance ones."""
    session = session_for(tiny_models["tiny-llama"])
    search = Search(session, 0.05, search_units(session, 2))
    ranking = search.layer_ranking()
    layers = search.resolver.layers
    assert sorted(ranking) == sorted(f"L{layer}" for layer in range(layers))
    assert not any(search.fits([layer]) for layer in ranking)  # halves only, at 5%
    scores = [search.score([layer]) for layer in ranking]
    kinds = [0 if search.repairs(s) else 1 if search.allowed(s) else 2 for s in scores]
    assert kinds == sorted(kinds)
    for kind in set(kinds):
        values = [s.value for s, k in zip(scores, kinds, strict=True) if k == kind]
        assert values == sorted(values)
    by_variance = [f"L{layer}" for layer in layer_variance_ranking(search.resolver.bank)]
    assert ranking[:WIDTH] != by_variance[:WIDTH]  # the two orders differ on this model
    halves = {c.partition(".")[0] for c in search.structural([]) if c.startswith("L")}
    assert halves == set(ranking[:WIDTH])


def test_layers_are_not_measured_when_what_is_kept_spends_the_budget(tiny_models):
    """What is kept may spend the whole budget (super weights at a budget of a few weights,
    here the largest weights): no layer, nor half of one, can be kept beside it, so
    measuring every layer alone would be wasted."""
    session = session_for(tiny_models["tiny-llama"])
    search = Search(session, 0.05, search_units(session, 2))
    magnitude = budget_selectors(session, 0.05)["magnitude"][0]
    assert not any(c.startswith("L") for c in search.structural([magnitude]))
    assert search._ranking is None
    assert any(c.startswith("L") for c in search.structural([]))  # with room, layers are tried
    assert search._ranking is not None


def test_the_search_scores_on_units_the_selectors_did_not_calibrate_on(tiny_models):
    """As many units as are neither audited nor selector text: exactly those; more than
    that: any held-out units."""
    session = session_for(tiny_models["tiny-gpt2"])
    held_out, selector = session.calibration.units, session.selector_units
    unseen = [u for u in held_out if u not in selector]
    assert selector and unseen
    assert search_units(session, len(unseen)).units == unseen
    assert len(search_units(session, len(unseen) + 1).units) == len(unseen) + 1


def test_the_finalists_are_scored_again_on_every_held_out_unit_where_the_pool_has_no_more(
        tiny_models):
    """The second round needs units beyond the calibration's: the pool's where it has
    some, else every held-out unit, the selectors' text too (with 22 of 31 units audited in
    six languages, the pool is the four calibration units); none where nothing is left."""
    session = session_for(tiny_models["tiny-gpt2"])
    held_out, unseen = session.calibration.units, search_pool(session, 2).units
    assert len(unseen) < len(held_out)
    assert confirmation_pool(session, search_units(session, 2)).units == unseen
    assert confirmation_pool(session, search_units(session, len(unseen))).units == held_out
    assert confirmation_pool(session, session.calibration) is None


def test_under_a_block_format_the_search_pool_has_every_held_out_unit(tiny_models):
    """Whole-tensor candidates are not chosen on any text: the selectors' units may score."""
    session = session_for(tiny_models["tiny-gpt2"], scheme=QuantScheme.parse("gguf:Q8_0"))
    assert session.selector_units
    assert search_pool(session, 2).units == session.calibration.units


def test_the_finalists_are_decided_on_the_whole_pool(tiny_models, monkeypatch):
    """Ranked first on a few calibration units is not enough: of the finalists, the one
    scoring lowest on every unit of the pool is refined (here the calibration's second)."""
    session = session_for(tiny_models["tiny-gpt2"])
    pool = search_pool(session, 2)
    search = Search(session, 0.3, search_units(session, 2), pool=pool)
    assert len(pool.units) > 2
    on_pool = {"A": {"en": 1.0, "he": 3.0, "zh": 3.5}, "B": {"en": 1.0, "he": 2.0, "zh": 2.5},
               "none": {"en": 1.0, "he": 2.5, "zh": 3.0}}

    def measure(strategy, scheme=None, corpus=None, distribution=False):
        assert corpus is pool and distribution  # with the KL divergence (the damage)
        return _measured(on_pool[strategy])

    monkeypatch.setattr(session, "measure", measure)
    calibration = {"A": 4.0, "B": 4.5, "none": 5.0}
    finalists = [(Score(calibration[name], 0, 0, 0, 1), [name] if name != "none" else [])
                 for name in ("A", "B", "none")]
    score, chosen = search.confirm(finalists)
    assert chosen == ["B"] and score.value == 4.5  # the calibration score goes on
    assert [c["strategy"] for c in search.confirmed] == ["A", "B", "none"]
    assert search.confirmed[1]["score"] == pytest.approx(2.25 + 2.5)


def _per_unit(change: dict[str, list[float]]) -> Measurement:
    """Each language's NLL change (and KL divergence) on each of its units, nats."""
    delta = np.array(list(change.values()))
    fp, ones = np.full_like(delta, 10.0), np.ones_like(delta)
    return Measurement(tuple(change), fp, fp + delta, ones, ones, ones, kld=delta)


@pytest.mark.parametrize(("steady_zh", "chosen"), [(2.8, ["steady"]), (3.0, ["noisy"])])
def test_the_finalist_refined_is_proven_fairer_than_none_on_the_pool(
        tiny_models, monkeypatch, steady_zh, chosen):
    """`noisy` scores lowest on the pool, its languages' NLL changes swinging from unit to
    unit, so its difference from no protection is within their noise (the CI reaches above
    0); `steady` scores a little higher and is fairer than none on every unit: the proven one
    is refined. Where `steady` proves nothing either (its worst language, Chinese, as
    unprotected), the lowest."""
    session = session_for(tiny_models["tiny-gpt2"])
    pool = search_pool(session, 2)
    search = Search(session, 0.3, search_units(session, 2), pool=pool)
    on_pool = {"none": {"en": [1.0] * 6, "he": [2.0] * 6, "zh": [3.0] * 6},
               "steady": {"en": [1.0] * 6, "he": [1.8] * 6, "zh": [steady_zh] * 6},
               "noisy": {"en": [1.0] * 6, "he": [0.2, 3.0] * 3, "zh": [0.2, 4.8] * 3}}

    def measure(strategy, scheme=None, corpus=None, distribution=False):
        assert corpus is pool
        return _per_unit(on_pool[strategy])

    monkeypatch.setattr(session, "measure", measure)
    finalists = [(Score(1.0, 0, 0, 0, 1), [name] if name != "none" else [])
                 for name in ("noisy", "steady", "none")]
    assert search.confirm(finalists)[1] == chosen
    noisy, steady, none = search.confirmed
    assert noisy["score"] < steady["score"] < none["score"]
    assert noisy["mean_vs_none"]["value"] < 0 < noisy["mean_vs_none"]["high"]
    assert not noisy["proven"] and not none["proven"]
    assert steady["proven"] == (steady_zh < 3.0)


def test_the_pool_decides_where_the_greedy_path_stops(tiny_models, monkeypatch):
    """Each step of the greedy path lowers the score on the calibration units, some by their
    noise only: the path stopped at each earlier step is a finalist too, and here the pool
    prefers the first step alone."""
    session = session_for(tiny_models["tiny-gpt2"])
    pool = search_pool(session, 2)
    search = Search(session, 0.3, search_units(session, 2), pool=pool)
    search.none = search.floor = Score(4.0, 2.0, 2.0, 4.0, 1.0)
    calibration = {"A": 3.0, "A+B": 2.5, "A+B+C": 2.0}
    monkeypatch.setattr(search, "portfolio", lambda: [])
    monkeypatch.setattr(search, "score", lambda units: Score(calibration["+".join(units)],
                                                             1.0, 1.0, 3.5, 1.0))
    monkeypatch.setattr(search, "structural",
                        lambda chosen: [u for u in "ABC" if u not in chosen][:1])
    monkeypatch.setattr(search, "_new", lambda chosen, options: [])
    monkeypatch.setattr(search, "overhead", lambda units: 0.1)
    on_pool = {"A": {"en": 1.0, "he": 1.5, "zh": 2.0}, "A+B": {"en": 1.0, "he": 2.0, "zh": 2.5},
               "A+B+C": {"en": 1.0, "he": 2.5, "zh": 3.0},
               "none": {"en": 1.0, "he": 2.5, "zh": 3.5}}
    monkeypatch.setattr(search, "measure", lambda units, corpus=None: _measured(
        on_pool["+".join(units) or "none"]))
    chosen, score, _ = search.run(announce=lambda message: None)
    assert chosen == ["A"] and score.value == 3.0
    assert [c["strategy"] for c in search.confirmed] == ["A+B+C", "A", "A+B", "none"]


@pytest.mark.parametrize(("pool_winner", "english_change", "chosen"), [
    ("most", 20.0, ["most"]), ("fairer", 20.0, ["fairer"]), ("fairer", 30.0, ["most"])])
def test_a_selector_removing_most_of_the_damage_is_a_finalist_decided_on_the_pool(
        tiny_models, monkeypatch, pool_winner, english_change, chosen):
    """`most`, a selector spreading the budget over the model, removes 95% of the damage and
    raises disparity on the calibration units; `fairer` lowers disparity and removes a
    quarter. `most` is not kept first (it repairs the scheme's coarseness, not one broken
    part), yet it is a finalist, though it scores above no protection there: the pool
    decides between them. Where the scheme destroys the model (English's perplexity x20,
    e^(30 / 10), not x7.4), `most` is kept first all the same."""
    session = session_for(tiny_models["tiny-gpt2"])
    pool = search_pool(session, 2)
    search = Search(session, 0.3, search_units(session, 2), pool=pool)
    search.none = search.floor = Score(4.0, 2.0, 2.0, 4.0, 1.0, english_change, 10.0)
    scores = {"fairer": Score(3.0, 1.5, 1.5, 3.0, 1.0), "most": Score(5.0, 2.5, 2.5, 0.2, 0.04)}
    monkeypatch.setattr(search, "portfolio", lambda: list(scores))
    monkeypatch.setattr(search, "score", lambda units: scores["+".join(units)])
    monkeypatch.setattr(search, "_new", lambda chosen, options: [])
    monkeypatch.setattr(search, "structural", lambda chosen: [])
    monkeypatch.setattr(search, "overhead", lambda units: 0.1)
    on_pool = {"none": {"en": 1.0, "he": 2.5, "zh": 3.0},
               pool_winner: {"en": 1.0, "he": 1.5, "zh": 2.0}}
    monkeypatch.setattr(search, "measure", lambda units, corpus=None: _measured(
        on_pool.get("+".join(units) or "none", {"en": 1.0, "he": 2.0, "zh": 2.5})))
    assert search.run(announce=lambda message: None)[0] == chosen
    if english_change < 30:
        assert search.kept == []
        assert {c["strategy"] for c in search.confirmed} == {"fairer", "most", "none"}
    else:
        assert search.kept == ["most"]


def test_super_weights_removing_most_of_the_damage_are_kept_first(tiny_models, monkeypatch):
    """Super weights whose keeping removes 95% of the damage break the model where they sit
    (Yu et al. 2024): kept first, whatever they do to disparity, and the search goes on from
    them; of two such, the fairer, not the one removing more."""
    session = session_for(tiny_models["tiny-gpt2"])
    search = Search(session, 0.3, search_units(session, 2))
    search.none = search.floor = Score(4.0, 2.0, 2.0, 4.0, 1.0)
    scores = {"fairer": Score(3.0, 1.5, 1.5, 3.0, 1.0),
              "superweights:4": Score(5.0, 2.5, 2.5, 0.2, 0.04),
              "superweights:2": Score(4.5, 2.2, 2.3, 1.0, 0.2),
              "superweights:2+L1": Score(4.2, 2.1, 2.1, 0.9, 0.2)}
    monkeypatch.setattr(search, "portfolio", lambda: list(scores)[:3])
    monkeypatch.setattr(search, "score", lambda units: scores["+".join(units)])
    monkeypatch.setattr(search, "_new", lambda chosen, options: [])
    monkeypatch.setattr(search, "structural",
                        lambda chosen: ["L1"] if chosen == ["superweights:2"] else [])
    monkeypatch.setattr(search, "overhead", lambda units: 0.1)
    chosen, score, _ = search.run(announce=lambda message: None)
    assert chosen == ["superweights:2", "L1"] and score == scores["superweights:2+L1"]
    assert search.kept == ["superweights:2"]


def test_a_refinement_adds_nothing_to_a_repairing_finalist_that_its_score_does_not_earn(
        tiny_models, monkeypatch):
    """Magnitude selection removing most of the damage, refined: super weights changing
    nothing it keeps (the same score) are not added as if they repaired the model, nor is an
    extra raising the score; one lowering it is."""
    session = session_for(tiny_models["tiny-gpt2"])
    search = Search(session, 0.3, search_units(session, 2))
    search.none = search.floor = Score(4.0, 2.0, 2.0, 4.0, 1.0)
    scores = {"magnitude:10%": Score(3.0, 1.5, 1.5, 0.4, 0.1)}
    scores["magnitude:10%+superweights:8"] = scores["magnitude:10%"]
    scores["magnitude:10%+ln"] = Score(3.2, 1.6, 1.6, 0.39, 0.1)
    scores["magnitude:10%+ln_f"] = Score(2.5, 1.2, 1.3, 0.39, 0.1)
    scores["magnitude:10%+ln_f+superweights:8"] = scores["magnitude:10%+ln_f"]
    scores["magnitude:10%+ln_f+ln"] = scores["magnitude:10%+ln"]
    monkeypatch.setattr(search, "portfolio", lambda: ["magnitude:10%"])
    monkeypatch.setattr(search, "score", lambda units: scores["+".join(units)])
    monkeypatch.setattr(search, "_new", lambda chosen, options: options)
    monkeypatch.setattr(search, "structural", lambda chosen: [])
    monkeypatch.setattr(search, "overhead", lambda units: 0.1)
    for extras, expected in ((("superweights:8", "ln"), ["magnitude:10%"]),
                             (("superweights:8", "ln", "ln_f"), ["magnitude:10%", "ln_f"])):
        search.floor = search.none
        monkeypatch.setattr(search, "_exists", lambda unit, extras=extras: unit in extras)
        chosen, score, _ = search.run(announce=lambda message: None)
        assert chosen == expected and score == scores["+".join(expected)]


@pytest.mark.parametrize(("change", "taken"), [(1e-9, False), (1e-3, True)])
def test_a_unit_is_added_only_for_more_than_float_noise(tiny_models, monkeypatch, change,
                                                         taken):
    """Batch composition moves a score by ~1e-7: a unit protecting nothing that matters
    (e.g. norms a GGUF file keeps in F32) must not be added for that."""
    session = session_for(tiny_models["tiny-gpt2"])
    search = Search(session, 0.3, search_units(session, 2))
    best = Score(2.0, 1.0, 1.0, 2.0, 1.0)
    monkeypatch.setattr(search, "score", lambda units: replace(best, value=2.0 * (1 - change)))
    chosen, _, _ = search.greedy([], best, lambda units: [] if units else ["ln_f"],
                                 "refinement", 1)
    assert chosen == (["ln_f"] if taken else [])


def _measured(change: dict[str, float], kld: dict[str, float] | None = None) -> Measurement:
    """Two units per language, each with half of the language's NLL change and of its KL
    divergence (by default the NLL changes the other way round, English's the largest, to
    tell the two apart)."""
    halves = np.array([[d / 2, d / 2] for d in change.values()])
    fp = np.full_like(halves, 10.0)
    ones = np.ones_like(fp)
    kld_halves = halves[::-1] if kld is None else np.array([[d / 2] * 2 for d in kld.values()])
    return Measurement(tuple(change), fp, fp + halves, ones, ones, ones, kld=kld_halves)


def test_the_score_is_the_audits_disparity_and_the_damage_is_reported_beside_it():
    """A protection that removes most of English's damage but less of the others' lowers the
    damage and raises the disparity: the score (what the search lowers) is the disparity the
    audits judge, of NLL changes (not of KL divergences, which rank the other way here); the
    damage is the KL divergence over English's unprotected one."""
    none = calibration_score(_measured({"en": 2.0, "he": 4.0, "zh": 6.0},
                                       {"en": 2.0, "he": 4.0, "zh": 6.0}))
    english_first = calibration_score(_measured({"en": 0.5, "he": 2.0, "zh": 3.0},
                                                {"en": 0.5, "he": 2.0, "zh": 3.0}), none)
    by_kld = calibration_score(_measured({"en": 2.0, "he": 4.0, "zh": 6.0}))
    assert (by_kld.mean, by_kld.worst) == (2.5, 3.0)  # not 0.5 and 2/3 (KL disparity)
    assert (none.mean, none.worst, none.value) == (2.5, 3.0, 5.5)
    assert (english_first.mean, english_first.worst) == (5.0, 6.0)
    assert english_first.value > none.value and english_first.damage < none.damage
    assert english_first.damage == pytest.approx((1.0 + 1.5) / 2 + 1.5)


def test_raising_englishs_nll_change_earns_no_fairness():
    """The ratio falls when English's NLL change rises: on a few calibration units that is
    noise (on SmolLM2 under gguf:Q4_0 whole layers raised it there, and not on the audit
    units), so English's change counts at most at its unprotected value; lowering another
    language's change still counts, and lowering English's raises the score as in the audits."""
    none = calibration_score(_measured({"en": 2.0, "he": 4.0, "zh": 6.0}))
    english_worse = calibration_score(_measured({"en": 4.0, "he": 4.0, "zh": 6.0}), none)
    zh_better = calibration_score(_measured({"en": 2.0, "he": 4.0, "zh": 4.0}), none)
    english_better = calibration_score(_measured({"en": 1.0, "he": 4.0, "zh": 6.0}), none)
    assert (english_worse.mean, english_worse.worst) == (none.mean, none.worst) == (2.5, 3.0)
    assert (zh_better.mean, zh_better.worst) == (2.0, 2.0)
    assert (english_better.mean, english_better.worst) == (5.0, 6.0)
    assert english_worse.english_change == 4.0  # reported as measured
    # without the unprotected score (or where English's NLL fell unprotected): the plain ratio
    assert calibration_score(_measured({"en": 4.0, "he": 4.0, "zh": 6.0})).mean == 1.25
    fell = calibration_score(_measured({"en": -1.0, "he": 4.0, "zh": 6.0}))
    assert calibration_score(_measured({"en": 4.0, "he": 4.0, "zh": 6.0}), fell).mean == 1.25


@pytest.mark.parametrize("english", [0.0, -0.5])
def test_a_disparity_over_no_english_change_scores_infinite(english):
    """Where English's NLL does not rise the ratio is undefined (the audits say so): such a
    candidate never looks fairer than one with a defined disparity."""
    score = calibration_score(_measured({"en": english, "he": 1.0, "zh": 2.0}))
    assert score.value == score.mean == score.worst == np.inf


def test_under_a_block_format_every_candidate_is_whole_tensors(tiny_models):
    """GGUF stores one type per tensor: the search may not keep single entries there."""
    # audit units whose held-out rest gives this random model more than one finalist
    session = session_for(tiny_models["tiny-llama"], scheme=QuantScheme.parse("gguf:Q4_0"),
                          units=5)
    result = suggest(session, 0.15, calibration_units=3)
    resolver = session.resolver()
    assert len(result.trace) > 1
    # the finalists' second round is scored on the whole pool, more units, none audited
    assert result.confirmation
    assert set(result.calibration_units) < set(result.confirmation_units)
    assert set(result.confirmation_units).isdisjoint(session.corpus.units)
    for step in result.trace:
        assert all(keep is True for keep in resolver.resolve(step.strategy).values()), step
        # norms stay in F32 in a GGUF file: keeping them changes nothing, and is not tried
        assert step.candidate not in ("ln", "ln_f") and not step.candidate.endswith(".ln")
    storable = {row["label"]: row["storable"] for row in result.comparison[1:]}
    assert storable["none"] and storable["seed recipe"] and not storable["magnitude"]


@pytest.mark.parametrize("budget", [0.01, 0.05, 0.12, 1 / 3])
def test_every_entry_selector_at_a_budget_fits_in_it(tiny_models, budget):
    """Each tensor rounds its share to the nearest entry: a percentage rounded up would put
    magnitude, gradient and random selection over the budget and out of the search."""
    session = session_for(tiny_models["tiny-llama"])
    selectors = budget_selectors(session, budget)
    for label in ("actgap", "magnitude", "gradient", "random (3 seeds)"):
        for strategy in selectors[label]:
            assert session.overhead(strategy).fraction <= budget, strategy
    portfolio = Search(session, budget, search_units(session, 2)).portfolio()
    assert selectors["magnitude"][0] in portfolio


@pytest.mark.parametrize("budget", [1e-9, 1e-11])
def test_an_entry_share_of_a_tiny_budget_is_a_valid_term(tiny_models, budget):
    """The share is written with at most the 9 decimals a strategy term takes."""
    session = session_for(tiny_models["tiny-llama"])
    percent = session.entry_percent(budget)
    assert check_strategy_syntax(f"magnitude:{percent}")
    assert session.overhead(f"magnitude:{percent}").fraction <= budget


def test_a_baseline_a_block_format_cannot_store_is_marked(tmp_path, capsys):
    """Under GGUF single kept entries are only simulated: the CLI table and the HTML report
    mark such baselines and say so."""
    path = tmp_path / "suggestion.json"
    assert main(["suggest", "tiny-llama", "--budget", "40%", "--quant", "gguf:Q8_0",
                 "--languages", "en,he", "--units", "4", "--calibration-units", "1", "--json",
                 str(path)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^\| magnitude \* ", printed, re.MULTILINE)
    assert not re.search(r"^\| seed recipe \* ", printed, re.MULTILINE)
    assert "* keeps single entries, which a file cannot store under gguf:Q8_0" in printed
    assert "significantly fairer than no protection (it - none, 95% CI below 0): mean:" in printed
    # as measure and the audits say: 4 audit units decide nothing at 5%
    assert "note: with 4 units per language the bootstrap CIs understate the uncertainty" \
        in printed
    pool = json.loads(path.read_text())["confirmation_units"]  # named, as an overlap error will
    assert pool and f"held-out units per language ({', '.join(pool)}; " in printed
    report = _report_of_no_run("gguf:Q8_0")
    report["suggestion"] = {**json.loads(path.read_text()), "confirmation_units": ["a", "b"],
                            "confirmation": [{"strategy": "L1", "score": 1.5,
                                              "mean_disparity": 0.5, "worst_disparity": 1.0,
                                              "proven": True},
                                             {"strategy": "L2", "score": 1.25,
                                              "mean_disparity": 0.5, "worst_disparity": 0.75,
                                              "proven": False}]}
    html = render_html(report)
    assert "Finalists scored again on 2 held-out units" in html
    assert "<code>L1</code> 1.5*, <code>L2</code> 1.25." in html  # * proven fairer
    assert "<code>L1</code> 1.5" in html
    assert "<td>magnitude *</td>" in html and "<td>seed recipe</td>" in html
    assert "which a file cannot store under gguf:Q8_0" in html
    assert "<th>vs none (mean)</th><th>vs none (worst)</th>" in html
    row = re.search(r"<td>magnitude \*</td>.*?</tr>", html, re.DOTALL).group()
    assert row.count("<td") == 10  # label, strategy, overhead, 2 disparities, 4 differences, en


def test_an_undefined_score_is_written_as_null_and_left_off_the_chart(tmp_path):
    """Where English's NLL does not rise a candidate's disparity is infinite: the suggestion
    stays strict JSON (null), a report holding it validates against its schema and renders,
    and the search chart plots the steps whose disparity is defined."""
    trace = [Step(0, "none", "none", 5.5, 0.0, 2.0, False, 2.5, 3.0, "portfolio", 5.5),
             Step(0, "L0", "L0", math.inf, 0.1, 0.0, True, math.inf, math.inf, "portfolio",
                  0.1)]
    suggestion = Suggestion("tiny-llama", "int4", 0.2, "L0", 0.1, math.inf, trace=trace)
    data = json.loads(json.dumps(suggestion.to_json(), allow_nan=False))
    assert data["score"] is None and data["trace"][1]["score"] is None
    assert data["trace"][0]["score"] == 5.5 and data["trace"][1]["overhead"] == 0.1
    report = _report_of_no_run()
    report["suggestion"] = data
    schema = json.loads((resources.files("quantfair") / "schemas/report-6.schema.json")
                        .read_text())
    jsonschema.validate(data, schema["properties"]["suggestion"])
    _, html = write_report(report, tmp_path / "report.json")
    assert "Suggest search (L0)" in html.read_text()


def test_the_selectors_fairer_than_none_are_those_whose_ci_lies_below_0():
    def row(label: str, mean: tuple[float, float], worst: tuple[float, float]) -> dict:
        return {"label": label, **{f"{name}_vs_none": {"value": sum(ci) / 2, "low": ci[0],
                                                       "high": ci[1]}
                                   for name, ci in (("mean", mean), ("worst", worst))}}

    comparison = [row("suggested", (-0.5, 0.1), (-0.9, -0.2)), {"label": "none"},
                  row("act", (-0.7, -0.3), (0.1, 0.6)), row("random", (0.2, 0.5), (-1, 0))]
    assert fairer_than_none(comparison).endswith("mean: act; worst: suggested")
    assert fairer_than_none(comparison[1:2]).endswith("mean: none of them; worst: none of them")
    assert less_fair_than_none(comparison[3]) == ["mean"]
    assert less_fair_than_none(comparison[0]) == [] == less_fair_than_none(comparison[1])
    # a disparity that is undefined (English's NLL did not rise) is fairer than nothing
    comparison[2]["mean_disparity"] = {"value": None, "low": None, "high": None,
                                       "undefined": "English's NLL did not rise"}
    assert fairer_than_none(comparison).endswith("mean: none of them; worst: suggested")
    # read back from JSON, an undefined difference has None bounds (it raised TypeError)
    read_back = json.loads(json.dumps(
        [{**r, "mean_vs_none": {"value": None, "low": None, "high": None}} for r in comparison]))
    assert fairer_than_none(read_back).endswith("mean: none of them; worst: suggested")
    assert less_fair_than_none(read_back[3]) == []
    # a difference of two undefined disparities is undefined too, not "nan [nan, nan]"
    assert interval_text({"value": math.nan, "low": math.nan, "high": math.nan}) == "undefined"
    # and so is a difference from one undefined disparity, whatever its resamples say
    draws = np.array([1.0, 2.0, 3.0])
    defined, undefined = (2.0, draws, ""), (math.nan, draws - 5, "English's NLL did not rise")
    assert interval_text(_difference(defined, (1.0, draws - 1, ""))) == "1.000 [1.000, 1.000]"
    assert interval_text(_difference(defined, undefined)) == "undefined"
    assert interval_text(_difference(undefined, defined)) == "undefined"


def test_englishs_damage_on_the_audit_units_is_compared_with_none(tiny_models):
    """Each row's English degradation minus none's, paired over the audit units' resamples:
    the search keeps English's damage from growing on its calibration units only."""
    session = session_for(tiny_models["tiny-llama"], units=6)
    comparison = {row["label"]: row for row in compare_on_audit_units(
        session, "L0", budget_selectors(session, 0.4))}
    none, kept = comparison["none"]["english_degradation"], comparison["suggested"]
    rise = kept["english_vs_none"]
    assert rise["value"] == pytest.approx(kept["english_degradation"] - none, abs=1e-9)
    assert rise["low"] <= rise["value"] <= rise["high"] and rise["low"] < rise["high"]
    assert "english_vs_none" not in comparison["none"]
    assert raises_english_damage(kept) == (rise["low"] > 0)
    # one unit: every resample is that unit, and its "CI" a point, as for the disparities
    one = session_for(tiny_models["tiny-llama"], units=1)
    kept = compare_on_audit_units(one, "L0", {"none": ["none"]})[0]
    assert kept["english_vs_none"]["undefined"] == kept["mean_disparity"]["undefined"]
    assert kept["english_vs_none"]["undefined"] and not raises_english_damage(kept)


def test_a_suggestion_raising_englishs_damage_on_the_audit_units_is_warned_about(
        tiny_models, monkeypatch, capsys):
    disparity = {"value": 2.0, "low": 1.5, "high": 2.5}
    rows = [{"label": label, "strategies": [label], "overhead": 0.1, "storable": True,
             "mean_disparity": disparity, "worst_disparity": disparity,
             "english_degradation": degradation,
             "english_vs_none": {"value": degradation - 1.06, "low": low, "high": 0.08}}
            for label, degradation, low in (("suggested", 1.109, 0.012), ("none", 1.06, 0))]
    del rows[1]["english_vs_none"]
    suggestion = Suggestion("tiny-llama", "int4", 0.03, "L0", 0.02, 1.0, comparison=rows,
                            audit_units=AUDIT_UNITS)
    monkeypatch.setattr("quantfair.suggest.suggest", lambda *args, **kwargs: suggestion)
    assert main(["suggest", "tiny-llama", "--budget", "3%", "--languages", "en,he",
                 "--units", "4"]) == 0
    warning = ("on the search's held-out audit units the suggestion raises en's degradation "
               "from 106.00% (none) to 110.90% (95% CI of the rise [1.20, 8.00] points)")
    assert f"warning: {warning}" in capsys.readouterr().out
    report = _report_of_no_run()
    report["suggestion"] = suggestion.to_json()
    assert f"<strong>Warning:</strong> {escape(warning)}" in render_html(report)  # as said
    fell = copy.deepcopy(suggestion.to_json())  # English improved without protection
    fell["comparison"][1]["english_degradation"] = -0.0322
    assert "raises en's degradation from -3.22% (none: its loss fell under quantization) to " \
        "110.90%" in suggestion_warnings(fell)[0]
    rows[0]["english_vs_none"]["low"] = -0.01  # a rise within noise
    report["suggestion"] = suggestion.to_json()
    assert "raises en&#39;s degradation" not in render_html(report)
    assert main(["suggest", "tiny-llama", "--budget", "3%", "--languages", "en,he",
                 "--units", "4"]) == 0
    assert "raises en's degradation" not in capsys.readouterr().out
    # on few audit units the plain intervals understate the noise: no warning is decided
    rows[0]["english_vs_none"]["low"] = 0.012
    suggestion.audit_units = AUDIT_UNITS[:FEW_UNITS - 1]
    assert main(["suggest", "tiny-llama", "--budget", "3%", "--languages", "en,he",
                 "--units", "4"]) == 0
    assert "raises en's degradation" not in capsys.readouterr().out
    report["suggestion"] = suggestion.to_json()
    assert "raises en&#39;s degradation" not in render_html(report)


def test_the_reports_suggestion_says_what_its_audit_units_said_of_it():
    """The HTML's suggestion section once showed the table alone: a reviewer was not told what
    `quantfair suggest` printed, that the suggestion is significantly less fair than none."""
    def row(label: str, mean_vs_none: tuple[float, float] | None) -> dict:
        disparity = {"value": 2.0, "low": 1.5, "high": 2.5}
        versus = {} if mean_vs_none is None else {
            f"{name}_vs_none": {"value": sum(mean_vs_none) / 2, "low": mean_vs_none[0],
                                "high": mean_vs_none[1]} for name in ("mean", "worst")}
        return {"label": label, "strategies": [label], "overhead": 0.1, "storable": True,
                "english_degradation": 0.5, "mean_disparity": disparity,
                "worst_disparity": disparity, **versus}

    report = _report_of_no_run()
    less_fair = "the suggestion is significantly less fair than no protection (mean and worst"
    for versus, act, warned in (((0.2, 0.9), (-0.4, -0.1), True), ((-0.9, -0.2), (0.1, 0.2),
                                                                   False)):
        rows = [row("suggested", versus), row("none", None), row("act", act)]
        report["suggestion"] = Suggestion("tiny-llama", "int4", 0.03, "L0", 0.02, 1.0,
                                          comparison=rows, audit_units=AUDIT_UNITS).to_json()
        html = render_html(report)
        assert (less_fair in html) == warned
        fairer = "act" if warned else "suggested"
        assert (f"Significantly fairer than no protection (it - none, 95% CI below 0): mean: "
                f"{fairer}; worst: {fairer}.") in html


def test_a_suggestion_that_searched_nothing_is_shown_as_such_in_the_report():
    """A budget of 0% audited: the page named "calibration units  (0 forward passes)" and
    drew an empty comparison table, with no word of why."""
    report = _report_of_no_run()
    report["suggestion"] = Suggestion("tiny-llama", "int4", 0.0, "none", 0.0, math.nan,
                                      languages=["en", "he"],
                                      note="budget 0%: nothing is protected").to_json()
    html = render_html(report)
    section = html[html.index("<h2>Suggested protection"):html.index("<h2>Provenance")]
    assert "in en, he; overhead 0.0%. Budget 0%: nothing is protected.</p>" in section
    assert "calibration units" not in section and "<table" not in section


def test_why_the_audit_units_disparities_are_undefined_is_said(monkeypatch, capsys):
    """A table of "undefined" beside a suggestion chosen anyway: `measure` said why, `suggest`
    did not."""
    reason = "en loss change is below 0.001 nats/token"
    undefined = {"value": None, "low": None, "high": None, "undefined": reason}
    rows = [{"label": label, "strategies": [label], "overhead": 0.1, "storable": True,
             "mean_disparity": undefined, "worst_disparity": undefined,
             "english_degradation": 0.001} for label in ("suggested", "none")]
    suggestion = Suggestion("tiny-llama", "int4", 0.03, "L0", 0.02, 1.0, comparison=rows)
    monkeypatch.setattr("quantfair.suggest.suggest", lambda *args, **kwargs: suggestion)
    assert main(["suggest", "tiny-llama", "--budget", "3%", "--languages", "en,he",
                 "--units", "4"]) == 0
    assert capsys.readouterr().out.count(f"note: disparity undefined: {reason}") == 1
    report = _report_of_no_run()
    report["suggestion"] = suggestion.to_json()
    assert f"Undefined: {reason}." in render_html(report)


def test_the_trace_marks_a_term_added_to_what_earlier_steps_kept(monkeypatch, capsys):
    """A refinement row read `superweights:8` beside the score and overhead of the finalist
    it was added to."""
    trace = [Step(1, "L0", "L0", 2.0, 0.05, 1.0, True),
             Step(2, "ln", "L0+ln", 1.9, 0.06, 1.0, False, phase="refinement")]
    suggestion = Suggestion("tiny-llama", "int4", 0.1, "L0", 0.05, 2.0, trace=trace)
    monkeypatch.setattr("quantfair.suggest.suggest", lambda *args, **kwargs: suggestion)
    assert main(["suggest", "tiny-llama", "--budget", "10%", "--languages", "en,he",
                 "--units", "4"]) == 0
    rows = [line.split("|")[3].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| structural", "| refinement"))]
    assert rows == ["L0", "+ln"]


def test_a_step_raising_the_damage_is_marked_as_not_allowed(tiny_models):
    session = session_for(tiny_models["tiny-gpt2"])
    search = Search(session, 0.3, search_units(session, 2))
    search.none = search.floor = Score(4.0, 2.0, 2.0, 4.0, 1.0)
    fairer_but_worse = Score(3.0, 1.5, 1.5, 4.5, 1.0)
    assert not search.step(1, "structural", [], "L0", fairer_but_worse, False).allowed
    assert search.step(1, "structural", [], "L0", Score(3.0, 1.5, 1.5, 3.5, 1.0), True).allowed


@pytest.mark.parametrize("budget", [0.0, 1e-7])
def test_a_budget_protecting_nothing_is_the_latest_suggestion(tiny_models, budget):
    """`--strategy suggested` is the latest search's result, even one keeping nothing."""
    session = session_for(tiny_models["tiny-gpt2"])
    save(session, Suggestion(model="tiny-gpt2", scheme=session.config.scheme.name, budget=0.3,
                             strategy="L0", overhead=0.3, score=1.0))
    result = suggest(session, budget)
    assert result.strategy == "none" and not result.trace
    if budget:
        assert "below the smallest protection unit" in result.note
    latest = load_suggestion(session)
    assert latest["strategy"] == "none" and latest["budget"] == budget
    assert latest["languages"] == list(session.corpus.languages)
    assert latest["corpus_digest"] == session.config.full_corpus.digest()  # what it names


def test_a_budget_below_every_half_searches_single_tensors(tiny_models):
    """Below every layer's half the search's units are single tensors (a GGUF file stores
    one type per tensor); below every tensor it says so (norms stay F32 in the file)."""
    session = session_for(tiny_models["tiny-llama"], scheme=QuantScheme.parse("gguf:Q4_0"))
    attention, key = (session.overhead(unit).fraction for unit in ("L0.attn", "L0.attn.k"))
    assert key < attention / 2
    said = []
    result = suggest(session, attention / 2, announce=said.append)
    assert re.fullmatch(r"quantfair suggest: the suggestion and \d+ baseline selectors on 4 "
                        r"audit units per language, about .+ \(.+ so far\)", said[-1]), said
    first = [s.candidate for s in result.trace if s.phase == "structural" and s.step == 1]
    layers = {c.partition(".")[0] for c in first if re.fullmatch(r"L\d+\..+", c)}
    # the three best-ranked layers' tensors that fit (an MLP matrix is larger than half the
    # attention's), and no layer's half
    assert sorted(c for c in first if c.startswith("L")) == sorted(
        f"{layer}.attn.{role}" for layer in layers for role in "qkvo"), first
    assert len(layers) == 3
    assert not result.note and result.overhead <= attention / 2
    assert session.overhead("ln_f").fraction < key / 2  # above a norm, below any tensor
    below = suggest(session, key / 2)
    assert below.strategy == "none" and not below.trace
    assert f"(L0.attn.k: {100 * key:.2g}% of parameters)" in below.note


def test_replacing_a_cached_suggestion_searched_otherwise_says_so(tiny_models):
    """A stray cheap search replaces one that took many minutes: the run names what it
    replaced, so it can be searched again on purpose."""
    session = session_for(tiny_models["tiny-gpt2"])
    said = []
    session.announce = said.append
    kept = dict(model="tiny-gpt2", scheme=session.config.scheme.name, strategy="L0",
                overhead=0.3, score=1.0, languages=["en", "he", "zh"])
    save(session, Suggestion(budget=0.3, **kept))  # (may replace another test's)
    said.clear()
    save(session, Suggestion(budget=0.3, **kept))  # the same search again: nothing to say
    assert said == []
    suggest(session, 0.0)
    assert said == [f"quantfair: this replaces the cached suggestion L0 (budget 30%, en,he,zh) "
                    f"as --strategy suggested for {session.config.scheme.name}"]


def test_budget_above_everything_is_a_usage_error(tiny_models):
    with pytest.raises(UsageError, match="between 0% and 100%"):
        suggest(session_for(tiny_models["tiny-gpt2"]), 1.5)


def test_a_planted_super_weight_is_found_first_at_a_budget_of_one_weight():
    """One weight, alone in its column and far from the largest of its tensor (int8 per
    tensor rounds it to 0), carries a massive activation: quantizing it dominates the loss,
    and with room for a single weight the suggestion keeps exactly it."""
    loaded = load_model("tiny-llama")
    layers = loaded.model.model.layers
    with torch.no_grad():
        layers[2].mlp.up_proj.weight[5] *= 3000  # input channel 5 of down_proj spikes
        down = layers[2].mlp.down_proj.weight
        largest = 10 * down.abs().max()
        down[:, 5] = 0
        down[3, 5] = 0.4 * largest / 127  # under half an int8 step
        down[10, 20] = largest  # the largest weight, in a quiet column
    session = session_for(loaded, bits=8)
    total = sum(p.numel() for p in loaded.model.parameters())
    result = suggest(session, 1 / total, calibration_units=3)
    assert result.strategy == "superweights:1"
    ((name, keep),) = session.resolver().resolve(result.strategy).items()
    assert name == "model.layers.2.mlp.down_proj.weight" and keep.sum() == 1 and keep[3, 5]
    none, kept = (next(s.damage for s in result.trace if s.strategy == strategy)
                  for strategy in ("none", result.strategy))
    assert kept < 0.5 * none  # it dominated the damage


def test_a_damage_equal_to_none_within_float_noise_is_allowed():
    """Norms a scheme leaves alone change no weight: their damage differs from `none`'s in the
    ninth digit (batch composition), which is no rise."""
    from types import SimpleNamespace

    from quantfair.suggest import Score, Search

    none = Score(value=0.52, mean=0.2, worst=0.32, damage=2.9055090021158563, english=363.15)
    search = SimpleNamespace(none=none, floor=none)
    noise = replace(none, damage=2.905509009035894, english=363.15 * (1 + 1e-8))
    assert Search.allowed(search, noise)
    assert not Search.allowed(search, replace(none, damage=none.damage * 1.001))
    assert not Search.allowed(search, replace(none, english=none.english * 1.001))


def test_a_suggestion_searched_on_another_corpus_is_named_so_and_its_unit_names_ignored(
        tiny_models):
    """Unit names (`preamble`, `article_03`) hold other text in another corpus: its search
    overlaps nothing of this one, and the suggestion says where it was searched."""
    from quantfair.report import searched_with
    from quantfair.suggest import load_suggestion, other_corpus, searched_units

    session = session_for(tiny_models["tiny-gpt2"])
    units = list(session.corpus.units)
    theirs = Suggestion(model="tiny-gpt2", scheme=session.config.scheme.name, budget=0.3,
                        strategy="L0", overhead=0.3, score=1.0, languages=["en", "he"],
                        calibration_units=units[:2], corpus="mine.jsonl",
                        corpus_digest="0123456789abcdef")
    save(session, theirs)
    found = load_suggestion(session)
    assert other_corpus(found, session) == "mine.jsonl"
    assert searched_units(found, session) == []
    assert searched_with(found) == "budget 30%, en,he, corpus mine.jsonl"
    ours = replace(theirs, corpus="udhr (shipped)",
                   corpus_digest=session.config.full_corpus.digest())
    save(session, ours)
    found = load_suggestion(session)
    assert other_corpus(found, session) == "" and searched_with(found) == "budget 30%, en,he"
    assert searched_units(found, session) == units[:2]


def test_a_cache_path_that_is_a_file_is_no_damaged_suggestion(tiny_models, tmp_path,
                                                             monkeypatch):
    from quantfair.suggest import no_suggestion

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "f"))
    (tmp_path / "f").write_text("")
    message = str(no_suggestion(session_for(tiny_models["tiny-gpt2"])))
    assert "damaged" not in message and "run `quantfair suggest` first" in message


def test_any_finite_score_is_lower_than_an_undefined_one():
    """`none` undefined on the calibration units (English's NLL did not rise) made every
    candidate 'not lower' (inf - 1e-6 * inf is NaN): a score of -17 was passed over."""
    from quantfair.suggest import _lower

    assert _lower(-17.3, math.inf) and _lower(1.1, math.inf)
    assert not _lower(math.inf, math.inf) and not _lower(math.inf, 1.0)
    assert not _lower(1.0, 1.0 + 1e-9) and _lower(1.0, 1.1)


def test_a_long_list_of_searched_units_is_cut_short():
    from quantfair.text import some

    units = [f"article_{n:02d}" for n in range(1, 31)]
    assert some(units) == "article_01, article_02, article_03, article_04 and 26 more"
    assert some(units[:4]) == ", ".join(units[:4])


@pytest.mark.parametrize("value, shown", [(884.9, "884.90"), (1008.04, "1008.0"),
                                          (12345.6, "12346"), (7.9e10, "7.9000e+10"),
                                          (-4.47, "-4.4700"), (1e-4, "0.00010000")])
def test_numbers_of_a_column_keep_their_significant_digits(value, shown):
    from quantfair.text import significant

    assert significant(value, 5) == shown


@pytest.mark.parametrize("fraction, shown", [(0.11185, "11.185%"), (0.0, "0.000%"),
                                             (64 / 134_515_008, "4.8e-05%"), (1e-5, "0.001%")])
def test_an_overhead_of_a_few_weights_is_not_shown_as_0(fraction, shown):
    from quantfair.text import percent

    assert percent(fraction) == shown
