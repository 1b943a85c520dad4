"""Audit results: records, the versioned JSON report, the HTML report and baseline gating."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from importlib import metadata, resources
from pathlib import Path

import numpy as np

from quantfair.audit import CANDIDATE
from quantfair.config import DEFAULT_TOLERANCE, REFERENCE, SHIPPED_CORPUS
from quantfair.errors import QuantfairError
from quantfair.metrics import (
    FLOAT_NOISE,
    KLD_PERCENTILES,
    QUANTITIES,
    TOO_FEW_UNITS,
    Estimate,
    Measurement,
    bits_per_byte,
    fertility,
    paired_difference,
    perplexity,
)
from quantfair.storage import DuplicateKey, atomic_write, json_safe, unique_keys
from quantfair.summary import FEW_UNITS, bound_limits, is_release, summarize
from quantfair.text import (  # noqa: F401 (re-exported)
    experiment_span,
    interval_text,
    some,
    table,
    units_text,
)

SCHEMA = "quantfair-report/6"
# Every format this version reads, with its JSON Schema in quantfair/schemas/; a change to the
# format bumps SCHEMA and adds its schema here (keeping the previous one if still readable).
# Format 2 added `selection`, the `inconclusive` outcome and each audit's `seed` and `slack`;
# format 3 made `summary` the answer-first block (outcome counts moved to `summary.counts`);
# format 4 added the `error` verdict (an audit could not run); format 5 each measurement's
# `per_unit` values (what a baseline comparison pairs); format 6 their units' names (pairs
# the units two runs share); formats 1 to 5 stay readable (as baselines and in `quantfair
# report`).
SCHEMA_FILES = {f"quantfair-report/{n}": f"report-{n}.schema.json" for n in range(1, 7)}
PER_UNIT = ("nll_fp", "nll_q", "tokens")  # a measurement's `per_unit` values, [unit]
UNIT_NAMES = "unit"  # and its units' names, [unit] (format 6)


def distribution_fields(m: Measurement) -> list[dict]:
    """Per language, llama.cpp's KL-divergence statistics as flat record fields (null when the
    measurement has none): `kld_mean`, `kld_<percentile>`, `kld_per_byte`, `kld_disparity`,
    `same_top`, `delta_p_mean`, `delta_p_rms`, `ln_ppl_ratio` (estimates with `_low`/`_high`)."""
    names = ["kld_mean", "kld_per_byte", "kld_disparity", "same_top", "delta_p_mean",
             "delta_p_rms", "ln_ppl_ratio"]
    percentiles = [f"kld_{name.replace('.', '_')}" for name in KLD_PERCENTILES]
    if m.kld is None:
        empty = {f"{n}{s}": None for n in names for s in ("", "_low", "_high")}
        empty.update({name: None for name in [*percentiles, "kld_undefined"]})
        return [dict(empty) for _ in m.languages]
    estimates: dict[str, dict[str, Estimate]] = {
        "kld_mean": m.mean_kld(), "kld_per_byte": m.kld_per_byte(),
        "kld_disparity": m.kld_disparity(), "same_top": m.same_top_rate(),
        "delta_p_mean": m.mean_delta_p(), "delta_p_rms": m.rms_delta_p(),
        "ln_ppl_ratio": m.ln_ppl_ratio()}
    tails = m.kld_percentiles()
    rows = []
    for lang in m.languages:
        row: dict = {}
        for name, per_language in estimates.items():
            e = per_language[lang]
            row.update({name: e.value, f"{name}_low": e.low, f"{name}_high": e.high})
        row.update(zip(percentiles, tails[lang].values(), strict=True))
        row["kld_undefined"] = estimates["kld_disparity"][lang].undefined or None
        rows.append(row)
    return rows


def measurement_records(m: Measurement, *, units: Sequence[str], strategy: str, scheme: str,
                        length: str, overhead, resolved: str | None = None) -> list[dict]:
    """One record per language of a (scheme, strategy, length) measurement of the named
    `units`; its `per_unit` holds each unit's name, summed NLL (nats, FP and quantized) and
    scored tokens in corpus order, what a baseline comparison pairs. Raises ValueError where
    `units` are not the measurement's."""
    if len(units) != m.units:
        raise ValueError(f"{len(units)} unit names for a measurement of {m.units} units")
    disparity, seed, degradation = m.disparity(), m.seed_disparity(), m.degradation()
    records, distribution = [], distribution_fields(m)
    for i, lang in enumerate(m.languages):
        nll_fp, nll_q = float(m.nll_fp[i].sum()), float(m.nll_q[i].sum())
        tokens, n_bytes, chars = (int(m.tokens[i].sum()), int(m.bytes[i].sum()),
                                  int(m.chars[i].sum()))
        records.append({key: json_safe(value) for key, value in {
            "scheme": scheme, "strategy": strategy, "resolved": resolved or strategy,
            "length": length, "language": lang, "units": int(m.nll_fp.shape[1]),
            "nll_fp": nll_fp, "nll_q": nll_q, "tokens": tokens, "bytes": n_bytes, "chars": chars,
            "ppl_fp": perplexity(nll_fp, tokens), "ppl_q": perplexity(nll_q, tokens),
            "bpb_fp": bits_per_byte(nll_fp, n_bytes), "bpb_q": bits_per_byte(nll_q, n_bytes),
            "fertility": fertility(tokens, chars),
            "degradation": degradation[lang].value, "degradation_low": degradation[lang].low,
            "degradation_high": degradation[lang].high,
            "seed_disparity": seed[lang].value, "seed_disparity_low": seed[lang].low,
            "seed_disparity_high": seed[lang].high,
            "disparity": disparity[lang].value, "disparity_low": disparity[lang].low,
            "disparity_high": disparity[lang].high,
            "undefined": disparity[lang].undefined or None,
            "overhead": overhead.fraction, "overhead_bytes": overhead.bytes_fraction,
            **distribution[i],
            "per_unit": {UNIT_NAMES: list(units), "nll_fp": m.nll_fp[i].tolist(),
                         "nll_q": m.nll_q[i].tolist(),
                         "tokens": m.tokens[i].astype(int).tolist()},  # PER_UNIT
        }.items()})
    return records


def row_key(row: dict) -> tuple:
    return (row["scheme"], row["strategy"], row.get("length", "medium"), row["language"])


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment() -> dict:
    from quantfair import __version__

    return {"quantfair": __version__, "quantfair_source": source_digest(),
            "python": platform.python_version(),
            "torch": _version("torch"), "transformers": _version("transformers"),
            "platform": platform.platform(), "git_commit": git_commit()}


@cache
def source_digest() -> str:
    """sha256 (16 hex digits) of the files of the quantfair package that runs (its code,
    templates, schemas and data): two checkouts of one version may differ."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# What a process's numbers may depend on, beside its settings: compared between processes.
CODE = ("quantfair", "quantfair_source", "python", "torch", "transformers")


def process_environment() -> dict:
    """`environment()`'s entries that a process's numbers may depend on (`CODE`), and the
    commit of its working folder's checkout (told, not compared: the controller's may be
    another project's)."""
    return {key: value for key, value in environment().items()
            if key in CODE or key == "git_commit"}


