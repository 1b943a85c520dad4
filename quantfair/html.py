"""Render a JSON report as one self-contained HTML page: the answer first, then the evidence.

Inline CSS and SVG only (no network request, no external font or script). Colours come from a
colour-blind-safe sequential scale (cividis) and every coloured cell also prints its number.
"""

from __future__ import annotations

import math
import re
import shlex
from collections import defaultdict

from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib import colormaps
from matplotlib.colors import to_hex

from quantfair import charts
from quantfair.corpus import (
    UNKNOWN,
    Language,
    code_notes,
    language,
    metadata,
    names_reference,
    per_language,
    shared_languages,
    use_report_languages,
)
from quantfair.errors import UsageError
from quantfair.metrics import BOOTSTRAP_SAMPLES
from quantfair.report import (
    OTHER_LANGUAGES,
    comparison_notes,
    fairer_than_none,
    other_code,
    regressions_line,
    suggestion_warnings,
    undefined_in_comparison,
    unsearched_languages,
)
from quantfair.schemes import QuantScheme
from quantfair.strategy_syntax import ALIASES
from quantfair.summary import (
    RECOMMENDED,
    compared_rows,
    is_release,
    leaning,
    main_rows,
    of_run_scheme,
    own_findings,
    release_outcome,
    seed_outcome,
    straddles,
    summarize,
)
from quantfair.text import capitalized, experiment_span, plural, significant, units_text

SYMBOLS = {"passed": "✓", "failed": "✗", "inconclusive": "?", "skipped": "–", "error": "!"}
# The colour scale runs from parity (1x) to 10x and beyond: to 20x, Gemma 3's 1.2x and 1.6x
# were one dark blue, SmolLM2's 3x to 7x close greys; what a release maximum sits on (2x to
# 5x) spreads over the middle, and a model hit 10x or more is yellow whatever the number.
SCALE_TOP = 10

MODEL_WIDE = "model"  # findings-matrix column of audits that name no language


BELOW_PARITY = {"background": "#d1fae5", "color": "#111827"}  # hit less than English
UNDEFINED = {"background": "#e5e7eb", "color": "#111827"}


def shade(ratio: float | None) -> dict:
    """Background and text colour of a disparity cell: cividis over log10(ratio) from 1x to
    SCALE_TOP (dark blue = parity, yellow = worst); pale green below 1 (hit less than
    English, at or below 0 not hit at all); grey when undefined."""
    if ratio is None or not math.isfinite(ratio):
        return UNDEFINED
    if ratio < 1:
        return BELOW_PARITY
    t = min(max(math.log10(ratio) / math.log10(SCALE_TOP), 0.0), 1.0)
    background = colormaps["cividis"](t)[:3]
    # black or white, whichever reads better: over cividis either is >= 4.6:1 (WCAG AA)
    dark_text = contrast(background, (0.0, 0.0, 0.0)) >= contrast(background, (1.0, 1.0, 1.0))
    return {"background": to_hex(background), "color": "#000" if dark_text else "#fff"}


