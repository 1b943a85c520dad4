"""The report answers first: summary block, scorecard, findings matrix and library-drawn charts."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
import warnings
from importlib import metadata
from types import SimpleNamespace

import numpy as np
import pytest
from markupsafe import escape
from matplotlib.text import Text

from quantfair import charts
from quantfair.html import banner, findings_matrix, render_html, scorecard, shade
from quantfair.metrics import Measurement
from quantfair.models import RANDOM_NOTE
from quantfair.report import (
    RunRecord,
    build_report,
    language_metadata,
    load_report,
    measurement_records,
    settle_verdict,
    source_digest,
    write_report,
)
from quantfair.seed import SEED_PARETO_FRONTIER
from quantfair.summary import compared_rows, leaning, summarize

LANGUAGES = ("en", "de", "he", "ar")
# Extra NLL per unit under quantization; English's is 1, so disparities are these numbers.
DAMAGE = {"none": {"en": 1.0, "de": 1.5, "he": 6.0, "ar": 3.0},
          "recommended": {"en": 1.0, "de": 1.2, "he": 2.0, "ar": 1.5}}


def rows(strategy: str, overhead: float) -> list[dict]:
    units = 6
    jitter = np.linspace(-0.05, 0.05, units)
    m = Measurement(LANGUAGES, nll_fp=np.full((4, units), 10.0),
                    nll_q=np.array([10.0 + DAMAGE[strategy][lg] * (1 + jitter)
                                    for lg in LANGUAGES]),
                    tokens=np.full((4, units), 20.0), bytes=np.full((4, units), 80.0),
                    chars=np.full((4, units), 60.0))
    return measurement_records(m, units=[f"u{j}" for j in range(units)], strategy=strategy,
                               scheme="int4", length="medium",
                               overhead=SimpleNamespace(fraction=overhead, bytes_fraction=overhead))


def audit(finding: str, outcome: str, language: str | None = None, **extra) -> dict:
    return {"nodeid": f"audits/test_x.py::test_{finding}[{language}]", "finding": finding,
            "experiments": ["034"], "claim": f"claim of {finding}", "seed": "seed says 3.4x",
            "slack": None, "case": f"case-{language}", "strategy": "recommended",
            "language": language, "length": None, "quantity": "disparity difference", "value": 0.5,
            "bound": "< 0", "low": 0.1, "high": 0.9, "detail": "", "message": f"why {outcome}",
            "outcome": outcome, "duration_s": 0.1, **extra}


AUDITS = [audit("synergy", "passed", "he"), audit("synergy", "failed", "de"),
          audit("synergy", "inconclusive", "ar"), audit("random_fails", "inconclusive"),
          audit("sparse", "passed"), audit("crashy", "error")]


def report(audits=AUDITS, incomplete=()) -> dict:
    settings = {"model": "tiny", "scheme": "int4", "languages": list(LANGUAGES), "units": 6,
                "quantized": None, "corpus": "udhr (shipped)"}
    record = RunRecord(settings=settings, audits=list(audits),
                       rows=rows("none", 0.0) + rows("recommended", 0.11),
                       model={"name": "tiny", "artifact": None}, processes=[],
                       selection={"invocation": ["audits/"], "keyword": None, "markers": None,
                                  "last_failed": False, "collected": 6, "selected": 6,
                                  "deselected": 0, "not_run": 0},
                       incomplete=list(incomplete), duration_s=1.0)
    return build_report(record)


@pytest.mark.parametrize("order", [1, -1], ids=["kld-first", "kld-last"])
def test_a_row_with_kl_divergence_is_kept_over_the_same_row_without(order):
    """Two processes measured `none`, one with the distribution statistics: whichever
    published last, the report keeps the KL divergence."""
    plain = rows("none", 0.0)
    with_kld = [{**row, "kld_mean": 0.25} for row in plain]
    record = RunRecord(settings={"model": "tiny", "scheme": "int4"}, audits=[],
                       rows=[*with_kld, *plain][::order], model={"name": "tiny"}, processes=[],
                       selection=None, incomplete=[], duration_s=1.0)
    kept = build_report(record)["measurements"]
    assert len(kept) == len(LANGUAGES) and all(row["kld_mean"] == 0.25 for row in kept)


def test_summary_puts_the_worst_languages_and_the_findings_first():
    summary = report()["summary"]
    assert [w["language"] for w in summary["worst_languages"]] == ["he", "ar", "de"]
    assert summary["worst_languages"][0]["disparity"] == pytest.approx(6.0)
    assert summary["findings"] == {"held": ["sparse"], "did_not_hold": ["synergy"],
                                   "inconclusive": ["random_fails"], "errors": ["crashy"]}
    assert summary["counts"] == {"passed": 2, "failed": 1, "inconclusive": 2, "skipped": 0,
                                 "error": 1}
    text = " ".join(summary["sentences"])
    assert "Hebrew (he) 6.00x" in text and "2 comparison(s) were inconclusive" in text
    assert "6 units per language" in text and "he is at" not in text
    assert "Hebrew is at 2.00x" in text  # under the recommended strategy


def test_a_hardest_hit_language_whose_ci_includes_1_is_said_not_to_be_shown_harder_hit(
        monkeypatch):
    monkeypatch.setitem(DAMAGE["none"], "de", 1.0)  # as much damage as English's
    text = " ".join(report()["summary"]["sentences"])
    assert re.search(r"German \(de\) 1\.00x English's damage \[95% CI [0-9.]+, [0-9.]+\] "
                     r"\(includes 1: not shown to be hit harder than English\)\.", text)
    assert text.count("includes 1") == 1  # not Hebrew's or Arabic's


def test_a_run_that_decided_nothing_is_not_shown_as_passed():
    """Its verdict is passed (nothing failed), but a green PASSED banner over no decision
    was read as a sign-off; the banner still gives the verdict the JSON and terminal give."""
    undecided = report([audit("synergy", "inconclusive", "he"), audit("sparse", "skipped")])
    html = render_html(undecided)
    assert undecided["verdict"] == "passed" and 'class="verdict undecided"' in html
    assert "NOTHING DECIDED (verdict: passed) &mdash; No audit decided anything in this run" in html
    assert "PASSED &mdash;" not in html


def test_the_banner_of_a_run_without_a_release_gate_says_it_judges_the_seeds_findings():
    """A reviewer read "FAILED" over a run with no release gate as the release answer; it is
    the verdict on the seed's findings. With a gate that ran, the banner is the release's."""
    findings = [a for a in AUDITS if a["outcome"] != "error"]
    head = '<div class="headline">NO RELEASE GATE; SEED FINDINGS'
    assert f"{head} FAILED &mdash; 1 finding(s)" in render_html(report(findings))
    held = [a for a in findings if a["outcome"] != "failed"]
    assert f"{head} PASSED &mdash;" in render_html(report(held))
    unchecked = audit("release_disparity", "skipped", "he", experiments=["release"])
    assert f"{head} PASSED &mdash;" in render_html(report([*held, unchecked]))


def test_the_banner_of_a_run_with_a_release_gate_names_the_gates_outcome_first():
    """A gate checked and passed beside a seed finding that failed showed only FAILED."""
    findings = [a for a in AUDITS if a["outcome"] != "error"]
    held = [a for a in findings if a["outcome"] != "failed"]
    passed, failed = (audit("release_disparity", outcome, "he", experiments=["release"])
                      for outcome in ("passed", "failed"))

    def headline(audits: list[dict]) -> str:
        built = report(audits)
        return f"{banner(built, built['summary'])[1]} / {built['summary']['release']}"

    assert '<div class="headline">RELEASE GATE PASSED; SEED FINDINGS FAILED &mdash; 1 ' \
        'finding(s)' in render_html(report([*findings, passed]))
    assert headline([*findings, passed]) == ("RELEASE GATE PASSED; SEED FINDINGS FAILED"
                                             " / passed")
    assert headline([*held, passed]) == "RELEASE GATE PASSED; SEED FINDINGS PASSED / passed"
    assert headline([*held, failed]) == "RELEASE GATE FAILED; SEED FINDINGS PASSED / failed"
    assert headline([passed]) == "RELEASE GATE PASSED / passed"  # -m quantfair_release
    assert report([passed])["summary"]["headline"] == "Every decided release gate held (1 passed)"
    assert headline(held) == "NO RELEASE GATE; SEED FINDINGS PASSED / None"
    # a run that did not finish (a baseline it could not compare) passed no gate
    cut = report([*held, passed], incomplete=["the baseline r.json is not consistent"])
    assert cut["summary"]["release"] == "incomplete"
    assert banner(cut, cut["summary"])[1] == "INCOMPLETE"
    assert not any("Release gate passed" in s for s in cut["summary"]["sentences"])
    assert report([*held, failed], incomplete=["cut off"])["summary"]["release"] == "failed"
    # a gate asked for that checked nothing: a baseline refused, maxima with no gate run
    refused = report(held, incomplete=["baseline: the baseline shares nothing"])
    assert refused["summary"]["release"] == "incomplete"
    assert any(s.startswith("No release gate was checked (a baseline was given, but could not "
                            "be compared)") for s in refused["summary"]["sentences"])
    no_gate = report(held, incomplete=["disparity 2 given, but no release audit of it ran"])
    no_gate["settings"]["release_maxima"] = "disparity 2"
    settle_verdict(no_gate)
    assert no_gate["summary"]["release"] == "incomplete"
    assert report(held, incomplete=["cut off"])["summary"]["release"] is None  # none asked
    strict = report([*held, passed])
    strict["settings"]["strict"] = True  # its inconclusive audits fail the run
    settle_verdict(strict)
    assert banner(strict, strict["summary"]) == ("findings", "RELEASE GATE PASSED; SEED "
                                                 "FINDINGS FAILED")
    assert re.fullmatch(r"\d+ audit\(s\) were inconclusive, which fails the run under "
                        r"--quantfair-strict", strict["summary"]["headline"])


@pytest.mark.parametrize(("bound", "low", "high", "lean"), [
    ("< 0", 0.02, 0.79, "fail"), ("< 0", -0.5, -0.1, "pass"), ("< 0", -0.4, 0.5, None),
    ("> 0", -0.3, -0.1, "fail"), ("<= 12", 10.0, 12.0, "pass"), (">= 1", 0.5, 0.9, "fail"),
    ("in [1, 2]", 1.2, 1.8, "pass"), ("in [1, 2]", 2.5, 3.0, "fail"), ("in [1, 2]", 0.5, 2.5, None),
    ("lowest of 30 candidates", 0.1, 0.2, None)])
def test_an_inconclusive_audit_says_which_way_its_ci_leans(bound, low, high, lean):
    """A "?" hid that Chinese's difference (+0.38 [0.02, 0.79], bound < 0, undecided only by
    Holm's correction) leaned against the claim; a CI that straddles the bound leans nowhere."""
    undecided = audit("synergy", "inconclusive", "he", bound=bound, low=low, high=high,
                      value=(low + high) / 2)
    assert leaning(undecided) == lean
    assert leaning({**undecided, "outcome": "passed"}) is None
    assert leaning({**undecided, "low": None}) is None


def test_the_page_shows_the_lean_of_an_inconclusive_audit_in_its_cell_and_row():
    against = audit("synergy", "inconclusive", "he", value=0.381, low=0.023, high=0.791)
    neither = audit("synergy", "inconclusive", "ar", value=0.1, low=-0.3, high=0.5)
    html = render_html(report([against, neither]))
    assert html.count('<span class="muted"> leans ✗</span>') == 1
    assert html.count("leans to fail</div>") == 1 and "leans to pass" not in html