def other_code(report: dict) -> list[str]:
    """"pid 41 on host-2: quantfair_source 9e1c... (the controller's 2d13...)": each process
    that ran other code than the controller that wrote `report` (`process_environment`),
    one that recorded none among them (an older quantfair); none in a report whose
    controller recorded none."""
    ours = report.get("environment") or {}
    if not ours.get("quantfair_source"):
        return []
    said = []
    for process in report.get("processes") or []:
        where = f"pid {process['pid']} on {process.get('host') or 'its host'}"
        if "environment" not in process:
            said.append(f"{where}: an older quantfair, which records no environment")
        elif differ := [(key, value) for key, value in process["environment"].items()
                        if key in CODE and value != ours.get(key)]:
            said.append(f"{where}: " + ", ".join(
                f"{key} {theirs or 'unknown'} (the controller's {ours.get(key) or 'unknown'})"
                for key, theirs in differ))
    return said


def _version(package: str) -> str:
    """The package's version, as imported if it is (an xdist controller never imports torch:
    reading the installed metadata spares it ~1.5 s at the end of a run)."""
    module = sys.modules.get(package)
    return getattr(module, "__version__", None) or metadata.version(package)


@dataclass(frozen=True)
class RunRecord:
    """Everything a finished run hands to the report."""

    settings: dict
    audits: list[dict]
    rows: list[dict]
    model: dict
    processes: list[dict]
    selection: dict
    incomplete: list[str]
    duration_s: float
    suggestion: dict | None = None


def build_report(record: RunRecord) -> dict:
    """The versioned JSON document (see the README's "Report format")."""
    unique: dict[tuple, dict] = {}
    for row in record.rows:  # the later of equal rows; one with KL divergence over one without
        kept = unique.get(row_key(row))
        if kept is None or row.get("kld_mean") is not None or kept.get("kld_mean") is None:
            unique[row_key(row)] = row
    report = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "verdict": None,
        "incomplete": list(record.incomplete),
        "summary": None,
        "model": record.model,
        "settings": record.settings,
        "selection": record.selection,
        "environment": environment(),
        "duration_s": round(record.duration_s, 2),
        "measurements": sorted(unique.values(), key=row_key),
        "language_metadata": language_metadata(row["language"] for row in unique.values()),
        "audits": sorted(record.audits, key=lambda a: a["nodeid"]),
        "processes": record.processes,
        "suggestion": record.suggestion,
        "comparison": None,
    }
    settle_verdict(report)
    return report


def language_metadata(codes) -> dict[str, dict]:
    """The metadata (name, ISO 639-3, ISO 15924 script, family, Joshi et al.'s resource
    class; `quantfair.corpus.metadata`) of each code that has it, by code, values not known
    left out: what the HTML's per-script and per-class tables group by."""
    from quantfair.corpus import UNKNOWN, metadata  # reads the metadata file: only where used

    return {code: {k: v for k, v in asdict(meta).items()
                   if k != "code" and v not in (UNKNOWN, -1, "")}
            for code in sorted(set(codes)) if (meta := metadata(code))}


_last_stamp = datetime.min.replace(tzinfo=timezone.utc)


def unique_report_path(folder: Path, model: str) -> Path:
    """`folder/<model>-<UTC time to the microsecond>-<pid>.json`: two runs never share one
    (the pid tells processes apart; within one, the time is made strictly increasing)."""
    global _last_stamp
    now = _last_stamp = max(datetime.now(timezone.utc), _last_stamp + timedelta(microseconds=1))
    # a relative path (./my-model, ..): no hidden file, which artifact uploaders skip
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).lstrip("._-") or "model"
    return folder / f"{name}-{now:%Y%m%dT%H%M%S.%f}Z-{os.getpid()}.json"


def write_report(report: dict, json_path: Path, latest: bool = True) -> tuple[Path, Path]:
    """Write `json_path`, the HTML beside it, and with `latest` a `latest.html` next to them,
    each replaced atomically (a value that is not finite, which JSON lacks, as null). The
    page is rendered first, the files written together after it (two runs naming one report
    leave one run's pair, not one's JSON beside the other's page, a second of rendering
    apart); the JSON is written also where rendering fails (what was measured survives),
    whose error is then raised. Raises OSError."""
    from quantfair.html import render_html  # the plotting stack: only where a report is written

    data = json.dumps(json_safe(report), indent=2, allow_nan=False).encode()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        html = render_html(report).encode()
    except Exception:
        atomic_write(json_path, data)
        raise
    html_path = json_path.with_suffix(".html")
    atomic_write(json_path, data)
    atomic_write(html_path, html)
    if latest:
        atomic_write(json_path.parent / "latest.html", html)
    return json_path, html_path


def summary_table(audits: list[dict]) -> str:
    """One line per audit: finding, experiments, case, metric, value, its 95% CI (as bounds:
    bootstrap intervals are often skewed), bound, outcome."""
    rows = []
    for entry in sorted(audits, key=lambda e: e["nodeid"]):
        value, low, high = entry.get("value"), entry.get("low"), entry.get("high")
        interval = f"[{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
        rows.append((entry.get("finding", entry["nodeid"]),
                     experiment_span(entry.get("experiments", [])), entry.get("case", ""),
                     entry.get("quantity", ""),
                     f"{value:.4g}" if isinstance(value, float) else "", interval,
                     entry.get("bound", ""), entry["outcome"]))
    return table(["Finding", "Exp", "Case", "Metric", "Value", "95% CI", "Bound", "Outcome"],
                 rows)


class NothingShared(QuantfairError):
    """A baseline that shares no measurement and no audit with the run: a gate that compared
    nothing."""


