"""Declarative audits: each finding is data (claim, experiments, check, bound), expanded by the
pytest plugin into one test per strategy / language, with its evidence on the test report.

    test_recommended_bound = audit(Finding(
        id="recommended_bound", experiments=("051",), claim="...",
        check=LanguageBound("L0+Llast+ln_f+biases", "seed_disparity", {"gpt2": Bound(max=5)}),
    ))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from quantfair.corpus import REFERENCE, language
from quantfair.metrics import Estimate, correlation, weight_statistics
from quantfair.quantize import QuantScheme, fake_quantize

# Layers a sweep visits: both ends and the middle, valid for any model with >= 4 layers.
LAYER_SWEEP = ("L0", "L1", "L2", "Lmid", "L-2", "Llast")
ANY_FAMILY = "*"
CANDIDATE = "candidate"  # stands for the strategy given with --strategy


@dataclass(frozen=True)
class Bound:
    """Inclusive bounds on a measured value."""

    max: float | None = None
    min: float | None = None

    def holds(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)

    def __str__(self) -> str:
        if self.max is not None and self.min is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        return f"<= {self.max:g}" if self.max is not None else f">= {self.min:g}"


Bounds = Bound | dict[str, Bound]  # per model family, ANY_FAMILY as the default


@dataclass(frozen=True)
class Matched:
    """A budgeted selector given the parameter budget of another strategy."""

    selector: str  # random, magnitude or gradient
    reference: str
    seed: int = 0

    def __str__(self) -> str:
        return f"{self.selector}@budget({self.reference})"


Strategy = str | Matched


@dataclass(frozen=True)
class Case:
    """One parametrized test: its id and what it measures."""

    id: str
    strategy: Strategy | None = None
    language: str | None = None
    length: str | None = None
    scheme: str | None = None  # None: the run's --quant

    @property
    def group(self) -> str:
        """xdist group: tests of one scheme and strategy share a worker (one quantization)."""
        return f"{self.scheme or 'default'}|{self.strategy or 'model'}"


@dataclass(frozen=True)
class Outcome:
    """What a check measured and whether the claim held."""

    passed: bool
    quantity: str
    value: float | None
    bound: str
    low: float | None = None
    high: float | None = None
    detail: str = ""

    def describe(self) -> str:
        if self.value is None:
            measured = "undefined"
        elif self.low is not None and self.high is not None:
            measured = f"{self.value:.4g} [95% CI {self.low:.4g}, {self.high:.4g}]"
        else:
            measured = f"{self.value:.4g}"
        text = f"measured {self.quantity} = {measured}; bound {self.bound}"
        return f"{text}; {self.detail}" if self.detail else text


def _for_family(bounds: Bounds | None, family: str) -> Bound | None:
    if isinstance(bounds, dict):
        return bounds.get(family, bounds.get(ANY_FAMILY))
    return bounds


def _estimate_outcome(quantity: str, estimate: Estimate, bound: Bound, detail: str = ""):
    if not estimate.defined:
        return Outcome(False, quantity, None, str(bound), detail=f"undefined: {estimate.undefined}")
    return Outcome(bound.holds(estimate.value), quantity, estimate.value, str(bound),
                   estimate.low, estimate.high, detail)


def _non_reference(languages: Sequence[str]) -> list[str]:
    return [lang for lang in languages if lang != REFERENCE]


class Check:
    """Base class: a check yields cases and measures one case against its claim."""

    needs_bound = False  # True for checks that compare against a (per-family) bound

    def cases(self, languages: Sequence[str]) -> list[Case]:
        raise NotImplementedError

    def bound_for(self, family: str, case: Case) -> Bound | None:
        """The bound that applies to this model family (None: no bound for it)."""
        return _for_family(getattr(self, "bound", None), family)

    def run(self, ctx: Any, case: Case, bound: Bound | None) -> Outcome:
        raise NotImplementedError


def _disparity_of(ctx, strategy: Strategy, quantity: str, scheme: str | None = None,
                  length: str | None = None) -> dict[str, Estimate]:
    m = ctx.measure(strategy, scheme, length)
    if quantity == "degradation":
        return m.degradation()
    return m.seed_disparity() if quantity == "seed_disparity" else m.disparity()


@dataclass(frozen=True)
class LanguageBound(Check):
    """A per-language quantity (disparity, seed_disparity, degradation) within a bound."""

    needs_bound = True

    strategy: Strategy
    quantity: str = "disparity"
    bound: Bounds = field(default_factory=lambda: Bound(min=1.0))
    scheme: str | None = None
    languages: tuple[str, ...] | None = None

    def cases(self, languages):
        chosen = [lang for lang in _non_reference(languages)
                  if self.languages is None or lang in self.languages]
        return [Case(f"{self.strategy}-{lang}", self.strategy, lang, scheme=self.scheme)
                for lang in chosen]

    def run(self, ctx, case, bound):
        estimate = _disparity_of(ctx, self.strategy, self.quantity, self.scheme)[case.language]
        if self.quantity == "degradation":
            estimate = Estimate(estimate.value, estimate.low, estimate.high)  # always defined
        return _estimate_outcome(self.quantity, estimate, bound)


@dataclass(frozen=True)
class Better(Check):
    """`strategy` yields a lower disparity than `than` (mean over languages, or per language)."""

    strategy: Strategy
    than: Strategy
    quantity: str = "disparity"
    per_language: bool = False
    lengths: tuple[str, ...] = ()
    scheme: str | None = None
    languages: tuple[str, ...] | None = None

    def cases(self, languages):
        label = f"{self.strategy}<{self.than}"
        if self.per_language:
            chosen = [lang for lang in _non_reference(languages)
                      if self.languages is None or lang in self.languages]
            return [Case(f"{label}-{lang}", self.strategy, lang, scheme=self.scheme)
                    for lang in chosen]
        if self.lengths:
            return [Case(f"{label}-{length}", self.strategy, length=length, scheme=self.scheme)
                    for length in self.lengths]
        return [Case(label, self.strategy, scheme=self.scheme)]

    def _value(self, ctx, strategy, case) -> Estimate:
        m = ctx.measure(strategy, self.scheme, case.length)
        if case.language:
            return _disparity_of(ctx, strategy, self.quantity, self.scheme,
                                 case.length)[case.language]
        return m.mean_disparity(self.languages, self.quantity)

    def run(self, ctx, case, bound):
        ours, theirs = self._value(ctx, self.strategy, case), self._value(ctx, self.than, case)
        what = f"{self.quantity}" + (f" ({case.language})" if case.language else
                                     " (mean over languages)")
        if not theirs.defined:
            return Outcome(False, what, None, f"< {self.than}'s",
                           detail=f"{self.than}: undefined: {theirs.undefined}")
        separated = ours.defined and ours.high < theirs.low
        detail = f"{self.than}: {theirs}" + ("; CIs separated" if separated else "")
        outcome = _estimate_outcome(what, ours, Bound(max=theirs.value), detail)
        return Outcome(outcome.passed and ours.value < theirs.value, what, outcome.value,
                       f"< {self.than}'s {theirs.value:.4g}", outcome.low, outcome.high,
                       outcome.detail)


@dataclass(frozen=True)
class Best(Check):
    """Among `candidates`, `expected` has the lowest (or, with worst=True, highest) mean
    disparity."""

    candidates: tuple[str, ...]
    expected: str
    worst: bool = False
    quantity: str = "disparity"

    def cases(self, languages):
        return [Case(f"{self.expected}", self.expected)]

    def run(self, ctx, case, bound):
        values: dict[str, Estimate] = {}
        for candidate in self.candidates:
            key = ctx.protection_key(candidate)  # L-2 and L2 coincide on small models
            if key not in {ctx.protection_key(c) for c in values}:
                values[candidate] = ctx.measure(candidate).mean_disparity(metric=self.quantity)
        undefined = [c for c, e in values.items() if not e.defined]
        table = ", ".join(f"{c}: {e.value:.4g}" for c, e in values.items())
        rank = "highest" if self.worst else "lowest"
        if undefined:
            return Outcome(False, f"mean {self.quantity}", None, f"{rank} of the sweep",
                           detail=f"undefined for {', '.join(undefined)}")
        pick = (max if self.worst else min)(values, key=lambda c: values[c].value)
        chosen = values.get(self.expected) or values[pick]
        passed = ctx.protection_key(pick) == ctx.protection_key(self.expected)
        return Outcome(passed, f"mean {self.quantity} of {self.expected}", chosen.value,
                       f"{rank} of {len(values)} candidates", chosen.low, chosen.high,
                       f"{rank}: {pick}; {table}")


@dataclass(frozen=True)
class OverheadBound(Check):
    """Each strategy's share of parameters kept in full precision, in percent, within the
    bound given for it (per family)."""

    needs_bound = True

    bounds: dict[str, Bounds]  # strategy -> bound

    def cases(self, languages):
        return [Case(strategy, strategy) for strategy in self.bounds]

    def bound_for(self, family: str, case: Case) -> Bound | None:
        return _for_family(self.bounds[case.strategy], family)

    def run(self, ctx, case, bound):
        overhead = ctx.session.overhead(case.strategy)
        return Outcome(bound.holds(100 * overhead.fraction), "overhead %",
                       100 * overhead.fraction, str(bound),
                       detail=f"{overhead.protected:,} of {overhead.total:,} parameters")


@dataclass(frozen=True)
class WithinBudget(Check):
    """The suggested strategy keeps no more parameters in FP than the budget it was searched
    for."""

    def cases(self, languages):
        return [Case("suggested-budget", CANDIDATE)]

    def run(self, ctx, case, bound):
        strategy = ctx.candidate_text()
        suggestion = ctx.suggestion()
        if ctx.candidate != "suggested" or suggestion is None:
            pytest.skip("the budget check applies to --strategy suggested")
        overhead = 100 * ctx.session.overhead(strategy).fraction
        budget = Bound(max=100 * suggestion["budget"])
        return Outcome(budget.holds(overhead), f"overhead % of {strategy}", overhead, str(budget))


def _layer_criticality(ctx) -> dict[int, float]:
    """Mean disparity with each swept layer alone kept in FP, by layer index."""
    result = {}
    for token in LAYER_SWEEP:
        layer = ctx.layer_index(token)
        estimate = ctx.measure(token).mean_disparity()
        if layer not in result and estimate.defined:
            result[layer] = estimate.value
    return result


@dataclass(frozen=True)
class Correlation(Check):
    """Pearson r between two per-language or per-layer series, within a bound.

    x: resource_class or fertility (per language, y = the strategy's disparity), or variance or
    quant_error (per layer, y = the layer's criticality: mean disparity with it protected)."""

    needs_bound = True

    x: str
    bound: Bounds
    strategy: str = "none"

    def cases(self, languages):
        return [Case(f"{self.x}-{self.strategy}", self.strategy)]

    def _series(self, ctx) -> tuple[list[float], list[float], str]:
        if self.x in ("resource_class", "fertility"):
            m = ctx.measure(self.strategy)
            disparity = m.disparity()
            langs = [lg for lg in _non_reference(m.languages) if disparity[lg].defined]
            left_out = ""
            if self.x == "resource_class":  # languages without metadata have no class
                unknown = [lg for lg in langs if language(lg).resource_class < 0]
                langs = [lg for lg in langs if lg not in unknown]
                left_out = f"; left out (no resource class): {','.join(unknown)}" if unknown else ""
                xs = [float(language(lg).resource_class) for lg in langs]
            else:
                index = {lg: i for i, lg in enumerate(m.languages)}
                xs = [m.tokens[index[lg]].sum() / m.chars[index[lg]].sum() for lg in langs]
            return (xs, [disparity[lg].value for lg in langs],
                    "languages " + ",".join(langs) + left_out)
        criticality = _layer_criticality(ctx)
        statistic = ctx.layer_variance() if self.x == "variance" else ctx.layer_quant_error()
        layers = sorted(criticality)
        return ([statistic[i] for i in layers], [criticality[i] for i in layers],
                "layers " + ",".join(map(str, layers)))

    def run(self, ctx, case, bound):
        xs, ys, over = self._series(ctx)
        if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
            return Outcome(False, f"r({self.x}, disparity)", None, str(bound),
                           detail=f"too few distinct points over {over}")
        r = correlation(xs, ys)
        return Outcome(bound.holds(r["pearson_r"]), f"Pearson r({self.x}, disparity)",
                       r["pearson_r"], str(bound),
                       detail=f"p={r['pearson_p']:.3g}, Spearman {r['spearman_r']:.3g}; {over}")


@dataclass(frozen=True)
class LayerExtreme(Check):
    """Layer 0's weight statistic is the lowest (or highest) of all layers."""

    statistic: str  # variance, kurtosis, outlier_share, sparsity
    highest: bool = False

    def cases(self, languages):
        return [Case(f"L0-{self.statistic}")]

    def run(self, ctx, case, bound):
        stats = ctx.layer_statistics()
        values = {layer: s[self.statistic] for layer, s in stats.items()}
        pick = (max if self.highest else min)(values, key=values.get)
        rank = "highest" if self.highest else "lowest"
        others = [v for layer, v in values.items() if layer != 0]
        return Outcome(pick == 0, f"layer-0 {self.statistic}", values[0],
                       f"{rank} of {len(values)} layers",
                       detail=f"{rank}: L{pick}; other layers {min(others):.4g}..{max(others):.4g}")


@dataclass(frozen=True)
class ValueWeightRatio(Check):
    """Mean |w| of the last layer's V projection over that of its Q and K projections."""

    needs_bound = True

    bound: Bounds

    def cases(self, languages):
        return [Case("Llast-v-vs-qk")]

    def run(self, ctx, case, bound):
        ratio = ctx.value_weight_ratio()
        return Outcome(bound.holds(ratio), "mean|V| / mean|Q,K| (last layer)", ratio, str(bound))


@dataclass(frozen=True)
class SelectionOverlap(Check):
    """Share of elements two selectors both protect (Jaccard index)."""

    needs_bound = True

    first: str
    second: str
    bound: Bounds

    def cases(self, languages):
        return [Case(f"{self.first}&{self.second}")]

    def run(self, ctx, case, bound):
        overlap = ctx.overlap(self.first, self.second)
        return Outcome(bound.holds(overlap), "Jaccard overlap", overlap, str(bound))


@dataclass(frozen=True)
class Deterministic(Check):
    """Scoring the same units again, with no cache, gives bit-identical losses."""

    strategy: str = "none"

    def cases(self, languages):
        return [Case(f"{self.strategy}-rescore", self.strategy)]

    def run(self, ctx, case, bound):
        spread = ctx.rescore_spread(self.strategy)
        return Outcome(spread == 0.0, "max |NLL difference| on rescoring", spread, "== 0")


@dataclass(frozen=True)
class Finding:
    """One claim of the research, as an executable audit."""

    id: str
    experiments: tuple[str, ...]
    claim: str
    check: Check
    families: tuple[str, ...] = ()  # empty: every model
    quick: bool = False
    layers: int | None = None  # the seed's literal layer indices need this many layers

    def verify(self, ctx, case: Case) -> Outcome:
        family = ctx.family
        if self.families and family not in self.families:
            pytest.skip(f"{self.id}: the seed measured this on {', '.join(self.families)}, "
                        f"not {family}")
        if self.layers is not None and ctx.layers != self.layers:
            pytest.skip(f"{self.id}: names layers of a {self.layers}-layer model; this one has "
                        f"{ctx.layers}")
        bound = self.check.bound_for(family, case)
        if self.check.needs_bound and bound is None:
            pytest.skip(f"{self.id}: no bound for the {family} family")
        return self.check.run(ctx, case, bound)

    def describe(self, case: Case) -> dict:
        return {"finding": self.id, "experiments": list(self.experiments), "claim": self.claim,
                "case": case.id, "strategy": str(case.strategy) if case.strategy else None,
                "language": case.language, "length": case.length}

    def message(self, outcome: Outcome, ctx) -> str:
        return (f"[{self.id}, experiment {'/'.join(self.experiments)}] {self.claim} -- "
                f"{outcome.describe()} ({ctx.describe()})")


def audit(finding: Finding) -> Callable:
    """Turn a finding into a pytest test function (parametrized by the quantfair plugin)."""

    def test(quantfair_audit, case: Case, record_property) -> None:
        record_property("quantfair", finding.describe(case))  # kept even if skipped
        outcome = finding.verify(quantfair_audit, case)
        quantfair_audit.record(finding, case, outcome, record_property)
        if not outcome.passed:
            pytest.fail(finding.message(outcome, quantfair_audit), pytrace=False)

    test.quantfair_finding = finding  # type: ignore[attr-defined]
    test.__doc__ = finding.claim
    marks = [pytest.mark.quantfair]
    if finding.quick:
        marks.append(pytest.mark.quick)
    for mark in marks:
        test = mark(test)
    return test


def layer_statistics(bank) -> dict[int, dict[str, float]]:
    return {layer: weight_statistics(np.concatenate(
                [bank.fp[c.name].flatten().float().cpu().numpy() for c in parts]))
            for layer, parts in bank.layer_matrices().items()}


def layer_quant_error(bank, scheme: QuantScheme) -> dict[int, float]:
    """Relative Frobenius error ||w - q(w)|| / ||w|| of each layer's matrices."""
    error = {}
    for layer, parts in bank.layer_matrices().items():
        diff = norm = 0.0
        for c in parts:
            w = bank.fp[c.name].float()
            diff += (w - fake_quantize(w, scheme, c.transposed)).pow(2).sum().item()
            norm += w.pow(2).sum().item()
        error[layer] = math.sqrt(diff / norm) if norm else 0.0
    return error
