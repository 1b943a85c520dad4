"""Render a JSON report as one self-contained HTML page (inline CSS and SVG, no network)."""

from __future__ import annotations

import math
from collections import defaultdict

from jinja2 import Environment, PackageLoader, select_autoescape

from quantfair.corpus import REFERENCE, language


def experiment_span(ids: list[str]) -> str:
    """'001/002/003' -> '001-003'; ids that do not run on stay as they are."""
    if len(ids) > 2 and all(i.isdigit() for i in ids) and \
            [int(i) for i in ids] == list(range(int(ids[0]), int(ids[-1]) + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return "/".join(ids)


RECOMMENDED = ("recommended", "L0+Llast+ln_f+biases", "L0+L11+ln_f+biases")
LAYER_TOKENS = ("L0", "L1", "L2", "Lmid", "L-2", "Llast")


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    if high == low:
        return (start + end) / 2
    return start + (value - low) / (high - low) * (end - start)


def _log(value: float | None) -> float | None:
    return math.log10(value) if value is not None and value > 0 else None


def _color(value: float | None) -> str:
    """Green at parity (1x), through yellow, to red at 10x and beyond (log scale)."""
    if value is None:
        return "#ddd"
    t = min(max(math.log10(max(value, 1e-3)) / 1.0, -1.0), 1.0)
    if t <= 0:
        return f"hsl(140, 55%, {int(80 + 10 * t)}%)"
    return f"hsl({int(140 - 140 * t)}, 65%, {int(75 - 20 * t)}%)"


def _main_rows(report: dict) -> list[dict]:
    scheme = report.get("settings", {}).get("scheme")
    return [r for r in report.get("measurements", [])
            if r.get("length", "medium") == "medium" and r["scheme"] == scheme]


def _kld_disparity(r: dict) -> str:
    """Per-byte KL-divergence disparity beside the NLL one ("" when not measured)."""
    if r.get("kld_disparity") is None:
        return ""
    if r.get("kld_undefined"):
        return "undef."
    return f"{r['kld_disparity']:.2f} [{r['kld_disparity_low']:.2f}, {r['kld_disparity_high']:.2f}]"


def heatmap(report: dict) -> dict:
    rows = _main_rows(report)
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    languages = list(dict.fromkeys(r["language"] for r in rows if r["language"] != REFERENCE))
    cells = {(r["strategy"], r["language"]): r for r in rows}
    grid = []
    for strategy in strategies:
        line = []
        for lang in languages:
            r = cells.get((strategy, lang))
            if r is None:
                line.append({"text": "", "color": "#fff", "title": ""})
                continue
            value = None if r.get("undefined") else r.get("disparity")
            text = "undef." if value is None else f"{value:.2f}"
            title = (f"{strategy} / {lang}: disparity {text}" +
                     (f" [95% CI {r['disparity_low']:.3g}, {r['disparity_high']:.3g}]"
                      if value is not None and r.get("disparity_low") is not None else
                      f" ({r.get('undefined')})") +
                     f"; seed disparity {r.get('seed_disparity') or float('nan'):.3g}")
            kld = _kld_disparity(r)
            line.append({"text": text, "color": _color(value), "kld": kld,
                         "title": title + (f"; KLD disparity {kld}" if kld else "")})
        grid.append({"strategy": strategy, "cells": line})
    return {"languages": languages, "rows": grid}


def _mean_disparity(rows: list[dict]) -> dict[str, tuple[float | None, float]]:
    by_strategy: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_strategy[r["strategy"]].append(r)
    result = {}
    for strategy, items in by_strategy.items():
        values = [r["disparity"] for r in items
                  if r["language"] != REFERENCE and not r.get("undefined")
                  and r.get("disparity") is not None]
        mean = sum(values) / len(values) if values else None
        result[strategy] = (mean, 100 * items[0]["overhead"])
    return result


def scatter(points: list[dict], x_label: str, y_label: str, log_y: bool = True) -> dict:
    """Geometry for an SVG scatter: points carry x, y (raw), label, highlight."""
    width, height, pad = 560, 300, 50
    usable = [p for p in points if p["y"] is not None and (not log_y or p["y"] > 0)]
    if not usable:
        return {"points": [], "width": width, "height": height}
    ys = [math.log10(p["y"]) if log_y else p["y"] for p in usable]
    xs = [p["x"] for p in usable]
    y_low, y_high = min(ys + [0.0 if log_y else min(ys)]), max(ys + [0.0 if log_y else max(ys)])
    x_low, x_high = min(xs), max(xs)
    placed = []
    for p, y in zip(usable, ys, strict=True):
        placed.append({**p, "cx": round(_scale(p["x"], x_low, x_high, pad, width - 20), 1),
                       "cy": round(_scale(y, y_low, y_high, height - pad, 20), 1)})
    parity = (round(_scale(0.0, y_low, y_high, height - pad, 20), 1) if log_y else None)
    return {"points": placed, "width": width, "height": height, "pad": pad,
            "x_label": x_label, "y_label": y_label, "parity": parity,
            "x_range": (x_low, x_high), "y_range": (y_low, y_high), "log_y": log_y}


def pareto(report: dict) -> dict:
    means = _mean_disparity(_main_rows(report))
    points = [{"x": overhead, "y": mean, "label": strategy,
               "highlight": strategy in RECOMMENDED} for strategy, (mean, overhead) in
              means.items()]
    return scatter(points, "overhead (% of parameters in FP)", "mean disparity (log10)")


def bars(items: list[tuple[str, float | None]], log: bool = False) -> dict:
    width, bar_height = 520, 18
    values = [(_log(v) if log else v) for _, v in items]
    finite = [v for v in values if v is not None]
    top = max([abs(v) for v in finite] + [1e-9])
    drawn = []
    for index, ((label, raw), value) in enumerate(zip(items, values, strict=True)):
        length = 0 if value is None else abs(value) / top * (width - 190)
        drawn.append({"label": label, "y": index * (bar_height + 6),
                      "width": round(length, 1), "value": "n/a" if raw is None else f"{raw:.3g}",
                      "negative": value is not None and value < 0})
    return {"bars": drawn, "height": len(items) * (bar_height + 6), "bar_height": bar_height}


def criticality(report: dict) -> dict:
    means = _mean_disparity(_main_rows(report))
    items = [(token, means[token][0]) for token in LAYER_TOKENS if token in means]
    return bars(items, log=True)


def resource(report: dict) -> dict:
    rows = [r for r in _main_rows(report) if r["strategy"] == "none"
            and r["language"] != REFERENCE and not r.get("undefined")]
    # Languages without metadata have no resource class: left out, and named.
    unknown = [r["language"] for r in rows if language(r["language"]).resource_class < 0]
    points = [{"x": language(r["language"]).resource_class, "y": r["disparity"],
               "label": r["language"], "highlight": False}
              for r in rows if r["language"] not in unknown]
    chart = scatter(points, "resource class (Joshi et al. 2020)",
                    "disparity, no protection (log10)")
    correlation = None
    usable = [p for p in points if p["y"] and p["y"] > 0]
    if len(usable) >= 3 and len({p["x"] for p in usable}) > 1:
        from quantfair.metrics import correlation as corr

        correlation = corr([p["x"] for p in usable], [p["y"] for p in usable])
    return {"chart": chart, "correlation": correlation, "left_out": unknown}


def fertility(report: dict) -> dict:
    seen: dict[str, float] = {}
    for r in _main_rows(report):
        seen.setdefault(r["language"], r["fertility"])
    return bars(list(seen.items()))


def suggestion(report: dict) -> dict | None:
    found = report.get("suggestion")
    if not found:
        return None
    points = [{"x": 100 * step["overhead"], "y": step["score"],
               "label": f"{step['step']}: {step['candidate']}", "highlight": step["chosen"]}
              for step in found.get("trace", [])]
    chart = scatter(points, "overhead (% of parameters in FP)",
                    "search score (mean damage / English's unprotected)", log_y=False)
    return {"chart": chart, "data": found}


def audit_groups(report: dict) -> dict:
    audits = report.get("audits", [])
    return {
        "findings": sorted({a.get("finding", "") for a in audits if a.get("finding")}),
        "languages": sorted({a["language"] for a in audits if a.get("language")}),
        "strategies": sorted({a["strategy"] for a in audits if a.get("strategy")}),
        "outcomes": sorted({a["outcome"] for a in audits}),
    }


def render_html(report: dict) -> str:
    env = Environment(loader=PackageLoader("quantfair", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["span"] = experiment_span
    env.filters["num"] = lambda v, p=4: "" if v is None else (
        f"{v:.{p}g}" if isinstance(v, float) else str(v))
    template = env.get_template("report.html.j2")
    return template.render(
        report=report, heatmap=heatmap(report), pareto=pareto(report),
        criticality=criticality(report), resource=resource(report),
        fertility=fertility(report), groups=audit_groups(report),
        suggestion=suggestion(report),
        failed=[a for a in report.get("audits", []) if a["outcome"] in ("failed", "error")],
    )