def compare(old: dict, new: dict, tolerance: float = DEFAULT_TOLERANCE,
            strict: bool = False, baseline_file: str | None = None,
            run: str = "this run") -> dict:
    """Rows whose disparity grew beyond `tolerance` (relative; English's, and where the
    baseline's disparity is undefined the language's, degradation: damage growing alike in
    every language leaves the disparities as they were) and audits that stopped passing
    (passed -> inconclusive or skipped is listed, and is a regression only when `strict`, as
    is a release gate passed in the baseline of a language the run does not audit).
    Where both reports keep per-unit values of the same text, a growth is a regression when
    the paired bootstrap CI of (run - baseline grown by the tolerance) lies above 0; one
    beyond the tolerance in its point estimate only is listed (`growth_undecided`), and is a
    regression only when `strict`. Where the runs measured other units, both sides are
    rebuilt on the units they share (named in format 6; `paired_on_shared_units`). Elsewhere
    the point estimates decide (`point_compared`). Beside them `differences` (settings that
    differ: numbers measured otherwise), `not_compared` (the baseline's measurements this run
    did not make) and `not_run` (its audits); `baseline_file` and `run` (what `new` is: "this
    run", or the report file read) name the two sides in what is said. Audits match
    by test file and id, whichever folder or package they were collected from. Raises
    NothingShared when the baseline is of another model (`architecture`), when both reports
    have measurements but none in common and no audit regressed, when they share nothing, or
    when nothing in common could regress (no disparity or degradation, no audit that
    passed), and QuantfairError when a report's stored value disagrees with its own per-unit
    values."""
    if refusal := another_model(old, new, run):
        raise NothingShared(refusal)
    old_rows = {row_key(r): r for r in old.get("measurements", [])}
    new_rows = {row_key(r): r for r in new.get("measurements", [])}
    regressions, rows, by_degradation, unbounded, renamed = [], [], [], [], []
    paired, undecided_growth, by_point = _Pairs(old, new), [], []
    for row in new.get("measurements", []):
        before = old_rows.get(row_key(row))
        if before is None:
            continue
        key, quantity = "/".join(row_key(row)), "disparity"
        if (was := before.get("resolved")) and (now := row.get("resolved")) and was != now:
            # one name, two strategies (`random@budget(candidate)` of another --strategy)
            renamed.append(f"{key} ({was} -> {now})")
            continue
        a, b = _disparity(before), _disparity(row)
        if (shared := paired.on_shared_units(row)) is not None:
            a, b = shared  # each run's on the units both measured, defined there or not
        if row["language"] == REFERENCE:  # its disparity is 1: its damage is compared
            quantity, a, b = "degradation", before.get("degradation"), row.get("degradation")
            if a is None:
                continue
        elif a is None:  # no ratio to grow from: the language's own damage is compared
            quantity, a, b = "degradation", before.get("degradation"), row.get("degradation")
            (by_degradation if a is not None and b is not None else unbounded).append(key)
        entry = {"key": key, "quantity": quantity, "old": a, "new": b, "change": None,
                 "beyond": None}
        draws = paired.draws(row, quantity) if a is not None and b is not None else None
        if draws is not None:
            then, now, units, every = draws
            for report, stored, rebuilt in ((old, a, then[0]), (new, b, now[0])):
                # on some of the units, the paired values are not the stored ones
                if every and not math.isclose(stored, rebuilt, rel_tol=FLOAT_NOISE,
                                              abs_tol=1e-12):
                    raise QuantfairError(
                        f"the report of {report.get('created')} is not consistent: its "
                        f"{quantity} of {key}, {stored:g}, is not what its per-unit values give "
                        f"({rebuilt:g}): edited or damaged")
            a, b = entry["old"], entry["new"] = float(then[0]), float(now[0])
            entry["change"] = (b - a) / abs(a) if a else None
            # each resample's growth beyond the tolerance, on the same resampled units
            over = paired_difference(now, (then[0] + tolerance * abs(then[0]),
                                           then[1] + tolerance * np.abs(then[1])), units)
            entry["beyond"] = {"value": over.difference, "low": json_safe(over.low),
                               "high": json_safe(over.high)}
            if over.low > 0 or (strict and over.difference > 0):
                regressions.append(
                    f"{quantity} {key}: {_grown(quantity, a, b, tolerance)} by "
                    f"{_growth(quantity, over)}"
                    + ("" if over.low > 0 else " (not significant; a regression when strict)"))
            elif over.difference > 0:
                undecided_growth.append(f"{key} (by {_growth(quantity, over)})")
        elif a is not None and b is not None and quantity == "degradation" and _noise(before):
            # no relative growth from a damage the baseline could not tell from 0: damage the
            # run measures (its CI above 0) is the regression, whatever the tolerance
            if (row.get("degradation_low") or 0) > 0:
                was, now, low, high = _values(quantity, a, b, row["degradation_low"],
                                              row["degradation_high"])
                regressions.append(f"{quantity} {key}: {was} (within noise) -> {now} "
                                   f"[95% CI {low}, {high}]")
        elif a is not None and b is not None:
            by_point.append(key)
            entry["change"] = (b - a) / abs(a) if a else None
            # growth within float noise (summation order, thread count) is none at any tolerance
            if b > a + max(tolerance, FLOAT_NOISE) * abs(a):
                regressions.append(f"{quantity} {key}: {_grown(quantity, a, b, tolerance)}")
        elif a is not None:  # no number shows the disparity did not grow: a regression
            english = [side.get((*row_key(row)[:3], REFERENCE), {})
                       for side in (old_rows, new_rows)]
            regressions.append(f"{quantity} {key}: {_values(quantity, a)[0]} -> undefined"
                               + (_undefined_why(before, row, *english, shared is not None)
                                  if quantity == "disparity" else ""))
        rows.append(entry)
    old_audits = {_audit_key(a["nodeid"]): a for a in old.get("audits", [])}
    new_audits = {_audit_key(a["nodeid"]) for a in new.get("audits", [])}
    audits, undecided, rebounded, changed = [], {"inconclusive": [], "skipped": []}, [], []
    old_candidate, new_candidate = audited_strategy(old), audited_strategy(new)
    for entry in new.get("audits", []):
        if (was := old_audits.get(_audit_key(entry["nodeid"]))) is None:
            continue
        if entry.get("strategy") == CANDIDATE and _terms(old_candidate) != _terms(new_candidate):
            renamed.append(f"{entry['nodeid']} ({old_candidate} -> {new_candidate})")
            continue
        before = was["outcome"]
        audits.append({"nodeid": entry["nodeid"], "old": before, "new": entry["outcome"]})
        lost = ("failed", "error", *undecided) if strict else ("failed", "error")
        if was.get("bound") and entry.get("bound") and was["bound"] != entry["bound"]:
            # another maximum (a release gate's option) decided it: not the model's change
            rebounded.append(f"{entry['nodeid']} ({before} under {was['bound']}, "
                             f"{entry['outcome']} under {entry['bound']})")
        elif before not in ("passed", entry["outcome"]):  # named; a skip with its reason
            why = entry.get("message") if entry["outcome"] == "skipped" else None
            changed.append(f"{entry['nodeid']} ({before} -> {entry['outcome']}"
                           + (f": {why}" if why else "") + ")")
        elif before == "passed" and entry["outcome"] in lost:
            regressions.append(f"audit {entry['nodeid']}: passed -> {entry['outcome']}")
        elif before == "passed" and entry["outcome"] in undecided:
            undecided[entry["outcome"]].append(entry["nodeid"])
    # both measured, nothing in common (another scheme or artifact label): the audits alone
    # passing is no pass; runs of weight statistics only (no measurement) compare audits
    measured = old.get("measurements") and new.get("measurements")
    if not rows and not regressions and (measured or not audits):
        raise NothingShared(
            f"the baseline ({_describe(old)}) shares no measurement "
            + ("" if audits else "and no audit ") + f"with {run} ({_describe(new)}): "
            + ("its numbers were not compared" if audits else "nothing was compared")
            + _measured_otherwise(old, new))
    if len(unbounded) == len(rows) and all(a["old"] != "passed" for a in audits):
        raise NothingShared(
            f"nothing in the baseline ({_describe(old)}) could regress: its "
            f"{sum(row_key(r) in old_rows for r in new.get('measurements', []))} "
            "measurement(s) in common have neither a disparity nor a degradation, and no audit "
            "in common passed in it")
    not_compared = sorted("/".join(key) for key in old_rows if key not in new_rows)
    not_run = sorted(key for key in old_audits if key not in new_audits)
    # gates the baseline passed, of a language this run left out (not one cut off by a stop
    # or -k: the run is incomplete then)
    languages = (new.get("settings") or {}).get("languages")
    dropped = [(was["nodeid"], f"({was['language']} not audited)")
               for was in map(old_audits.get, not_run) if languages is not None
               and is_release(was) and was["outcome"] == "passed" and was.get("language")
               and was["language"] not in languages]
    if strict:
        regressions += [f"audit {gate}: passed -> not run {why}" for gate, why in dropped]
    return {"baseline_created": old.get("created"), "baseline_file": baseline_file, "run": run,
            "tolerance": tolerance, "rows": rows,
            "audits": audits, "regressions": regressions, "differences": _differences(old, new),
            "label_hint": label_hint(old.get("settings") or {}, new.get("settings") or {}),
            "not_compared": not_compared, "undefined_in_baseline": unbounded,
            "degradation_compared": by_degradation,
            "growth_undecided": undecided_growth,
            "point_compared": by_point,
            "point_compared_why": "; ".join(sorted(paired.why_not)) if by_point else None,
            "paired_on_shared_units": "; ".join(sorted(paired.shared)) or None,
            "now_inconclusive": undecided["inconclusive"],
            "now_skipped": undecided["skipped"],  # e.g. a release bound no longer given
            "outcome_changed": changed,  # of audits the baseline did not pass
            "bound_changed": rebounded,
            "strategy_changed": renamed,
            "not_run": not_run,
            "gates_dropped": [] if strict else [f"{gate} {why}" for gate, why in dropped],
            "baseline_incomplete": list(old.get("incomplete") or [])}


