"""The answer first: a run's verdict and a plain-language summary, built from the JSON report.

The same block is the report's `summary` (JSON), the banner and opening paragraphs of the HTML
and the closing lines of the pytest run. Torch-free: it reads only the report dictionary.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

from quantfair.corpus import REFERENCE, language, named_by, names_reference
from quantfair.text import capitalized, some, units_text

OUTCOMES = ("passed", "failed", "inconclusive", "skipped", "error")
# in the detail of a bound on one value decided on a point estimate whose CI has values on
# both sides of the bound (written by quantfair.audit)
STRADDLES = "its 95% CI straddles the bound: decided on the point estimate"
RECOMMENDED = "recommended"
WORST_SHOWN = 3


def main_rows(report: dict, strategy: str | None = None) -> list[dict]:
    """Measurements of the run's scheme (or artifact) at the default text length, in the run's
    language order; one strategy's when `strategy` is given."""
    settings = report.get("settings", {})
    order = {lang: index for index, lang in enumerate(settings.get("languages") or [])}
    rows = [r for r in report.get("measurements", [])
            if r.get("length", "medium") == "medium" and r["scheme"] == settings.get("scheme")
            and (strategy is None or r["strategy"] == strategy)]
    return sorted(rows, key=lambda r: order.get(r["language"], len(order)))


# Fewer units than this per language decide nothing an exact paired test could: a sign-flip
# test over n paired units has smallest two-sided p 2 / 2^n (0.0625 at 5, 0.03125 at 6).
FEW_UNITS = 6


def compared_rows(report: dict, strategy: str | None = None) -> list[dict]:
    """`main_rows` of the languages compared with English: the reference left out (under any
    code, `names_reference`), and those whose NLL disparity is undefined."""
    return [r for r in main_rows(report, strategy) if not names_reference(r["language"])
            and not r.get("undefined") and r.get("disparity") is not None]


def _why_undefined(report: dict, strategy: str | None = None) -> str:
    """The reasons the measurements give for their undefined disparities, e.g. "en loss
    change is within noise (95% CI includes 0)" or "too few units for an interval"."""
    reasons = dict.fromkeys(r["undefined"] for r in main_rows(report, strategy)
                            if r.get("undefined"))
    return "; ".join(reasons) or "no ratio to English's loss change"


def _damage_eased(report: dict, raised: list[str]) -> str:
    """"; yet the perplexity under int4 falls with it for zh 7.95e+10 -> 6.03e+09 and for
    English 2.62e+07 -> 1.7e+06: ...": where the protection lowers the damage to languages whose
    disparity it raises, as a ratio does when English's falls more ("" where it does not)."""
    ppl = {(r["strategy"], r["language"]): r.get("ppl_q") or 0
           for strategy in ("none", RECOMMENDED) for r in main_rows(report, strategy)}

    def falls(lang: str) -> bool:
        return 0 < ppl.get((RECOMMENDED, lang), 0) < ppl.get(("none", lang), 0)

    def change(lang: str) -> str:
        return f"{ppl['none', lang]:.3g} -> {ppl[RECOMMENDED, lang]:.3g}"

    eased = [lang for lang in raised if falls(lang)]
    if not eased or not falls(REFERENCE):
        return ""
    scheme = (report.get("settings") or {}).get("scheme") or "quantization"
    return (f"; yet the perplexity under {scheme} falls with it for "
            + some([f"{lang} {change(lang)}" for lang in eased])
            + f" and for English {change(REFERENCE)}: a ratio rises where English's damage "
            "falls more, in proportion")


def _where(audit: dict) -> str:
    """The language an audit measured, else its case."""
    return audit.get("language") or audit.get("case")


def _interval(low: float | None, high: float | None) -> str:
    """" [95% CI 6.50, 7.40]", bounds of 10,000 or more to 3 significant digits (a broken
    model's degradation: [3.19e+09, 9.65e+10]); "" where there is none."""
    if low is None or high is None:
        return ""
    return " [95% CI " + ", ".join(f"{x:.3g}" if abs(x) >= 1e4 else f"{x:.2f}"
                                   for x in (low, high)) + "]"