def contrast(first: tuple, second: tuple) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (components in [0, 1]): 1 to 21, text
    readable at 4.5 and above (https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio)."""
    def luminance(rgb: tuple) -> float:
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _estimate(row: dict, name: str, digits: int = 2, scale: float = 1.0) -> str:
    value = row.get(name)
    if value is None:
        return ""
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    interval = (f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
                if low is not None and high is not None else "")
    return f"{scale * value:.{digits}f}{interval}"


def _kld_disparity(r: dict) -> str:
    """Per-byte KL-divergence disparity beside the NLL one ("" when not measured)."""
    if r.get("kld_disparity") is None:
        return ""
    return "undef." if r.get("kld_undefined") else _estimate(r, "kld_disparity")


def heatmap(report: dict) -> dict:
    """Strategies x languages: each cell the NLL disparity (with KLD disparity when measured),
    its colour and a tooltip with the CIs."""
    rows = main_rows(report)
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    languages = list(dict.fromkeys(r["language"] for r in rows
                                   if not names_reference(r["language"])))
    cells = {(r["strategy"], r["language"]): r for r in rows}
    grid = []
    for strategy in strategies:
        line = []
        for lang in languages:
            r = cells.get((strategy, lang))
            if r is None:
                line.append({"text": "", "style": shade(None), "title": ""})
                continue
            value = None if r.get("undefined") else r.get("disparity")
            text = "undef." if value is None else f"{value:.2f}"
            title = (f"{strategy} / {lang}: disparity {text}" +
                     (f" [95% CI {r['disparity_low']:.3g}, {r['disparity_high']:.3g}]"
                      if value is not None and r.get("disparity_low") is not None else
                      f" ({r.get('undefined')})") +
                     ("" if value is None else
                      f"; per-token (seed) disparity "
                      f"{r.get('seed_disparity') or float('nan'):.3g}"))
            kld = _kld_disparity(r)
            line.append({"text": text, "style": shade(value), "kld": kld,
                         "title": title + (f"; KLD disparity {kld}" if kld else "")})
        grid.append({"strategy": strategy, "cells": line})
    return {"languages": languages, "rows": grid}


def scorecard_strategies(report: dict) -> list[str]:
    """`none` and the recommended strategy, else the run's other strategy with the most
    languages measured: what the scorecard shows."""
    measured = list(dict.fromkeys(r["strategy"] for r in main_rows(report)))
    chosen = [s for s in ("none", RECOMMENDED) if s in measured]
    if len(chosen) < 2:
        chosen += [s for s in measured if s not in chosen][:2 - len(chosen)]
    return chosen


def _gates(report: dict, strategy: str) -> dict[tuple[str, str], list[str]]:
    """(language, quantity) -> what a scorecard cell says of each release gate that bounds
    the quantity under the run's scheme, decided on the value shown: "✗ gate <= 5", "✓ gate
    >= 0.5", "✗ gate <= 2 (undefined)" for one failed as not measurable, "?" for one left
    undecided; where several bound one cell, each named by its finding ("✓ release_disparity
    <= 2", "✗ my_min >= 0.5")."""
    found: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for a in report.get("audits", []):
        if is_release(a) and a.get("language") and a.get("strategy") == strategy \
                and of_run_scheme(report, a) and a.get("bound") \
                and a["outcome"] in ("passed", "failed", "inconclusive"):
            found[a["language"], a["quantity"]].append(a)
    return {cell: [f"{SYMBOLS[a['outcome']]} {'gate' if len(gates) == 1 else a['finding']} "
                   f"{a['bound']}" + (" (undefined)" if a.get("value") is None else "")
                   for a in gates]
            for cell, gates in found.items()}


def scorecard(report: dict, strategy: str) -> list[dict]:
    """One row per language: metadata, fertility, perplexities, bits per byte, NLL and KLD
    disparity, mean KL divergence (nats per token) and same-top rate (%) with 95% CIs, and
    the release gates that bound its disparities and degradation (`_gates`)."""
    rows, gates = [], _gates(report, strategy)
    for r in main_rows(report, strategy):
        meta = language(r["language"])
        disparity = None if r.get("undefined") else r.get("disparity")
        kld = None if r.get("kld_undefined") else r.get("kld_disparity")
        rows.append({
            "language": r["language"], "name": meta.name, "script": meta.script,
            "family": meta.family,
            "class": meta.resource_class if meta.resource_class >= 0 else "",
            "fertility": f"{r['fertility']:.3f}", "ppl_fp": significant(r["ppl_fp"], 4),
            "ppl_q": significant(r["ppl_q"], 4), "bpb": f"{r['bpb_fp']:.3f} → {r['bpb_q']:.3f}",
            "disparity": "undefined" if r.get("undefined") else _estimate(r, "disparity"),
            "disparity_style": shade(disparity),
            "kld": _kld_disparity(r), "kld_style": shade(kld) if r.get("kld_disparity") else None,
            "kld_mean": _estimate(r, "kld_mean", 4),
            "same_top": _estimate(r, "same_top", 1, scale=100),
            "reference": names_reference(r["language"]),
            "disparity_gate": gates.get((r["language"], "disparity"), []),
            "kld_gate": gates.get((r["language"], "kld_disparity"), []),
            # a degradation is the quantized perplexity's growth: said under it
            "degradation_gate": [gate.replace(" gate ", " degradation gate ")
                                 for gate in gates.get((r["language"], "degradation"), [])]})
    return rows


def protection_cost(report: dict, strategy: str) -> str:
    """What a strategy keeps, for its scorecard's heading: the terms an alias names (and a
    `biases` term that keeps nothing on a model without biases), the share of parameters
    kept in full precision and the storage they add over the fully quantized model
    (`overhead`, `overhead_bytes`); "" for `none` or a strategy not measured."""
    row = next(iter(main_rows(report, strategy)), {})
    if strategy == "none" or row.get("overhead") is None:
        return ""
    terms = f"the seed's {ALIASES[strategy]}" if strategy in ALIASES else ""
    if "biases" in terms.split("+") and report.get("model", {}).get("bias_parameters") == 0:
        terms += " (this model has no biases: that term keeps nothing)"
    storage = (f", +{100 * row['overhead_bytes']:.3g}% storage"
               if row.get("overhead_bytes") is not None else "")
    return " · ".join(filter(None, [terms, f"{100 * row['overhead']:.3g}% of the parameters "
                                           f"in full precision{storage}"]))


def aggregates(report: dict, strategies: list[str], quantity: str = "disparity") -> list[dict]:
    """Mean NLL disparity (`quantity` "kld_disparity": per-byte KL-divergence disparity) per
    resource class, language family (without its branch) and script, for each scorecard
    strategy (English under any code, and languages with that disparity undefined or
    without metadata, left out; a value unknown, from the group it would name). A language
    under several codes of a user corpus (`he`, `heb`) counts once, the mean of its codes,
    as in the resource-class correlation. A group's `languages` is its count, or the range
    of counts where strategies left out others; a cell's `title` gives its count and its
    lowest and highest language."""
    groups: dict[tuple[str, str], dict[str, list[tuple[float, str]]]] = defaultdict(
        lambda: defaultdict(list))
    for strategy in strategies:
        rows = compared_rows(report, strategy) if quantity == "disparity" else [
            r for r in main_rows(report, strategy) if not names_reference(r["language"])
            and r.get(quantity) is not None and not r.get("kld_undefined")]
        for r in rows:
            meta = metadata(r["language"])
            if meta is None:  # a user corpus's language without it
                continue
            measured = (r[quantity], r["language"])
            if meta.script != UNKNOWN:  # a user corpus's languages file may leave it out
                groups[("script", meta.script)][strategy].append(measured)
            if meta.family != UNKNOWN:
                groups[("family", meta.family.partition(" (")[0])][strategy].append(measured)
            if meta.resource_class >= 0:
                groups[("class", str(meta.resource_class))][strategy].append(measured)
    rows = []
    for (kind, value), by_codes in sorted(groups.items()):
        by_strategy = {s: _per_language(measured) for s, measured in by_codes.items()}
        means = {s: sum(d for d, _ in v) / len(v) for s, v in by_strategy.items()}
        low, high = min(map(len, by_strategy.values())), max(map(len, by_strategy.values()))
        rows.append({"kind": kind, "value": value,
                     "languages": str(low) if low == high else f"{low}-{high}",
                     "cells": [{"text": f"{means[s]:.2f}" if s in means else "",
                                "title": _group_title(by_strategy[s]) if s in means else "",
                                "style": shade(means.get(s))} for s in strategies]})
    return rows


def _groupable(meta: Language | None) -> bool:
    """Whether a language with metadata `meta` has a script, family or class to group by."""
    return bool(meta) and (meta.script != UNKNOWN or meta.family != UNKNOWN
                           or meta.resource_class >= 0)


def _per_language(measured: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """(value, code) pairs -> one (mean of its codes' values, its codes joined by "+") per
    language (`corpus.per_language`)."""
    values = per_language({code: value for value, code in measured})
    return [(value, codes) for codes, value in values.items()]


def _group_title(measured: list[tuple[float, str]]) -> str:
    """"mean of 3 languages, from 1.20 (de) to 6.00 (he)", "mean of 1 language (he+heb: the
    mean of its codes)": what a group's mean hides."""
    title = f"mean of {plural(len(measured), 'language')}"
    if len(measured) < 2:
        codes = measured[0][1]
        return f"{title} ({codes}{': the mean of its codes' if '+' in codes else ''})"
    (lowest, first), (highest, last) = min(measured), max(measured)
    return f"{title}, from {lowest:.2f} ({first}) to {highest:.2f} ({last})"


def scheme_text(name: object) -> str:
    """A scheme's name's `QuantScheme.description`, "" for none (a run that stopped before it
    knew one) or one this version cannot read."""
    try:
        return QuantScheme.parse(name).description if isinstance(name, str) else ""
    except UsageError:
        return ""


def terms_of(case: str) -> list[str]:
    """A case id (or experiments, `001/002`) cut after each + - @ ( ) < > /: the template
    puts a line-break opportunity between the pieces, so that a narrow column breaks the id
    between terms, not inside."""
    return [piece for piece in re.split(r"(?<=[-+@()<>/])", case) if piece]


def findings_matrix(report: dict) -> dict:
    """Findings x languages (audits naming no language in a `model` column): each cell the
    audits of that finding and language. Findings whose every case was skipped (measured by
    the seed on another model family, a release maximum not given) are listed apart
    (`skipped`: finding, its audits and the distinct reasons), not as rows of dashes: on the
    whole suite they were 43 of 75 rows."""
    audits = [a for a in report.get("audits", []) if a.get("finding")]
    languages = [lg for lg in report.get("settings", {}).get("languages", [])
                 if any(a.get("language") == lg for a in audits)]
    # model-wide audits first: with many languages the last column is out of view
    columns = ([MODEL_WIDE] if any(not a.get("language") for a in audits) else []) + languages
    cells: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for a in audits:
        cells[a["finding"]][a.get("language") or MODEL_WIDE].append(a)
    rows, skipped = [], []
    for finding, by_column in cells.items():
        found = [a for column in by_column.values() for a in column]
        if all(a.get("outcome") == "skipped" for a in found):
            reasons = dict.fromkeys(a.get("message", "").removeprefix(f"{finding}: ")
                                    for a in found)
            skipped.append({"finding": finding, "audits": found, "reasons": list(reasons)})
        else:
            rows.append({"finding": finding, "claim": found[0].get("claim"),
                         "cells": [by_column.get(c, []) for c in columns]})
    return {"columns": columns, "rows": rows, "skipped": skipped}


def audit_groups(report: dict) -> dict:
    """Values of the audit table's filters."""
    audits = report.get("audits", [])
    return {key: sorted({a[field] for a in audits if a.get(field)})
            for key, field in (("findings", "finding"), ("languages", "language"),
                               ("strategies", "strategy"), ("outcomes", "outcome"))}


def banner(report: dict, summary: dict) -> tuple[str, str]:
    """The verdict banner's kind (its colour) and label. A run that checked a release gate
    (a maximum or a baseline) names the gate's outcome first, then the findings' (the seed's,
    or one's own among them: `own_findings`); one that did not says so first ("NO RELEASE
    GATE"): its verdict is of the findings alone."""
    counts = summary["counts"]
    if report.get("incomplete"):
        return "incomplete", "INCOMPLETE"
    if counts["error"]:
        return "error", "ERROR"
    if not counts["failed"] and report.get("verdict") != "failed" and not counts["passed"]:
        return "undecided", "NOTHING DECIDED (verdict: passed)"
    kind = "findings" if counts["failed"] or report.get("verdict") == "failed" else "passed"
    gate, seed = release_outcome(report), seed_outcome(report)
    findings = "FINDINGS" if own_findings(report) else "SEED FINDINGS"
    label = "; ".join(f"{what} {outcome.upper()}" for what, outcome in (
        ("RELEASE GATE", gate), (findings, seed)) if outcome)
    if gate is None and label:  # a reviewer read a findings' FAILED as the release answer
        label = f"NO RELEASE GATE; {label}"
    return kind, label or {"passed": "PASSED", "findings": "FAILED"}[kind]


def evaluated_in(report: dict) -> str:
    """"bfloat16 on cpu, 2 torch threads": the dtype, the devices the run's processes ran
    on and, in a reduced dtype on a CPU, torch's threads, which key its numbers (per process
    where several ran; in float32 a worker takes a finished one's cores, so a count is
    only how a process ended)."""
    processes = report.get("processes") or []
    settings = report.get("settings", {})
    dtype = settings.get("dtype") or "float32"
    devices = ", ".join(dict.fromkeys(str(p["device"]) for p in processes if p.get("device")))
    on_cpu = [p for p in processes if str(p.get("device")).startswith("cpu")]
    threads = sorted({int(p["threads"]) for p in on_cpu  # 2.0 is JSON Schema's integer
                      if isinstance(p.get("threads"), (int, float))})
    said = (f", {' and '.join(map(str, threads))} torch thread{'' if threads == [1] else 's'}"
            + (" per CPU process" if len(on_cpu) > 1 else "")
            if threads and dtype != "float32" else "")
    return f"{dtype} on {devices or settings.get('device') or 'auto'}{said}"


def report_summary(report: dict) -> dict:
    """The report's `summary` block; computed for reports written before it existed."""
    block = report.get("summary") or {}
    return block if "sentences" in block else summarize(report)


def render_html(report: dict) -> str:
    use_report_languages(report.get("language_metadata") or {})  # a user corpus's own
    env = Environment(loader=PackageLoader("quantfair", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["span"] = experiment_span
    env.filters["units"] = units_text
    env.filters["num"] = lambda v, p=4: "" if v is None else (
        f"{v:.{p}g}" if isinstance(v, float) else str(v))
    env.globals["symbols"] = SYMBOLS
    env.filters["leaning"] = leaning
    env.filters["scheme_text"] = scheme_text
    env.tests["straddling"] = straddles
    env.filters["terms_of"] = terms_of
    env.filters["shell"] = shlex.join  # a command line to paste back
    env.filters["capitalized"] = capitalized
    env.globals["resamples"] = BOOTSTRAP_SAMPLES
    env.globals["aliases"] = ALIASES
    env.globals["model_wide"] = MODEL_WIDE
    env.globals["scale_top"] = SCALE_TOP
    template = env.get_template("report.html.j2")
    summary = report_summary(report)
    strategies = scorecard_strategies(report)
    groups = aggregates(report, strategies)
    cards = [(s, scorecard(report, s)) for s in strategies]
    return template.render(
        report=report, summary=summary, banner=banner(report, summary),
        evaluated_in=evaluated_in(report),
        hosts=sorted({p["host"] for p in report.get("processes") or [] if p.get("host")}),
        other_code=other_code(report),
        heatmap=heatmap(report),
        scorecards=cards,
        forest_maxima=charts.release_maxima(report),
        gated=any(r["disparity_gate"] or r["kld_gate"] or r["degradation_gate"]
                  for _, rows in cards for r in rows),
        costs={s: protection_cost(report, s) for s in strategies},
        aggregates=groups,  # or why none, where the languages have metadata to group by
        kld_aggregates=aggregates(report, strategies, "kld_disparity"),
        shared_languages=shared_languages(report.get("settings", {}).get("languages") or ()),
        code_notes=code_notes(report.get("settings", {}).get("languages") or ()),
        ungrouped=not groups and any(_groupable(metadata(r["language"]))
                                     for r in main_rows(report)
                                     if not names_reference(r["language"])),
        matrix=findings_matrix(report), groups=audit_groups(report),
        charts={"forest": charts.forest(report), "pareto": charts.pareto(report),
                "criticality": charts.criticality(report), "fertility": charts.fertility(report),
                "suggest": charts.suggest_trace(report)},
        resource=charts.resource(report), forest_not_drawn=charts.forest_not_drawn(report),
        forest_shown=charts.forest_strategies(report),
        undefined_reasons=sorted({r["undefined"] for r in main_rows(report)
                                  if r.get("undefined") and not names_reference(r["language"])}),
        unsearched=unsearched_languages(report.get("suggestion") or {},
                                        report.get("settings", {}).get("languages") or ()),
        other_languages=OTHER_LANGUAGES,
        **_suggestion(report.get("suggestion")),
        distribution_measured=any(r.get("kld_mean") is not None for r in main_rows(report)),
        failed=[a for a in report.get("audits", []) if a["outcome"] in ("failed", "error")],
        **_comparison(report.get("comparison")),
    )


def _suggestion(suggestion: dict | None) -> dict:
    """What the suggestion's held-out comparison says of it, as the terminal of `quantfair
    suggest` says it: the selectors fairer than none, why disparities are undefined, and the
    warnings against using it."""
    comparison = (suggestion or {}).get("comparison")
    if not comparison:
        return {}
    return {"suggestion_fairer": capitalized(fairer_than_none(comparison)),
            "suggestion_warnings": suggestion_warnings(suggestion),
            "suggestion_undefined": undefined_in_comparison(comparison)}


def _comparison(comparison: dict | None) -> dict:
    """The comparison's notes (every name listed) and count of regressions, as the terminal
    says them."""
    if not comparison:
        return {}
    return {"comparison_notes": comparison_notes(comparison, ", ".join),
            "regressions_line": regressions_line(comparison)}