def audited_strategy(report: dict) -> str | None:
    """The strategy `report`'s audits of the candidate (`--strategy`) audited: the one given,
    or the suggestion's where `suggested` was given; None where none was."""
    given = (report.get("settings") or {}).get("strategy")
    return (report.get("suggestion") or {}).get("strategy") if given == "suggested" else given


def _terms(strategy: str | None) -> frozenset[str] | None:
    """A strategy's terms, in any order (L0+L1 and L1+L0 protect the same)."""
    return frozenset(term.strip() for term in strategy.split("+")) if strategy else None


def architecture(report: dict) -> str:
    """"llama, 30 layers, 134,515,008 parameters, vocabulary 49,152": what a new checkpoint of
    the same model keeps; "" where the report does not record it."""
    model = report.get("model") or {}
    facts = [model.get(k) for k in ("family", "layers", "parameters", "vocabulary")]
    if any(fact is None for fact in facts):
        return ""
    family, layers, parameters, vocabulary = facts
    return f"{family}, {layers} layers, {parameters:,} parameters, vocabulary {vocabulary:,}"


def another_model(baseline: dict, run: dict, named: str = "this run") -> str | None:
    """Why `baseline` cannot gate `run` (reports, or `run` a {"model": facts} dict; `named`
    so), or None: a release of the same model keeps its family, layers, parameters and
    vocabulary."""
    return model_refusal(baseline_model(baseline), run, named)


def baseline_model(baseline: dict) -> dict[str, str]:
    """What `model_refusal` needs of a baseline report (an xdist worker gets it from its
    controller: the file may be on the controller's machine alone)."""
    return {"architecture": architecture(baseline), "described": _describe(baseline)}


def model_refusal(baseline: dict[str, str], run: dict, named: str = "this run") -> str | None:
    """`another_model` from a `baseline_model`."""
    if (was := baseline["architecture"]) and (now := architecture(run)) and was != now:
        return (f"the baseline is of another model ({baseline['described']}; {was}) than "
                f"{named} ({now}): a release of the same model keeps its family, layers, "
                "parameters and vocabulary; gate against one of this model")
    return None