def worst_languages(report: dict, count: int = WORST_SHOWN) -> list[dict]:
    """The languages hit hardest without protection: highest NLL disparity first, each
    language once (under its code hit hardest, where a user corpus gives it two)."""
    rows: list[dict] = []
    for r in sorted(compared_rows(report, "none"), key=lambda r: r["disparity"], reverse=True):
        if not named_by(r["language"], [shown["language"] for shown in rows]):
            rows.append(r)
    return [{"language": r["language"], "name": language(r["language"]).name,
             "disparity": r["disparity"], "low": r.get("disparity_low"),
             "high": r.get("disparity_high")} for r in rows[:count]]


def unestablished_lead(report: dict, first: str, second: str) -> tuple[float, float] | None:
    """The paired 95% CI of `first`'s NLL disparity without protection minus `second`'s
    (`metrics.paired_difference`: the same resampled units for both and for English) where
    it includes 0, so that `first` is not shown to be hit harder; None where it excludes 0,
    or where the rows keep no per-unit values of the same units (before format 5) or too few
    units."""
    from quantfair.metrics import Measurement, paired_difference

    rows = {r["language"]: r.get("per_unit") for r in main_rows(report, "none")}
    units = {code: rows.get(code) for code in (REFERENCE, first, second)}
    english = units[REFERENCE]
    if not all(units.values()) or any(  # the same units, by name (format 6) or count
            u.get("unit") != english.get("unit") or len(u["tokens"]) != len(english["tokens"])
            for u in units.values()):
        return None
    measured = Measurement.from_per_unit(units, REFERENCE)
    value, samples, undefined = measured.draws("disparity")
    if undefined:
        return None
    lead = paired_difference((value[1], samples[1]), (value[2], samples[2]), measured.units)
    return (lead.low, lead.high) if lead.low <= 0 <= lead.high else None


def finding_outcomes(report: dict) -> dict[str, dict]:
    """Per finding: its claim, experiments and one outcome for the whole claim: `failed` (the
    claim did not hold: some case failed), `error`, `inconclusive` (no case failed, some could
    not be decided), `passed` (every case that ran passed) or `skipped` (none ran)."""
    cases: dict[str, list[dict]] = defaultdict(list)
    for a in report.get("audits", []):
        if a.get("finding"):
            cases[a["finding"]].append(a)
    result = {}
    for finding, audits in cases.items():
        outcomes = {a["outcome"] for a in audits}
        overall = next((o for o in ("error", "failed", "inconclusive", "passed")
                        if o in outcomes), "skipped")
        first = audits[0]
        result[finding] = {"finding": finding, "outcome": overall, "claim": first.get("claim"),
                           "experiments": first.get("experiments") or [],
                           "cases": len(audits)}
    return result


def _headline(report: dict, counts: dict) -> str:
    if report.get("incomplete"):
        return "Incomplete run: " + "; ".join(report["incomplete"])
    if counts["error"]:
        reasons = list(dict.fromkeys(a.get("message") or "no message"
                                     for a in report["audits"] if a["outcome"] == "error"))
        return (f"{counts['error']} audit(s) could not run (errors, not findings): "
                "the verdict needs them fixed: " + "; ".join(reasons[:2])
                + (f"; and {len(reasons) - 2} other reason(s)" if len(reasons) > 2 else ""))
    regressions = (report.get("comparison") or {}).get("regressions")
    strict = report.get("settings", {}).get("strict") and counts["inconclusive"]  # they fail
    if counts["failed"]:
        failed = [a for a in report.get("audits", []) if a["outcome"] == "failed"]
        over: dict[str, list[str]] = defaultdict(list)  # a maximum's quantity, why: cases
        cases: dict[str, int] = defaultdict(int)  # a seed finding: its failed cases
        for a in sorted(failed, key=lambda a: a.get("value") is None):  # measured first
            if is_release(a):  # a gate fails a value it cannot measure too (undefined)
                why = (beyond(a.get("bound") or "") if a.get("value") is not None
                       else "not measurable")
                over[f"{gate_name(a)} {why}"].append(_where(a))
            else:
                cases[a.get("finding") or a["nodeid"]] += 1
        parts = ["release gate failed (" + "; ".join(
            f"{gate} in {some(where)}" for gate, where in over.items()) + ")"] if over else []
        if cases:
            named = "; ".join(f"{f}: {n} failed case(s)" for f, n in list(cases.items())[:4])
            parts.append(f"{len(cases)} finding(s) did not hold on this model ({named}"
                         + (f"; and {len(cases) - 4} more" if len(cases) > 4 else "")
                         + "): honest measurements, not errors")
        return "; ".join(parts) + (f"; and {len(regressions)} regression(s) against the "
                                   "baseline" if regressions else "") + (
            f"; and {counts['inconclusive']} inconclusive audit(s), which fail the run under "
            "--quantfair-strict" if strict else "")
    if strict:
        return (f"{counts['inconclusive']} audit(s) were inconclusive, which fails the "
                "run under --quantfair-strict" + (f"; and {len(regressions)} regression(s) "
                                                  "against the baseline" if regressions else ""))
    if regressions:
        return (f"{len(regressions)} regression(s) against the baseline of "
                f"{report['comparison'].get('baseline_created')}: {regressions[0]}"
                + (f"; and {len(regressions) - 1} more" if len(regressions) > 1 else ""))
    if not counts["passed"]:
        return "No audit decided anything in this run"
    gates = all(is_release(a) for a in report.get("audits", []) if a["outcome"] == "passed")
    return f"Every decided {'release gate' if gates else 'claim'} held ({counts['passed']} passed)"