def test_the_summary_names_the_comparisons_held_back_by_holm_that_lean_against_the_claim():
    toward = audit("synergy", "inconclusive", "he", value=-0.5, low=-0.9, high=-0.1)
    against = audit("synergy", "inconclusive", "ar", value=0.381, low=0.023, high=0.791)
    text = " ".join(summarize(report([toward, against]))["sentences"])
    assert ("Leaning against the claim: synergy (ar) +0.381 [95% CI 0.02, 0.79], bound < 0."
            in text)
    assert "synergy (he)" not in text
    assert "Leaning against" not in " ".join(summarize(report([toward]))["sentences"])
    # findings testing one paired difference are one measurement, named once with all of them
    same = {key: against[key] for key in ("language", "case", "value", "low", "high")}
    again = audit("beats_none", "inconclusive", nodeid="audits/test_y.py::test_b[ar]", **same)
    text = " ".join(summarize(report([toward, against, again]))["sentences"])
    assert ("Leaning against the claim: synergy, beats_none (ar) +0.381 [95% CI 0.02, 0.79], "
            "bound < 0." in text)


@pytest.mark.parametrize("biases", [0, 1440])
def test_a_protected_scorecard_says_what_the_strategy_keeps_and_costs(biases):
    """The storage a protection adds was in the JSON only, and `recommended`'s `biases` on a
    model without biases kept nothing, unsaid."""
    built = report()
    built["model"]["bias_parameters"] = biases
    for row in built["measurements"]:
        row["overhead_bytes"] = 0.25 if row["strategy"] == "recommended" else 0.0
    html = render_html(built).replace("&#39;", "'")
    heading = re.search(r"<summary>strategy recommended(.*?)</summary>", html)[1]
    assert "the seed's L0+Llast+ln_f+biases" in heading and "11% of the parameters in full " \
        "precision, +25% storage" in heading
    assert ("no biases" in heading) == (biases == 0)
    assert re.search(r"<summary>strategy none</summary>", html)


def test_a_run_that_measured_nothing_does_not_say_what_it_measured():
    bare = report([audit("recommended_budget", "passed")])
    bare["measurements"] = []
    assert summarize(bare)["sentences"][-1].startswith(
        "Nothing was measured: set up for tiny, scheme int4, ")
    assert summarize(report())["sentences"][-1].startswith("Measured: tiny, scheme int4, ")


def test_the_summary_says_a_dtype_other_than_float32():
    """bfloat16's numbers are not float32's (a finding held in one and failed in the other);
    the terminal and the page said the dtype only where it was typed in the invocation."""
    halved = report()
    halved["settings"]["dtype"] = "bfloat16"
    halved["summary"] = summarize(halved)
    assert halved["summary"]["sentences"][-1].startswith(
        "Measured: tiny, scheme int4 evaluated in bfloat16, 4 languages")
    page = render_html(halved)
    assert "scheme int4 evaluated in bfloat16, 4 languages" in page
    assert "(int4 in bfloat16)</title>" in page  # a reviewer sees it at the top, as the title
    assert '<p class="muted">int4 in bfloat16 (4-bit round to nearest' in page
    assert "(int4)</title>" in render_html(report())
    halved["processes"] = [{"pid": 1, "loads": 1, "device": "cuda:0", "threads": 16},
                           {"pid": 2, "loads": 1, "device": "cuda:1", "threads": 16}]
    assert "<dt>evaluated in</dt><dd>bfloat16 on cuda:0, cuda:1</dd>" in render_html(halved)
    assert "<dt>evaluated in</dt><dd>float32 on " in render_html(report())  # always said
    # in a reduced dtype on a CPU, torch's threads: they key its results
    halved["processes"] = [{"pid": 1, "loads": 1, "device": "cpu", "threads": 1},
                           {"pid": 2, "loads": 1, "device": "cpu", "threads": 1}]
    assert ("<dt>evaluated in</dt><dd>bfloat16 on cpu, 1 torch thread per CPU process</dd>"
            in render_html(halved))
    halved["processes"] = [{"pid": 1, "loads": 1, "device": "cpu", "threads": 2.0},
                           {"pid": 2, "loads": 1, "device": "cuda:0", "threads": 16}]
    assert "<dd>bfloat16 on cpu, cuda:0, 2 torch threads</dd>" in render_html(halved)
    halved["settings"]["dtype"] = "float32"  # a worker's count changes as others finish
    assert "<dd>float32 on cpu, cuda:0</dd>" in render_html(halved)


def test_the_summary_says_a_gguf_files_own_quantization_is_the_reference():
    """Its "ppl FP" is of the file's weights dequantized, already quantized once."""
    gguf = report()
    gguf["model"] = {**gguf.get("model", {}), "weights_note": "dequantized from m.Q4_1.gguf"}
    assert summarize(gguf)["sentences"][-1].startswith(
        "Measured: tiny (dequantized from m.Q4_1.gguf), scheme int4, ")


def test_a_language_hit_less_than_english_is_said_to_be(monkeypatch):
    """A disparity whose CI lies wholly below 1 was listed among the hardest hit unqualified."""
    monkeypatch.setitem(DAMAGE["none"], "de", 0.5)
    text = " ".join(report()["summary"]["sentences"])
    assert re.search(r"German \(de\) 0\.50x English's damage \[95% CI [0-9.]+, 0\.[0-9]+\] "
                     r"\(below 1: hit less than English\)", text)


def test_a_negative_disparity_is_said_to_be_one_loss_falling(monkeypatch):
    """Hebrew's NLL falls under quantization while English's rises: not "-2x the damage"
    left unexplained."""
    monkeypatch.setitem(DAMAGE["none"], "he", -2.0)
    text = " ".join(report()["summary"]["sentences"])
    assert "Hebrew (he) -2.00x English's damage (below 0: one of the two losses fell)" in text
    assert "Arabic (ar) 3.00x English's damage [" in text


@pytest.mark.parametrize(("audits", "incomplete", "headline"), [
    (AUDITS, (), "could not run"),  # an error is never reported as a finding
    ([a for a in AUDITS if a["outcome"] != "error"], (), "did not hold on this model"),
    ([a for a in AUDITS if a["outcome"] == "passed"], (), "Every decided claim held"),
    (AUDITS, ("worker gw1 crashed",), "Incomplete run: worker gw1 crashed"),
])
def test_the_headline_separates_findings_errors_and_incomplete_runs(audits, incomplete,
                                                                    headline):
    assert headline in summarize(report(audits, incomplete))["headline"]


def test_a_random_weight_model_is_said_to_test_the_machinery_only():
    trained, random = report(), report()
    random["model"]["weights_note"] = RANDOM_NOTE
    warning = "The model has random weights: the run tests the machinery"
    assert not any(warning in s for s in summarize(trained)["sentences"])
    assert any(warning in s for s in summarize(random)["sentences"])
    assert warning in render_html({**random, "summary": summarize(random)})


@pytest.mark.parametrize(("field", "warning"), [
    ("scheme_warning", "gguf:Q4_1 re-quantizes weights dequantized from Q4_1"),
    ("tokenizer_warning", "the tokenizer reads part of the text as its unknown token '<unk>' "
     "(he 97% of tokens): those languages' numbers measure predictions of that token")])
def test_a_scheme_or_tokenizer_warning_reaches_the_summary_and_the_html(field, warning):
    plain, warned = report(), report()
    warned["model"][field] = warning
    assert not any(s.startswith("Warning:") for s in summarize(plain)["sentences"])
    sentence = f"Warning: {warning}."
    assert summarize(warned)["sentences"][1] == sentence
    assert str(escape(sentence)) in render_html({**warned, "summary": summarize(warned)})
    # for machines too: the summary's warnings, none where there is nothing to warn of
    assert summarize(warned)["warnings"] == [sentence.removeprefix("Warning: ")[:-1]]
    assert summarize(plain)["warnings"] == []


def test_the_html_names_the_audited_artifact_by_hash_and_tensor_types():
    built = report()
    built["model"]["artifact"] = {
        "label": "rc1", "scheme": "artifact:rc1", "source": "/releases/model-q51.gguf",
        "file_sha256": "5b0f" * 16, "weight_hash": "86cb73c77fa97811",
        "type_mix": {"F32": 68, "Q5_1": 203, "Q8_0": 1},
        "unquantized": [f"model.norm{i}.weight" for i in range(7)]}
    page = render_html({**built, "summary": summarize(built)})
    assert "/releases/model-q51.gguf (label rc1)" in page and "86cb73c77fa97811" in page
    assert "5b0f" * 16 in page
    assert ("Q5_1 203, F32 68, Q8_0 1; 7 tensor(s) as in the FP model: model.norm0.weight, "
            "model.norm1.weight, model.norm2.weight, model.norm3.weight, model.norm4.weight, "
            "...") in page
    assert "artifact hash" not in render_html({**report(), "summary": summarize(report())})


def test_the_page_names_the_hosts_and_a_process_that_ran_other_code():
    built = report()
    code = {key: built["environment"][key] for key in ("quantfair", "quantfair_source")}
    built["processes"] = [
        {"pid": 7, "host": "host-a", "device": "cpu", "environment": code},
        {"pid": 7, "host": "host-b", "device": "cpu",
         "environment": {**code, "quantfair_source": "9e1c"}}]
    page = render_html({**built, "summary": summarize(built)})
    assert "<dt>hosts</dt><dd>host-a, host-b</dd>" in page
    assert page.count("<dt>other code</dt>") == 1
    assert (f"pid 7 on host-b: quantfair_source 9e1c (the controller&#39;s "
            f"{source_digest()})") in page
    one = report()
    one["processes"] = [{"pid": 7, "host": "host-a", "device": "cpu", "environment": code}]
    page = render_html({**one, "summary": summarize(one)})
    assert "<dt>hosts</dt>" not in page and "<dt>other code</dt>" not in page


def test_a_scheme_that_leaves_english_worse_than_uniform_guessing_is_said_to_break_it():
    english = next(r for r in report()["measurements"]
                   if r["strategy"] == "none" and r["language"] == "en")
    sane, broken = report(), report()
    sane["model"]["vocabulary"] = math.ceil(english["ppl_q"])  # guessing does no better
    broken["model"]["vocabulary"] = 5  # above English's FP perplexity, below its int4 one
    next(r for r in broken["measurements"] if r["strategy"] == "none"
         and r["language"] == "en")["ppl_q"] = 10.0
    said = "Warning: int4 breaks this model: English's perplexity under it"
    assert not any(said in s for s in summarize(sane)["sentences"])
    assert not any(said in s for s in summarize(report())["sentences"])  # vocabulary unknown
    assert any(said in s for s in summarize(broken)["sentences"])
    assert [w.startswith(said.removeprefix("Warning: "))  # in the JSON's warnings too
            for w in summarize(broken)["warnings"]] == [True]
    assert said in render_html({**broken, "summary": summarize(broken)}).replace("&#39;", "'")
    unlearned = report()  # worse than uniform in full precision already: not the scheme's doing
    unlearned["model"]["vocabulary"] = math.floor(english["ppl_fp"])
    sentences = summarize(unlearned)["sentences"]
    assert not any(said in s for s in sentences)
    assert any(s.startswith("Warning: the model itself guesses worse than uniformly: English's "
                            f"perplexity in full precision, {english['ppl_fp']:.3g}, is above")
               for s in sentences)


@pytest.mark.parametrize("repaired", [True, False])
def test_a_broken_scheme_warning_says_whether_the_recommended_protection_repairs_it(repaired):
    """A reviewer read the recommended strategy's numbers as a fix, where English's perplexity
    under it stayed above a uniform guess's."""
    broken = report()
    broken["model"]["vocabulary"] = 5  # above English's FP perplexity (1.6), below 10
    for r in broken["measurements"]:
        if r["language"] == "en":
            r["ppl_q"] = 10.0 if r["strategy"] == "none" or not repaired else 4.0
    said = "The seed's recommended protection does not repair it: English's perplexity with "
    text = " ".join(summarize(broken)["sentences"])
    assert (f"{said}it is 10." in text) == (not repaired)
    assert "Warning: int4 breaks this model" in text