def _differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between the baseline and the run, and files whose contents
    changed under the same path; a path given otherwise (relative, absolute) to the same
    contents is no difference."""
    settings, was = new.get("settings", {}), old.get("settings", {})
    contents = list(_contents(old, new))
    same = {setting for setting, _, before, now in contents if before and before == now}
    differences = [f"{key}: {_setting(key, was.get(key))} -> "
                   f"{_setting(key, settings.get(key))}"
                   for key in COMPARED_SETTINGS
                   if _differs(key, was.get(key), settings.get(key)) and key not in same]
    # the corpus digest is of the audited languages and units: where those differ (said
    # above), a different digest says nothing of the file's text
    selection = any(_differs(key, was.get(key), settings.get(key))
                    for key in ("languages", "units"))
    # weights hashed in another dtype (said above) differ whatever the file
    cast = was.get("dtype") != settings.get("dtype")
    return differences + [f"{what}: {before} -> {now}" for setting, what, before, now
                          in contents if before and now and before != now
                          and not (setting == "corpus" and selection)
                          and not (setting != "corpus" and cast)]


def _differs(key: str, before, now) -> bool:
    """Whether a setting differs; languages given in another order (`--languages he,ar`,
    `ar,he`, selectors) are the same measurements."""
    if key == "languages" and isinstance(before, list) and isinstance(now, list):
        return set(before) != set(now)
    return before != now


def _measured_otherwise(old: dict, new: dict) -> str:
    differences = _differences(old, new)
    hint = label_hint(old.get("settings") or {}, new.get("settings") or {})
    return (f" (measured otherwise: {'; '.join(differences)})" if differences else "") + hint


def label_hint(was: dict, now: dict) -> str:
    """Where two runs' settings audit artifacts under other labels (`artifact:release` and
    `artifact:other`; measurements are keyed by them, so none is compared), how to compare
    them: "; give --quantized-label release, ...", else ""."""
    old, new = was.get("scheme") or "", now.get("scheme") or ""
    if old == new or not (old.startswith("artifact:") and new.startswith("artifact:")):
        return ""
    return (f"; audit it with --quantized-label {old.removeprefix('artifact:')}, the "
            "baseline's, to compare an artifact with the release before it")


# Settings that change what a number means: a baseline measured otherwise is compared, with a
# note (a release gate may compare a new checkpoint with the last one on purpose).
COMPARED_SETTINGS = ("model", "random_weights", "scheme", "quantized", "languages", "units",
                     "corpus", "dtype", "strategy", "release_maxima")


class _Pairs:
    """Per (scheme, strategy, length), the baseline's and the run's measurements rebuilt from
    their `per_unit` values (format 5 or later) on the units both measured (by name, format 6;
    else both must have measured as many), in the languages whose units are the same (each
    unit scored the same number of tokens, English's too): a change is then read on the
    paired bootstrap, the same resampled units on both sides."""

    def __init__(self, old: dict, new: dict):
        self.why_not: set[str] = set()  # why measurements were compared on point estimates
        self.shared: set[str] = set()  # where the pairs are on the units both runs measured
        self.groups: dict[tuple, tuple[Measurement, Measurement, bool] | None] = {}
        self.rows = [{row_key(r): r for r in report.get("measurements", [])}
                     for report in (old, new)]
        self.computed: dict[tuple, list] = {}  # (group, metric) -> each side's draws

    def draws(self, row: dict, quantity: str):
        """((value, resamples) of the baseline, the same of the run, units, whether the pairs
        are on every unit of both) of `quantity` in `row`'s language, or None where the two
        cannot be paired."""
        group = row_key(row)[:3]
        if (pair := self._pair(group)) is None:
            return None
        if row["language"] not in pair[0].languages:
            self.why_not.add("some languages' units differ (another text or tokenizer)")
            return None
        i = pair[0].languages.index(row["language"])
        then, now = self._draws(group, "degradation" if quantity == "degradation" else
                                "disparity")
        if not (math.isfinite(then[0][i]) and math.isfinite(now[0][i])):
            self.why_not.add("a value is not finite on the per-unit values")
            return None
        return (then[0][i], then[1][i]), (now[0][i], now[1][i]), pair[0].units, pair[2]

    def on_shared_units(self, row: dict) -> tuple[float | None, float | None] | None:
        """Each side's disparity of `row`'s language on the units both runs measured (None
        where it is undefined there: English's change on those units within noise), where
        the runs measured other units and the language pairs; else None (each report's own
        values stand)."""
        group = row_key(row)[:3]
        if (pair := self._pair(group)) is None or pair[2] or \
                row["language"] not in pair[0].languages:
            return None
        i = pair[0].languages.index(row["language"])
        return tuple(None if reason else float(value[i])
                     for value, _, reason in self._draws(group, "disparity"))

    def _pair(self, group: tuple) -> tuple[Measurement, Measurement, bool] | None:
        if group not in self.groups:
            self.groups[group] = self._measurements(group)
        return self.groups[group]

    def _draws(self, group: tuple, metric: str) -> list:
        """Each side's `Measurement.draws` of `metric`: value, resamples, why undefined."""
        if (group, metric) not in self.computed:
            with np.errstate(all="ignore"):  # a ratio to 0: not finite, not paired (draws)
                self.computed[group, metric] = [m.draws(metric) for m in self._pair(group)[:2]]
        return self.computed[group, metric]

    def _measurements(self, group: tuple) -> tuple[Measurement, Measurement, bool] | None:
        values = [{key[3]: row.get("per_unit") for key, row in rows.items() if key[:3] == group}
                  for rows in self.rows]
        if not (values[0].get(REFERENCE) and values[1].get(REFERENCE)):
            self.why_not.add("a report before format 5 keeps no per-unit values")
            return None
        if (picks := self._shared_units(values[0][REFERENCE], values[1][REFERENCE])) is None:
            return None

        def units(per_language: dict | None, side: int) -> dict | None:
            """The language's per-unit values on the shared units, None where it has none or
            measured other units than English."""
            if not _usable(per_language) or per_language.get(UNIT_NAMES) != \
                    values[side][REFERENCE].get(UNIT_NAMES):
                return None
            return {name: [per_language[name][j] for j in picks[side]] for name in PER_UNIT}

        paired = {lang: (was, now) for lang in values[1]
                  if (was := units(values[0].get(lang), 0)) and (now := units(values[1][lang], 1))
                  and was["tokens"] == now["tokens"]}
        if REFERENCE not in paired:
            self.why_not.add("English's units differ (another text or tokenizer) or hold an "
                             "infinite loss")
            return None
        every = all(len(pick) == len(side[REFERENCE]["tokens"])
                    for pick, side in zip(picks, values, strict=True))
        return (*(Measurement.from_per_unit({lang: sides[side] for lang, sides in paired.items()},
                                            REFERENCE) for side in (0, 1)), every)

    def _shared_units(self, old: dict, new: dict) -> tuple[list[int], list[int]] | None:
        """The positions, in each side's English `per_unit` lists, of the units both
        measured (by name where both name them; else all, where both measured as many), in
        the run's order; None (and why) where there are none."""
        names = old.get(UNIT_NAMES), new.get(UNIT_NAMES)
        counts = [len(side["tokens"]) for side in (old, new)]
        if None in names:
            if counts[0] != counts[1]:
                self.why_not.add(f"the two runs measured {counts[0]} and {counts[1]} units per "
                                 "language (a report before format 6 does not name them)")
                return None
            return list(range(counts[0])), list(range(counts[1]))
        position = {name: j for j, name in enumerate(names[0])}
        pairs = [(position[name], j) for j, name in enumerate(names[1]) if name in position]
        if not pairs:
            self.why_not.add(f"the two runs measured no unit in common (of {counts[0]} and "
                             f"{counts[1]} per language)")
            return None
        if len(pairs) < max(counts):
            few = (f"; below {FEW_UNITS} no exact paired test reaches 5%: read a decision on "
                   "them as a machinery check" if len(pairs) < FEW_UNITS else "")
            self.shared.add(f"{units_text(len(pairs))} both runs measured (of {counts[0]} and "
                            f"{counts[1]} per language{few})")
        return [was for was, _ in pairs], [now for _, now in pairs]


def _usable(units: dict | None) -> bool:
    """Whether `per_unit` values are there and finite (JSON keeps an infinite NLL as null)."""
    return bool(units) and all(None not in units[name] and all(map(math.isfinite, units[name]))
                               for name in PER_UNIT)


def _grown(quantity: str, was: float, now: float, tolerance: float) -> str:
    """"3.125 -> 4.062, above the baseline's +10% (3.438)": a growth beyond the tolerance."""
    values = _values(quantity, was, now, was + tolerance * abs(was))
    return (f"{values[0]} -> {values[1]}, above the baseline's +{100 * tolerance:g}% "
            f"({values[2]})")


def _growth(quantity: str, over) -> str:
    """A growth beyond the tolerance with its 95% CI, in the quantity's units (a degradation's
    in percentage points: a difference of two percentages)."""
    points = " percentage points" if quantity == "degradation" else ""
    if math.isnan(over.low):
        value = _values(quantity, over.difference)[0].removesuffix("%")
        return f"{value}{points} ({TOO_FEW_UNITS})"
    value, low, high = (v.removesuffix("%") for v in _values(quantity, over.difference,
                                                              over.low, over.high))
    return f"{value}{points} [95% CI {low}, {high}]"


def _values(quantity: str, *values: float) -> tuple[str, ...]:
    """`values` printed with the fewest digits that tell them apart: 4 significant digits or
    more, a degradation as a percentage with 1 decimal or more and 2 significant digits or
    more (-0.010%, not -0.0%)."""
    def percent(v: float, extra: int) -> str:
        magnitude = math.floor(math.log10(abs(100 * v))) if v and math.isfinite(v) else 0
        return f"{100 * v:.{max(1, 1 - magnitude) + extra}f}%"

    for extra in range(9):
        texts = tuple(percent(v, extra) if quantity == "degradation"
                      else f"{v:.{4 + extra}g}" for v in values)
        if len(set(texts)) == len(set(values)):
            break
    return texts


def _undefined_why(before: dict, row: dict, english_before: dict, english: dict,
                   on_shared_units: bool) -> str:
    """Why a disparity defined in the baseline is undefined now, and the damage on both sides
    of the language and of English (a disparity is a ratio: English's damage fallen into
    noise undefines it while every language's damage falls): " (en loss change is within
    noise (95% CI includes 0); degradation of ar 33.6% -> 22.7%, of en 28.5% -> 7.8%)"; the
    degradations are each run's own, said so where the disparities were paired on the units
    both measured (`on_shared_units`)."""
    why = row.get("undefined") or "undefined on the units both runs measured"
    damage = [f"of {language} {' -> '.join(_values('degradation', was, now))}"
              for language, was, now in ((row["language"], before.get("degradation"),
                                          row.get("degradation")),
                                         (REFERENCE, english_before.get("degradation"),
                                          english.get("degradation")))
              if was is not None and now is not None]
    units = " over each run's own units" if on_shared_units else ""
    return f" ({why}" + (f"; degradation{units} {', '.join(damage)}" if damage else "") + ")"


def _noise(row: dict) -> bool:
    """Whether a row's degradation is within noise: its 95% CI includes 0 (False where the
    row keeps no CI: an older report, or too few units for one)."""
    low, high = row.get("degradation_low"), row.get("degradation_high")
    return low is not None and high is not None and low <= 0 <= high


def _disparity(row: dict) -> float | None:
    """A row's disparity, None where the report says it is undefined (the number beside the
    reason is no measurement of it)."""
    return None if row.get("undefined") else row.get("disparity")


def _contents(old: dict, new: dict):
    """(the setting naming it, what, the baseline's hash, the run's) of the corpus text, the
    model's weights and the artifact's: the same paths may hold other contents."""
    for setting, what, get in (
            ("corpus", "corpus text", lambda r: (r.get("settings") or {}).get("corpus_digest")),
            ("model", "model weights", lambda r: (r.get("model") or {}).get("weight_hash")),
            ("quantized", "artifact weights",
             lambda r: ((r.get("model") or {}).get("artifact") or {}).get("weight_hash"))):
        yield setting, what, get(old), get(new)


def _setting(key: str, value) -> str:
    if value is None:  # --units 0: every unit of the corpus
        return "all" if key == "units" else "not set"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _audit_key(nodeid: str) -> str:
    """`audits/test_x.py::test_y[case]` and `test_x.py::test_y[case]` (collected with
    --pyargs) name the same audit."""
    path, _, test = nodeid.partition("::")
    return f"{path.rsplit('/', 1)[-1]}::{test}"


def comparison_notes(comparison: dict, listed: Callable[[list[str]], str] = some) -> list[str]:
    """One line each: what was compared, settings that differ, baseline rows not measured;
    lists of names as `listed` writes them (the first few: `some`); the option that counts
    more as regressions as the comparison's `strict_option` says (`quantfair report`'s own
    `--strict`), else `--quantfair-strict`."""
    strict_option = comparison.get("strict_option") or "--quantfair-strict"
    file = f" ({name})" if (name := comparison.get("baseline_file")) else ""
    lines = [f"compared with the baseline of {comparison['baseline_created']}{file}: "
             f"{len(comparison['rows'])} measurements, {len(comparison['audits'])} audits"]
    if comparison.get("differences"):
        lines.append("baseline measured otherwise: " + "; ".join(comparison["differences"])
                     + comparison.get("label_hint", ""))
    if stopped := comparison.get("baseline_incomplete"):
        lines.append(f"the baseline is of an incomplete run ({'; '.join(stopped)}): what it "
                     "did not measure is not compared")
    # paired on the units both runs measured, a disparity is defined or not on those
    shared = " on the units both runs measured" if comparison.get("paired_on_shared_units") else ""
    if instead := comparison.get("degradation_compared"):
        lines.append(f"{len(instead)} disparity(ies) undefined in the baseline{shared}: the "
                     f"language's degradation is checked for growth instead: {listed(instead)}")
    if undecided := comparison.get("growth_undecided"):
        lines.append(f"{len(undecided)} growth(s) beyond the tolerance not significant on the "
                     f"paired units (a regression with {strict_option}): {listed(undecided)}")
    if pairing := comparison.get("paired_on_shared_units"):
        lines.append(f"paired on the {pairing}: the values compared are each run's on those "
                     "units")
    if by_point := comparison.get("point_compared"):
        lines.append(f"{len(by_point)} measurement(s) compared on point estimates, without "
                     f"CIs: {comparison.get('point_compared_why') or 'no per-unit values'}")
    if unbounded := comparison.get("undefined_in_baseline"):
        lines.append(f"{len(unbounded)} disparity(ies) undefined in the baseline{shared}, so not "
                     f"checked for growth: {listed(unbounded)}")
    run = comparison.get("run") or "this run"
    for key, what in (("not_compared", "measurement(s) not made"), ("not_run", "audit(s) not run")):
        if missing := comparison.get(key):
            lines.append(f"{len(missing)} baseline {what} in {run}: {listed(missing)}")
    if dropped := comparison.get("gates_dropped"):
        lines.append(f"{len(dropped)} release gate(s) passed in the baseline, of a language "
                     f"{run} does not audit (a regression with {strict_option}): "
                     f"{listed(dropped)}")
    for outcome in ("inconclusive", "skipped"):
        if undecided := comparison.get(f"now_{outcome}"):
            lines.append(f"{len(undecided)} audit(s) passed in the baseline and are {outcome} "
                         f"now (a regression with {strict_option}): {listed(undecided)}")
    if changed := comparison.get("outcome_changed"):
        lines.append(f"{len(changed)} audit(s) not passed in the baseline changed outcome: "
                     f"{listed(changed)}")
    if renamed := comparison.get("strategy_changed"):
        lines.append(f"{len(renamed)} measurement(s) or audit(s) of another strategy under the "
                     f"same name (another --strategy), not compared: {listed(renamed)}")
    if rebounded := comparison.get("bound_changed"):
        lines.append(f"{len(rebounded)} audit(s) decided under another bound than in the "
                     f"baseline, not compared: {listed(rebounded)}")
    return lines


def no_regression_line(comparison: dict) -> str:
    """What a comparison that found no regression says of growth: none beyond the tolerance,
    or how much was beyond it but not significant."""
    tolerance = f"{100 * comparison['tolerance']:g}%, the tolerance"
    undecided = len(comparison.get("growth_undecided") or [])
    return "0 regressions against the baseline (" + (
        f"{undecided} growth(s) beyond {tolerance}, not significant" if undecided
        else f"no growth beyond {tolerance}") + ")"


def regressions_line(comparison: dict) -> str:
    """How many regressions `comparison` found, and what counts as one."""
    beyond = (f"beyond {100 * comparison['tolerance']:g}%, the tolerance (for English, and "
              "where the baseline's disparity is undefined, the degradation")
    if count := len(comparison["regressions"]):
        return f"{count} regression(s), each a disparity grown {beyond}), one undefined now, " \
               "or an audit that stopped passing"
    if undecided := len(comparison.get("growth_undecided") or []):
        return (f"0 regressions: no disparity grew significantly {beyond}; {undecided} "
                "growth(s) beyond it, not significant), and no audit stopped passing")
    return f"0 regressions: no disparity grew {beyond}), and no audit stopped passing"


def settle_verdict(report: dict) -> None:
    """The verdict, then the summary, from the report's audits, `incomplete` reasons and any
    baseline comparison: incomplete, else error, else failed (a finding that did not hold, a
    regression against the baseline, or under --quantfair-strict an inconclusive audit),
    else passed. Run again once a comparison is in."""
    outcomes = {a["outcome"] for a in report["audits"]}
    regressed = bool((report.get("comparison") or {}).get("regressions"))
    strict = report.get("settings", {}).get("strict") and "inconclusive" in outcomes
    report["verdict"] = ("incomplete" if report["incomplete"] else "error" if "error" in outcomes
                         else "failed" if "failed" in outcomes or regressed or strict
                         else "passed")
    report["summary"] = summarize(report)


def raises_english_damage(row: dict) -> bool:
    """Whether `row` of `quantfair.suggest.compare_on_audit_units` (a suggestion's
    `comparison`, as saved) significantly raises English's degradation
    over no protection (the 95% CI of it - none above 0)."""
    return _vs_none(row, "english", "low") > 0


def fairer_than_none(comparison: list[dict]) -> str:
    """One line: which rows of `compare_on_audit_units` are significantly fairer than no
    protection (the 95% CI of it - none below 0), in mean and in worst-language disparity."""
    parts = []
    for name in ("mean", "worst"):
        below = [row["label"] for row in comparison
                 if _vs_none(row, name, "high") < 0
                 and interval_text(row.get(f"{name}_disparity")) != "undefined"]
        parts.append(f"{name}: {', '.join(below) or 'none of them'}")
    return "significantly fairer than no protection (it - none, 95% CI below 0): " + \
        "; ".join(parts)


def less_fair_than_none(row: dict) -> list[str]:
    """The disparities ("mean", "worst") in which `row` of `compare_on_audit_units` is
    significantly less fair than no protection (the 95% CI of it - none above 0)."""
    return [name for name in ("mean", "worst") if _vs_none(row, name, "low") > 0]


def undefined_in_comparison(comparison: list[dict]) -> list[str]:
    """Why disparities of `compare_on_audit_units`'s rows are undefined (English's NLL did not
    rise, ...), each reason once: a table of "undefined" says no more."""
    return sorted({estimate["undefined"] for row in comparison
                   for name in ("mean_disparity", "worst_disparity")
                   if (estimate := row.get(name)) and estimate.get("undefined")})


def suggestion_warnings(suggestion: dict) -> list[str]:
    """What the held-out audit units say against a saved suggestion (the first row of its
    `comparison`), as sentences: significantly less fair than no protection, or significantly
    raising English's degradation over it; [] where neither, where the search measured no
    audit units, or on fewer than `FEW_UNITS` of them (the plain percentile intervals of the
    comparison understate the uncertainty there, as its note says)."""
    comparison = suggestion.get("comparison") or []
    if not comparison or len(suggestion.get("audit_units") or []) < FEW_UNITS:
        return []
    suggested = comparison[0]
    none = next((row for row in comparison if row["label"] == "none"), None)
    warnings = []
    if worse := less_fair_than_none(suggested):
        warnings.append(f"on the search's held-out audit units the suggestion is significantly "
                        f"less fair than no protection ({' and '.join(worse)} disparity): the "
                        "calibration units misled the search; keep none, or search on more "
                        "--calibration-units")
    if none and raises_english_damage(suggested):
        rise = suggested["english_vs_none"]
        fell = ": its loss fell under quantization" if none["english_degradation"] < 0 else ""
        warnings.append(
            f"on the search's held-out audit units the suggestion raises {REFERENCE}'s "
            f"degradation from {100 * none['english_degradation']:.2f}% (none{fell}) to "
            f"{100 * suggested['english_degradation']:.2f}% (95% CI of the rise "
            f"[{100 * rise['low']:.2f}, {100 * rise['high']:.2f}] points); the search kept it "
            "from growing on its calibration units only: search on more --calibration-units")
    return warnings


def _vs_none(row: dict, name: str, end: str) -> float:
    """A bound of `row`'s it - none CI, NaN where it has none or it is undefined (None, as
    JSON keeps NaN)."""
    value = row.get(f"{name}_vs_none", {}).get(end)
    return math.nan if value is None else value


def searched_with(suggestion: dict) -> str:
    """"budget 5%, en,de": what a saved `quantfair suggest` result was searched with."""
    languages = ",".join(suggestion.get("languages") or []) or "languages not recorded"
    corpus = suggestion.get("corpus")
    return f"budget {100 * suggestion['budget']:g}%, {languages}" + (
        f", corpus {corpus}" if corpus and corpus != SHIPPED_CORPUS else "")


def trace_label(candidate: str, strategy: str | None) -> str:
    """A `quantfair suggest` trace step as its table and chart name it: `+X` where X was added
    to what earlier steps kept (its strategy is more than X), else X."""
    return candidate if strategy in (None, candidate) else f"+{candidate}"


OTHER_LANGUAGES = ("the suggestion was searched without these languages of this run, so "
                   "their audits test how it carries over to them")


def unsearched_languages(suggestion: dict, languages) -> list[str]:
    """Those of `languages` that the saved `quantfair suggest` result was not searched on
    (none where it does not record its languages)."""
    searched = suggestion.get("languages") or []
    return [lang for lang in languages if searched and lang not in searched]


def _describe(report: dict) -> str:
    settings = report.get("settings", {})
    return (f"model {settings.get('model')}, scheme {settings.get('scheme')}, "
            f"{len(report.get('measurements', []))} measurements, "
            f"{len(report.get('audits', []))} audits, created {report.get('created')}")


@cache
def _validator(schema: str):
    from jsonschema import Draft202012Validator

    text = resources.files("quantfair").joinpath("schemas", SCHEMA_FILES[schema]).read_text()
    return Draft202012Validator(json.loads(text))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def load_report(path: str | Path) -> dict:
    """A report file checked against the JSON Schema of the format it declares, then
    against itself. Raises QuantfairError (one line) for a file missing, a directory or not
    UTF-8, JSON that does not parse or holds NaN, Infinity or a key given twice, a format
    unknown or newer than this quantfair's, a schema violation, a measurement or audit given
    twice, per-unit sums that do not add up to their totals, a degradation or disparity its
    totals do not give, and an audit its measurements do not support."""
    from jsonschema.exceptions import best_match

    try:
        # a BOM at the start is what some editors write
        report = json.loads(Path(path).read_text(encoding="utf-8-sig"),
                            object_pairs_hook=unique_keys, parse_constant=_reject_constant)
    except FileNotFoundError:
        raise QuantfairError(f"report not found: {path}") from None
    except IsADirectoryError:
        raise QuantfairError(f"report path is a directory: {path}") from None
    except OSError as error:
        raise QuantfairError(f"cannot read report {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        if Path(path).suffix.lower() in (".html", ".htm"):
            raise QuantfairError(f"{path} is an HTML page; give its JSON report (the .json "
                                 "beside it), which the page is rendered from") from None
        raise QuantfairError(f"{path} is not a JSON report: {error.msg.removesuffix(' at')} "
                             f"at line {error.lineno} column {error.colno}") from None
    except UnicodeDecodeError:
        raise QuantfairError(f"{path} is not a JSON report: not UTF-8 text") from None
    except RecursionError:
        raise QuantfairError(f"{path} is not a JSON report: nested too deeply") from None
    except DuplicateKey as error:  # json would keep the last silently
        raise QuantfairError(f"{path} is not a JSON report: key {error} given twice in one "
                             "object") from None
    except ValueError as error:  # NaN or Infinity, which JSON does not have
        raise QuantfairError(f"{path} is not a JSON report: {error}") from None
    declared = report.get("schema") if isinstance(report, dict) else None
    if declared not in SCHEMA_FILES:
        if isinstance(declared, str) and declared.startswith("quantfair-report/"):
            number = declared.removeprefix("quantfair-report/")
            newest = max(int(name.rpartition("/")[2]) for name in SCHEMA_FILES)
            newer = number.isdigit() and int(number) > newest
            raise QuantfairError(
                f"{path} is in report format {declared}; this quantfair reads "
                f"{', '.join(SCHEMA_FILES)}: " + (
                    "a newer quantfair wrote it; upgrade quantfair to read it" if newer
                    else "re-run the audit to get a comparable report"))
        keys = set(report) if isinstance(report, dict) else set()
        written_by = ("quantfair measure --json" if {"settings", "records"} <= keys else
                      "quantfair suggest --json" if {"budget", "trace"} <= keys else None)
        raise QuantfairError(f"{path} is not a quantfair report ({SCHEMA})" + (
            f": {written_by} wrote it, not an audit run (pytest writes reports)"
            if written_by else ""))
    error = best_match(_validator(declared).iter_errors(report))
    if error is not None:
        where = error.json_path.removeprefix("$") or "top level"
        message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise QuantfairError(f"{path} is not a valid {declared} report: {where}: {message}")
    try:  # what the comparison names the baseline by
        datetime.fromisoformat(report["created"])
    except ValueError:
        raise QuantfairError(f"{path} is not a valid {declared} report: .created: "
                             f"{report['created']!r} is not an ISO 8601 date and time") from None
    for what, keys, one_per in (
            ("measurement", ["/".join(row_key(row)) for row in report.get("measurements", [])],
             "scheme, strategy, length and language"),
            ("audit", [audit["nodeid"] for audit in report.get("audits", [])], "test id")):
        counts = collections.Counter(keys)
        if twice := [key for key, count in counts.items() if count > 1]:  # which would count?
            raise QuantfairError(f"{path} is not a valid {declared} report: {what} {twice[0]} "
                                 f"appears {counts[twice[0]]} times (a report has one per "
                                 f"{one_per})")
    for row in report.get("measurements", []):
        if "per_unit" in row and (why := _unit_mismatch(row)):
            raise QuantfairError(f"{path} is not a valid {declared} report: measurement "
                                 f"{'/'.join(row_key(row))}: {why} (edited or damaged)")
    for why in (_derived_mismatch(report.get("measurements", [])), _audit_mismatch(report)):
        if why:  # before a run, not after
            raise QuantfairError(f"{path} is not a valid {declared} report: {why} (edited or "
                                 "damaged)")
    return report


def _audit_mismatch(report: dict) -> str:
    """Why an audit of one language's quantity (`audit.LanguageBound`, a release gate) is not
    what the report's measurements give (or ""): no measurement of its strategy and language,
    a value none of them holds, or an outcome its value and bound do not give (decided on the
    value alone; a bound is written to 6 significant digits). A baseline comparison trusts a
    baseline's audits beside its rows: one emptied of its measurements passed as a gate that
    compared nothing measured."""
    rows = collections.defaultdict(list)  # by language
    for row in report.get("measurements", []):
        rows[row["language"]].append(row)
    for entry in report.get("audits", []):
        name, value, language = entry.get("quantity"), entry.get("value"), entry.get("language")
        if entry["outcome"] not in ("passed", "failed") or name not in QUANTITIES or not language:
            continue
        where, strategy = f"audit {entry['nodeid']}", entry.get("strategy")
        # None: the run's scheme; a report written before audits recorded their scheme has
        # no key, and any scheme's row may hold its value
        scheme = (entry["scheme"] or report.get("settings", {}).get("scheme")
                  if "scheme" in entry else None)
        # the candidate (--strategy) is measured under the strategy it stands for
        held = [row.get(name) for row in rows[language] if strategy in (row["strategy"], CANDIDATE)
                and entry.get("length") in (None, row.get("length", "medium"))
                and scheme in (None, row["scheme"])]
        if not held:
            return (f"{where}: its report has no measurement of {strategy}"
                    + (f" under {scheme}" if scheme else "") + f" in {language} to give its "
                    f"{name}")
        if value is None:  # undefined: inconclusive, or failed as a gate
            if entry["outcome"] == "passed":
                return f"{where}: passed with no {name}"
            continue
        if not any(isinstance(v, int | float) and math.isclose(v, value, rel_tol=FLOAT_NOISE)
                   for v in held):
            return f"{where}: its {name}, {value:g}, is no measurement's"
        if (holds := _holds(entry.get("bound") or "", value)) is not None and (
                entry["outcome"] != ("passed" if holds else "failed")):
            return f"{where}: {entry['outcome']} with {name} {value:g} against {entry['bound']}"
    return ""


def _holds(bound: str, value: float) -> bool | None:
    """Whether `value` meets a bound as `audit.Bound` writes it ("<= 3", ">= 1", "in [1, 3]");
    None where it cannot tell: another form, or a value within the 6 significant digits of a
    written limit."""
    if (pairs := bound_limits(bound)) is None:
        return None
    if any(math.isclose(value, number, rel_tol=1e-5, abs_tol=1e-12) for number, _ in pairs):
        return None
    return all(value <= number if side == "<=" else value >= number for number, side in pairs)


def _derived_mismatch(rows: list[dict]) -> str:
    """Why a measurement's degradation or NLL disparity is not what its totals give (or ""):
    expm1((nll_q - nll_fp) / tokens), and its NLL change over English's under the same
    scheme, strategy and length (`Measurement.draws`' point values). Rows with per-unit
    values only (format 5 on), whose totals `_unit_mismatch` checked: a baseline comparison
    rebuilds their numbers from those, and found an edit only after the run."""
    totals = {row_key(row): row for row in rows if "per_unit" in row
              and all(isinstance(row.get(name), int | float) for name in PER_UNIT)}
    for key, row in totals.items():
        change = row["nll_q"] - row["nll_fp"]
        english = totals.get((*key[:3], REFERENCE))
        english_change = english and english["nll_q"] - english["nll_fp"]
        for name, derived in (
                ("degradation", math.expm1(change / row["tokens"]) if row["tokens"] else None),
                ("disparity", change / english_change if english_change else None)):
            stored = row.get(name)
            if isinstance(stored, int | float) and derived is not None and not math.isclose(
                    stored, derived, rel_tol=FLOAT_NOISE, abs_tol=1e-12):
                return (f"measurement {'/'.join(key)}: its {name}, {stored:g}, is not what its "
                        f"totals give ({derived:g})")
    return ""


def _unit_mismatch(row: dict) -> str:
    """Why a measurement's `per_unit` values are not its units' (a list of another length, a
    total other than the stored one), or ""."""
    units = row["per_unit"]
    lengths = {name: len(units[name]) for name in (UNIT_NAMES, *PER_UNIT) if name in units}
    if set(lengths.values()) != {row["units"]}:
        held = ", ".join(f"{n} {'unit names' if name == UNIT_NAMES else name}"
                         for name, n in lengths.items())
        return f"per_unit holds {held} values for {row['units']} units"
    for name in PER_UNIT:
        stored, values = row.get(name), units[name]
        if stored is not None and None not in values and not math.isclose(
                sum(values), stored, rel_tol=FLOAT_NOISE, abs_tol=FLOAT_NOISE):
            return f"its {name}, {stored:g}, is not the sum of its per_unit values, {sum(values):g}"
    return ""