def _excludes_zero(audit: dict) -> bool:
    """A paired comparison (bound < 0 or > 0) whose unadjusted CI lies on one side of 0."""
    low, high = audit.get("low"), audit.get("high")
    return (audit.get("value") is not None and audit.get("bound") in ("< 0", "> 0")
            and low is not None and high is not None and not low <= 0 <= high)


def straddles(audit: dict) -> bool:
    """Whether a bound on one value was decided on its point estimate, its 95% CI on both
    sides of the bound (`STRADDLES` in its detail)."""
    return STRADDLES in (audit.get("detail") or "")


def _by_measurement(audits: list[dict]) -> dict[tuple, list[str]]:
    """The findings of each measurement (where, value, CI, bound), in order: several
    findings test one paired difference (recommended against none, for Chinese)."""
    findings: dict[tuple, list[str]] = defaultdict(list)
    for a in audits:
        findings[(_where(a), a["value"], a["low"], a["high"], a["bound"])].append(a["finding"])
    return findings


def leaning(audit: dict) -> str | None:
    """The side of its bound an inconclusive audit's unadjusted 95% CI lies wholly on: "pass"
    or "fail". So lies a comparison of a finding's several cases whose difference is not
    significant under Holm-Bonferroni's correction: the data lean, without deciding. None for
    any other outcome, a CI that straddles the bound (no lean), an audit without a CI, or a
    bound that is no threshold (a sweep's "lowest of N candidates")."""
    low, high, bound = audit.get("low"), audit.get("high"), audit.get("bound") or ""
    if audit.get("outcome") != "inconclusive" or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
        return None
    if threshold := re.fullmatch(r"([<>])=? (\S+)", bound):
        limit = float(threshold[2])
        least, most = (-math.inf, limit) if threshold[1] == "<" else (limit, math.inf)
    elif interval := re.fullmatch(r"in \[(\S+), (\S+)\]", bound):
        least, most = float(interval[1]), float(interval[2])
    else:
        return None
    return ("pass" if least <= low and high <= most else
            "fail" if high < least or low > most else None)


def _is_sweep(audit: dict) -> bool:
    """A `Best` audit: the expected winner of a sweep against each other candidate (its CI
    is not of a difference, and its decision is Holm's over the candidates)."""
    return bool(re.fullmatch(r"(lowest|highest) of \d+ candidates", audit.get("bound") or ""))


def _is_correlation(audit: dict) -> bool:
    return (audit.get("quantity") or "").startswith("Pearson r")


def _undefined(audit: dict) -> bool:
    """No value because a disparity the audit compares or bounds is undefined (a correlation
    without a value may instead lack distinct points; its detail says which)."""
    return audit.get("value") is None and (
        not _is_correlation(audit) or (audit.get("detail") or "").startswith("undefined"))