@pytest.mark.parametrize(("maxima", "degradation", "warned"), [
    ("disparity 100", None, True), ("disparity 100; degradation 5000", "passed", False),
    ("disparity 100; degradation 5000", "skipped", True), (None, None, False)])
def test_a_disparity_gate_passed_over_a_broken_scheme_is_warned_of(maxima, degradation,
                                                                   warned):
    """A green RELEASE GATE PASSED over a model int4 breaks: disparities are ratios. A maximum
    on the damage whose gate decided nothing (skipped) does not see it either. A model that
    guesses worse than uniformly in full precision is warned of as such, not as broken by the
    scheme."""
    gates = [audit("release_disparity", "passed", "he", experiments=["release"])] + [
        audit("release_degradation", degradation, "he", experiments=["release"],
              quantity="degradation")] * (degradation is not None)
    broken = report(gates if maxima else [])
    broken["model"]["vocabulary"] = 5
    next(r for r in broken["measurements"] if r["strategy"] == "none"
         and r["language"] == "en")["ppl_q"] = 10.0
    if maxima:
        broken["settings"]["release_maxima"] = maxima
    said = "the release gate passed on disparities, ratios to English's damage, while the " \
        "scheme breaks the model: a maximum on the damage itself (--quantfair-max-degradation)"
    assert any(w.startswith(said) for w in summarize(broken)["warnings"]) == warned
    broken["model"]["vocabulary"] = 1  # below English's FP perplexity: no scheme is to blame
    assert not any(w.startswith(said) for w in summarize(broken)["warnings"])
    assert any(w.startswith("the model itself guesses worse than uniformly")
               for w in summarize(broken)["warnings"])


def test_the_forest_caption_names_the_strategies_drawn_and_degradation_is_defined():
    """A release gate's run measures no protection alone: the caption named the recommended
    strategy and the lowest means all the same. The page used `degradation` (and a maximum
    of 50% as `<= 0.5`) without defining it."""
    both = render_html(report())
    assert "the dashed line is parity. Shown: none, recommended (no protection and the " \
           "recommended strategy first where measured" in both
    alone = report()
    alone["measurements"] = [r for r in alone["measurements"] if r["strategy"] == "none"]
    assert "the dashed line is parity. Shown: none.</figcaption>" in render_html(alone)
    assert "A language's degradation is ppl quantized / ppl FP &minus; 1" in both


def test_the_audits_table_names_what_each_value_measures():
    """"5.264", "0.01136" and "-0.966" stood in one column without their quantities."""
    html = render_html(report())
    assert re.search(r'<td class="num">0\.5<div class="muted">disparity difference</div></td>',
                     html)


def test_the_summary_says_when_the_hardest_hit_is_not_shown_harder_hit_than_the_next():
    """Russian 7.10x [6.78, 7.76] above Hebrew 6.95x [6.32, 8.02] read as an order; on the
    paired units their difference is not significant, which the summary now says (decided
    on the paired difference, not on the two intervals)."""
    assert not any("not shown to be hit harder than" in s
                   for s in summarize(report())["sentences"])  # Hebrew 6x, Arabic 3x: clear
    close = report()
    damage = {"he": [6.0, 2.0, 8.0, 3.0, 5.0, 4.0], "ar": [4.0, 6.0, 3.0, 5.0, 4.0, 5.0]}
    for row in close["measurements"]:
        if row["strategy"] == "none" and row["language"] in damage:
            row["per_unit"]["nll_q"] = [fp + d for fp, d in zip(row["per_unit"]["nll_fp"],
                                                                damage[row["language"]])]
            row["disparity"] = sum(damage[row["language"]]) / 6  # English's damage is ~1
    said = [s for s in summarize(close)["sentences"] if "not shown to be hit harder" in s]
    assert len(said) == 1 and re.fullmatch(
        r"Hebrew is not shown to be hit harder than Arabic: the paired 95% CI of their "
        r"difference, \[-\d\.\d\d, \d\.\d\d\], includes 0\.", said[0]), said


def test_the_incomplete_banner_says_each_reason_once():
    """The headline lists why the run is incomplete; the banner once repeated each reason."""
    stopped = report(incomplete=["the run was terminated by SIGTERM",
                                 "1 of 6 selected audits never ran (the run stopped early)"])
    html = render_html(stopped)
    assert "INCOMPLETE &mdash; Incomplete run: the run was terminated by SIGTERM; 1 of 6 " \
           "selected audits never ran (the run stopped early)</div>" in html
    assert html.count("terminated by SIGTERM") == 1


def test_the_json_summary_validates_and_reaches_the_terminal(tmp_path):
    path, _ = write_report(report(), tmp_path / "r.json")
    assert load_report(path)["summary"]["findings"]["did_not_hold"] == ["synergy"]
    assert load_report(path)["summary"]["warnings"] == []


def test_the_json_carries_the_language_metadata_the_html_groups_by(tmp_path):
    built = report()
    built["measurements"].append({**built["measurements"][0], "language": "xx"})
    meta = built["language_metadata"] = language_metadata(
        r["language"] for r in built["measurements"])
    assert sorted(meta) == sorted(LANGUAGES)  # xx has no shipped metadata
    assert meta["he"] == {"name": "Hebrew", "iso639_3": "heb", "script": "Hebr",
                          "family": meta["he"]["family"], "resource_class": 3}
    assert "Semitic" in meta["he"]["family"] and meta["ar"]["script"] == "Arab"
    path, _ = write_report(built, tmp_path / "r.json")
    assert load_report(path)["language_metadata"] == meta  # valid against the schema
    assert sorted(report()["language_metadata"]) == sorted(LANGUAGES)


def test_scorecard_has_a_row_per_language_and_prints_every_shaded_number():
    card = scorecard(report(), "none")
    assert [r["language"] for r in card] == list(LANGUAGES)
    he = next(r for r in card if r["language"] == "he")
    assert he["disparity"].startswith("6.00 [") and he["script"] and he["family"]
    assert shade(1.0)["background"] != shade(20.0)["background"]
    assert shade(1.0)["color"] != shade(20.0)["color"]  # contrast follows the background
    # 0.2x and -1.4x were dark blue as parity and grey as undefined
    below = {shade(0.2)["background"], shade(-1.41)["background"], shade(0.0)["background"]}
    assert len(below) == 1 and below.isdisjoint({shade(1.0)["background"],
                                                 shade(None)["background"]})


def test_the_shading_spends_its_colours_below_10x_and_says_so():
    """To 20x, Gemma 3's 1.2x and 1.6x were one dark blue and SmolLM2's 3x to 7x close
    greys: 10x and beyond is the top colour, each step below it another."""
    assert shade(10.0) == shade(214.0)  # the seed's GPT-2, hit 78-214x
    steps = [shade(ratio)["background"] for ratio in (1.0, 1.2, 1.6, 3.0, 5.0, 7.0, 9.5)]
    assert len(set(steps)) == len(steps)
    assert "yellow (10x and beyond)" in render_html(report())


def test_a_bar_charts_reference_key_covers_no_bar_nor_value(monkeypatch):
    """The per-layer chart's "no protection" key, inside the axes at the lower right, was
    drawn over the last bar's value."""
    monkeypatch.setattr(charts, "to_svg", lambda figure, name: figure)
    figure = charts.bars([(f"L{i}", 1.0 + i) for i in range(8)], "criticality", "x", "t",
                         reference=("no protection", 4.0))
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    (key,) = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend())]
    drawn = [artist.get_window_extent(renderer) for ax in figure.axes
             for artist in (*ax.texts, *ax.patches)]
    assert drawn and not any(key.get_window_extent(renderer).overlaps(box) for box in drawn)


def test_findings_matrix_places_every_audit_once():
    matrix = findings_matrix(report())
    assert matrix["columns"] == ["model", "de", "he", "ar"]  # in view with 56 languages
    placed = [a["nodeid"] for row in matrix["rows"] for cell in row["cells"] for a in cell]
    assert sorted(placed) == sorted(a["nodeid"] for a in AUDITS) and not matrix["skipped"]
    synergy = next(r for r in matrix["rows"] if r["finding"] == "synergy")
    assert [[a["outcome"] for a in cell] for cell in synergy["cells"]] == [
        [], ["failed"], ["passed"], ["inconclusive"]]


def test_findings_skipped_in_every_case_are_listed_apart_with_their_reasons():
    """On the whole suite 43 of the matrix's 75 rows were findings the seed measured on
    another model family, a row of dashes each."""
    other = [audit("opt_best", "skipped", language, message="opt_best: the seed measured "
                   "this on opt, not llama") for language in ("de", "he")]
    gate = audit("release_kld", "skipped", "he", message="no release bound for kld")
    mixed = [audit("pareto", "skipped", case="S0"), audit("pareto", "failed", case="S1")]
    built = report([*AUDITS, *other, gate, *mixed])
    matrix = findings_matrix(built)
    assert sorted(r["finding"] for r in matrix["rows"]) == [
        "crashy", "pareto", "random_fails", "sparse", "synergy"]
    assert [(s["finding"], len(s["audits"]), s["reasons"]) for s in matrix["skipped"]] == [
        ("opt_best", 2, ["the seed measured this on opt, not llama"]),
        ("release_kld", 1, ["no release bound for kld"])]
    html = render_html(built)
    assert "2 finding(s) not audited on this model (every case skipped)" in html
    assert "<tr><td>opt_best</td><td class=\"num\">2</td><td>the seed measured this on opt, " \
        "not llama</td></tr>" in html
    assert "<tr><th>opt_best" not in html and "<tr><th>pareto" in html


def test_the_headline_counts_the_failed_findings_it_does_not_name():
    """It named four of six failed findings, then "...". """
    failed = [audit(f"finding{i}", "failed", "he") for i in range(6)]
    headline = report(failed)["summary"]["headline"]
    assert headline.startswith("6 finding(s) did not hold on this model (finding0: 1 failed "
                               "case(s); ")
    assert headline.count("failed case(s)") == 4 and "finding3: 1 failed case(s); and 2 more)" \
        in headline


def test_a_matrix_cell_names_each_run_of_one_outcome_once():
    """Seven skipped model-wide cases read "- skipped" seven times in one cell."""
    cases = [audit("pareto", "skipped", case=f"S{i}") for i in range(3)]
    html = render_html(report([*cases, audit("pareto", "failed", case="S3"),
                               audit("pareto", "skipped", case="S4")]))
    row = html[html.index("<tr><th>pareto"):]
    row = row[:row.index("</tr>")]
    assert row.count("<summary") == 5
    assert re.findall(r'<span class="muted"> (\w+)</span>', row) == ["skipped", "failed",
                                                                     "skipped"]


def test_html_has_banner_scorecard_matrix_and_svg_charts_with_ticks():
    built = report()
    html = render_html(built)
    assert 'class="verdict error"' in html  # the error outranks the finding
    assert html.count('<tr class="lang') == 2 * len(LANGUAGES)  # none and recommended
    assert html.count("<details class=\"outcome-") == len(AUDITS)
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) >= 4  # forest, Pareto, resource class, fertility
    for svg in svgs:
        assert re.search(r'id="[^"]*tick_\d+"', svg), "a chart without tick marks"
        assert "<text" in svg  # text stays text (svg.fonttype none)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "inline SVGs share element ids"
    assert "&middot; 6 units per language &middot;" in html
    one = render_html(dict(built, settings={**built["settings"], "units": 1}))
    assert "&middot; 1 unit per language &middot;" in one
    assert "http://" not in re.sub(r"http://www\.w3\.org[^\"]*", "", html)
    assert render_html(built) == html  # no date or random salt: reproducible


