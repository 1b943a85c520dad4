"""Declarative audits: each finding is data (claim, experiments, check, bound), expanded by the
pytest plugin into one test per strategy / language, with its evidence on the test report.

    test_recommended_bound = audit(Finding(
        id="recommended_bound", experiments=("051",), claim="...",
        check=LanguageBound("L0+Llast+ln_f+biases", "seed_disparity", {"gpt2": Bound(max=5)}),
    ))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from numbers import Real
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import numpy as np

from quantfair.config import REFERENCE, RELEASE_QUANTITIES
from quantfair.corpus import LENGTHS, by_language, named_by, names_reference, resource_points
from quantfair.errors import NotInModel, UsageError
from quantfair.metrics import (
    Comparison,
    Estimate,
    Measurement,
    correlatable,
    correlation,
    holm,
    paired_difference,
    quantity,
    resolved,
)
from quantfair.schemes import QuantScheme
from quantfair.strategy_syntax import (
    ELEMENT_SELECTORS,
    SHARE_SELECTORS,
    SUGGESTED,
    check_strategy_syntax,
)
from quantfair.summary import STRADDLES

if TYPE_CHECKING:  # a file of findings imports this module: torch only once an audit runs
    from quantfair.strategies import Overhead

# Layers a sweep visits: both ends and the middle, valid for any model with >= 4 layers.
LAYER_SWEEP = ("L0", "L1", "L2", "Lmid", "L-2", "Llast")
ANY_FAMILY = "*"
# The taxonomy's families (`quantfair.taxonomy.FAMILY_TABLES`, which needs torch): the keys of
# per-family bounds and `Finding.families`.
FAMILIES = ("gpt2", "opt", "gpt_neox", "bloom", "llama", "gemma3")
CANDIDATE = "candidate"  # stands for the strategy given with --strategy
# A finding written wrong raises where it is defined; the checks that raise set
# `__tracebackhide__`, so pytest's collection error shows the user's line and the message.


@dataclass(frozen=True)
class Bound:
    """Inclusive bounds on a measured value."""

    max: float | None = None
    min: float | None = None

    def __post_init__(self) -> None:
        """A bound that could never be decided is a mistake where it is written."""
        __tracebackhide__ = True
        for name in ("max", "min"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, Real)
                                      or not math.isfinite(value)):
                raise TypeError(f"Bound({name}=...) must be a finite number, got {value!r}")
        if self.max is None and self.min is None:
            raise TypeError("Bound() needs max=, min= or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"Bound(min={self.min:g}, max={self.max:g}) can never hold: its "
                             "min is above its max")

    def within(self, where: str, low: float, high: float) -> None:
        """ValueError where the bound cannot decide a value that lies in [low, high]."""
        __tracebackhide__ = True
        never = ("hold" if (self.max is not None and self.max < low)
                 or (self.min is not None and self.min > high)
                 else "fail" if (self.max is None or self.max >= high)
                 and (self.min is None or self.min <= low) else "")
        if never:
            raise ValueError(f"{where} {self} can never {never}: the value lies in "
                             f"[{low:g}, {high:g}]")

    def holds(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)

    def decide(self, low: float, high: float) -> Status:
        """An interval against the bound: passed when all of [low, high] meets it, failed when
        none of it does, inconclusive when it straddles the bound."""
        if self.holds(low) and self.holds(high):
            return "passed"
        outside = ((self.max is not None and low > self.max)
                   or (self.min is not None and high < self.min))
        return "failed" if outside else "inconclusive"

    def __str__(self) -> str:
        if self.max is not None and self.min is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        return f"<= {self.max:g}" if self.max is not None else f">= {self.min:g}"


Bounds = Bound | dict[str, Bound]  # per model family, ANY_FAMILY as the default


@dataclass(frozen=True)
class Matched:
    """A budgeted selector given the parameter budget of another strategy."""

    selector: str  # one of SHARE_SELECTORS: random, magnitude, gradient, ...
    reference: str
    seed: int = 0

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        if self.selector not in SHARE_SELECTORS:
            raise ValueError(f"Matched's selector must be one of {', '.join(SHARE_SELECTORS)}, "
                             f"got {self.selector!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise TypeError(f"Matched's seed must be a whole number >= 0, got {self.seed!r}")

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


Status = Literal["passed", "failed", "inconclusive", "skipped"]


@dataclass(frozen=True)
class Outcome:
    """What a check measured and what became of the claim (a skip carries its reason in
    `detail`)."""

    status: Status
    quantity: str = ""
    value: float | None = None
    bound: str = ""
    low: float | None = None
    high: float | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def describe(self) -> str:
        if self.value is None:
            measured = "undefined"
        elif self.low is not None and self.high is not None:
            measured = f"{self.value:.4g} [95% CI {self.low:.4g}, {self.high:.4g}]"
        else:
            measured = f"{self.value:.4g}"
        text = f"measured {self.quantity} = {measured}" + (f"; bound {self.bound}"
                                                            if self.bound else "")
        return f"{text}; {self.detail}" if self.detail else text


def verdict(holds: bool) -> Status:
    return "passed" if holds else "failed"


def _names_candidate(value: object) -> bool:
    """Whether `value` (a check, a case, or what they hold) names CANDIDATE."""
    if isinstance(value, str):
        return value == CANDIDATE
    if isinstance(value, tuple | list):
        return any(_names_candidate(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        return any(_names_candidate(getattr(value, item.name)) for item in fields(value))
    return False


class NotApplicable(Exception):
    """Raised by the run when a case cannot be measured here (the reason is the message)."""


class AuditRun(Protocol):
    """What checks may ask of the run (implemented by `quantfair.context.AuditContext`)."""

    family: str
    layers: int
    languages: tuple[str, ...]
    candidate: str | None
    release_bounds: dict[str, dict[str, float]]  # quantity -> {"*" or language: maximum}

    def measure(self, strategy: Strategy, scheme: str | None = None,
                length: str | None = None, distribution: bool = False) -> Measurement: ...
    def overhead(self, strategy: Strategy) -> Overhead: ...
    def protection_key(self, strategy: Strategy) -> str: ...
    def strategy_text(self, strategy: Strategy) -> str: ...
    def layer_index(self, token: str) -> int: ...
    def candidate_text(self) -> str: ...
    def suggestion(self) -> dict | None: ...
    def layer_statistics(self) -> dict[int, dict[str, float]]: ...
    def layer_variance(self) -> dict[int, float]: ...
    def layer_quant_error(self) -> dict[int, float]: ...
    def value_weight_ratio(self) -> float: ...
    def overlap(self, first: Strategy, second: Strategy) -> float: ...
    def rescore_spread(self, strategy: Strategy) -> float: ...
    def describe(self, scheme: str | None = None, length: str | None = None) -> str: ...


def _for_family(bounds: Bounds | None, family: str) -> Bound | None:
    if isinstance(bounds, dict):
        return bounds.get(family, bounds.get(ANY_FAMILY))
    return bounds


def _estimate_outcome(quantity: str, estimate: Estimate, bound: Bound,
                      if_undefined: Status = "inconclusive"):
    """A bound on one value, decided on its point estimate; `STRADDLES` in the detail when
    the CI has values on both sides of the bound (more units would firm the verdict up). An
    undefined value (a ratio to an English loss change within noise) is `if_undefined`."""
    if not estimate.defined:
        return Outcome(if_undefined, quantity, None, str(bound),
                       detail=f"undefined: {estimate.undefined}")
    low, high = estimate.low, estimate.high
    straddles = low is not None and high is not None and bound.decide(low, high) == "inconclusive"
    return Outcome(verdict(bound.holds(estimate.value)), quantity, estimate.value, str(bound),
                   low, high, STRADDLES if straddles else "")


def _check_bounds(where: str, bounds: object) -> None:
    """TypeError unless `bounds` is a `Bound`, a dict of them per model family, or None (a
    bound the run gives: `ReleaseBound`)."""
    __tracebackhide__ = True
    if bounds is None:
        return
    each = bounds.items() if isinstance(bounds, dict) else [(ANY_FAMILY, bounds)]
    for family, bound in each:
        if not isinstance(family, str) or not isinstance(bound, Bound):
            raise TypeError(f"{where} must be a Bound (e.g. Bound(max=2.0)) or a dict of them "
                            f"per model family, got {bounds!r}")
        _check_families(where, (family,), ANY_FAMILY)


def _check_families(where: str, families: object, *also: str) -> None:
    """TypeError unless `families` is a tuple of strings, ValueError for one that is no
    taxonomy family (a typo would skip the finding on every model)."""
    __tracebackhide__ = True
    if not isinstance(families, tuple) or not all(isinstance(f, str) for f in families):
        raise TypeError(f"{where} must be a tuple of model families such as ('gpt2',), got "
                        f"{families!r}")
    for family in families:
        if family not in (*also, *FAMILIES):
            raise ValueError(f"{where}: unknown model family {family!r} (families: "
                             f"{', '.join((*also, *FAMILIES))})")


def _check_strategy(where: str, strategy: object) -> None:
    """ValueError unless `strategy` follows the strategy grammar (`quantfair.strategy_syntax`)
    or is CANDIDATE, a `Matched` selector, or a tuple of these: a typo fails where the
    finding is defined, not once a model has loaded."""
    __tracebackhide__ = True
    if isinstance(strategy, tuple):
        for each in strategy:
            _check_strategy(where, each)
    elif isinstance(strategy, Matched):
        _check_strategy(where, strategy.reference)
    elif strategy == "suggested":
        raise ValueError(f"{where}: a finding names the audited strategy as CANDIDATE, which "
                         f"--strategy sets (e.g. --strategy suggested), not 'suggested'")
    elif not isinstance(strategy, str):
        raise TypeError(f"{where} must be a strategy such as 'L0+Llast', got {strategy!r}")
    elif strategy != CANDIDATE:
        try:
            check_strategy_syntax(strategy)
        except UsageError as error:  # a finding's own: CANDIDATE stands for `suggested`
            raise ValueError(f"{where}: " + str(error).replace(
                SUGGESTED, "CANDIDATE (what --strategy gives, e.g. suggested)")) from None


def _check_languages(where: str, languages: object) -> None:
    """TypeError unless `languages` is None or a tuple of language keys (a bare string would
    be read letter by letter)."""
    __tracebackhide__ = True
    if languages is not None and (not isinstance(languages, tuple) or not languages or not all(
            isinstance(lang, str) and lang for lang in languages)):
        raise TypeError(f"{where} must be a tuple of language keys such as ('he', 'ar'), "
                        f"got {languages!r}")


# What `weights.weight_statistics` computes per layer.
LAYER_STATISTICS = ("variance", "kurtosis", "outlier_share", "sparsity")


def _check_statistic(check: str, statistic: str) -> None:
    __tracebackhide__ = True
    if statistic not in LAYER_STATISTICS:
        raise ValueError(f"{check} statistic {statistic!r} is not one of "
                         f"{', '.join(LAYER_STATISTICS)}")


def _same(strategy: Strategy, other: Strategy) -> bool:
    """Whether two checked strategies name the same terms, in whatever order (`L0+Llast`,
    `Llast + L0`): the same weights kept (an alias and its expansion are told apart)."""
    def terms(s: Strategy) -> object:
        return (frozenset(check_strategy_syntax(s).split("+"))
                if isinstance(s, str) and s != CANDIDATE else s)

    return terms(strategy) == terms(other)


def _non_reference(languages: Sequence[str]) -> list[str]:
    """The languages compared with English: not `en`, nor English under another code (`eng`,
    the reference measured again)."""
    return [lang for lang in languages if not names_reference(lang)]


class Check:
    """Base class: a check yields cases and measures one case against its claim."""

    needs_bound = False  # True for checks that compare against a (per-family) bound
    strategy_fields: ClassVar[tuple[str, ...]] = ("strategy", "than", "expected", "candidates")
    language_fields: ClassVar[tuple[str, ...]] = ("languages",)
    value_range: ClassVar[tuple[float, float] | None] = None  # what the bounded value can be

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        name = type(self).__name__  # an unknown name fails where the finding is defined, as
        if hasattr(self, "quantity"):  # do a strategy, languages or bound of the wrong kind
            try:
                quantity(self.quantity)
            except UsageError as error:
                raise ValueError(f"{name}'s quantity: {error}") from None
        for attribute in self.strategy_fields:
            if hasattr(self, attribute):
                _check_strategy(f"{name}'s {attribute}", getattr(self, attribute))
        for attribute in self.language_fields:
            if hasattr(self, attribute):
                _check_languages(f"{name}'s {attribute}", getattr(self, attribute))
        for attribute in ("scheme", "than_scheme"):
            if getattr(self, attribute, None) is not None:
                try:
                    QuantScheme.parse(getattr(self, attribute))
                except UsageError as error:
                    raise ValueError(f"{name}'s {attribute}: {error}") from None
        lengths = [getattr(self, a) for a in ("length", "than_length") if hasattr(self, a)]
        if hasattr(self, "lengths"):
            if not isinstance(self.lengths, tuple):
                raise TypeError(f"{name}'s lengths must be a tuple such as ('short', 'long'), "
                                f"got {self.lengths!r}")
            lengths += self.lengths
        if unknown := [length for length in lengths if length not in LENGTHS]:
            raise ValueError(f"{name}: unknown length {unknown[0]!r} (lengths: "
                             f"{', '.join(LENGTHS)})")
        for f in fields(self):
            if f.name in ("bound", "bounds"):  # `bounds`: strategy -> its bound
                value = getattr(self, f.name)
                if f.name == "bounds" and not isinstance(value, dict):
                    raise TypeError(f"{name}'s bounds must be a dict of strategy -> bound such "
                                    f"as {{'L0': Bound(max=10.0)}}, got {value!r}")
                per_case = value.values() if f.name == "bounds" and isinstance(value, dict) \
                    else [value]
                value_range = self.value_range or (  # the check's, else its quantity's
                    quantity(self.quantity).value_range if hasattr(self, "quantity") else None)
                for bounds in per_case:
                    _check_bounds(f"{name}'s {f.name}", bounds)
                    each = bounds.values() if isinstance(bounds, dict) else [bounds]
                    for bound in each:
                        if bound is not None and value_range:
                            bound.within(f"{name}'s {f.name}", *value_range)
                if f.name == "bounds" and isinstance(value, dict):
                    if not value:
                        raise ValueError(f"{name}'s bounds name no strategy: give e.g. "
                                         "{'L0': Bound(max=10.0)}")
                    _check_strategy(f"{name}'s bounds", tuple(value))

    def cases(self, languages: Sequence[str]) -> list[Case]:
        raise NotImplementedError

    @property
    def named_languages(self) -> tuple[str, ...]:
        """The language keys the check names (`languages`, GroupOrder's groups)."""
        return tuple(lang for name in self.language_fields
                     for lang in getattr(self, name, None) or ())

    @property
    def element_selections(self) -> int:
        """How many of the strategies this check measures keep single entries (`random`,
        `magnitude`, `act`, ...): each costs a selection over every weight and a composed
        model, which makes such checks the longest single audits."""
        return sum(_element_selections(getattr(self, f.name)) for f in fields(self))

    def bound_for(self, family: str, case: Case) -> Bound | None:
        """The bound that applies to this model family (None: no bound for it)."""
        return _for_family(getattr(self, "bound", None), family)

    def run(self, ctx: AuditRun, case: Case, bound: Bound | None) -> Outcome:
        raise NotImplementedError


def _element_selections(value) -> int:
    if isinstance(value, Matched):
        return 1
    if isinstance(value, str):
        return sum(term.partition(":")[0].strip() in ELEMENT_SELECTORS
                   for term in value.split("+"))
    if isinstance(value, tuple):
        return sum(map(_element_selections, value))
    return 0


def _disparity_of(ctx: AuditRun, strategy: Strategy, name: str, scheme: str | None = None,
                  length: str | None = None) -> dict[str, Estimate]:
    return quantity(name).per_language(_measure(ctx, strategy, name, scheme, length))


def _measure(ctx: AuditRun, strategy: Strategy, name: str, scheme: str | None = None,
             length: str | None = None) -> Measurement:
    """The measurement a quantity needs (with KL-divergence statistics for those that use
    them)."""
    return ctx.measure(strategy, scheme, length, distribution=quantity(name).distribution)


@dataclass(frozen=True)
class LanguageBound(Check):
    """A per-language quantity within a bound: any of `metrics.QUANTITIES` (disparity,
    seed_disparity, degradation, kld_disparity, mean_kld, same_top_rate)."""

    needs_bound = True

    strategy: Strategy
    quantity: str = "disparity"
    bound: Bounds = field(default_factory=lambda: Bound(min=1.0))
    scheme: str | None = None
    languages: tuple[str, ...] | None = None
    include_reference: bool = False  # also bound English (for quantities not relative to it)

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        if self.languages == (REFERENCE,) and not self.include_reference:
            raise ValueError(f"LanguageBound bounds languages against {REFERENCE}, the "
                             "reference: give include_reference=True to bound it too")

    def cases(self, languages):
        pool = languages if self.include_reference else _non_reference(languages)
        chosen = [lang for lang in pool
                  if self.languages is None or named_by(lang, self.languages)]
        return [Case(f"{self.strategy}-{lang}", self.strategy, lang, scheme=self.scheme)
                for lang in chosen]

    if_undefined: ClassVar[Status] = "inconclusive"

    def run(self, ctx, case, bound):
        estimate = _disparity_of(ctx, self.strategy, self.quantity, self.scheme)[case.language]
        if self.quantity == "degradation":
            estimate = Estimate(estimate.value, estimate.low, estimate.high)  # always defined
        return _estimate_outcome(self.quantity, estimate, bound, self.if_undefined)


FAMILY_NOTE = ("decided on the paired bootstrap difference, Holm-Bonferroni over the "
               "finding's {n} case(s) at family-wise 5%; the CI shown is the unadjusted 95% "
               "interval")


def _decide(comparisons: dict[str, Comparison], key: str, claimed_sign: int) -> Status:
    """passed / failed / inconclusive for one comparison of a family (Holm over all)."""
    keys = list(comparisons)
    rejected = dict(zip(keys, holm([comparisons[k].p_value for k in keys])))
    if not rejected[key]:
        return "inconclusive"
    return verdict(comparisons[key].difference * claimed_sign > 0)


@dataclass(frozen=True)
class ReleaseBound(LanguageBound):
    """A release gate: each language's quantity at most the maximum the run was given
    (--quantfair-max-<quantity>, or the ini file; per-language overrides). Skipped, saying so,
    when none was given; failed where the quantity is undefined (a gate does not pass what it
    could not measure)."""

    needs_bound = False
    bound: Bounds | None = None  # the run's options set it (see run)
    if_undefined: ClassVar[Status] = "failed"

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        if self.quantity not in RELEASE_QUANTITIES:
            raise ValueError(f"ReleaseBound's quantity {self.quantity!r} has no release maximum "
                             f"(--quantfair-max-<quantity>): one of "
                             f"{', '.join(RELEASE_QUANTITIES)}")
        if self.bound is not None:
            raise ValueError("ReleaseBound's bound is the run's --quantfair-max-"
                             f"{self.quantity.replace('_', '-')}: give a LanguageBound for a "
                             "bound of its own")

    def bound_for(self, family: str, case: Case) -> Bound | None:
        return None

    def bounded(self, release_bounds: dict[str, dict[str, float]], case: Case) -> bool:
        """Whether the run's maxima (`RunConfig.release_bounds`) bound this case: a default
        maximum, or one for its language."""
        return _maximum(release_bounds.get(self.quantity) or {}, case.language) is not None

    def run(self, ctx, case, bound):
        maxima = ctx.release_bounds.get(self.quantity)
        if not maxima:
            option = "max-" + self.quantity.replace("_", "-")
            raise NotApplicable(f"no release bound for {self.quantity} (--quantfair-{option} or "
                                f"ini quantfair_{option.replace('-', '_')})")
        limit = _maximum(maxima, case.language)
        if limit is None:
            raise NotApplicable(f"no release bound for {self.quantity} in {case.language}")
        return super().run(ctx, case, Bound(max=limit))


def _maximum(maxima: dict[str, float], language: str) -> float | None:
    """A language's release maximum: its code's, else one given under another code of the
    same language (`he=2` bounds a user corpus's `heb`: `corpus.named_by`), else the
    default ("*"); None where there is none."""
    if language in maxima:
        return maxima[language]
    named = [limit for code, limit in maxima.items() if code != "*" and named_by(language, [code])]
    return min(named) if named else maxima.get("*")


@dataclass(frozen=True)
class Better(Check):
    """`strategy` yields a better quantity than `than` (mean over languages, or per
    language): lower, or higher for a quantity where higher is better (`same_top_rate`),
    decided on the paired difference: passed when it is significantly on the better side of
    0, failed when significantly on the other, inconclusive otherwise (see FAMILY_NOTE)."""

    strategy: Strategy
    than: Strategy | tuple[Strategy, ...]  # a tuple: the best of them (best point estimate)
    quantity: str = "disparity"
    per_language: bool = False
    lengths: tuple[str, ...] = ()
    scheme: str | None = None
    languages: tuple[str, ...] | None = None
    than_scheme: str | None = None  # `than` under another scheme (default: the same)

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        if not isinstance(self.than, str | Matched | tuple) or self.than == ():
            raise TypeError(f"Better's than must be a strategy or a tuple of them (the best of "
                            f"them), got {self.than!r}")
        super().__post_init__()
        others = self.than if isinstance(self.than, tuple) else (self.than,)
        if self.scheme == self.than_scheme and any(_same(self.strategy, s) for s in others):
            raise ValueError(f"Better compares {self.strategy!r} with itself"
                             + ("" if self.than == self.strategy else f" ({self.than!r})"))
        if self.per_language and self.lengths:
            raise ValueError("Better compares per language or per length, not both")

    def _than_label(self) -> str:
        than = "|".join(map(str, self.than)) if isinstance(self.than, tuple) else self.than
        return f"{than}@{self.than_scheme}" if self.than_scheme else str(than)

    def cases(self, languages):
        label = f"{self.strategy}<{self._than_label()}"
        if self.per_language:
            chosen = [lang for lang in _non_reference(languages)
                      if self.languages is None or named_by(lang, self.languages)]
            return [Case(f"{label}-{lang}", self.strategy, lang, scheme=self.scheme)
                    for lang in chosen]
        if self.lengths:
            return [Case(f"{label}-{length}", self.strategy, length=length, scheme=self.scheme)
                    for length in self.lengths]
        return [Case(label, self.strategy, scheme=self.scheme)]

    def _draws(self, ctx: AuditRun, strategy: Strategy | tuple, case: Case,
               scheme: str | None):
        if isinstance(strategy, tuple):  # the best member: unknown where any is undefined
            members = [self._draws(ctx, s, case, scheme) for s in strategy]
            if undefined := [m for m in members if m[2]]:
                return undefined[0]
            best = max if quantity(self.quantity).higher_is_better else min
            return best(members, key=lambda m: m[0])
        m = _measure(ctx, strategy, self.quantity, scheme, case.length)
        if case.language:
            value, samples, reason = m.draws(self.quantity)
            row = m.languages.index(case.language)
            return float(value[row]), samples[row], reason, m.units
        named = [lg for lg in m.languages if named_by(lg, self.languages)] \
            if self.languages else None
        if self.languages and not m.compared(named):
            raise NotApplicable(f"needs one of {', '.join(self.languages)} (--languages)")
        return *m.mean_draws(named, self.quantity), m.units

    def run(self, ctx, case, bound):
        if self.scheme == self.than_scheme and not isinstance(self.than, tuple) and (
                ctx.protection_key(self.strategy) == ctx.protection_key(self.than)):
            raise NotApplicable(f"{ctx.strategy_text(self.strategy)} protects what "
                                f"{ctx.strategy_text(self.than)} protects: nothing to compare")
        pairs, undefined = {}, {}
        for member in self.cases(ctx.languages):
            ours = self._draws(ctx, self.strategy, member, self.scheme)
            theirs = self._draws(ctx, self.than, member, self.than_scheme or self.scheme)
            pairs[member.id] = (ours[0], theirs[0])
            undefined[member.id] = ours[2] or theirs[2]
            if not undefined[member.id]:
                pairs[member.id] += (paired_difference(ours[:2], theirs[:2], ours[3]),)
        what = f"{self.quantity} difference " + (f"({case.language})" if case.language else
                                                  "(mean over languages)")
        if undefined[case.id]:  # the ratios' point values are no measurement then
            return Outcome("inconclusive", what, None, "< 0",
                           detail=f"undefined: {undefined[case.id]}")
        ours, theirs = pairs[case.id][:2]
        values = f"{self.strategy}: {ours:.4g}, {self._than_label()}: {theirs:.4g}"
        comparisons = {k: v[2] for k, v in pairs.items() if len(v) == 3}
        comparison = comparisons[case.id]
        sign = 1 if quantity(self.quantity).higher_is_better else -1
        return Outcome(_decide(comparisons, case.id, sign), what, comparison.difference,
                       "> 0" if sign > 0 else "< 0",
                       comparison.low, comparison.high,
                       f"{values}; p={comparison.p_value:.3g}; smallest detectable difference "
                       f"{comparison.detectable:.3g}; "
                       + FAMILY_NOTE.format(n=len(comparisons)))


@dataclass(frozen=True)
class Best(Check):
    """Among `candidates`, `expected` has the lowest (or, with worst=True, highest) mean
    quantity: passed when its paired difference to every other candidate is significant in
    the claimed direction, failed when any is significant the other way, else inconclusive."""

    candidates: tuple[str, ...]
    expected: str
    worst: bool = False
    quantity: str = "disparity"

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        if not isinstance(self.candidates, tuple) or not set(self.candidates) - {self.expected}:
            raise ValueError(f"Best's candidates must be a tuple of strategies to compare "
                             f"{self.expected!r} with, got {self.candidates!r}")

    def cases(self, languages):
        return [Case(f"{self.expected}", self.expected)]

    def run(self, ctx, case, bound):
        draws = {}
        for candidate in (self.expected, *self.candidates):
            key = ctx.protection_key(candidate)  # L-2 and L2 coincide on small models
            if key not in {ctx.protection_key(c) for c in draws}:
                measured = _measure(ctx, candidate, self.quantity)
                draws[candidate] = (*measured.mean_draws(metric=self.quantity), measured.units)
        rank = "highest" if self.worst else "lowest"
        what = f"mean {self.quantity} of {self.expected}"
        table = ", ".join(f"{c}: {d[0]:.4g}" for c, d in draws.items())
        undefined = [c for c, d in draws.items() if d[2]]
        if undefined:  # the ratios' point values are no measurement then
            return Outcome("inconclusive", what, None, f"{rank} of the sweep",
                           detail=f"undefined: {draws[undefined[0]][2]} (for "
                                  f"{', '.join(undefined)})")
        mine = draws[self.expected]
        comparisons = {c: paired_difference(mine[:2], d[:2], mine[3])
                       for c, d in draws.items() if c != self.expected}
        sign = 1 if self.worst else -1
        decisions = [_decide(comparisons, c, sign) for c in comparisons]
        status: Status = ("failed" if "failed" in decisions else
                          "inconclusive" if "inconclusive" in decisions else "passed")
        closest = min(comparisons, key=lambda c: abs(comparisons[c].difference))
        gap = comparisons[closest]
        return Outcome(status, what, mine[0], f"{rank} of {len(draws)} candidates",
                       detail=f"closest: {closest}, difference {gap.difference:.4g} [95% CI "
                              f"{gap.low:.4g}, {gap.high:.4g}]; {table}; "
                              + FAMILY_NOTE.format(n=len(comparisons)))


@dataclass(frozen=True)
class OverheadBound(Check):
    """Each strategy's share of parameters kept in full precision, in percent, within the
    bound given for it (per family)."""

    needs_bound = True
    value_range = (0.0, 100.0)  # percent

    bounds: dict[str, Bounds]  # strategy -> bound

    def cases(self, languages):
        return [Case(str(strategy), strategy) for strategy in self.bounds]

    def bound_for(self, family: str, case: Case) -> Bound | None:
        return _for_family(self.bounds[case.strategy], family)

    def run(self, ctx, case, bound):
        overhead = ctx.overhead(case.strategy)
        return Outcome(verdict(bound.holds(100 * overhead.fraction)), "overhead %",
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
            raise NotApplicable("the budget check applies to --strategy suggested")
        overhead = 100 * ctx.overhead(strategy).fraction
        budget = Bound(max=100 * suggestion["budget"])
        return Outcome(verdict(budget.holds(overhead)), f"overhead % of {strategy}", overhead,
                       str(budget))


def _swept_layers(ctx) -> dict[str, int]:
    """The tokens of LAYER_SWEEP this model has, with their layer index (a 2-layer model
    has no L2)."""
    swept = {}
    for token in LAYER_SWEEP:
        with contextlib.suppress(NotInModel):
            swept[token] = ctx.layer_index(token)
    return swept


def _layer_criticality(ctx) -> tuple[dict[int, float], set[str]]:
    """Mean disparity with each swept layer alone kept in FP, by layer index, and why the
    layers left out have none (their disparity is undefined)."""
    result, undefined = {}, set()
    for token, layer in _swept_layers(ctx).items():
        estimate = ctx.measure(token).mean_disparity()
        if layer not in result and estimate.defined:
            result[layer] = estimate.value
        elif not estimate.defined:
            undefined.add(estimate.undefined)
    return result, undefined


@dataclass(frozen=True)
class Correlation(Check):
    """Pearson r between two per-language or per-layer series within a bound, decided on its
    95% CI (Fisher's z-transform, see `metrics.correlation`): passed when the whole CI meets
    the bound, failed when none of it does, inconclusive otherwise, saying about how many
    points would decide at the measured r.

    x: resource_class or fertility (per language, y = the strategy's disparity), or variance or
    quant_error (per layer, y = the layer's criticality: mean disparity with it protected)."""

    needs_bound = True
    value_range = (-1.0, 1.0)  # Pearson r

    x: str
    bound: Bounds
    strategy: str = "none"

    X: ClassVar[tuple[str, ...]] = ("resource_class", "fertility", "variance", "quant_error")

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        if self.x not in self.X:
            raise ValueError(f"Correlation x {self.x!r} is not one of {', '.join(self.X)}")

    def cases(self, languages):
        return [Case(f"{self.x}-{self.strategy}", self.strategy)]

    @property
    def over_languages(self) -> bool:
        """Whether the points are languages (else swept layers)."""
        return self.x in ("resource_class", "fertility")

    def _series(self, ctx) -> tuple[list[float], list[float], str, set[str]]:
        """x and y, what they are over, and why points were left out as undefined."""
        if self.over_languages:
            m = ctx.measure(self.strategy)
            disparity = m.disparity()
            langs = [lg for lg in _non_reference(m.languages) if disparity[lg].defined]
            undefined = {disparity[lg].undefined for lg in _non_reference(m.languages)
                         if not disparity[lg].defined}
            if self.x == "resource_class":  # languages without metadata have no class
                points, unknown = resource_points({lg: disparity[lg].value for lg in langs})
                return ([x for _, x, _ in points], [y for _, _, y in points],
                        "languages " + (",".join(label for label, _, _ in points) or "(none)")
                        + (f"; left out (no resource class): {','.join(unknown)}"
                           if unknown else ""), undefined)
            # one point per language: a language under two codes (`he`, `heb`) is its
            # codes' text taken together and the mean of their disparities
            index = {lg: i for i, lg in enumerate(m.languages)}
            groups = list(by_language(langs).values())
            xs = [sum(m.tokens[index[lg]].sum() for lg in codes)
                  / sum(m.chars[index[lg]].sum() for lg in codes) for codes in groups]
            ys = [sum(disparity[lg].value for lg in codes) / len(codes) for codes in groups]
            return (xs, ys, "languages " + (",".join("+".join(codes) for codes in groups)
                                            or "(none)"), undefined)
        criticality, undefined = _layer_criticality(ctx)
        statistic = ctx.layer_variance() if self.x == "variance" else ctx.layer_quant_error()
        layers = sorted(criticality)
        return ([statistic[i] for i in layers], [criticality[i] for i in layers],
                "layers " + (",".join(map(str, layers)) or "(none)"), undefined)

    def run(self, ctx, case, bound):
        xs, ys, over, undefined = self._series(ctx)
        if not correlatable(xs, ys):
            detail = (f"undefined: {'; '.join(sorted(undefined))} ({len(xs)} defined points "
                      f"over {over})" if undefined and len(xs) < 3 else
                      f"too few distinct points over {over}")
            return Outcome("inconclusive", f"Pearson r({self.x}, disparity)", None, str(bound),
                           detail=detail)
        r = correlation(xs, ys)
        value, low, high = r["pearson_r"], r["pearson_low"], r["pearson_high"]
        status = bound.decide(low, high)
        needed = _points_to_decide(value, bound) if status == "inconclusive" else None
        return Outcome(status, f"Pearson r({self.x}, disparity)", value, str(bound), low, high,
                       detail=f"Fisher-z 95% CI over {len(xs)} points, decided on the whole CI"
                              + (f" ({self._needed(ctx, needed)})" if needed else "")
                              + f"; p={r['pearson_p']:.3g}, Spearman {r['spearman_r']:.3g}; "
                              + over)

    def _needed(self, ctx, needed: int) -> str:
        """How many points would decide at the measured r, against how many the corpus's
        languages or the layer sweep can give."""
        if self.over_languages:
            others = _non_reference(ctx.corpus_languages)
            most = len(by_language(others)) if self.x == "fertility" else len(
                resource_points(dict.fromkeys(others, 0.0))[0])  # one per language
            return (f"about {needed} languages would decide at this r, "
                    + (f"of the corpus's {most}" if needed <= most else
                       f"more than the corpus's {most}"))
        most = len(set(_swept_layers(ctx).values()))
        return (f"about {needed} layers would decide at this r; the layer sweep has {most}, "
                "so no run of this audit can" if needed > most else
                f"about {needed} layers would decide at this r")


def _points_to_decide(r: float, bound: Bound, z: float = 1.96) -> int | None:
    """The fewest points whose Fisher-z 95% CI around `r` keeps to r's side of the nearest
    edge of the bound (None: r is on an edge or at +/-1)."""
    edges = [e for e in (bound.min, bound.max) if e is not None and -1 < e < 1]
    if not edges or abs(r) >= 1:
        return None
    distance = min(abs(math.atanh(r) - math.atanh(e)) for e in edges)
    return math.ceil(3 + (z / distance) ** 2) if distance > 0 else None


@dataclass(frozen=True)
class LayerExtreme(Check):
    """Layer 0's weight statistic is the lowest (or highest) of all layers."""

    statistic: str  # one of LAYER_STATISTICS
    highest: bool = False

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        _check_statistic("LayerExtreme", self.statistic)

    def cases(self, languages):
        return [Case(f"L0-{self.statistic}")]

    def run(self, ctx, case, bound):
        stats = ctx.layer_statistics()
        values = {layer: s[self.statistic] for layer, s in stats.items()}
        if len(values) < 2:
            raise NotApplicable(f"a {len(values)}-layer model has no other layer to compare "
                                "layer 0 with")
        pick = (max if self.highest else min)(values, key=values.get)
        rank = "highest" if self.highest else "lowest"
        others = [v for layer, v in values.items() if layer != 0]
        # where layer 0 stands, counted from the claimed end (1: the claim holds)
        place = 1 + sum(v > values[0] if self.highest else v < values[0] for v in others)
        where = ("the opposite end" if place == len(values) else
                 f"{place} of {len(values)} from the {rank}")
        return Outcome(verdict(pick == 0), f"layer-0 {self.statistic}", values[0],
                       f"{rank} of {len(values)} layers",
                       detail=f"{rank}: L{pick}; layer 0 is at {where}; other layers "
                              f"{min(others):.4g}..{max(others):.4g}")


@dataclass(frozen=True)
class ValueWeightRatio(Check):
    """Mean |w| of the last layer's V projection over that of its Q and K projections."""

    needs_bound = True

    bound: Bounds

    def cases(self, languages):
        return [Case("Llast-v-vs-qk")]

    def run(self, ctx, case, bound):
        ratio = ctx.value_weight_ratio()
        return Outcome(verdict(bound.holds(ratio)), "mean|V| / mean|Q,K| (last layer)", ratio,
                       str(bound))


@dataclass(frozen=True)
class SelectionOverlap(Check):
    """Share of elements two selectors both protect (Jaccard index). With `below_random`, the
    bound is the overlap two independent random selections of the same sizes would have
    (ab / (a + b - ab) for shares a and b), so "disjoint" is told from "unrelated"."""

    first: str
    second: str
    bound: Bounds | None = None
    below_random: bool = False
    strategy_fields: ClassVar[tuple[str, ...]] = ("first", "second")
    value_range = (0.0, 1.0)  # a Jaccard index

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        if (self.bound is None) != self.below_random:
            raise ValueError("SelectionOverlap needs a bound or below_random=True, not both")

    @property
    def needs_bound(self) -> bool:
        return not self.below_random

    def cases(self, languages):
        return [Case(f"{self.first}&{self.second}")]

    def run(self, ctx, case, bound):
        overlap = ctx.overlap(self.first, self.second)
        a, b = (ctx.overhead(s).fraction for s in (self.first, self.second))
        chance = a * b / (a + b - a * b) if a + b > 0 else 0.0
        if self.below_random:
            bound = Bound(max=chance)
        return Outcome(verdict(bound.holds(overlap)), "Jaccard overlap", overlap, str(bound),
                       detail=f"independent random selections of the same sizes: {chance:.4g}")


@dataclass(frozen=True)
class Deterministic(Check):
    """Scoring the same units again, with no cache and another batch composition (padded
    batches), gives the same losses: the largest relative NLL difference within the bound."""

    needs_bound = True

    strategy: str = "none"
    bound: Bounds = field(default_factory=lambda: Bound(max=5e-4))

    def cases(self, languages):
        return [Case(f"{self.strategy}-rescore", self.strategy)]

    def run(self, ctx, case, bound):
        spread = ctx.rescore_spread(self.strategy)
        return Outcome(verdict(bound.holds(spread)), "max relative NLL difference on rescoring",
                       spread, str(bound))


@dataclass(frozen=True)
class MeanBound(Check):
    """Each strategy's mean over non-reference languages of a quantity within its bound."""

    needs_bound = True

    bounds: dict[str, Bounds]  # strategy -> bound
    quantity: str = "seed_disparity"

    def cases(self, languages):
        return [Case(str(strategy), strategy) for strategy in self.bounds]

    def bound_for(self, family: str, case: Case) -> Bound | None:
        return _for_family(self.bounds[case.strategy], family)

    def run(self, ctx, case, bound):
        estimate = _measure(ctx, case.strategy, self.quantity).mean_disparity(
            metric=self.quantity)
        return _estimate_outcome(f"mean {self.quantity}", estimate, bound)


@dataclass(frozen=True)
class LayerValue(Check):
    """One layer's weight statistic within a bound."""

    needs_bound = True

    statistic: str  # one of LAYER_STATISTICS
    bound: Bounds
    layer: int = 0

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        _check_statistic("LayerValue", self.statistic)
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"LayerValue's layer must be a layer index (0, 1, ...), got "
                             f"{self.layer!r}")

    def cases(self, languages):
        return [Case(f"L{self.layer}-{self.statistic}")]

    def run(self, ctx, case, bound):
        if self.layer >= ctx.layers:
            raise NotApplicable(f"names layer {self.layer}; this model has {ctx.layers}")
        value = ctx.layer_statistics()[self.layer][self.statistic]
        return Outcome(verdict(bound.holds(value)), f"layer-{self.layer} {self.statistic}",
                       value, str(bound))


@dataclass(frozen=True)
class GroupOrder(Check):
    """`strategy` improves the languages of `first` more than those of `second`: the mean
    improvement factor (quantity under `than` / under `strategy`) of `first` minus that of
    `second`, decided on the paired bootstrap like `Better` (claimed: above 0). A group is
    its languages the run audits; at least one of each is needed."""

    strategy: str
    than: str
    first: tuple[str, ...]
    second: tuple[str, ...]
    quantity: str = "disparity"
    language_fields: ClassVar[tuple[str, ...]] = ("first", "second")

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        if shared := set(self.first) & set(self.second):
            raise ValueError(f"GroupOrder's groups share {', '.join(sorted(shared))}")
        if _same(self.strategy, self.than):
            raise ValueError(f"GroupOrder compares {self.strategy!r} with {self.than!r}, the "
                             "same strategy")

    def cases(self, languages):
        return [Case(f"{'+'.join(self.first)}>{'+'.join(self.second)}", self.strategy)]

    def run(self, ctx, case, bound):
        measured, other = (_measure(ctx, s, self.quantity) for s in (self.strategy, self.than))
        ours, theirs = measured.draws(self.quantity), other.draws(self.quantity)
        languages = measured.languages
        what = f"improvement factor ({self.than} / {self.strategy}) difference"
        first, second = ([lang for lang in languages if named_by(lang, group)]
                         for group in (self.first, self.second))
        if not first or not second:
            raise NotApplicable(f"needs one of {', '.join(self.first)} and one of "
                                f"{', '.join(self.second)} (--languages)")
        if ours[2] or theirs[2]:
            return Outcome("inconclusive", what, detail=f"undefined: {ours[2] or theirs[2]}")
        audited = [languages.index(lang) for lang in (*first, *second)]
        if (ours[0][audited] <= 0).any() or (theirs[0][audited] <= 0).any():  # a loss fell
            return Outcome("inconclusive", what, detail=f"undefined: a {self.quantity} at or "
                           "below 0 has no improvement factor")

        def mean_factor(group, index):  # above 1 where the strategy does better
            rows = [languages.index(lang) for lang in group]
            before, after = theirs[index][rows], ours[index][rows]
            if quantity(self.quantity).higher_is_better:
                before, after = after, before
            with np.errstate(divide="ignore", invalid="ignore"):
                return (before / after).mean(axis=0)

        comparison = paired_difference((mean_factor(first, 0), mean_factor(first, 1)),
                                       (mean_factor(second, 0), mean_factor(second, 1)),
                                       measured.units)
        return Outcome(_decide({case.id: comparison}, case.id, 1), what, comparison.difference,
                       "> 0", comparison.low, comparison.high,
                       f"{'+'.join(first)}: {float(mean_factor(first, 0)):.4g}x, "
                       f"{'+'.join(second)}: {float(mean_factor(second, 0)):.4g}x")


@dataclass(frozen=True)
class ReliableLength(Check):
    """The strategy's mean-disparity interval is narrower (relative half-width) at `length`
    than at `than_length`: longer texts give more reliable measurements."""

    length: str
    than_length: str = "short"
    strategy: str = "none"

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        super().__post_init__()
        if self.length == self.than_length:
            raise ValueError(f"ReliableLength compares length {self.length!r} with itself")

    def cases(self, languages):
        return [Case(f"{self.length}<{self.than_length}", self.strategy, length=self.length)]

    def run(self, ctx, case, bound):
        measured = {length: ctx.measure(self.strategy, length=length)
                    for length in (self.length, self.than_length)}
        ours, theirs = (measured[length].mean_disparity()
                        for length in (self.length, self.than_length))
        what = f"relative CI half-width of the mean disparity ({self.length})"
        if not ours.defined or not theirs.defined:
            return Outcome("inconclusive", what,
                           detail=f"undefined: {ours.undefined or theirs.undefined}")
        if few := [f"{length}: {m.units} units" for length, m in measured.items()
                   if not resolved(m.units)]:
            return Outcome("inconclusive", what, detail=(
                f"{'; '.join(few)}, too few for an interval's width to tell reliability (its "
                "ends are the extreme resamples; 8 or more needed): more --units"))
        relative = [(e.high - e.low) / 2 / abs(e.value) for e in (ours, theirs)]
        # the bound names no measured number: a baseline's report compares it as the same
        return Outcome(verdict(relative[0] < relative[1]), what, relative[0],
                       f"< {self.than_length}'s", detail=f"{self.than_length}: {relative[1]:.4g}")


@dataclass(frozen=True)
class Finding:
    """One claim of the research, as an executable audit."""

    id: str
    experiments: tuple[str, ...]
    claim: str
    check: Check
    seed: str = ""  # the seed's own number and wording
    slack: str = ""  # why the encoded check or bound differs from (is looser than) the seed
    families: tuple[str, ...] = ()  # empty: every model
    quick: bool = False
    release: bool = False  # a release gate (marker quantfair_release), not a seed finding
    layers: int | None = None  # the seed's literal layer indices need this many layers

    def __post_init__(self) -> None:
        __tracebackhide__ = True
        for name in ("id", "claim"):  # the reports' rows and tables are keyed and led by them
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise TypeError(f"Finding {name} must be a non-empty string, got "
                                f"{getattr(self, name)!r}")
        if not isinstance(self.experiments, tuple) or not all(
                isinstance(e, str) and e.strip() for e in self.experiments):
            raise TypeError(f"Finding {self.id!r}: experiments must be a tuple of strings "
                            f"such as ('051',), got {self.experiments!r}")
        for name in ("seed", "slack"):  # shown as text in the reports
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Finding {self.id!r}: {name} must be a string, got "
                                f"{getattr(self, name)!r}")
        for name in ("quick", "release"):  # a string such as "no" would be true
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Finding {self.id!r}: {name} must be True or False, got "
                                f"{getattr(self, name)!r}")
        if not isinstance(self.check, Check):
            raise TypeError(f"Finding {self.id!r}: check must be a Check such as "
                            f"LanguageBound(...), got {self.check!r}")
        _check_families(f"Finding {self.id!r}: families", self.families)
        if self.layers is not None and (not isinstance(self.layers, int) or self.layers < 1):
            raise TypeError(f"Finding {self.id!r}: layers must be a positive number of layers, "
                            f"got {self.layers!r}")
        if "release" in self.experiments and not self.release:
            raise ValueError(f"Finding {self.id!r}: experiment 'release' marks a release gate: "
                             "give release=True")
        if isinstance(self.check, ReleaseBound):  # a gate by nature: -m quantfair_release
            object.__setattr__(self, "release", True)
        if self.release and "release" not in self.experiments:  # how reports tell a gate
            object.__setattr__(self, "experiments", (*self.experiments, "release"))
        if not self.experiments:  # the reports' Exp column: a release gate has "release"
            raise TypeError(f"Finding {self.id!r}: experiments names none: give the "
                            "experiments it encodes, such as ('051',), or ('mine',)")

    def verify(self, ctx: AuditRun, case: Case) -> Outcome:
        """Run the check on this model, or a skipped outcome saying why it does not apply."""
        family = ctx.family
        if self.families and family not in self.families:
            return Outcome("skipped", detail=f"{self.id}: the seed measured this on "
                           f"{', '.join(self.families)}, not {family}")
        if self.layers is not None and ctx.layers != self.layers:
            return Outcome("skipped", detail=f"{self.id}: names layers of a {self.layers}-layer "
                           f"model; this one has {ctx.layers}")
        bound = self.check.bound_for(family, case)
        if self.check.needs_bound and bound is None:
            return Outcome("skipped", detail=f"{self.id}: no bound for the {family} family")
        try:
            return self.check.run(ctx, case, bound)
        except NotApplicable as reason:
            return Outcome("skipped", detail=str(reason))
        except NotInModel as reason:  # a finding's own strategy names what the model lacks
            if _names_candidate((self.check, case)):  # (else the user's --strategy is wrong)
                raise
            return Outcome("skipped", detail=f"{self.id}: {reason}")

    def describe(self, case: Case) -> dict:
        return {"finding": self.id, "experiments": list(self.experiments), "claim": self.claim,
                "seed": self.seed, "slack": self.slack, "case": case.id,
                "strategy": str(case.strategy) if case.strategy else None,
                "language": case.language, "length": case.length,
                # a check's own scheme, as measurements name it; None: the run's
                "scheme": QuantScheme.parse(case.scheme).name if case.scheme else None}

    def message(self, outcome: Outcome, ctx: AuditRun, case: Case) -> str:
        return (f"[{self.id}, experiment {'/'.join(self.experiments)}] {self.claim} -- "
                f"{outcome.describe()} ({ctx.describe(case.scheme, case.length)})")