def uniform_guess_warning(english: dict, vocabulary: int | None, scheme: str | None
                          ) -> str | None:
    """Why disparities mean little where English's perplexity (`english`: a row with `ppl_fp`
    and `ppl_q`) is above the vocabulary's size, the perplexity of a uniform guess: the model
    itself has not learned the text, or `scheme` breaks it; else None."""
    if not vocabulary:
        return None
    if (english.get("ppl_fp") or 0) > vocabulary:  # the scheme is not to blame
        return (f"the model itself guesses worse than uniformly: English's perplexity in full "
                f"precision, {english['ppl_fp']:.3g}, is above the vocabulary's size "
                f"({vocabulary:,}). Its disparities compare damage to a model that has not "
                "learned the text.")
    if (english.get("ppl_q") or 0) > vocabulary:
        return (f"{scheme} breaks this model: English's perplexity under it, "
                f"{english['ppl_q']:.3g}, is above the vocabulary's size ({vocabulary:,}), "
                "the perplexity of a uniform guess. Its disparities compare damage to a broken "
                "model: a protection can lower them while every language gets worse.")
    return None


def is_release(audit: dict) -> bool:
    """An audit of a release maximum (`--quantfair-max-*`), not of a seed finding."""
    return "release" in (audit.get("experiments") or ())


def release_outcome(report: dict) -> str | None:
    """The release gate's outcome: "failed" where an audit of a release maximum failed (or,
    under --quantfair-strict, was inconclusive) or the run regressed against its baseline;
    else "incomplete" where a gate was checked (`release_checked`) by a run that did not
    finish what it was asked (a baseline it could not compare, an audit cut off: its
    `incomplete` reasons), "passed" where it did; "incomplete" also where a gate was asked
    for and none could be checked (`unchecked_gate`); None where none was asked for."""
    if not release_checked(report):
        return "incomplete" if unchecked_gate(report) else None
    bad = ("failed", "inconclusive") if report.get("settings", {}).get("strict") else ("failed",)
    if (report.get("comparison") or {}).get("regressions") or any(
            a["outcome"] in bad for a in report.get("audits", []) if is_release(a)):
        return "failed"
    return "incomplete" if report.get("incomplete") else "passed"


def unchecked_gate(report: dict) -> str:
    """Why a release gate asked for (a baseline, a maximum) decided nothing, or "": a baseline
    that could not be compared (an `incomplete` reason of the run names it), maxima for which
    no release audit ran."""
    if any("baseline" in reason for reason in report.get("incomplete") or ()):
        return "a baseline was given, but could not be compared"
    if (report.get("settings") or {}).get("release_maxima"):
        return "maxima were given, but no release gate ran"
    return ""


def own_findings(report: dict) -> bool:
    """Whether one's own findings are among the audits that are no release gate: one that
    quotes no number of the seed's, as each of the seed's does."""
    return any(not a.get("seed") for a in report.get("audits", []) if not is_release(a))


def seed_outcome(report: dict) -> str | None:
    """The seed findings' outcome, release audits left out: "failed" where one failed (or,
    under --quantfair-strict, was inconclusive), "passed" where some passed and none of that;
    None where none was decided."""
    outcomes = {a["outcome"] for a in report.get("audits", []) if not is_release(a)}
    strict = report.get("settings", {}).get("strict")
    return ("failed" if "failed" in outcomes or (strict and "inconclusive" in outcomes)
            else "passed" if "passed" in outcomes else None)


def release_checked(report: dict) -> bool:
    """Whether a release gate decided anything: a baseline was compared, or an audit of a
    release maximum (`--quantfair-max-*`) ran. Without one the verdict is of the seed's
    findings on the model, not a release decision."""
    return bool(report.get("comparison")) or any(
        a["outcome"] != "skipped" for a in report.get("audits", []) if is_release(a))


def _case(audit: dict) -> str:
    """What an audit bounds: "Hebrew (he)", or "own_gate (L0<none)" for one of no language."""
    return (f"{language(audit['language']).name} ({audit['language']})"
            if audit.get("language") else f"{audit['finding']} ({audit['case']})")


QUANTITY_NAMES = {"seed_disparity": "seed disparity", "kld_disparity": "KLD disparity",
                  "mean_kld": "mean KL divergence", "same_top_rate": "same-top rate"}