def test_a_language_code_in_a_script_matplotlibs_font_lacks_renders_under_w_error():
    """A user corpus's code `阿拉伯`: DejaVu Sans has no glyph for it, and matplotlib's warning
    (while it measures text the browser draws: svg.fonttype none) stopped the HTML report of
    a project whose pytest turns warnings into errors."""
    built = report()
    for row in built["measurements"]:
        row["language"] = {"ar": "阿拉伯"}.get(row["language"], row["language"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = render_html(built)
    assert "阿拉伯" in "".join(re.findall(r"<svg .*?</svg>", html, flags=re.S))


def test_chart_text_stays_readable_on_a_narrow_window():
    """On a 420-px window the charts shrank to fit, and their smallest labels to 4-5 px."""
    html = render_html(report())
    style = re.search(r"svg\.chart \{([^}]*)\}", html).group(1)
    narrowest = float(re.search(r"min-width: (\d+)px", style).group(1))  # CSS px
    assert re.search(r"figure \{[^}]*overflow-x: auto", html)  # the rest scrolls
    for svg in re.findall(r"<svg .*?</svg>", html, flags=re.S):
        width = float(re.search(r'viewBox="0 0 ([\d.]+) ', svg).group(1))
        smallest = min(float(size) for size in re.findall(r"font-size: ([\d.]+)px", svg))
        assert smallest * narrowest / width >= 7  # px on screen, at the narrowest


def test_pareto_labels_land_in_the_same_places_however_fast_the_machine(monkeypatch):
    """adjustText moved overlapping labels for 1 s of wall time: a slower or busier machine
    placed them elsewhere, and the same report rendered to another page."""
    import itertools

    import adjustText

    points = [charts.Point(f"L0+Llast+strategy_{i}", 11.4 + i, 3.4 - 0.1 * i)
              for i in range(6)]  # a front of overlapping labels that adjustText moves apart
    page = charts.to_svg(charts.pareto_figure(points), "pareto")
    clock = itertools.count(step=0.4)  # each reading 0.4 s later: a slow machine
    monkeypatch.setattr(adjustText, "timer", lambda: next(clock))
    assert charts.to_svg(charts.pareto_figure(points), "pareto") == page


def _labels(figure) -> list:
    """Point labels, on the points or in a key."""
    return [t for t in figure.findobj(Text) if (t.get_gid() or "").startswith(charts.LABEL)]


@pytest.mark.parametrize("count", [2, 6, 12])
def test_pareto_labels_of_nearly_equal_points_do_not_overlap(count):
    points = [charts.Point(f"L0+Llast+strategy_{i}", 11.4 + 0.01 * i, 3.4 - 0.01 * i)
              for i in range(count)]  # each on the front
    seed = [charts.Point("seed_point", 5.0, 3.0)]
    figure = charts.pareto_figure(points, seed)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = [t for t in _labels(figure) if "seed_point" not in t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert boxes, "no labels drawn"
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    neighbour = figure.axes[1].get_window_extent(renderer)  # the seed's panel
    assert not any(box.overlaps(neighbour) for box in boxes)
    shown = " ".join(t.get_text() for t in texts)
    assert all(p.label in shown for p in points)  # on the points or in the key


def test_a_key_of_many_points_stays_inside_its_chart():
    """`--languages all`: the numbered points' key is drawn within the picture, beside axes
    that keep a size."""
    points = [charts.Point(f"lang{i}", i % 6, 1.0 + (i % 7) * 0.3) for i in range(57)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. constrained layout collapsing the axes
        figure, (ax,) = charts._figure(3.2)  # as the resource-class chart draws them
        ax.scatter([p.x for p in points], [p.y for p in points])
        charts.label_points(ax, points)
        figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    key = [t for t in _labels(figure) if "-key-" in (t.get_gid() or "")]
    assert len(key) == len(points)
    inside = figure.bbox.padded(1)
    assert all(inside.contains(*corner) for t in key
               for corner in t.get_window_extent(renderer).corners())
    assert figure.axes[0].get_window_extent(renderer).height > 100


def test_labels_too_long_for_the_axes_neither_warn_nor_log(caplog):
    """adjustText logs (through the deprecated `Logger.warn`) each iteration that cannot fit
    a label inside the axes: the seed suite on SmolLM2 gave 1,403 DeprecationWarnings in the
    pytest summary and lost its HTML report under `-W error`. Its Pareto points, rounded:"""
    points = [charts.Point(label, overhead, mean) for label, overhead, mean in [
        ("none", 0.0, 5.34), ("L0.attn", 0.66, 5.64), ("L0.mlp", 1.97, 4.36),
        ("L0.attn+L0.mlp", 2.63, 5.36), ("L0", 2.63, 5.18), ("L1", 2.63, 4.77),
        ("L2", 2.63, 5.12), ("Lmid", 2.63, 4.94), ("L-2", 2.63, 5.41), ("Llast", 2.63, 4.64),
        ("L0+Llast", 5.26, 4.72), ("L2+Llast", 5.26, 4.65), ("L0+Llast+ln_f", 5.26, 4.65),
        ("recommended", 5.26, 4.65), ("random@budget(L0+Llast)", 5.26, 4.74),
        ("random@budget(recommended)", 5.26, 4.75), ("magnitude@budget(L0+Llast)", 5.26, 6.66),
        ("gradient@budget(recommended)", 5.26, 3.88), ("magnitude:38.6%", 38.6, 2.79),
        ("even_layers", 39.48, 4.78), ("odd_layers", 39.48, 4.37)]]
    seed = [charts.Point(name, overhead, value)
            for name, (overhead, value) in SEED_PARETO_FRONTIER.items() if value > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = charts.pareto_figure(points, seed)  # as the report draws it, beside the seed's
        figure.canvas.draw()
    assert not [r for r in caplog.records if r.name.startswith("adjustText")]
    left = {t.get_text().strip() for t in _labels(figure)
            if t.get_gid().startswith(f"{charts.LABEL}0-")}
    # this model's front, read off the points by hand
    assert left == {"none", "L0.mlp", "gradient@budget(recommended)", "magnitude:38.6%"}


def test_the_pareto_chart_labels_its_front_and_the_recommended_strategy():
    """Strategies crowd a few overheads (every single layer costs the same): only the points
    no other matches or beats in both are labelled, and the recommended one wherever it is."""
    points = [charts.Point("none", 0.0, 5.0), charts.Point("L0", 2.6, 4.0),
              charts.Point("L1", 2.6, 4.5), charts.Point("L2", 2.6, 4.0),  # L0's equal
              charts.Point("Llast", 2.6, 6.0),
              charts.Point("recommended", 5.3, 4.2, highlight=True),
              charts.Point("magnitude:38%", 38.0, 3.0), charts.Point("odd", 40.0, 3.0)]
    assert [p.label for p in charts.pareto_front(points)] == ["none", "L0", "magnitude:38%"]
    figure = charts.pareto_figure(points)
    figure.canvas.draw()
    shown = {t.get_text().strip() for t in _labels(figure)}
    assert shown == {"none", "L0", "magnitude:38%", "recommended"}
    drawn = figure.axes[0].collections  # every point is drawn, labelled or not
    assert sum(len(c.get_offsets()) for c in drawn) == len(points)


def test_a_budget_matched_strategy_a_rounding_cheaper_is_not_on_the_front():
    """random@budget(L0+Llast) kept 1e-8 fewer parameters than L0+Llast (a weight's
    rounding) at a higher mean: the front ran through it, as if random protection paid."""
    points = [charts.Point("none", 0.0, 5.0), charts.Point("L0+Llast", 5.2635, 4.717),
              charts.Point("random@budget(L0+Llast)", 5.263499, 4.725)]  # % of parameters
    assert [p.label for p in charts.pareto_front(points)] == ["none", "L0+Llast"]
    equal = [charts.Point("a", 1.0, 2.0), charts.Point("b", 1.0 + 1e-9, 2.0)]
    assert [p.label for p in charts.pareto_front(equal)] == ["a"]  # of equal points, the first


def test_no_pareto_chart_for_one_strategy():
    """A release gate's run measures no protection alone: one point, nothing traded off."""
    alone = report()
    alone["measurements"] = [r for r in alone["measurements"] if r["strategy"] == "none"]
    assert charts.pareto(alone) is None and charts.pareto(report()) is not None
    assert "Not drawn: it needs the mean disparity of two strategies or more" in \
        render_html(alone)


def test_the_pareto_chart_labels_every_strategy_where_the_labels_fit():
    points = [charts.Point("none", 0.0, 1.24), charts.Point("L0+Llast", 4.2, 0.94),
              charts.Point("random@budget(L0+Llast)", 4.2, 1.28),
              charts.Point("recommended", 4.2, 1.01, highlight=True)]
    figure = charts.pareto_figure(points)
    figure.canvas.draw()
    assert {t.get_text().strip() for t in _labels(figure)} == {p.label for p in points}


def test_the_pareto_chart_leaves_out_parity_only_where_it_would_squeeze_the_strategies():
    """SmolLM2's strategies at 4.65x-5.34x took the top few pixels of an axis down to 1x."""
    far = charts.pareto_figure([charts.Point("none", 0.0, 5.34), charts.Point("L0", 5.3, 4.65)])
    low, high = far.axes[0].get_ylim()
    assert 4.0 < low < 4.65 and 5.34 < high < 6.0
    assert "parity (1x) is below" in far.axes[0].get_ylabel()
    near = charts.pareto_figure([charts.Point("none", 0.0, 1.24), charts.Point("L0", 4.2, 0.94)])
    low, high = near.axes[0].get_ylim()
    assert low < 0.94 and high > 1.24 and not near.axes[0].get_ylabel()


def test_bar_values_read_alike_to_three_significant_digits():
    svg = charts.bars([("he", 1.1), ("en", 0.188), ("zh", 1.69)], "fertility",
                      "tokens per character", "Tokenizer fertility")
    labels = re.findall(r"<text[^>]*>\s*([^<]+?)\s*</text>", svg)
    assert {"1.10", "0.188", "1.69"} <= set(labels) and "1.1" not in labels


def test_a_ratio_axis_over_a_narrow_range_still_has_ticks_to_read():
    """1x, 2x, 5x alone left disparities of 0.9-1.3 beside a single tick, 2x-8x beside two."""
    locator = charts.RatioLocator()
    narrow = [v for v in locator.tick_values(0.9, 1.3) if 0.9 <= v <= 1.3]
    assert len(narrow) >= 3 and any(abs(v - 1.0) < 1e-9 for v in narrow)
    assert len([v for v in locator.tick_values(2.0, 8.0) if 2.0 <= v <= 8.0]) >= 3
    wide = [v for v in locator.tick_values(1.0, 100.0) if 1.0 <= v <= 100.0]
    assert sorted(round(v, 9) for v in wide) == [1, 2, 5, 10, 20, 50, 100]


def test_per_script_and_class_aggregates_average_their_languages():
    from quantfair.html import aggregates

    groups = {(g["kind"], g["value"]): g for g in aggregates(report(), ["none", "recommended"])}
    # he (Hebr, class 3) 6.0 and 2.0; ar (Arab, class 5) 3.0 / 1.5; de (Latn, class 5) 1.5 / 1.2
    assert [c["text"] for c in groups[("script", "Hebr")]["cells"]] == ["6.00", "2.00"]
    assert [c["text"] for c in groups[("class", "5")]["cells"]] == ["2.25", "1.35"]
    assert groups[("class", "5")]["languages"] == "2" and ("script", "Latn") in groups
    assert [c["title"] for c in groups[("class", "5")]["cells"]] == [  # and what it hides
        "mean of 2 languages, from 1.50 (de) to 3.00 (ar)",
        "mean of 2 languages, from 1.20 (de) to 1.50 (ar)"]
    # he and ar (Afro-Asiatic, Semitic branch) 4.5 / 1.75; de alone Indo-European
    assert [c["text"] for c in groups[("family", "Afro-Asiatic")]["cells"]] == ["4.50", "1.75"]
    assert groups[("family", "Indo-European")]["languages"] == "1"
    assert groups[("script", "Latn")]["languages"] == "1"  # de: English is left out
    # [class, family, script]: the order the table's title names them in
    assert list(dict.fromkeys(g["kind"] for g in groups.values())) == [
        "class", "family", "script"]
    partly = report()  # ar undefined with protection only: the counts differ by strategy
    for row in partly["measurements"]:
        if row["language"] == "ar" and row["strategy"] == "recommended":
            row.update(disparity=None, undefined="en loss change is within noise")
    group = next(g for g in aggregates(partly, ["none", "recommended"])
                 if (g["kind"], g["value"]) == ("class", "5"))
    assert group["languages"] == "1-2" and [c["title"] for c in group["cells"]] == [
        "mean of 2 languages, from 1.50 (de) to 3.00 (ar)", "mean of 1 language (de)"]
    renamed = report()  # ar as a user corpus's language without metadata: left out
    renamed["measurements"] = [{**r, "language": "xx" if r["language"] == "ar" else
                                r["language"]} for r in renamed["measurements"]]
    groups = {(g["kind"], g["value"]) for g in aggregates(renamed, ["none"])}
    assert groups == {("script", "Hebr"), ("script", "Latn"), ("class", "3"), ("class", "5"),
                      ("family", "Afro-Asiatic"), ("family", "Indo-European")}


def test_one_language_under_two_codes_is_said_beside_the_groups():
    """A user corpus with `he` and `heb` (one language, ISO 639-3 heb): both are audited;
    every group of Hebrew counts it once, the mean of its codes, and says so."""
    twice = report()
    twice["settings"]["languages"].append("heb")
    twice["measurements"] += [{**r, "language": "heb", "disparity": r["disparity"] - 2}
                              for r in twice["measurements"] if r["language"] == "he"]
    html = render_html(twice)
    assert ("One language under several codes counts once, the mean of its codes, in its "
            "groups and in the resource-class correlation (twice there where its codes were "
            "given different classes): he, heb (ISO 639-3 heb).</p>") in html
    from quantfair.html import aggregates

    groups = {(g["kind"], g["value"]): g for g in aggregates(twice, ["none"])}
    # Hebrew 6.0 and 4.0 -> 5.0, one language; with ar's 3.0 -> 4.0, not (6 + 4 + 3) / 3
    assert groups[("script", "Hebr")]["languages"] == "1"
    assert [c["text"] for c in groups[("script", "Hebr")]["cells"]] == ["5.00"]
    assert [c["title"] for c in groups[("script", "Hebr")]["cells"]] == [
        "mean of 1 language (he+heb: the mean of its codes)"]
    assert [c["title"] for c in groups[("family", "Afro-Asiatic")]["cells"]] == [
        "mean of 2 languages, from 3.00 (ar) to 5.00 (he+heb)"]
    assert [c["text"] for c in groups[("family", "Afro-Asiatic")]["cells"]] == ["4.00"]
    from quantfair.summary import worst_languages

    hardest = [w["language"] for w in worst_languages(twice)]  # Hebrew once, at its worst
    assert hardest[0] == "he" and "heb" not in hardest and len(hardest) == len(set(hardest))
    from quantfair import charts

    none = {r["language"]: r["disparity"] for r in twice["measurements"]
            if r["strategy"] == "none"}
    languages = [(none["he"] + none["heb"]) / 2, none["ar"], none["de"]]  # Hebrew once
    assert charts._mean_disparity(twice)["none"][0] == pytest.approx(sum(languages) / 3)

    twice["measurements"] += [{**r, "language": "eng", "disparity": 1.0}
                              for r in twice["measurements"] if r["language"] == "en"]
    titles = [c["title"] for g in aggregates(twice, ["none"]) for c in g["cells"]]
    assert titles and not any("(eng)" in title for title in titles)  # English: no group
    assert "eng" not in {r["language"] for r in compared_rows(twice, "none")}  # nor hardest hit
    html = render_html(twice)
    assert "en, eng" not in html  # nor one language "once in the correlation"
    from quantfair.html import heatmap

    assert "eng" not in heatmap(twice)["languages"]  # nor a column, nor a forest row
    assert "eng (" not in charts.forest(twice) and "he (" in charts.forest(twice)
    assert ("<p class=\"muted\">Note: eng names English, the reference: measured, compared "
            "with nothing.</p>") not in html  # the settings do not list it
    twice["settings"]["languages"].append("eng")
    assert ("<p class=\"muted\">Note: eng names English, the reference: measured, compared "
            "with nothing.</p>") in render_html(twice)
    assert "several codes" not in render_html(report())


def test_languages_with_a_name_alone_make_no_group_and_no_undefined_claim(monkeypatch):
    """A languages file giving names (and ISO codes) only: no group, and the page does not
    say the disparities are undefined (they are defined; nothing groups them)."""
    from quantfair import corpus

    monkeypatch.setattr(corpus, "_USER", {})
    named = report()
    codes = {"he": "xa", "ar": "xb", "de": "xc"}
    named["measurements"] = [{**r, "language": codes.get(r["language"], r["language"])}
                             for r in named["measurements"]]
    named["language_metadata"] = {code: {"name": f"Language {code}"} for code in codes.values()}
    html = render_html(named)
    assert "Language xa" in html and "every one is undefined" not in html
    assert 'id="aggregates"' not in html


def test_a_report_brings_a_user_corpus_metadata_to_its_html(monkeypatch):
    """`quantfair report REPORT.json` away from the corpus's languages file: the report's own
    metadata names the language and groups it, and an unknown script groups nothing."""
    from quantfair import corpus
    from quantfair.html import aggregates

    monkeypatch.setattr(corpus, "_USER", {})
    renamed = report()  # ar and de as languages of a user corpus with a languages file
    codes = {"ar": "tlh", "de": "qya"}
    renamed["measurements"] = [{**r, "language": codes.get(r["language"], r["language"])}
                               for r in renamed["measurements"]]
    renamed["language_metadata"] = {"tlh": {"name": "Klingon", "family": "Constructed"},
                                    "qya": {"name": "Quenya", "script": "Latn"}}
    html = render_html(renamed)
    assert "Klingon" in html and "unknown" not in {g["value"] for g in aggregates(
        renamed, ["none"])}
    assert ("family", "Constructed") in {(g["kind"], g["value"]) for g in aggregates(
        renamed, ["none"])}
    # a languages file's class for a shipped code, as the run used it: he in class 1
    regrouped = report()
    regrouped["language_metadata"] = {"he": {"name": "Hebrew", "resource_class": 1}}
    render_html(regrouped)
    assert ("class", "1") in {(g["kind"], g["value"]) for g in aggregates(regrouped, ["none"])}


def test_a_legend_fills_its_rows_alike():
    """The forest's five entries left "none" alone on a second row."""
    assert [charts.balanced_columns(n) for n in range(1, 10)] == [1, 2, 3, 4, 3, 3, 4, 4, 3]


def test_the_forest_draws_the_release_maxima_of_the_disparity():
    from quantfair import charts
    from quantfair.html import render_html

    def gate(language, bound, quantity="disparity", strategy="none"):
        return audit("release_disparity", "failed", language, strategy=strategy, bound=bound,
                     quantity=quantity, experiments=["release"])

    assert "release maximum" not in charts.forest(report())
    gated = report([gate("he", "<= 5"), gate("ar", "<= 2.5"), gate("ar", "<= 4"),
                    gate("de", "<= 0.5", quantity="degradation"),
                    gate("de", "<= 9", strategy="recommended"),
                    audit("synergy", "failed", "de", strategy="none", bound="<= 7",
                          quantity="disparity"),  # a seed finding's bound: no maximum
                    {**gate("zh", "<= 1.1"), "scheme": "int8"}])  # another scheme's
    assert charts.release_maxima(gated) == {"he": 5.0, "ar": 2.5}
    edited = report([gate("he", "<= 5"), gate("ar", "<= abc")])  # a limit that is no number
    assert charts.release_maxima(edited) == {"he": 5.0}  # it raised ValueError
    assert "release maximum" in charts.forest(gated)
    assert "a black bar a language's release maximum" in render_html(gated)
    assert "a black bar" not in render_html(report())


def test_a_value_outside_its_interval_still_draws_the_forest():
    """A hand-edited report whose disparity lies outside its CI: no negative error bar."""
    from quantfair import charts

    edited = report()
    for row in edited["measurements"]:
        if row["language"] == "he" and row["disparity"]:
            row["disparity"] = row["disparity_high"] * 2
    assert charts.forest(edited).startswith("<svg")


def test_disparities_that_are_all_undefined_are_not_called_unmeasured():
    from quantfair.html import render_html

    undefined = report()
    for row in undefined["measurements"]:
        row.update(disparity=None, disparity_low=None, disparity_high=None,
                   undefined="en loss change is within noise")
    html = render_html(undefined)
    assert ("No disparity to draw: every one undefined (en loss change is within noise)"
            in html)  # the reason the rows give, not a guess (too few units, at --units 1)
    assert "disparity undef. (en loss change is within noise)\"" in html  # no seed ratio
    assert ("No group has a mean NLL disparity: every one is undefined (en loss change is "
            "within noise)") in html  # the per-class table says why it is empty, not nothing
    assert "KL-divergence disparity</h3>" not in html  # not measured
    # KL divergence measured (a release gate on it): English's is never 0, so its groups
    # have means where the NLL's have none
    for row in undefined["measurements"]:
        row.update(kld_mean=0.1, kld_disparity={"en": 1.0, "he": 4.0, "ar": 2.0}.get(
            row["language"], 1.5), kld_undefined=None)
    html = render_html(undefined)
    assert "(mean NLL and KL-divergence disparity)</summary>" in html
    tables = html.split("per-byte KL-divergence disparity</h3>")[1].split("</table>")[0]
    assert re.search(r"<td>script Hebr</td><td[^>]*>1</td>(<td[^>]*>4.00</td>){2}", tables)
    assert re.search(r"<td>class 5</td><td[^>]*>2</td>(<td[^>]*>1.75</td>){2}", tables)


def test_comparisons_undecided_by_an_undefined_disparity_say_so_not_that_the_ci_is_wide():
    undecided = [audit("synergy", "inconclusive", "de", value=None, low=None, high=None),
                 audit("random_fails", "inconclusive", low=-0.2),
                 audit("sparse", "inconclusive", "he"),  # its CI [0.1, 0.9] excludes 0
                 audit("fertility", "inconclusive", quantity="Pearson r(fertility, disparity)",
                       bound="<= 0", value=-0.75, low=-0.98, high=0.36),
                 audit("variance", "inconclusive", quantity="Pearson r(variance, disparity)",
                       bound="<= 0", value=None, low=None, high=None),  # too few points
                 audit("quant_error", "inconclusive", quantity="Pearson r(variance, disparity)",
                       bound="<= 0", value=None, low=None, high=None,
                       detail="undefined: too few units for an interval (0 defined points)"),
                 # a sweep: no CI of a difference to tell, Holm's over the candidates decides
                 audit("anti_critical", "inconclusive", quantity="mean disparity of L2",
                       bound="lowest of 4 candidates", value=1.2, low=None, high=None)]
    sentences = summarize(report(undecided))["sentences"]
    assert "1 sweep(s) were inconclusive: the expected winner was neither shown to beat every " \
           "other candidate nor beaten by one (paired bootstrap differences, Holm-Bonferroni " \
           "over the candidates at family-wise 5%)." in sentences
    assert "2 correlation(s) were inconclusive: the 95% CI of Pearson r includes the bound, " \
           "or there were too few distinct points; more languages (--languages) narrow one " \
           "over languages, while a layer sweep's few layers decide only a strong " \
           "correlation (each audit says how many points would decide)." in sentences
    assert "1 comparison(s) were inconclusive: the 95% CI of the paired difference includes " \
           "the bound, so the data decide neither way with 6 units per language; more units " \
           "(--units) narrow the CI." in sentences
    assert "1 comparison(s) were inconclusive after correcting for the finding's several " \
           "cases: the unadjusted 95% CI shown excludes 0, but the difference is not " \
           "significant under Holm-Bonferroni at family-wise 5% (each message gives its p); " \
           "more units (--units) would decide the clear ones. Leaning against the claim: " \
           "sparse (he) +0.5 [95% CI 0.10, 0.90], bound < 0." in sentences
    assert "2 audit(s) were inconclusive because a disparity they compare or bound is undefined " \
           "(no ratio to English's loss change)." in sentences
    undefined = report(undecided)
    for row in undefined["measurements"]:
        row.update(undefined="en loss change is within noise")
    sentences = summarize(undefined)["sentences"]
    assert "Every disparity without protection is undefined: en loss change is within " \
           "noise." in sentences
    assert "2 audit(s) were inconclusive because a disparity they compare or bound is undefined " \
           "(en loss change is within noise)." in sentences
    assert not any(s.startswith("Every disparity") for s in summarize(report())["sentences"])


def test_decisions_on_fewer_than_six_units_are_called_machinery_checks():
    """...counting the units measured: a corpus smaller than --units has fewer."""
    few = report()
    caution = "With 5 units per language the paired bootstrap understates the uncertainty"
    for row in few["measurements"]:
        row["units"] = 5
    sentences = summarize(few)["sentences"]
    assert any(s.startswith(caution) for s in sentences) and "5 units per language." in \
        sentences[-1]
    assert not any("understates" in s for s in summarize(report())["sentences"])  # 6 units
    for row in few["measurements"]:
        row["units"] = 1
    sentences = summarize(few)["sentences"]
    assert "With 1 unit per language there is no interval, and decisions rest on point " \
        "estimates: read the decisions as machinery checks, not evidence." in sentences
    assert sentences[-1].endswith(", 1 unit per language.")


def test_provenance_gives_the_command_and_evidence_names_the_failed_case():
    ran = report()
    ran["selection"]["invocation"] = ["pytest", "audits/", "-m", "quick or quantfair_release"]
    html = render_html(ran).replace("&#39;", "'")
    # quoted as a shell needs it: the command pastes back
    assert "<dt>run</dt><dd><code>pytest audits/ -m 'quick or quantfair_release'</code>;" in html
    assert "<code>pytest audits/ -m 'quick or quantfair_release'</code></p>" in html
    evidence = html.split("Evidence for failed audits", 1)[1].split("<h2>", 1)[0]
    assert "<strong>synergy</strong> <code>case-de</code> (failed" in evidence


def test_the_summary_names_tests_that_are_not_audits_whose_failure_the_exit_code_counts():
    """The report said PASSED where pytest exited 1 for a project's own failing test."""
    ran = report([audit("sparse", "passed")])
    ran["selection"]["other_tests_failed"] = ["own/test_own.py::test_x"]
    assert ("1 test(s) or test file(s) that are not audits failed or errored "
            "(own/test_own.py::test_x): pytest's exit code counts them, the verdict is the "
            "audits' alone.") in summarize(ran)["sentences"]
    assert not any("not audits" in s for s in summarize(report())["sentences"])


def test_a_strict_run_with_a_failed_finding_names_its_inconclusive_audits_too():
    strict = report([a for a in AUDITS if a["outcome"] != "error"])
    strict["settings"]["strict"] = True
    assert summarize(strict)["headline"].endswith(
        "; and 2 inconclusive audit(s), which fail the run under --quantfair-strict")
    assert "--quantfair-strict" not in report(strict["audits"])["summary"]["headline"]


def test_no_gate_and_no_seed_finding_decided_says_no_verdict_on_the_findings():
    gate = audit("release_disparity", "skipped", "he", experiments=["release"])
    said = " ".join(summarize(report([gate]))["sentences"])
    assert "No release gate was checked (no --quantfair-max-* maximum, no " \
        "--quantfair-baseline)." in said and "the verdict is of the seed's findings" not in said
    assert "the verdict is of the seed's findings" in " ".join(report()["summary"]["sentences"])


def test_a_headline_of_failed_findings_names_the_regressions_beside_them():
    regressed = report([a for a in AUDITS if a["outcome"] != "error"])
    regressed["comparison"] = {"regressions": ["disparity int4/none/medium/he: 2 -> 3"],
                               "baseline_created": "2026-01-01"}
    headline = summarize(regressed)["headline"]
    failed = {a["finding"] for a in regressed["audits"] if a["outcome"] == "failed"}
    assert headline.startswith(f"1 finding(s) did not hold on this model ({failed.pop()}: ")
    assert headline.endswith("; and 1 regression(s) against the baseline")


def test_a_comparison_without_regression_is_said_in_the_summary():
    """A reviewer reads that the gate was checked, not only its absence of a headline."""
    passed = report([a for a in AUDITS if a["outcome"] == "passed"])
    passed["comparison"] = {"baseline_created": "2026-01-01", "regressions": [],
                            "rows": [{}] * 24, "audits": [{}] * 27,
                            "paired_on_shared_units": "6 units both runs measured (of 8 and 6 "
                                                      "per language)"}
    assert ("No regression against the baseline of 2026-01-01 (24 measurements and 27 audits "
            "compared; paired on the 6 units both runs measured).") in summarize(
                passed)["sentences"]


def test_a_warning_of_the_summary_stands_out_on_the_page():
    from quantfair.html import render_html

    broken = report()
    broken["model"] = {**broken.get("model", {}), "scheme_warning": "int4 breaks this model"}
    broken["summary"] = summarize(broken)
    banner = re.search(r'<div class="verdict .*?\n</div>', render_html(broken), re.DOTALL)[0]
    assert '<div class="warning">Warning: int4 breaks this model.</div>' in banner


def test_the_page_says_what_its_words_name():
    """A reviewer new to the tool reads what a unit, the seed, a class and the heat cell's
    second disparity are."""
    from quantfair.html import render_html

    html = render_html(report())
    assert "Units are the corpus's aligned passages" in html
    assert '"seed" names the research series' in html
    assert "class = the language's resource class (Joshi et al. 2020" in html
    assert "The model column holds the audits of the whole model, which name no language" in html
    assert re.search(r'title="none / he: disparity [^"]*; per-token \(seed\) disparity ', html)
    # a release gate's run has no audit of the whole model, so no such column
    per_language = report([a for a in AUDITS if a["language"]])
    assert "holds the audits of the whole model" not in render_html(per_language)


def test_the_page_defines_its_terms_with_the_models_own_numbers():
    """Not defined in the page before: NLL, L0/Llast/ln_f, random@budget, the bootstrap."""
    from quantfair.metrics import BOOTSTRAP_SAMPLES

    built = report()
    built["model"].update(layers=30, weights_note="dequantized from m.Q4_1.gguf")

    def terms(report: dict) -> str:
        return re.search(r'<details class="card" id="terms">(.*?)</details>',
                         render_html(report), re.DOTALL)[1]

    defined = terms(built)
    for term in ("NLL</dt>", "KL divergence</dt>", "<code>ln_f</code> the final norm",
                 "<code>random@budget(S)</code>", "Holm-Bonferroni", "slack says why",
                 "<code>even_layers</code> = <code>even.weight</code>",
                 "smallest detectable difference", "(|z| &gt; 3)"):
        assert term in defined
    assert "(<code>L29</code> of this model's 30)" in defined
    assert f"{BOOTSTRAP_SAMPLES} resamplings of the units" in defined
    # the reference of a GGUF file is its own weights, quantized once already
    assert "(here dequantized from m.Q4_1.gguf: a model already quantized once" in defined
    assert "already quantized once" not in terms(report())


def test_a_case_id_breaks_between_its_terms_not_inside_them():
    strategy = audit("random_fails", "inconclusive", case="L0+Llast<random@budget(L0+Llast)")
    html = render_html(report([strategy]))
    assert ('<td class="case">L0+<wbr>Llast&lt;<wbr>random@<wbr>budget(<wbr>L0+<wbr>Llast)</td>'
            in html)


def test_a_headline_of_regressions_names_the_first_and_counts_the_rest():
    """Not cut off after the first (it had ended in a dangling ", ")."""
    regressed = report([a for a in AUDITS if a["outcome"] == "passed"])
    regressed["comparison"] = {"baseline_created": "2026-01-01", "regressions": [
        "disparity int4/none/medium/he: 2 -> 3, beyond the tolerance by 0.8 [95% CI 0.1, 1.5]",
        "audit test_x.py::test_y[none-de]: passed -> failed", "degradation int4/none/medium/en: "
        "1.0 -> 2.0"]}
    assert summarize(regressed)["headline"] == (
        "3 regression(s) against the baseline of 2026-01-01: disparity int4/none/medium/he: "
        "2 -> 3, beyond the tolerance by 0.8 [95% CI 0.1, 1.5]; and 2 more")


def test_the_environment_names_torch_without_importing_it():
    """An xdist controller never imports torch: naming its version in the report must not
    (importing it took ~1.5 s at the end of each run)."""
    code = ("import sys; from quantfair.report import environment; e = environment(); "
            "print(e['torch'], e['transformers'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [metadata.version("torch"), metadata.version("transformers"), "False"]


def test_a_controller_imports_no_model_stack_nor_scipy():
    """What an xdist controller imports (the plugin, the run, the report) leaves out torch,
    transformers and scipy.stats (~0.5 s, wanted only for a correlation): every worker
    starts after the controller has."""
    code = ("import sys, quantfair.plugin, quantfair.run, quantfair.report; "
            "print(*[m in sys.modules for m in ('torch', 'transformers', 'scipy.stats')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_the_resource_correlation_shows_its_points_and_its_interval():
    from quantfair.html import render_html

    shown = re.search(r"Over (\d+) languages: Pearson r = (\S+) \[95% CI (\S+), (\S+)\]",
                      render_html(report()))
    assert shown and shown[1] == str(len(LANGUAGES) - 1)
    assert -1 <= float(shown[3]) <= float(shown[2]) <= float(shown[4].rstrip("]")) <= 1
    # r is of the values; the line drawn, of their logarithm: the page says which is which
    assert "of the disparities as measured; the chart's line fits their logarithm." in \
        render_html(report())


def test_a_scorecard_cell_a_release_gate_bounds_names_each_gate():
    """Two gates on one cell showed the last alone (a failed shipped gate read as a passed
    minimum of one's own); a gate failed as not measurable read "over" its maximum."""
    from quantfair.html import render_html

    def gate(language, outcome, strategy="none", bound="<= 5", finding="release_disparity",
             **extra):
        return audit(finding, outcome, language, strategy=strategy, bound=bound,
                     quantity="disparity", experiments=["release"], **extra)

    gates = [gate("he", "failed", value=6.0), gate("ar", "passed", value=3.0),
             gate("de", "failed", value=None), gate("de", "inconclusive", value=None,
                                                    bound=">= 0.5", finding="own_min"),
             gate("he", "passed", value=6.0, bound=">= 0.5", finding="own_min"),
             audit("synergy", "failed", "de", strategy="none", quantity="disparity"),  # seed
             gate("he", "passed", strategy="recommended", bound="<= 9"),  # not this table
             gate("ar", "failed", value=9.0, finding="own_int8", scheme="int8")]  # nor this
    page = render_html(report(gates))
    none = page[page.index('data-strategy="none"'):page.index('data-strategy="recommended"')]
    cells = dict(re.findall(r'data-language="(\w+)">.*?class="num shade"[^>]*>([^<]*(?:<br>'
                            r'<span class="gate">[^<]*</span>)*)</td>', none, re.S))
    def said(cell: str) -> set[str]:
        return set(re.findall(r'<br><span class="gate">([^<]*)</span>', cell))

    # several gates on a cell are told apart by their findings
    assert said(cells["he"]) == {"✗ release_disparity &lt;= 5", "✓ own_min &gt;= 0.5"}
    assert said(cells["ar"]) == {"✓ gate &lt;= 5"}
    assert said(cells["de"]) == {"✗ release_disparity &lt;= 5 (undefined)",
                                 "? own_min &gt;= 0.5 (undefined)"}
    assert "gate" not in cells["en"]
    degradation = audit("release_degradation", "failed", "en", strategy="none", value=0.8,
                        bound="<= 0.5", quantity="degradation", experiments=["release"])
    page = render_html(report([*gates, degradation]))
    english = page[page.index('data-language="en"'):].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", english, re.S)
    assert cells[6].endswith('<br><span class="gate">✗ degradation gate &lt;= 0.5</span>')
    assert sum("gate" in cell for cell in cells) == 1  # ppl quantized's alone
    recommended = page[page.index('data-strategy="recommended"'):]
    assert "✓ gate &lt;= 9" in recommended.split("</table>")[0]
    assert "A cell a release gate bounds names it" in page
    assert "A cell a release gate bounds" not in render_html(report())
    assert 'class="gate"' not in render_html(report())


def test_every_shaded_cell_is_readable_at_wcag_aa():
    """White on cividis's middle greys and olives read at 3.3:1 (Arabic's 5.87x on SmolLM2);
    text under 18 pt needs 4.5:1 (WCAG 2.1, 1.4.3)."""
    from matplotlib.colors import to_rgb

    from quantfair.html import contrast

    assert contrast((0, 0, 0), (1, 1, 1)) == pytest.approx(21)  # the definition's ends
    assert contrast(to_rgb("#767676"), (1, 1, 1)) == pytest.approx(4.54, abs=0.005)  # AA's grey
    for ratio in [*np.geomspace(1, 25, 400), 0.5, None]:
        cell = shade(ratio)
        assert contrast(to_rgb(cell["background"]), to_rgb(cell["color"])) >= 4.5, ratio


@pytest.mark.parametrize("low, high, trend", [(-0.98, 0.39, False), (-0.99, -0.2, True)])
def test_the_resource_fit_is_drawn_as_no_trend_where_r_may_be_0(monkeypatch, low, high, trend):
    """SmolLM2's five languages: r = -0.75 [-0.98, 0.39] beside a solid line that read as a
    trend."""
    from quantfair import metrics

    found = {"pearson_r": -0.75, "pearson_p": 0.14, "pearson_low": low, "pearson_high": high,
             "spearman_r": -0.7, "spearman_p": 0.2}
    monkeypatch.setattr(metrics, "correlation", lambda xs, ys: found)
    svg = charts.resource(report())["svg"]
    assert ("r's 95% CI includes 0, so no trend is established" in svg) is not trend
    assert ("stroke-dasharray" in svg.split("log-linear fit")[0]) is not trend  # the line


def test_the_scorecard_gives_same_top_in_percent_and_says_when_kld_was_not_measured():
    from quantfair.html import render_html, scorecard

    hint = "KL divergence and same top were not measured in this run"
    plain = report()
    assert hint in render_html(plain) and scorecard(plain, "none")[1]["same_top"] == ""
    assert "<th>KLD disparity" not in render_html(plain)  # no column of "not measured" only
    measured = report()
    for row in measured["measurements"]:
        row.update(kld_mean=0.02, kld_mean_low=0.01, kld_mean_high=0.03, same_top=0.934,
                   same_top_low=0.9, same_top_high=0.95)
    html = render_html(measured)
    assert hint not in html and 'title="mean KL divergence 0.0200 [0.0100, 0.0300] nats' in html
    assert "<th>KLD disparity [95% CI]</th><th>same top, % [95% CI]</th>" in html
    assert scorecard(measured, "none")[1]["same_top"] == "93.4 [90.0, 95.0]"


def test_the_terminal_table_gives_a_skewed_interval_as_its_bounds():
    from quantfair.report import summary_table

    text = summary_table([audit("sparse", "passed", value=0.5, low=0.1, high=2.9),
                          audit("wide", "passed", value=0.5, low=0.01, high=12.5)])
    header, _, row, _ = text.splitlines()
    assert "95% CI" in header and "[0.1, 2.9]" in row  # not a symmetric half-width
    assert header.index("95% CI |") + 6 == row.index("[0.1, 2.9] |") + 10  # both right-aligned


def test_the_terminal_table_escapes_a_bar_inside_a_cell():
    """`Better(..., than=("none", "odd"))` names its case `L0<none|odd`: the bar split the row
    into one cell more than the header has."""
    from quantfair.report import summary_table

    text = summary_table([audit("best_of", "passed", case="L0<none|odd")])
    header, _, row = text.splitlines()
    assert "L0<none\\|odd" in row
    assert header.count(" | ") == row.replace("\\|", "").count(" | ")


def test_the_terminal_table_lines_up_wide_and_combining_characters():
    """A corpus's own code in Han characters takes two columns each in a terminal, a name
    written with combining accents none for the accents: padding by `len` pushed the bars of
    those rows out of line with the header's."""
    from quantfair.text import table

    decomposed = "Yoru\u0300ba\u0301"  # Yorùbá with combining grave and acute accents
    lines = table(["lang", "name", "value"], [["阿拉伯", decomposed, "1.5"], ["en", "English",
                                                                             "12.25"]])
    header, rule, wide, narrow = lines.splitlines()
    columns = [[i for i, c in enumerate(line) if c == "|"] for line in (header, rule, narrow)]
    assert columns[0] == columns[1] == columns[2]
    # the wide row: each character before a bar counted by the columns it takes
    shown = [0]
    for c in wide:
        shown.append(shown[-1] + (2 if "\u4e00" <= c <= "\u9fff" else
                                  0 if c in "\u0300\u0301" else 1))
    assert [shown[i] for i, c in enumerate(wide) if c == "|"] == columns[0]
    assert wide.endswith("  1.5 |") and "| 阿拉伯 | " in wide  # numbers right-aligned


def test_the_summary_counts_bounds_decided_on_a_point_estimate_inside_a_wide_interval():
    from quantfair.summary import STRADDLES

    audits = [audit("recommended_bound", "passed", "he", bound="<= 5", value=4.0, low=2.0,
                    high=7.0, detail=STRADDLES),
              audit("recommended_bound", "failed", "ar", bound="<= 5", value=6.0, low=5.5,
                    high=7.0)]
    assert "1 bound(s) on a single value were decided on the point estimate although its 95% " \
           "CI straddles the bound (recommended_bound (he) passed: 4 [95% CI 2.00, 7.00], " \
           "bound <= 5): more units (--units) would firm them up." \
           in summarize(report(audits))["sentences"]
    # the page marks it where it shows the outcome: the matrix's cell and the audits' row
    html = render_html(report(audits))
    assert html.count("(the CI straddles the bound)") == 1
    assert html.count('<span class="muted"> (point estimate)</span>') == 1


def test_the_summary_names_the_languages_over_the_release_maxima_second():
    gates = [audit("release_disparity", "failed", "he", value=6.949, low=6.5, high=7.4,
                   bound="<= 5", quantity="disparity", experiments=["release"], strategy="none"),
             audit("release_disparity", "passed", "de", value=2.0, bound="<= 5",
                   quantity="disparity", experiments=["release"], strategy="none"),
             audit("release_degradation", "failed", "en", value=0.612, low=0.6, high=0.63,
                   bound="<= 0.5", quantity="degradation", experiments=["release"],
                   strategy="none"),
             audit("synergy", "failed", "ar", value=3.0),  # a seed finding: not a gate
             audit("own_gate", "failed", value=0.275, low=0.07, high=0.45, case="L0<none",
                   quantity="disparity difference", experiments=["release"],
                   strategy="none"),  # no language
             audit("release_disparity", "failed", "de", value=None, low=None, high=None,
                   bound="<= 5", quantity="disparity", experiments=["release"], strategy="none",
                   detail="undefined: en loss change is within noise (95% CI includes 0)")]
    assert summarize(report(gates))["headline"] == (
        "Release gate failed (disparity difference over its maximum in L0<none; degradation "
        "over its maximum in en; disparity over its maximum in he; disparity not measurable in "
        "de); 1 finding(s) did not hold on this model (synergy: 1 failed case(s)): honest "
        "measurements, not errors")
    assert summarize(report(gates))["release"] == "failed"
    assert summarize(report(gates))["findings"]["did_not_hold"] == ["synergy"]  # not the gates
    assert summarize(report(gates))["sentences"][1:4] == [
        "Disparity difference over its release maximum (< 0): own_gate (L0<none) 0.275 "
        "[95% CI 0.07, 0.45].",
        "Degradation over its release maximum (<= 0.5: perplexity up 50%): English (en) 0.612 "
        "[95% CI 0.60, 0.63].",
        "Disparity over its release maximum (<= 5): Hebrew (he) 6.95 [95% CI 6.50, 7.40]."]
    assert summarize(report(gates))["sentences"][4] == (
        "Release gates failed as not measurable: German (de) disparity (en loss change is "
        "within noise (95% CI includes 0)). More units (--units) may tell English's damage "
        "from noise.")
    every_unit = report(gates)
    every_unit["settings"]["units"] = None  # all of them: no more to give
    assert summarize(every_unit)["sentences"][4].endswith("(95% CI includes 0)).")
    assert not any("release maximum" in s for s in summarize(report())["sentences"])
    # a broken model's degradation, and its CI, in the same notation
    gates[2].update(value=1.33e10, low=3194648419.64, high=96502241841.19)
    assert "English (en) 1.33e+10 [95% CI 3.19e+09, 9.65e+10]." in \
        summarize(report(gates))["sentences"][2]


def test_a_release_gate_passed_says_its_cases_were_within_their_bounds():
    def gate(language, bound):
        return audit("release_disparity", "passed", language, value=1.2, bound=bound,
                     quantity="disparity", experiments=["release"], strategy="none")

    maxima = [gate("he", "<= 5"), gate("ar", "<= 2")]
    assert "Release gate passed: 2 case(s) within their maxima (release_disparity)." in \
        summarize(report(maxima))["sentences"]
    assert "Release gate passed: 3 case(s) within their bounds (release_disparity)." in \
        summarize(report([*maxima, gate("de", ">= 1")]))["sentences"]


def test_the_languages_over_one_release_maximum_are_named_worst_first_and_cut():
    codes = ["de", "ru", "he", "ar", "zh", "ja", "ko", "fr"]
    gates = [audit("release_disparity", "failed", code, value=2.0 + i, low=1.5 + i,
                   high=2.5 + i, bound="<= 1.5", quantity="disparity", experiments=["release"],
                   strategy="none")
             for i, code in enumerate(codes)]
    over = [s for s in summarize(report(gates))["sentences"] if "release maximum" in s]
    assert over == [
        "Disparity over its release maximum (<= 1.5), worst first: French (fr) 9 [95% CI 8.50, "
        "9.50]; Korean (ko) 8 [95% CI 7.50, 8.50]; Japanese (ja) 7 [95% CI 6.50, 7.50]; "
        "Chinese (zh) 6 [95% CI 5.50, 6.50]; Arabic (ar) 5 [95% CI 4.50, 5.50]; and 3 more "
        "(the audits table lists each)."]
    # a gate of another strategy, a minimum, a KLD maximum: each named as such
    other = [audit("own", "failed", "de", value=3.0, bound="<= 1.5", quantity="disparity",
                   experiments=["release"], strategy="L0+Llast"),
             *(audit("own_min", "failed", code, value=value, bound=">= 1", strategy="none",
                     quantity="disparity", experiments=["release"], low=None, high=None)
               for code, value in (("he", 0.9), ("ar", -0.7))),
             audit("release_kld_disparity", "failed", "zh", value=4.0, bound="<= 2",
                   quantity="kld_disparity", experiments=["release"], strategy="none",
                   low=None, high=None),
             audit("own_int8", "failed", "ru", value=2.5, bound="<= 2", quantity="disparity",
                   experiments=["release"], strategy="none", scheme="int8", low=None,
                   high=None)]
    said = summarize(report(other))
    assert said["sentences"][1:5] == [
        "Disparity of L0+Llast over its release maximum (<= 1.5): German (de) 3 [95% CI 0.10, "
        "0.90].",
        "Disparity under int8 over its release maximum (<= 2): Russian (ru) 2.5.",
        "Disparity under its release minimum (>= 1), worst first: Arabic (ar) -0.7; Hebrew (he) "
        "0.9.",
        "KLD disparity over its release maximum (<= 2): Chinese (zh) 4."]
    assert said["headline"].startswith(
        "Release gate failed (disparity of L0+Llast over its maximum in de; disparity under int8 "
        "over its maximum in ru; disparity under its minimum in ar, he; KLD disparity over its "
        "maximum in zh)")
    # a value that would round to its bound keeps the digits that show it over; a case two
    # gates bound alike is named once
    close = [audit(finding, "failed", "ar", value=1.005, low=None, high=None, bound="<= 1",
                   quantity="kld_disparity", experiments=["release"], strategy="none")
             for finding in ("release_kld_disparity", "my_kld")]
    assert "KLD disparity over its release maximum (<= 1): Arabic (ar) 1.005." in \
        summarize(report(close))["sentences"]
    gates[0]["bound"] = "<= 1.8"  # a language's own maximum: a sentence of its own
    assert {s.split(" [")[0] for s in summarize(report(gates))["sentences"]
            if "maximum (" in s} == {
        "Disparity over its release maximum (<= 1.8): German (de) 2",
        "Disparity over its release maximum (<= 1.5), worst first: French (fr) 9"}


def test_the_summary_says_why_audits_could_not_run_once_per_reason():
    mismatch = "--quantized v1.gguf does not pair with tiny-llama"
    same = [audit(f"finding{i}", "error", message=mismatch) for i in range(27)]
    assert summarize(report(same))["headline"] == (
        f"27 audit(s) could not run (errors, not findings): the verdict needs them fixed: "
        f"{mismatch}")
    many = [audit(f"finding{i}", "error", message=f"reason {i % 4}") for i in range(8)]
    assert summarize(report(many))["headline"].endswith(
        "fixed: reason 0; reason 1; and 2 other reason(s)")


def test_the_summary_says_when_english_loses_more_with_the_recommended_protection():
    """Gemma 3 under int4: the recommended protection lowered Hebrew's disparity 1.59x ->
    1.42x while English's perplexity rose 9.61e9 -> 3.29e17 (every language lost more)."""
    def said(r: dict) -> list[str]:
        return [s for s in summarize(r)["sentences"] if s.startswith("English's perplexity")]

    plain = report()
    assert not said(plain)  # English's damage is the same with and without it
    worse = report()
    for row in worse["measurements"]:
        if row["language"] == "en":
            row["ppl_q"] = 9.61e9 if row["strategy"] == "none" else 3.29e17
    assert said(worse) == ["English's perplexity rises with it, 9.61e+09 -> 3.29e+17: a lower "
                           "disparity with it is not less damage."]
    for row in worse["measurements"]:
        if row["language"] == "en" and row["strategy"] == "recommended":
            row["ppl_q"] = 9.0e9  # it lowers English's damage: nothing to say
    assert not said(worse)


def test_the_summary_names_the_language_hit_hardest_with_the_recommended_protection():
    def sentence(r: dict) -> str:
        return next(s for s in summarize(r)["sentences"] if "recommended protection" in s)

    def raised(r: dict) -> list[str]:
        return [s for s in summarize(r)["sentences"]
                if s.startswith("The recommended protection raises")]

    def protected(r: dict, lang: str, **values) -> None:
        for row in r["measurements"]:
            if row["strategy"] == "recommended" and row["language"] == lang:
                row.update(values)

    assert "hit hardest with it" not in sentence(report())  # Hebrew, worst either way
    shifted = report()
    protected(shifted, "ar", disparity=2.5, disparity_low=2.25, disparity_high=2.75)
    assert sentence(shifted) == (
        "With the seed's recommended protection Hebrew is at 2.00x [95% CI 2.00, 2.00]; the "
        "language hit hardest with it is Arabic (ar) at 2.50x [95% CI 2.25, 2.75].")
    # a language the protection hurts more is said, not left to the tables (every one is
    # lowered here: Arabic 3.0 -> 2.5)
    assert not raised(shifted)
    protected(shifted, "de", disparity=1.75)
    assert raised(shifted) == [
        "The recommended protection raises the disparity of German (de) 1.50x -> 1.75x "
        "(point estimates; the audits decide on paired differences)."]
    # ... and where the damage to it falls too, that a ratio rose because English's fell more
    eased = copy.deepcopy(shifted)
    protected(eased, "en", ppl_q=1.5)
    assert raised(eased) == [
        "The recommended protection raises the disparity of German (de) 1.50x -> 1.75x "
        "(point estimates; the audits decide on paired differences); yet the perplexity under "
        "int4 falls with it for de 1.78 -> 1.75 and for English 1.73 -> 1.5: a ratio rises "
        "where English's damage falls more, in proportion."]
    protected(eased, "de", ppl_q=1.9)  # German's damage grows: nothing eased to say
    assert raised(eased)[0].endswith("(point estimates; the audits decide on paired "
                                     "differences).")
    raised_more = copy.deepcopy(shifted)  # the most raised comes first
    protected(raised_more, "ar", disparity=3.6)
    assert raised(raised_more) == [
        "The recommended protection raises the disparity of Arabic (ar) 3.00x -> 3.60x, "
        "German (de) 1.50x -> 1.75x (point estimates; the audits decide on paired "
        "differences)."]
    fell = copy.deepcopy(shifted)  # German's loss fell under quantization, less so with it
    for row in fell["measurements"]:
        if row["language"] == "de":
            row["disparity"] = -5.8 if row["strategy"] == "none" else -0.75
    assert raised(fell) == [
        "The recommended protection raises the disparity of German (de) -5.80x -> -0.75x "
        "(point estimates; the audits decide on paired differences; below 0, a language's "
        "loss fell under quantization)."]
    # a number beside its reason is no measurement
    protected(shifted, "he", disparity=14.71, disparity_low=-167.56, disparity_high=189.47,
              undefined="en loss change is within noise (95% CI includes 0)")
    assert raised(shifted) == [  # Hebrew's 14.71 is no rise: it is undefined
        "The recommended protection raises the disparity of German (de) 1.50x -> 1.75x "
        "(point estimates; the audits decide on paired differences)."]
    assert sentence(shifted) == (
        "With the seed's recommended protection Hebrew's disparity is undefined (en loss "
        "change is within noise (95% CI includes 0)); the language hit hardest with it is "
        "Arabic (ar) at 2.50x [95% CI 2.25, 2.75].")


def test_disparities_at_or_below_0_are_named_under_the_forest():
    """The log axis cannot show them: left out without a word, a language's row was empty."""
    from quantfair.html import render_html

    negative = report()
    for row in negative["measurements"]:
        if row["language"] == "he" and row["strategy"] == "none":
            row["disparity"], row["undefined"] = -1.41, None
    assert ("Not drawn (disparity at or below 0, on a log axis): he (none)"
            in render_html(negative))
    assert "Not drawn (disparity" not in render_html(report())


def test_a_run_that_checked_no_release_gate_says_so():
    """A failed verdict on the seed's findings, with every release gate skipped for want of a
    maximum, read like a failed release."""
    skipped_gate = audit("release_disparity", "skipped", "he", experiments=["051", "release"],
                         value=None, low=None, high=None, bound=None)
    said = ("No release gate was checked (no --quantfair-max-* maximum, no --quantfair-baseline): "
            "the verdict is of the seed's findings on this model, not a release decision.")
    assert said in summarize(report([*AUDITS, skipped_gate]))["sentences"]
    decided = {**skipped_gate, "outcome": "passed", "value": 1.2, "bound": "<= 2"}
    assert said not in summarize(report([*AUDITS, decided]))["sentences"]
    # one's own findings (no seed number quoted) are not called the seed's
    own = [*(a for a in AUDITS if a["outcome"] != "error"),
           audit("my_release", "failed", "he", seed="")]
    assert said.replace("seed's findings", "findings") in summarize(report(own))["sentences"]
    assert banner(report(own), report(own)["summary"])[1] == "NO RELEASE GATE; FINDINGS FAILED"
    # a baseline given but sharing nothing: it was given, and it is what went wrong
    given = report([*AUDITS])
    given["settings"]["release_maxima"] = "disparity 50"
    assert ("No release gate was checked (maxima were given, but no release gate ran): the "
            "verdict is of the seed's findings on this model, not a release decision."
            in summarize(given)["sentences"])
    for reason in ("baseline: the baseline (x) shares no measurement with this run",
                   "stopped by a bad setting: the baseline is of another model (x) than this"):
        unusable = {**report([*AUDITS, skipped_gate]), "incomplete": [reason]}
        assert ("No release gate was checked (a baseline was given, but could not be "
                "compared): the verdict is of the seed's findings on this model, not a release "
                "decision." in summarize(unusable)["sentences"])


def test_the_suggest_chart_labels_a_term_added_to_earlier_steps_as_such():
    step = {"overhead": 0.05, "score": 2.0, "mean_disparity": 1.0, "chosen": True,
            "phase": "structural", "candidate": "L0", "strategy": "L0"}
    trace = [step, {**step, "overhead": 0.06, "mean_disparity": 0.9, "candidate": "ln",
                    "strategy": "L0+ln"}]
    svg = charts.suggest_trace({"suggestion": {"strategy": "L0+ln", "trace": trace}})
    labels = re.findall(r"<text[^>]*>\s*([^<]+?)\s*</text>", svg)
    assert "L0" in labels and "+ln" in labels and "ln" not in labels


@pytest.mark.parametrize("scheme, said", [
    ("int4", "int4 (4-bit round to nearest, simulated here: symmetric, one scale per tensor, "
             "over every floating parameter (embeddings and norms too))"),
    ("gguf:Q4_0", "gguf:Q4_0 (llama.cpp&#39;s Q4_0 block format (32 weights a block), computed "
                  "here; token embedding and output head Q8_0)"),
    ("artifact:rc1", "artifact:rc1 (the tensors of the quantized file audited (--quantized))"),
    ("int4-unknown-part", "int4-unknown-part &middot;"),  # a later version's: the name alone
    (None, " &middot;"),  # a run stopped before it knew its scheme
])
def test_the_page_says_what_its_scheme_does_under_its_name(scheme, said):
    """A reviewer read "int4 breaks this model" as the team's INT4 build being broken: the
    page's first line names what the scheme is, and whether it is a file or computed here."""
    data = report()
    data["settings"]["scheme"] = scheme
    if scheme is None:
        del data["settings"]["scheme"]
    assert f'<p class="muted">{said}' in render_html(data)


def test_the_terms_define_every_layer_name_the_seed_audits_use():
    """`L-2` and `Lmid` name swept layers in the whole suite's tables; the terms defined
    neither."""
    data = report()
    data["model"]["layers"] = 30
    html = render_html(data)
    assert "<code>L-k</code> the k-th from the end (<code>L-1</code> = <code>Llast</code>)" in html
    assert "<code>Lmid</code> the middle one (<code>L15</code>)" in html