def audit(finding: Finding) -> Callable:
    """Turn a finding into a pytest test function (parametrized by the quantfair plugin):
    passed, failed, skipped with the reason, or inconclusive (a skip whose reason starts with
    `inconclusive:`, a failure under --quantfair-strict). Assign it to a module-level `test_`
    name; a TypeError unless `finding` is a Finding."""
    __tracebackhide__ = True
    import pytest

    if not isinstance(finding, Finding):
        raise TypeError(f"audit() takes a Finding, got {type(finding).__name__}: write "
                        "test_x = audit(Finding(id=..., experiments=..., claim=..., check=...))")

    from quantfair.plugin import EVIDENCE

    def test(quantfair_audit, case: Case, request) -> None:
        outcome = finding.verify(quantfair_audit, case)
        evidence = request.node.stash.setdefault(EVIDENCE, {})
        if outcome.status == "skipped":
            pytest.skip(outcome.detail)
        message = finding.message(outcome, quantfair_audit, case)
        # numpy scalars become Python numbers: xdist serialises the evidence with the report
        evidence.update({k: v.item() if hasattr(v, "item") else v
                         for k, v in asdict(outcome).items()},
                        message=None if outcome.passed else message)
        evidence.pop("status")
        if outcome.status == "inconclusive" and quantfair_audit.strict:
            evidence["inconclusive"] = True  # the report keeps it so; strict mode fails it
            pytest.fail(f"inconclusive (--quantfair-strict fails it): {message}", pytrace=False)
        if outcome.status == "failed":
            pytest.fail(message, pytrace=False)
        if outcome.status == "inconclusive":
            pytest.skip(f"inconclusive: {message}")

    test.quantfair_finding = finding  # type: ignore[attr-defined]
    test.__doc__ = finding.claim
    test = pytest.mark.quantfair(test)
    if finding.release:
        test = pytest.mark.quantfair_release(test)
    return pytest.mark.quantfair_quick(test) if finding.quick else test