def gate_name(audit: dict) -> str:
    """What a release gate bounds, as a reader names it: "disparity", "KLD disparity", the
    strategy of a per-language gate on another than none ("disparity of L0+Llast") and the
    scheme of a gate that names its own ("disparity under int8")."""
    quantity = audit.get("quantity") or audit["finding"]
    strategy = audit.get("strategy")
    return QUANTITY_NAMES.get(quantity, quantity) + (
        f" of {strategy}" if audit.get("language") and strategy not in (None, "none") else ""
    ) + (f" under {audit['scheme']}" if audit.get("scheme") else "")


def of_run_scheme(report: dict, audit: dict) -> bool:
    """Whether `audit` measured the run's scheme (`main_rows`), not one its check names."""
    return audit.get("scheme") in (None, report.get("settings", {}).get("scheme"))


def beyond(bound: str) -> str:
    """How a value fails `bound`: "over its maximum" (<=), "under its minimum" (>=), else
    "outside its bounds"."""
    return ("over its maximum" if bound.startswith("<") else "under its minimum"
            if bound.startswith(">") else "outside its bounds")


def bound_limits(bound: str) -> list[tuple[float, str]] | None:
    """The (limit, "<=" or ">=") pairs of a bound as `audit.Bound` writes it ("<= 3",
    ">= 1", "in [1, 3]"); None for another form or a limit that is no number."""
    found = re.fullmatch(r"(<=|>=) (\S+)|in \[(\S+), (\S+)\]", bound)
    if found is None:
        return None
    side, limit, low, high = found.groups()
    try:
        return [(float(limit), side)] if side else [(float(low), ">="), (float(high), "<=")]
    except ValueError:
        return None


def _beside(value: float, limit: float | None) -> str:
    """`value` to 3 significant digits, more where those would read as its bound's `limit`
    (1.005 against <= 1 is "1.005", not "1")."""
    digits = 3
    while limit is not None and digits < 8 and float(f"{value:.{digits}g}") == limit != value:
        digits += 1
    return f"{value:.{digits}g}"


