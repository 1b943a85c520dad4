"""The report's charts: matplotlib figures rendered to inline SVG at report time.

Text stays text (`svg.fonttype = "none"`), every id in a chart is prefixed with the chart's own
name so several inline SVGs never clash, and no date is written, so the same report renders to
the same bytes. Labels that would collide are placed by adjustText; where some still overlap,
the points are numbered and the labels move to a key beside the axes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib
from adjustText import adjust_text
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from quantfair.corpus import language, names_reference, per_language, resource_points
from quantfair.seed import SEED_PARETO_FRONTIER
from quantfair.summary import (
    RECOMMENDED,
    bound_limits,
    compared_rows,
    is_release,
    main_rows,
    of_run_scheme,
)
from quantfair.text import significant

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
# deficiencies; markers differ too, so no series is told apart by colour alone.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False}
WIDTH = 7.0  # inches at 100 dpi: 700 px, the report's column
MAX_FOREST_STRATEGIES = 5
LABEL = "label-"  # gid prefix of point labels (their boxes must not overlap)
KEY_ROWS = 20  # rows of a key's column (a key of numbered points beside the axes)


@dataclass(frozen=True)
class Point:
    """One labelled point of a scatter chart."""

    label: str
    x: float
    y: float
    highlight: bool = False


@contextlib.contextmanager
def _style(**extra):
    """The report's matplotlib style. A glyph its font lacks (a code or name in a script
    DejaVu Sans does not cover) is not warned of, nor an error under a project's `-W error`:
    text stays text in the SVG, drawn by the browser with its own fonts."""
    with matplotlib.rc_context({**STYLE, **extra}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Glyph \d+ .*missing from font", UserWarning)
        yield


def styled(chart: Callable) -> Callable:
    """Run a chart function under the report's matplotlib style (read when artists are made)."""
    @functools.wraps(chart)
    def wrapper(*args, **kwargs):
        with _style():
            return chart(*args, **kwargs)
    return wrapper


