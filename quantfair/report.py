"""Audit results: records, the versioned JSON report, the HTML report and baseline gating."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from quantfair.metrics import (
    KLD_PERCENTILES,
    Estimate,
    Measurement,
    bits_per_byte,
    fertility,
    perplexity,
)

SCHEMA = "quantfair-report/1"
DEFAULT_TOLERANCE = 0.10  # relative growth of a disparity that counts as a regression


def _clean(value):
    """JSON has no NaN or infinity: such values become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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


def measurement_records(m: Measurement, *, strategy: str, scheme: str, length: str,
                        overhead, resolved: str | None = None) -> list[dict]:
    """One record per language of a (scheme, strategy, length) measurement."""
    disparity, seed, degradation = m.disparity(), m.seed_disparity(), m.degradation()
    records, distribution = [], distribution_fields(m)
    for i, lang in enumerate(m.languages):
        nll_fp, nll_q = float(m.nll_fp[i].sum()), float(m.nll_q[i].sum())
        tokens, n_bytes, chars = (int(m.tokens[i].sum()), int(m.bytes[i].sum()),
                                  int(m.chars[i].sum()))
        records.append({key: _clean(value) for key, value in {
            "scheme": scheme, "strategy": strategy, "resolved": resolved or strategy,
            "length": length, "language": lang, "units": int(m.nll_fp.shape[1]),
            "nll_fp": nll_fp, "nll_q": nll_q, "tokens": tokens, "bytes": n_bytes, "chars": chars,
            "ppl_fp": perplexity(nll_fp, tokens), "ppl_q": perplexity(nll_q, tokens),
            "bpb_fp": bits_per_byte(nll_fp, n_bytes), "bpb_q": bits_per_byte(nll_q, n_bytes),
            "fertility": fertility(tokens, chars),
            "degradation": degradation[lang].value,
            "seed_disparity": seed[lang].value, "seed_disparity_low": seed[lang].low,
            "seed_disparity_high": seed[lang].high,
            "disparity": disparity[lang].value, "disparity_low": disparity[lang].low,
            "disparity_high": disparity[lang].high,
            "undefined": disparity[lang].undefined or None,
            "overhead": overhead.fraction, "overhead_bytes": overhead.bytes_fraction,
            **distribution[i],
        }.items()})
    return records


def experiment_span(ids: list[str]) -> str:
    """'001/002/003' -> '001-003'; ids that do not run on stay as they are."""
    if len(ids) > 2 and all(i.isdigit() for i in ids) and \
            [int(i) for i in ids] == list(range(int(ids[0]), int(ids[-1]) + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return "/".join(ids)


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
    import torch
    import transformers

    from quantfair import __version__

    return {"quantfair": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "git_commit": git_commit()}


def build_report(*, model: dict, settings: dict, audits: list[dict], rows: Iterable[dict],
                 incomplete: list[str], duration_s: float, comparison: dict | None = None
                 ) -> dict:
    """The versioned JSON document (see the README's "Report format")."""
    unique = {row_key(r): r for r in rows}
    counts: dict[str, int] = {}
    for entry in audits:
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    failed = counts.get("failed", 0) + counts.get("error", 0)
    verdict = "incomplete" if incomplete else ("failed" if failed else "passed")
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "verdict": verdict,
        "incomplete": incomplete,
        "summary": counts,
        "model": model,
        "settings": settings,
        "environment": environment(),
        "duration_s": round(duration_s, 2),
        "measurements": sorted(unique.values(), key=row_key),
        "audits": sorted(audits, key=lambda a: a["nodeid"]),
        "comparison": comparison,
    }


def write_report(report: dict, json_path: Path) -> tuple[Path, Path]:
    """Write `json_path` and the HTML beside it (and reports/latest.html next to them)."""
    from quantfair.html import render_html

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False), encoding="utf-8")
    html_path = json_path.with_suffix(".html")
    html = render_html(report)
    html_path.write_text(html, encoding="utf-8")
    (json_path.parent / "latest.html").write_text(html, encoding="utf-8")
    return json_path, html_path


def compare(old: dict, new: dict, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Rows whose disparity grew beyond `tolerance` (relative) and audits that stopped passing."""
    old_rows = {row_key(r): r for r in old.get("measurements", [])}
    regressions, rows = [], []
    for row in new.get("measurements", []):
        before = old_rows.get(row_key(row))
        if before is None or row["language"] == "en":
            continue
        a, b = before.get("disparity"), row.get("disparity")
        entry = {"key": "/".join(row_key(row)), "old": a, "new": b}
        if a is not None and b is not None:
            entry["change"] = (b - a) / abs(a) if a else None
            if b > a + tolerance * abs(a):
                regressions.append(f"disparity {entry['key']}: {a:.4g} -> {b:.4g}")
        elif a is not None and b is None:
            regressions.append(f"disparity {entry['key']}: {a:.4g} -> undefined")
        rows.append(entry)
    old_audits = {a["nodeid"]: a["outcome"] for a in old.get("audits", [])}
    audits = []
    for entry in new.get("audits", []):
        before = old_audits.get(entry["nodeid"])
        if before is None:
            continue
        audits.append({"nodeid": entry["nodeid"], "old": before, "new": entry["outcome"]})
        if before == "passed" and entry["outcome"] in ("failed", "error"):
            regressions.append(f"audit {entry['nodeid']}: passed -> {entry['outcome']}")
    return {"baseline_created": old.get("created"), "tolerance": tolerance, "rows": rows,
            "audits": audits, "regressions": regressions}


def load_report(path: str | Path) -> dict:
    from quantfair.errors import QuantfairError

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuantfairError(f"report not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise QuantfairError(f"{path} is not a JSON report") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise QuantfairError(f"{path} is not a quantfair report ({SCHEMA})")
    return report