def over_maxima(gates: list[dict], shown: int = 5) -> list[str]:
    """A sentence per quantity (`gate_name`) and bound of the release gates `gates` failed on
    a value, their cases worst first, the first `shown` named: "Disparity over its release
    maximum (<= 5), worst first: Hebrew (he) 6.95 [95% CI 6.50, 7.40]; ... and 3 more (the
    audits table lists each)"; a degradation's bound also as the perplexity's rise."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for a in gates:
        groups.setdefault((gate_name(a), a["bound"]), []).append(a)
    sentences = []
    for (name, bound), cases in groups.items():
        cases = sorted(cases, key=lambda a: a["value"], reverse=not bound.startswith(">"))
        limits = bound_limits(bound) or []
        limit = limits[0][0] if len(limits) == 1 else None  # one side: "<= 5", ">= 1"
        named = list(dict.fromkeys(  # a case two gates bound alike (one's own, a maximum) once
            f"{_case(a)} {_beside(a['value'], limit)}"
            f"{_interval(a.get('low'), a.get('high'))}" for a in cases))
        rise = (f": perplexity {'up' if limit >= 0 else 'down'} {abs(100 * limit):g}%"
                if name == "degradation" and limit is not None else "")
        sentences.append(
            f"{capitalized(name)} {beyond(bound).replace('its ', 'its release ')} "
            f"({bound}{rise})" + (", worst first: " if len(named) > 1 else ": ")
            + "; ".join(named[:shown]) + (f"; and {len(named) - shown} more (the audits table "
                                          "lists each)" if len(named) > shown else "") + ".")
    return sentences


def summarize(report: dict) -> dict:
    """The report's `summary` block: `counts` per outcome, `verdict`, `headline`, the worst-hit
    languages, findings that held / did not hold / stayed inconclusive, what was measured, and
    `sentences`: the same in plain language, answer first."""
    counts = {o: sum(a["outcome"] == o for a in report.get("audits", [])) for o in OUTCOMES}
    settings, model = report.get("settings", {}), report.get("model", {})
    findings = finding_outcomes(report)
    by_outcome = {o: sorted(f for f, v in findings.items() if v["outcome"] == o and (
                      o == "error" or not is_release(v)))  # the gates: sentences of their own
                  for o in OUTCOMES}
    worst = worst_languages(report)
    artifact = (model.get("artifact") or {}).get("source")
    sizes = {r["units"] for r in main_rows(report) if r.get("units")}  # what was measured:
    units = max(sizes) if sizes else settings.get("units")  # a small corpus has fewer
    measured = {"model": model.get("name") or settings.get("model"),
                "scheme": settings.get("scheme"), "artifact": artifact,
                "languages": settings.get("languages", []), "units": units,
                "dtype": settings.get("dtype") or "float32"}
    headline = _headline(report, counts)
    sentences = [capitalized(headline) + "."]
    gates = [a for a in report.get("audits", []) if a["outcome"] == "failed" and is_release(a)]

    sentences += over_maxima([a for a in gates if a.get("value") is not None])
    within = [a for a in report.get("audits", []) if a["outcome"] == "passed" and is_release(a)]
    if within and release_outcome(report) == "passed":
        limits = ("maxima" if all((a.get("bound") or "<").startswith("<") for a in within)
                  else "bounds")  # a gate of one's own may set a minimum
        sentences.append(f"Release gate passed: {len(within)} case(s) within their {limits} ("
                         + ", ".join(sorted({a["finding"] for a in within})) + ").")
    if unmeasured := [a for a in gates if a.get("value") is None]:  # a gate fails these
        noise = any("within noise" in (a.get("detail") or "") for a in unmeasured)
        sentences.append("Release gates failed as not measurable: " + "; ".join(
            f"{_case(a)} {gate_name(a)} "
            f"({(a.get('detail') or 'no value').removeprefix('undefined: ')})"
            for a in unmeasured) + "." + (
            " More units (--units) may tell English's damage from noise."
            if noise and settings.get("units") else ""))
    if "random weights" in (model.get("weights_note") or "") or settings.get("random_weights"):
        sentences.append("The model has random weights: the run tests the machinery; no "
                         "finding about a trained model is expected to hold on it.")
    english, protected = (next((r for r in main_rows(report, strategy)
                                if r["language"] == REFERENCE), {})
                          for strategy in ("none", RECOMMENDED))
    broken = uniform_guess_warning(english, model.get("vocabulary"), settings.get("scheme"))
    scheme_breaks = broken and (english.get("ppl_fp") or 0) <= model["vocabulary"]
    if scheme_breaks and model["vocabulary"] < (protected.get("ppl_q") or 0):
        broken += (" The seed's recommended protection does not repair it: English's "
                   f"perplexity with it is {protected['ppl_q']:.3g}.")
    bounded = {a.get("quantity") for a in report.get("audits", [])
               if is_release(a) and a["outcome"] in ("passed", "failed")}  # gates that decided
    blind = (scheme_breaks and release_outcome(report) == "passed" and bounded
             and "degradation" not in bounded) and (
        "the release gate passed on disparities, ratios to English's damage, while the "
        "scheme breaks the model: a maximum on the damage itself "
        "(--quantfair-max-degradation) gates that")
    # what was measured is not what it seems (a re-quantized GGUF); a scheme that breaks it;
    # a gate that cannot see it
    warnings = [w.removesuffix(".") for w in (model.get("scheme_warning"),
                                              model.get("tokenizer_warning"), broken, blind) if w]
    sentences += [f"Warning: {w}." for w in warnings]
    comparison = report.get("comparison") or {}
    if comparison and not comparison.get("regressions"):
        shared = comparison.get("paired_on_shared_units")
        undecided = comparison.get("growth_undecided") or []
        sentences.append(
            ("No significant regression" if undecided else "No regression")
            + f" against the baseline of {comparison.get('baseline_created')} "
            + ("in what this incomplete run measured " if report.get("incomplete") else "")
            + f"({len(comparison.get('rows') or [])} measurements and "
            f"{len(comparison.get('audits') or [])} audits compared"
            + (f"; paired on the {shared.partition(' (')[0]}" if shared else "") + ")"
            + (f"; {len(undecided)} growth(s) beyond the tolerance not significant on the "
               "paired units, a regression under "
               f"{comparison.get('strict_option') or '--quantfair-strict'}: {some(undecided)}"
               if undecided else "") + ".")
    if not release_checked(report):
        why = unchecked_gate(report) or "no --quantfair-max-* maximum, no --quantfair-baseline"
        whose = "" if own_findings(report) else "seed's "
        sentences.append(f"No release gate was checked ({why})" + (
            f": the verdict is of the {whose}findings on this model, not a release decision."
            if seed_outcome(report) else "."))
    if others := (report.get("selection") or {}).get("other_tests_failed"):
        sentences.append(f"{len(others)} test(s) or test file(s) that are not audits failed "
                         f"or errored ({some(others)}): pytest's exit code counts them, the "
                         "verdict is the audits' alone.")
    if not worst and any(not names_reference(r["language"]) for r in main_rows(report, "none")):
        sentences.append("Every disparity without protection is undefined: "
                         f"{_why_undefined(report, 'none')}.")
    if worst:
        sentences.append("Hardest hit without protection: " + ", ".join(
            f"{w['name']} ({w['language']}) {w['disparity']:.2f}x English's damage"
            + (" (below 0: one of the two losses fell)" if w["disparity"] < 0 else "")
            + _interval(w["low"], w["high"])
            + (" (includes 1: not shown to be hit harder than English)"
               if w["low"] is not None and w["low"] <= 1 <= w["high"] else
               " (below 1: hit less than English)"
               if w["high"] is not None and 0 <= w["high"] < 1 else "")
            for w in worst) + ".")
    if len(worst) > 1 and (lead := unestablished_lead(report, worst[0]["language"],
                                                      worst[1]["language"])):
        sentences.append(f"{worst[0]['name']} is not shown to be hit harder than "
                         f"{worst[1]['name']}: the paired 95% CI of their difference, "
                         f"[{lead[0]:.2f}, {lead[1]:.2f}], includes 0.")
    recommended = {r["language"]: r for r in main_rows(report, RECOMMENDED)}
    if recommended and worst:
        first = recommended.get(worst[0]["language"])
        if first and first.get("disparity") is not None:
            protected = max(compared_rows(report, RECOMMENDED), key=lambda r: r["disparity"],
                            default=first)
            sentences.append(
                f"With the seed's recommended protection {worst[0]['name']}"
                + (f"'s disparity is undefined ({first['undefined']})" if first.get("undefined")
                   else f" is at {first['disparity']:.2f}x"
                   f"{_interval(first['disparity_low'], first['disparity_high'])}")
                + ("" if protected is first else
                   f"; the language hit hardest with it is {language(protected['language']).name}"
                   f" ({protected['language']}) at {protected['disparity']:.2f}x"
                   + _interval(protected["disparity_low"], protected["disparity_high"])) + ".")
            unprotected_ppl = english.get("ppl_q") or 0
            protected_ppl = recommended.get(REFERENCE, {}).get("ppl_q") or 0
            if 0 < unprotected_ppl < protected_ppl:  # a ratio can fall while every damage grows
                sentences.append(
                    f"English's perplexity rises with it, {unprotected_ppl:.3g} -> "
                    f"{protected_ppl:.3g}: a lower disparity with it is not less damage.")
        unprotected = {r["language"]: r["disparity"] for r in compared_rows(report, "none")}
        raised = sorted(((r["disparity"] - unprotected[r["language"]], r["language"],
                          r["disparity"]) for r in compared_rows(report, RECOMMENDED)
                         if r["disparity"] > unprotected.get(r["language"], math.inf)),
                        reverse=True)
        if raised:  # the most raised first
            sentences.append("The recommended protection raises the disparity of " + some([
                f"{language(lang).name} ({lang}) {unprotected[lang]:.2f}x -> {now:.2f}x"
                for _, lang, now in raised]) + " (point estimates; the audits decide on "
                "paired differences" + ("; below 0, a language's loss fell under quantization"
                                        if any(unprotected[lang] < 0 for _, lang, _ in raised)
                                        else "") + ")"
                + _damage_eased(report, [lang for _, lang, _ in raised]) + ".")
    for outcome, words in (("passed", "Findings that hold on this model"),
                           ("failed", "Findings that do not hold on this model"),
                           ("inconclusive", "Undecided on this data"),
                           ("error", "Findings that could not be measured (errors)")):
        if by_outcome[outcome]:
            sentences.append(f"{words}: {', '.join(by_outcome[outcome])}.")
    undecided = [a for a in report.get("audits", []) if a["outcome"] == "inconclusive"]
    undefined = sum(map(_undefined, undecided))
    correlations = sum(_is_correlation(a) and not _undefined(a) for a in undecided)
    corrected = sum(_excludes_zero(a) for a in undecided)  # undecided by Holm's correction
    against = [a for a in undecided if _excludes_zero(a) and leaning(a) == "fail"]
    sweeps = sum(_is_sweep(a) and not _undefined(a) for a in undecided)
    if plain := counts["inconclusive"] - undefined - corrected - correlations - sweeps:
        sentences.append(
            f"{plain} comparison(s) "
            "were inconclusive: "
            "the 95% CI "
            "of the paired difference includes the bound, so the data decide neither way"
            + (f" with {units_text(units)} per language; more units (--units) narrow the CI"
               if units else "") + ".")
    if corrected:
        sentences.append(
            f"{corrected} comparison(s) were inconclusive after correcting for the finding's "
            "several cases: the unadjusted 95% CI shown excludes 0, but the difference is not "
            "significant under Holm-Bonferroni at family-wise 5% (each message gives its p); "
            "more units (--units) would decide the clear ones." + (
                " Leaning against the claim: " + "; ".join(
                    f"{', '.join(findings)} ({where}) {value:+.3g}{_interval(low, high)}, "
                    f"bound {bound}" for (where, value, low, high, bound), findings
                    in _by_measurement(against).items()) + "." if against else ""))
    if sweeps:
        sentences.append(
            f"{sweeps} sweep(s) were inconclusive: the expected winner was neither shown to "
            "beat every other candidate nor beaten by one (paired bootstrap differences, "
            "Holm-Bonferroni over the candidates at family-wise 5%).")
    if correlations:
        sentences.append(
            f"{correlations} correlation(s) were inconclusive: the 95% CI of Pearson r "
            "includes the bound, or there were too few distinct points; more languages "
            "(--languages) narrow one over languages, while a layer sweep's few layers decide "
            "only a strong correlation (each audit says how many points would decide).")
    if undefined:
        sentences.append(
            f"{undefined} audit(s) were inconclusive because a disparity they compare or "
            f"bound is undefined ({_why_undefined(report)}).")
    straddling = [a for a in report.get("audits", []) if a["outcome"] in ("passed", "failed")
                  and straddles(a)]
    if straddling:
        sentences.append(
            f"{len(straddling)} bound(s) on a single value were decided on the point estimate "
            "although its 95% CI straddles the bound (" + "; ".join(
                f"{a['finding']} ({_where(a)}) {a['outcome']}: "
                f"{a['value']:.3g}{_interval(a.get('low'), a.get('high'))}, bound {a['bound']}"
                for a in straddling[:4])
            + (f"; and {len(straddling) - 4} more" if len(straddling) > 4 else "")
            + "): more units (--units) would firm them up.")
    if units and units < FEW_UNITS and counts["passed"] + counts["failed"]:
        why = ("there is no interval, and decisions rest on point estimates" if units == 1
               else "the paired bootstrap understates the uncertainty (no exact paired test "
               f"reaches 5% below {FEW_UNITS} units)")
        sentences.append(f"With {units_text(units)} per language {why}: read the decisions as "
                         "machinery checks, not evidence.")
    sentences.append(
        ("Measured: " if report.get("measurements") else "Nothing was measured: set up for ")
        + f"{measured['model']}"
        # a GGUF file's weights: its own quantization is the reference ("FP" on the page)
        + (f" ({note})" if (note := model.get("weights_note") or "").startswith("dequantized")
           else "") + ", "
        + (f"artifact {artifact}" if artifact else f"scheme {measured['scheme']}")
        # numbers of another dtype are not float32's (a finding may hold in one only)
        + ("" if measured["dtype"] == "float32" else f" evaluated in {measured['dtype']}")
        + f", {len(measured['languages'])} languages ({', '.join(measured['languages'])}), "
        + (f"{units_text(measured['units'])} per language." if measured["units"] else "all units."))
    return {"verdict": report.get("verdict"), "counts": counts,
            "headline": sentences[0].removesuffix("."), "worst_languages": worst,
            "findings": {"held": by_outcome["passed"], "did_not_hold": by_outcome["failed"],
                         "inconclusive": by_outcome["inconclusive"],
                         "errors": by_outcome["error"]},
            "release": release_outcome(report), "measured": measured, "warnings": warnings,
            "sentences": sentences}