def _figure(height: float, columns: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(WIDTH, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # a renderer, so text extents can be measured for label placement
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def to_svg(figure: Figure, name: str) -> str:
    """The figure as an `<svg>` element for inline use: ids prefixed with `name`, no XML
    header, no date."""
    buffer = io.StringIO()
    with _style(**{"svg.hashsalt": name}):
        figure.savefig(buffer, format="svg",
                       metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r'(url\(#|href="#)([^")]+)', rf"\1{name}-\2", text)
    return text.replace("<svg ", f'<svg class="chart" role="img" aria-label="{name}" ', 1)


ADJUST_STEPS = 300  # adjustText's steps moving overlapping labels apart


def overlapping(texts: Sequence) -> bool:
    """Whether any two of `texts` (matplotlib Text objects of one figure) overlap when drawn."""
    if len(texts) < 2:
        return False
    renderer = texts[0].figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def label_points(ax, points: Sequence[Point], key: bool = True) -> bool:
    """Label each point; labels are spread by adjustText, and if any still overlap, the points
    get numbers and their labels go to a key beside the axes (the axes' legend: series
    legends of these charts are figure legends), or without `key` no label is left. Whether
    the labels are on the points."""
    panel = f"{LABEL}{ax.figure.axes.index(ax)}-"
    texts = [ax.text(p.x, p.y, f" {p.label}", fontsize=8, ha="left", va="bottom",
                     gid=f"{panel}{index}") for index, p in enumerate(points)]
    arrows: list = []
    if overlapping(texts):
        with _quiet_adjust_text():
            _, arrows = adjust_text(texts, ax=ax, x=[p.x for p in points],
                                    y=[p.y for p in points], expand=(1.2, 1.4),
                                    iter_lim=ADJUST_STEPS,  # not its 1 s: the same page each time
                                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})
    if not overlapping(texts):
        return True
    for artist in [*texts, *arrows]:
        artist.remove()
    if not key:
        return False
    spots: dict[tuple[int, int], list[int]] = {}  # points within ~8 px share a number tag
    for index, p in enumerate(points, 1):
        px, py = ax.transData.transform((p.x, p.y))
        spots.setdefault((round(px / 8), round(py / 8)), []).append(index)
    for numbers in spots.values():
        p = points[numbers[0] - 1]
        ax.annotate(",".join(map(str, numbers)), (p.x, p.y), xytext=(-3, 3), ha="right",
                    textcoords="offset points", fontsize=7)
    legend = ax.legend([Line2D([], [], linestyle="none") for _ in points],
                       [f"{index}: {p.label}" for index, p in enumerate(points, 1)],
                       loc="upper left", bbox_to_anchor=(1.0, 1.0), handlelength=0,
                       handletextpad=0, fontsize=7, ncols=-(-len(points) // KEY_ROWS))
    for index, text in enumerate(legend.get_texts()):
        text.set_gid(f"{panel}key-{index}")
    figure = ax.figure  # tall enough for the key, and for the axes beside it
    tall = legend.get_window_extent(figure.canvas.get_renderer()).height / figure.dpi
    figure.set_figheight(max(figure.get_figheight(), tall + 1.2))
    return False


@contextlib.contextmanager
def _quiet_adjust_text():
    """adjustText logs each of its iterations that cannot fit a long label inside the axes
    (`Logger.warn`, deprecated: a DeprecationWarning each time, hundreds per chart, an error
    under a project's `-W error`). What does not fit is handled here (the key beside the
    axes), so neither is the user's to read."""
    logger = logging.getLogger("adjustText")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The 'warn' method is deprecated",
                                    DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


class RatioLocator(ticker.LogLocator):
    """Ticks 1x, 2x, 5x, 10x, ... on a log axis; on a view spanning less than a decade, where
    those leave two ticks or fewer, evenly spaced ones (0.9x, 1x, 1.1x, ...; 2x, 4x, 6x, ...),
    as matplotlib labels minor ticks there."""

    NARROW = 10.0

    def __init__(self) -> None:
        super().__init__(subs=(1.0, 2.0, 5.0))

    def tick_values(self, vmin: float, vmax: float):
        low, high = sorted((vmin, vmax))
        if low > 0 and high < self.NARROW * low:
            return ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
        return super().tick_values(vmin, vmax)


def _log_axis(ax, axis: str = "y") -> None:
    """A log-scale ratio axis ticked 1x, 2x, 5x, 10x, ... (`RatioLocator`)."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    scale = ax.yaxis if axis == "y" else ax.xaxis
    scale.set_major_locator(RatioLocator())
    scale.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    scale.set_minor_formatter(ticker.NullFormatter())


def _mean_disparity(report: dict) -> dict[str, tuple[float | None, float]]:
    """Per strategy: mean NLL disparity over the compared languages, each counted once
    (`corpus.per_language`; None when none is defined), overhead (%)."""
    values: dict[str, dict[str, float]] = {}
    for r in compared_rows(report):
        values.setdefault(r["strategy"], {})[r["language"]] = r["disparity"]
    means = {strategy: list(per_language(codes).values()) for strategy, codes in values.items()}
    return {r["strategy"]: (sum(means[r["strategy"]]) / len(means[r["strategy"]])
                            if r["strategy"] in means else None, 100 * r["overhead"])
            for r in main_rows(report)}


def balanced_columns(entries: int, most: int = 4) -> int:
    """Columns of a legend of `entries` in as few rows of at most `most` as it takes, the rows
    filled alike (5 entries: 3 + 2, not 4 + 1)."""
    rows = -(-entries // most)
    return -(-entries // rows) if rows else 1


def forest_strategies(report: dict) -> list[str]:
    """`none`, the recommended strategy, then the lowest mean disparities: at most
    MAX_FOREST_STRATEGIES."""
    means = {s: m for s, (m, _) in _mean_disparity(report).items() if m is not None}
    first = [s for s in ("none", RECOMMENDED) if s in means]
    rest = sorted((s for s in means if s not in first), key=means.get)
    return (first + rest)[:MAX_FOREST_STRATEGIES]


def forest_not_drawn(report: dict) -> list[str]:
    """'he (none)', 'ko (none, recommended)': the defined disparities of `forest`'s strategies
    at or below 0, which its log axis cannot show."""
    strategies = forest_strategies(report)
    below: dict[str, list[str]] = {}
    for r in main_rows(report):
        if r["strategy"] in strategies and not names_reference(r["language"]) and not \
                r.get("undefined") and r.get("disparity") is not None and r["disparity"] <= 0:
            below.setdefault(r["language"], []).append(r["strategy"])
    return [f"{lang} ({', '.join(names)})" for lang, names in below.items()]


def release_maxima(report: dict) -> dict[str, float]:
    """Language -> the maximum its release gates set on the NLL disparity without protection
    under the run's scheme (`--quantfair-max-disparity`, a gate of one's own), the lowest
    where several did."""
    maxima: dict[str, float] = {}
    for a in report.get("audits", []):
        if is_release(a) and a.get("quantity") == "disparity" and a.get("language") \
                and a.get("strategy") == "none" and of_run_scheme(report, a) \
                and (limits := bound_limits(a.get("bound") or "")) and limits[0][1] == "<=":
            maxima[a["language"]] = min(limits[0][0], maxima.get(a["language"], math.inf))
    return maxima


@styled
def forest(report: dict) -> str | None:
    """Disparity per language with its 95% CI, one row per language, one marker per strategy,
    and each language's release maximum where a gate set one (`release_maxima`)."""
    strategies = forest_strategies(report)
    rows = {(r["strategy"], r["language"]): r for r in main_rows(report)}
    languages = [lg for lg in dict.fromkeys(r["language"] for r in main_rows(report))
                 if not names_reference(lg)]
    if not strategies or not languages:
        return None
    figure, (ax,) = _figure(0.9 + 0.32 * len(languages))
    step = 0.7 / max(len(strategies), 1)
    for index, strategy in enumerate(strategies):
        ys, xs, errors = [], [], [[], []]
        for position, lang in enumerate(languages):
            r = rows.get((strategy, lang))
            if r is None or r.get("undefined") or not r.get("disparity") or r["disparity"] <= 0:
                continue
            ys.append(position + (index - (len(strategies) - 1) / 2) * step)
            xs.append(r["disparity"])
            low, high = r.get("disparity_low"), r.get("disparity_high")
            # a point estimate outside its percentile interval draws no bar on that side
            errors[0].append(max(r["disparity"] - low, 0) if low and low > 0 else 0)
            errors[1].append(max(high - r["disparity"], 0) if high else 0)
        ax.errorbar(xs, ys, xerr=errors, fmt=MARKERS[index], color=PALETTE[index], ms=4,
                    capsize=2, lw=1, label=strategy)
    ax.axvline(1, color="0.3", ls="--", lw=0.8, label="parity (1x)")
    limits = release_maxima(report)
    if maxima := [(limits[lang], position) for position, lang in enumerate(languages)
                  if lang in limits]:
        ax.scatter(*zip(*maxima), marker="|", s=160, linewidths=2, color="0.1", zorder=3,
                   label="release maximum")
    _log_axis(ax, "x")
    ax.set_yticks(range(len(languages)), [f"{lg} ({language(lg).name})" for lg in languages])
    ax.invert_yaxis()
    ax.set_xlabel("disparity: NLL damage relative to English's on the same text (log scale)")
    ax.set_title(f"Disparity per language with 95% CIs ({report['settings'].get('scheme')})")
    figure.legend(loc="outside lower center",
                  ncols=balanced_columns(len(strategies) + 1 + bool(maxima)))
    return to_svg(figure, "forest")


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates (at most the overhead and at most the disparity,
    one of them lower), by overhead; of equal points, the first. Overheads within a relative
    1e-6 of each other are equal: a budget-matched strategy (`random@budget(L0+Llast)`)
    misses its budget by a weight's rounding, and is no cheaper for it."""
    def at_most(a: float, b: float) -> bool:
        return a <= b or math.isclose(a, b, rel_tol=1e-6)

    def dominates(q: Point, p: Point, first: bool) -> bool:
        equal = q.y == p.y and at_most(p.x, q.x)
        return at_most(q.x, p.x) and q.y <= p.y and (not equal or first)

    front = [p for i, p in enumerate(points)
             if not any(dominates(q, p, j < i) for j, q in enumerate(points) if j != i)]
    return sorted(front, key=lambda p: p.x)


PARITY_IN_VIEW = 2.0  # the Pareto chart shows parity where every strategy is below this


@styled
def pareto_figure(points: Sequence[Point], seed: Sequence[Point] = ()) -> Figure:
    """Overhead (% of parameters in FP) against mean disparity with its Pareto front, every
    strategy labelled where the labels fit, else the front and the recommended strategy only
    (strategies crowd the few overheads single layers share; the report's tables name them);
    the seed's frontier, every point labelled, in a second panel beside it when given."""
    figure, axes = _figure(3.6, 2 if seed else 1)
    front = pareto_front(points)
    panels = [(axes[0], points, "This model: mean disparity")]
    if seed:
        panels.append((axes[1], seed, "Seed (GPT-2), per-token disparity"))
    for ax, shown, title in panels:
        plain = [p for p in shown if not p.highlight]
        starred = [p for p in shown if p.highlight]
        ax.scatter([p.x for p in plain], [p.y for p in plain], color=PALETTE[0], marker="o",
                   s=18, label="strategy" if ax is axes[0] else None)
        ax.scatter([p.x for p in starred], [p.y for p in starred], color=PALETTE[1], marker="*",
                   s=90, label="recommended (L0+Llast+ln_f+biases)" if ax is axes[0] else None)
        ax.axhline(1, color="0.3", ls="--", lw=0.8, label="parity (1x)" if ax is axes[0] else None)
        _log_axis(ax)
        ax.set_xlabel("overhead (% of parameters in FP)")
        ax.set_title(title)
    ax = axes[0]
    ax.plot([p.x for p in front], [p.y for p in front], color=PALETTE[2], lw=1,
            label="Pareto front")
    low, high = min(p.y for p in points), max(p.y for p in points)
    if low > PARITY_IN_VIEW:  # parity would squeeze the strategies into a few pixels
        ax.set_ylim(low / 1.1, high * 1.1)
        ax.set_ylabel("mean disparity; parity (1x) is below")
    if not label_points(ax, points, key=False):
        label_points(ax, front + [p for p in points if p.highlight and p not in front])
    if seed:
        label_points(axes[1], seed)
    figure.legend(loc="outside lower center", ncols=4)
    return figure


@styled
def pareto(report: dict) -> str | None:
    means = _mean_disparity(report)
    points = [Point(s, overhead, mean, s == RECOMMENDED) for s, (mean, overhead) in
              means.items() if mean is not None and mean > 0]
    if len(points) < 2:  # a release gate's run: no protection alone, nothing to trade off
        return None
    seed = [Point(name, overhead, value, name == "L0+Llast+ln_f+biases")
            for name, (overhead, value) in SEED_PARETO_FRONTIER.items() if value > 0]
    return to_svg(pareto_figure(points, seed), "pareto")


@styled
def bars(items: Sequence[tuple[str, float]], name: str, xlabel: str, title: str,
         reference: tuple[str, float] | None = None) -> str | None:
    """Horizontal bars from zero with their values written at the end."""
    items = [(label, value) for label, value in items if value is not None]
    if not items:
        return None
    figure, (ax,) = _figure(0.9 + 0.28 * len(items))
    labels, values = zip(*items, strict=True)
    ax.barh(range(len(items)), values, color=PALETTE[0], height=0.6)
    for index, value in enumerate(values):
        ax.annotate(significant(value, 3), (value, index), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    if reference:
        ax.axvline(reference[1], color=PALETTE[1], ls="--", lw=1, label=reference[0])
        figure.legend(loc="outside lower center")  # inside the axes it covered a bar
    ax.set_yticks(range(len(items)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return to_svg(figure, name)


def _layer_order(token: str) -> tuple[int, int]:
    number = token[1:]
    return (0, int(number)) if number.isdigit() else (1, ("mid", "-2", "last").index(number)
                                                        if number in ("mid", "-2", "last") else 3)


def criticality(report: dict) -> str | None:
    """Mean disparity with one whole layer in FP (strategies `L<i>`, `Lmid`, `L-<k>`, `Llast`)
    against no protection."""
    means = _mean_disparity(report)
    layers = sorted((s for s in means if re.fullmatch(r"L(\d+|mid|last|-\d+)", s)),
                    key=_layer_order)
    none = means.get("none", (None, 0))[0]
    return bars([(token, means[token][0]) for token in layers], "criticality",
                "mean disparity with only that layer in FP", "Per-layer criticality "
                "(lower is better)", reference=("no protection", none) if none else None)


@styled
def resource(report: dict) -> dict:
    """Disparity without protection against Joshi et al.'s resource class, with a log-linear
    fit, and Pearson/Spearman r (`correlation`, with `n` points) over the same languages as the
    `resource_correlation` audit: every defined disparity of a language with a class, one
    point per language (`resource_points`). Languages without a class are left out and named
    (`left_out`); those at or below 0 are in r but cannot be drawn on the log axis, and are
    named too (`not_drawn`)."""
    found, left_out = resource_points({r["language"]: r["disparity"]
                                       for r in compared_rows(report, "none")})
    points = [Point(*point) for point in found]
    drawn = [p for p in points if p.y > 0]
    result = {"svg": None, "correlation": None, "left_out": left_out,
              "not_drawn": [p.label for p in points if p.y <= 0]}
    from quantfair.metrics import correlatable, correlation

    xs, ys = [p.x for p in points], [p.y for p in points]
    if correlatable(xs, ys):
        result["correlation"] = {**correlation(xs, ys), "n": len(points)}
    if not drawn:
        return result
    figure, (ax,) = _figure(3.2)
    ax.scatter([p.x for p in drawn], [p.y for p in drawn], color=PALETTE[0], s=18)
    if len({p.x for p in drawn}) > 1:
        import numpy as np

        xs = np.array([p.x for p in drawn], dtype=float)
        slope, intercept = np.polyfit(xs, np.log10([p.y for p in drawn]), 1)
        grid = np.linspace(xs.min(), xs.max(), 20)
        found = result["correlation"]
        noise = found is None or found["pearson_low"] <= 0 <= found["pearson_high"]
        ax.plot(grid, 10 ** (slope * grid + intercept), color=PALETTE[1], lw=1,
                ls="--" if noise else "-",
                label=f"least-squares fit of log10 disparity over the {len(drawn)} languages drawn"
                + (" (dashed: r's 95% CI includes 0, so no trend is established)" if noise else ""))
        figure.legend(loc="outside lower center")
    _log_axis(ax)
    ax.set_xticks(range(6))
    ax.set_xlabel("resource class (Joshi et al. 2020: 0 left behind .. 5 winners)")
    ax.set_ylabel("disparity, no protection")
    ax.set_title("Disparity against resource class")
    label_points(ax, drawn)
    result["svg"] = to_svg(figure, "resource")
    return result


def fertility(report: dict) -> str | None:
    seen: dict[str, float] = {}
    for r in main_rows(report):
        seen.setdefault(r["language"], r["fertility"])
    return bars(list(seen.items()), "fertility", "tokens per character",
                "Tokenizer fertility")


@styled
def suggest_trace(report: dict) -> str | None:
    """Every candidate the search scored: overhead against mean disparity on calibration
    units, the Pareto front of the two, the steps taken, the portfolio's selectors named."""
    from quantfair.report import trace_label

    found = report.get("suggestion")

    def y(step: dict) -> float | None:
        value = step.get("mean_disparity")
        return step["score"] if value is None or value != value else value

    # A candidate whose disparity is undefined (English's NLL did not rise) has no place on it.
    trace = [s for s in (found or {}).get("trace", []) if y(s) is not None]
    if not trace:
        return None
    figure, (ax,) = _figure(3.2)

    xs, ys = [100 * s["overhead"] for s in trace], [y(s) for s in trace]
    ax.scatter(xs, ys, color=PALETTE[0], s=12, label="candidate")
    front = pareto_front([Point("", x, v) for x, v in zip(xs, ys, strict=True)])
    ax.plot([p.x for p in front], [p.y for p in front], color=PALETTE[2], lw=1,
            drawstyle="steps-post", label="Pareto front")
    chosen = [s for s in trace if s["chosen"]]
    ax.plot([100 * s["overhead"] for s in chosen], [y(s) for s in chosen],
            color=PALETTE[1], marker="*", ms=9, lw=1, label="step taken")
    label_points(ax, [Point(trace_label(s["candidate"], s.get("strategy")),
                            100 * s["overhead"], y(s)) for s in trace
                      if s.get("phase") == "portfolio" or s["chosen"]])
    ax.set_xlabel("overhead (% of parameters in FP)")
    ax.set_ylabel("mean disparity (calibration units)")
    ax.set_title(f"Suggest search ({found['strategy']})")
    figure.legend(loc="outside lower center", ncols=3)
    return to_svg(figure, "suggest")
