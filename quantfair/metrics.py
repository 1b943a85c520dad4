"""Pure functions from per-unit NLLs (and distribution statistics) to degradation, disparity and
their uncertainty.

Arrays are indexed [language, unit]; the same units, in the same order, for every language
and for both the FP and the quantized model.
"""

from __future__ import annotations

import difflib
import functools
import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from quantfair.errors import UsageError

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
# English's quantization loss below this (nats per token) is treated as noise.
NOISE_FLOOR = 1e-3
# A bootstrap over a single unit resamples that unit only: its "interval" has zero width.
MIN_UNITS = 2
TOO_FEW_UNITS = "too few units for an interval"
# English's mean KL divergence below this (nats per token) is treated as noise: about 100x the
# float32 rounding of the per-token estimate (~1e-6 nats), so KLD ratios never compare rounding.
KLD_FLOOR = 1e-4
# Two sides of a paired difference closer than this share of the larger are equal: float32
# summation order (which units share a batch) moves a unit's NLL by ~1e-7 relative, so a
# strategy changing no quantized weight differs from `none` by ~1e-7 in every resample, and
# without this its CI, [-2e-7, -6e-10] on Gemma 3, would call it significantly fairer.
FLOAT_NOISE = 1e-5
# llama.cpp's KLD percentiles (linear interpolation between sorted values, as numpy's default).
KLD_PERCENTILES = {"max": 100.0, "p99.9": 99.9, "p99": 99.0, "p95": 95.0, "p90": 90.0,
                   "median": 50.0}


def perplexity(nll: float, tokens: int) -> float:
    """exp(nll / tokens): `nll` summed over the scored tokens, in nats; NaN for no token."""
    return math.exp(nll / tokens) if tokens else math.nan


def bits_per_byte(nll: float, n_bytes: int) -> float:
    """nll / (ln 2 * bytes): `nll` in nats over a text of `n_bytes` UTF-8 bytes, in bits per
    byte (tokenizer-independent, as in Gao et al. 2020, The Pile); NaN for no byte."""
    return nll / (math.log(2) * n_bytes) if n_bytes else math.nan


def fertility(tokens: int, chars: int) -> float:
    """Tokens per character of a text (Unicode code points); NaN for no character. Rust et
    al. 2021 count subword tokens per word, which texts without spaces between words (Chinese,
    Japanese, Thai) do not define: per character every script is measured alike."""
    return tokens / chars if chars else math.nan


def degradation(nll_q: float, nll_fp: float, tokens: int) -> float:
    """ppl_q / ppl_fp - 1 (the seed's metric)."""
    return math.expm1((nll_q - nll_fp) / tokens) if tokens else math.nan


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% bootstrap interval (None with too few units), or undefined
    with the reason."""

    value: float
    low: float | None
    high: float | None
    undefined: str = ""  # why the ratio is not reported; empty when defined

    @property
    def defined(self) -> bool:
        return not self.undefined

    def __str__(self) -> str:
        if self.undefined:
            return f"undefined ({self.undefined})"
        if self.low is None or self.high is None:
            return f"{self.value:.3g} (no interval: {TOO_FEW_UNITS})"
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


@functools.cache
def tail_share(units: int | None) -> float:
    """The share of bootstrap resamples a 95% interval leaves out on each side. On `units`
    units (>= 2), the expanded percentile interval's: Phi(-sqrt(n / (n - 1)) t_{0.975, n-1})
    (Hesterberg 2015, "What teachers should know about the bootstrap", The American
    Statistician 69(4); 0.57% at 8 units, 1.7% at 22). The plain percentile interval (None:
    2.5%) is too narrow on few units: it told apart two strategies drawn alike in 12-13% of
    simulated runs at 8 units, not 5%."""
    if units is None:
        return 0.025
    from scipy import stats  # ~0.5 s to import: only where an interval is asked for

    return float(stats.norm.cdf(-math.sqrt(units / (units - 1)) * stats.t.ppf(0.975, units - 1)))


def _interval(samples: np.ndarray, units: int | None) -> tuple[float, float]:
    """The 95% percentile interval of the defined (not NaN) resamples, expanded for `units`
    units (`tail_share`); NaN when none is defined."""
    samples = np.asarray(samples, dtype=float)
    if np.isnan(samples).all():  # e.g. a ratio to a change that is 0 in every resample
        return math.nan, math.nan
    tail = 100 * tail_share(units)
    with np.errstate(invalid="ignore"):  # infinite resamples interpolate to NaN
        low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


# Fewer resamples than this beyond 0 tell the tail too coarsely for an expanded p-value.
SPARSE_TAIL = 10


def resolved(units: int | None, samples: int = BOOTSTRAP_SAMPLES) -> bool:
    """Whether a 95% interval on `units` units lies within `samples` resamples (at least
    `SPARSE_TAIL` beyond each end; 8 units or more of 2000): below, the expanded interval's
    ends are the extreme resamples, whose spread says little of the uncertainty
    (`paired_difference` fits a normal law there)."""
    return units is None or tail_share(units) * samples >= SPARSE_TAIL


def _p_value(tail: float, units: int | None) -> float:
    """The two-sided p-value matching `_interval`: the level whose interval just reaches 0,
    for the share `tail` of resamples on the far side of 0 (2 * tail when `units` is None)."""
    if units is None or tail >= 0.5:
        return min(1.0, 2 * tail)
    from scipy import stats

    t = -stats.norm.ppf(tail) / math.sqrt(units / (units - 1))
    return float(min(1.0, 2 * stats.t.sf(t, units - 1)))


def bootstrap_indices(units: int, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Resampled unit indices, [samples, units] of integers in [0, units), shared by every
    language and by FP and quantized results (a paired bootstrap over units)."""
    return np.random.default_rng(seed).integers(0, units, size=(samples, units))


@dataclass(frozen=True)
class Measurement:
    """Per-unit results of one (scheme, strategy) against the FP reference."""

    languages: tuple[str, ...]
    nll_fp: np.ndarray  # [language, unit]
    nll_q: np.ndarray
    tokens: np.ndarray
    bytes: np.ndarray
    chars: np.ndarray
    reference: str = "en"
    # Distribution statistics (llama.cpp `perplexity.cpp --kl-divergence`); None when only
    # NLL was measured. Sums over each unit's scored tokens, [language, unit]:
    kld: np.ndarray | None = None  # KL divergence, nats
    same_top: np.ndarray | None = None  # tokens whose FP and quantized argmax agree
    delta_p: np.ndarray | None = None  # p_q(correct) - p_fp(correct)
    delta_p_sq: np.ndarray | None = None  # its square
    kld_tokens: tuple[np.ndarray, ...] | None = None  # per language: every token's KLD, nats

    def __post_init__(self) -> None:
        if self.reference not in self.languages:
            raise ValueError(f"reference language '{self.reference}' missing")

    @classmethod
    def from_per_unit(cls, per_unit: dict[str, dict], reference: str = "en") -> Measurement:
        """A measurement rebuilt from a report's `per_unit` values (`nll_fp`, `nll_q`,
        `tokens`: one list per language, in unit order, by language code), the languages in
        the dict's order; it keeps no byte or character counts (zeros). Raises ValueError
        where `reference` is not among them."""
        nll_fp, nll_q, tokens = (np.array([units[name] for units in per_unit.values()],
                                          dtype=float) for name in ("nll_fp", "nll_q", "tokens"))
        return cls(tuple(per_unit), nll_fp, nll_q, tokens, np.zeros_like(tokens),
                   np.zeros_like(tokens), reference=reference)

    @property
    def ref(self) -> int:
        return self.languages.index(self.reference)

    @property
    def units(self) -> int:
        return self.nll_fp.shape[1]

    def _interval(self, samples: np.ndarray) -> tuple[float | None, float | None]:
        if self.units < MIN_UNITS:
            return None, None
        return _interval(samples, self.units)

    def _series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-language values of `metric` ("delta": summed NLL increase; "degradation":
        ppl_q/ppl_fp - 1) and the same over bootstrap resamples [language, sample]."""
        index = bootstrap_indices(self.nll_fp.shape[1])
        totals = [(getattr(self, name).sum(axis=1), getattr(self, name)[:, index].sum(axis=2))
                  for name in ("nll_fp", "nll_q", "tokens")]
        (fp, fp_boot), (q, q_boot), (tokens, tokens_boot) = totals
        if metric == "delta":
            return q - fp, q_boot - fp_boot
        return np.expm1((q - fp) / tokens), np.expm1((q_boot - fp_boot) / tokens_boot)

    def degradation(self) -> dict[str, Estimate]:
        """ppl_q / ppl_fp - 1 per language, with CIs."""
        return self._estimates("degradation")

    def _undefined(self) -> str:
        """Why ratios to the reference are not reported (empty when they are)."""
        if self.nll_fp.shape[1] < MIN_UNITS:
            return TOO_FEW_UNITS
        value, samples = self._series("delta")
        ref = self.ref
        if not np.any(self.nll_q[ref] - self.nll_fp[ref]):  # no unit's loss changed at all:
            return f"{self.reference} loss is unchanged in every unit"  # not noise, none
        low, high = self._interval(samples[ref])
        if high < 0:  # e.g. an artifact fine-tuned on English: not damage, no ratio to it
            return f"{self.reference} loss fell (95% CI below 0): no damage to compare with"
        if low <= 0:
            return f"{self.reference} loss change is within noise (95% CI includes 0)"
        if value[ref] / self.tokens[ref].sum() < NOISE_FLOOR:
            return f"{self.reference} loss change is below {NOISE_FLOOR} nats/token"
        return ""

    def draws(self, metric: str) -> tuple[np.ndarray, np.ndarray, str]:
        """Per-language values of a registered quantity, the same over the shared bootstrap
        resamples [language, sample], and why it is undefined (empty when it is defined)."""
        if metric == "degradation":
            value, samples = self._series("degradation")
            return value, samples, ""
        if metric in ("mean_kld", "same_top_rate"):
            name = "kld" if metric == "mean_kld" else "same_top"
            return *self._per(self.sums(name), self.tokens), ""
        if metric == "kld_disparity":
            (value, samples), reason = self._per(self.sums("kld"), self.bytes), \
                self.kld_undefined()
        else:
            value, samples = self._series("delta" if metric == "disparity" else "degradation")
            reason = self._undefined()
        ref = self.ref
        with np.errstate(divide="ignore", invalid="ignore"):
            return value / value[ref], samples / samples[ref], reason

    def _from_draws(self, value: np.ndarray, samples: np.ndarray,
                    undefined: str = "") -> dict[str, Estimate]:
        return {lang: Estimate(float(value[i]), *self._interval(samples[i]), undefined=undefined)
                for i, lang in enumerate(self.languages)}

    def _estimates(self, metric: str) -> dict[str, Estimate]:
        return self._from_draws(*self.draws(metric))

    def disparity(self) -> dict[str, Estimate]:
        """delta NLL(l) / delta NLL(reference), on the same content in every language."""
        return self._estimates("disparity")

    def seed_disparity(self) -> dict[str, Estimate]:
        """degradation(l) / degradation(reference) (per token, the seed's metric)."""
        return self._estimates("seed_disparity")

    def compared(self, languages: Sequence[str] | None = None) -> list[int]:
        """The rows of `languages` (None: every one measured) compared with the reference:
        not it, nor it under another code (a user corpus's `eng`: `corpus.same_language`)."""
        from quantfair.corpus import same_language

        return [self.languages.index(lang)
                for lang in (self.languages if languages is None else languages)
                if lang in self.languages and not same_language(lang, self.reference)]

    def per_language(self, values: np.ndarray,
                     languages: Sequence[str] | None = None) -> np.ndarray:
        """`values` ([language, ...], a row per code) for the languages `compared`, one row
        per language: a language under several codes of a user corpus (`he`, `heb`:
        `corpus.by_language`) is the mean of its codes' rows, so that it counts once."""
        from quantfair.corpus import by_language

        rows = self.compared(languages)
        if not rows:
            return values[rows]
        groups = by_language([self.languages[row] for row in rows]).values()
        return np.stack([values[[self.languages.index(code) for code in codes]].mean(axis=0)
                         for codes in groups])

    def mean_draws(self, languages: Sequence[str] | None = None,
                   metric: str = "disparity") -> tuple[float, np.ndarray, str]:
        """The mean of a quantity over the languages `compared` with the reference, each
        once (`per_language`), over the shared bootstrap resamples, and why it is
        undefined."""
        value, samples, reason = self.draws(metric)
        return (float(self.per_language(value, languages).mean()),
                self.per_language(samples, languages).mean(axis=0), reason)

    def worst_draws(self, metric: str = "disparity") -> tuple[float, np.ndarray, str]:
        """The largest value of a quantity over the languages `compared` with the reference
        (`per_language`), over the shared bootstrap resamples (the worst language of each
        resample), and why it is undefined."""
        value, samples, reason = self.draws(metric)
        return (float(self.per_language(value).max()), self.per_language(samples).max(axis=0),
                reason)

    def mean_disparity(self, languages: Sequence[str] | None = None,
                       metric: str = "disparity") -> Estimate:
        """Mean of a disparity over the non-reference languages, bootstrapped jointly."""
        value, samples, reason = self.mean_draws(languages, metric)
        return Estimate(value, *self._interval(samples), undefined=reason)

    # -- distribution statistics, per language, as llama.cpp's perplexity.cpp defines them --
    def sums(self, name: str) -> np.ndarray:
        """A distribution statistic (`kld`, `same_top`, `delta_p`, `delta_p_sq`: summed over
        each unit's tokens, [language, unit]; `kld_tokens`: per language, every token's).
        Raises ValueError where the measurement has none."""
        value = getattr(self, name)
        if value is None:
            raise ValueError("this measurement has no distribution statistics: measure it "
                             "with distribution=True")
        return value

    def _per(self, numerator: np.ndarray, denominator: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Ratio of per-language sums [language] and the same over bootstrap resamples
        [language, sample] (the units resampled as for every other metric)."""
        index = bootstrap_indices(numerator.shape[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            return (numerator.sum(axis=1) / denominator.sum(axis=1),
                    numerator[:, index].sum(axis=2) / denominator[:, index].sum(axis=2))

    def mean_kld(self) -> dict[str, Estimate]:
        """Mean KL divergence sum_v p_fp(v) (log p_fp(v) - log p_q(v)) per scored token, nats
        (llama.cpp's "Mean KLD"), with CIs."""
        return self._estimates("mean_kld")

    def kld_per_byte(self) -> dict[str, Estimate]:
        """KL divergence summed over the language's tokens per UTF-8 byte of its text, nats/byte
        (fair across tokenizer fertility), with CIs."""
        return self._from_draws(*self._per(self.sums("kld"), self.bytes))

    def kld_percentiles(self) -> dict[str, dict[str, float]]:
        """Per language, the per-token KLD (nats) at llama.cpp's percentiles: `median`, `p90`,
        `p95`, `p99`, `p99.9` and `max`."""
        tokens = self.sums("kld_tokens")
        return {lang: {name: float(np.percentile(tokens[i], q))
                       for name, q in KLD_PERCENTILES.items()}
                for i, lang in enumerate(self.languages)}

    def same_top_rate(self) -> dict[str, Estimate]:
        """Share of scored tokens whose FP and quantized argmax agree (llama.cpp's "Same top
        p", as a fraction), with CIs."""
        return self._estimates("same_top_rate")

    def mean_delta_p(self) -> dict[str, Estimate]:
        """Mean of p_q(correct) - p_fp(correct) per scored token (a probability; llama.cpp's
        "Mean Δp"), with CIs."""
        return self._from_draws(*self._per(self.sums("delta_p"), self.tokens))

    def rms_delta_p(self) -> dict[str, Estimate]:
        """Root mean square of the same delta-p (llama.cpp's "RMS Δp"), with CIs."""
        value, samples = self._per(self.sums("delta_p_sq"), self.tokens)
        return self._from_draws(np.sqrt(value), np.sqrt(samples))

    def ln_ppl_ratio(self) -> dict[str, Estimate]:
        """Mean ln(ppl_q / ppl_fp) = (NLL_q - NLL_fp) per scored token, nats (llama.cpp's
        "Mean ln(PPL(Q)/PPL(base))"), with CIs."""
        return self._from_draws(*self._per(self.nll_q - self.nll_fp, self.tokens))

    def kld_undefined(self) -> str:
        """Why KLD ratios to the reference are not reported (empty when they are). KLD is never
        negative, so its CI cannot include 0: a floor on the mean is the guard."""
        value, _ = self._per(self.sums("kld"), self.tokens)
        if value[self.ref] < KLD_FLOOR:
            return f"{self.reference} mean KLD is below {KLD_FLOOR} nats/token"
        return ""

    def kld_disparity(self) -> dict[str, Estimate]:
        """Per-byte KLD(l) / per-byte KLD(reference), with paired bootstrap CIs."""
        return self._estimates("kld_disparity")


@dataclass(frozen=True)
class Comparison:
    """A - B on the paired bootstrap (the same resampled units on both sides), with the 95%
    expanded percentile interval (`tail_share`) and the two-sided p-value for "A - B = 0"
    at which that interval's end reaches 0, from q = min(P*(A - B <= 0), P*(A - B >= 0)):
    p = 2 P(T_{n-1} > -Phi^-1(q) / sqrt(n / (n - 1))) (plain: min(1, 2q), q at least
    1 / (2 resamples)). Where fewer than `SPARSE_TAIL` resamples lie beyond 0, q is the
    normal tail Phi(-|mean| / sd) of the resamples where that is smaller; where fewer than
    `SPARSE_TAIL` would lie beyond the interval's ends (below 8 units), q is that normal tail
    and the interval is mean -+ z sd, z the normal quantile of `tail_share`. Either way the
    interval excludes 0 exactly where p < 0.05."""

    difference: float
    low: float
    high: float
    p_value: float

    @property
    def detectable(self) -> float:
        """The smallest difference these units could have told from 0: the CI half-width."""
        return (self.high - self.low) / 2


def _difference(a, b):
    """a - b, 0 where it is within float noise (`FLOAT_NOISE`) of the larger side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore"):  # inf - inf: undefined, NaN as before
        difference = a - b
        noise = np.isfinite(difference) & (
            np.abs(difference) <= FLOAT_NOISE * np.maximum(np.abs(a), np.abs(b)))
    return np.where(noise, 0.0, difference)


def paired_difference(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray],
                      units: int | None) -> Comparison:
    """Compare (value, bootstrap samples) pairs drawn from the same resampled `units` units,
    the interval and p-value expanded for them (`tail_share`; None: the plain percentile
    interval); a difference within float noise of the larger side (`FLOAT_NOISE`) counts as
    0. Below `MIN_UNITS` units there is no interval, and p is 1: nothing is decided."""
    difference = float(_difference(a[0], b[0]))
    samples = _difference(a[1], b[1])
    samples = samples[np.isfinite(samples)]
    if samples.size == 0 or (units is not None and units < MIN_UNITS):
        return Comparison(difference, math.nan, math.nan, 1.0)
    beyond = min(np.count_nonzero(samples <= 0), np.count_nonzero(samples >= 0))
    # Below 8 units the expanded interval's ends lie beyond all but a few resamples (on 2
    # units they are the extreme resamples, which can exclude 0 at any p), and a tail of
    # fewer than SPARSE_TAIL resamples beyond 0 is too coarse for a p-value (1 / 4000 would
    # floor p at 0.014 on 8 units, above what Holm asks of five cases, 0.01, however clear the
    # difference): there a normal fit to the resamples reads them, so that the interval
    # excludes 0 where p < 0.05.
    # Elsewhere the fit reads the tail only beyond what the resamples resolve, never above
    # their own share (a skewed law's fit can put 0.7% beyond 0 where 0.15% of the resamples
    # lie, and the interval, which excludes 0, would be called not significant).
    few = not resolved(units, samples.size)
    tail = max(beyond / samples.size, 1 / (2 * samples.size))
    if few or (units is not None and beyond < SPARSE_TAIL):
        from scipy import stats

        mean, spread = float(samples.mean()), float(samples.std())
        fitted = stats.norm.sf(abs(mean) / spread) if spread > 0 else 0.5 * (mean == 0)
        tail = fitted if few else min(fitted, tail)
    if few:
        reach = -stats.norm.ppf(tail_share(units)) * spread
        low, high = mean - reach, mean + reach
    else:
        low, high = _interval(samples, units)
    return Comparison(difference, low, high, _p_value(float(tail), units))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm-Bonferroni rejects at family-wise error `alpha` (Holm 1979,
    statsmodels' `multipletests`)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    # statsmodels runs gc.collect() in its Holm branch: ~0.2 s a call over a heap holding a
    # model. Objects frozen for the call are not scanned (and are back in the GC afterwards);
    # a host process that froze objects of its own is left as it is.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        rejected = multipletests(list(p_values), alpha=alpha, method="holm")[0]
    finally:
        if freeze:
            gc.unfreeze()
    return [bool(r) for r in rejected]


def correlatable(x: Sequence[float], y: Sequence[float]) -> bool:
    """What a correlation needs: at least 3 points, x and y each taking more than one value."""
    return len(x) >= 3 and len(set(x)) > 1 and len(set(y)) > 1


EXACT_ORDERINGS = 9999  # scipy's PermutationMethod resamples; at or below, every ordering


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman r with two-sided p-values, and the 95% CI of Pearson r by Fisher's
    z-transform (`pearson_low`, `pearson_high`: tanh(atanh(r) -/+ 1.96 / sqrt(n - 3)), as
    scipy.stats.pearsonr computes it; [-1, 1] for 3 points). Spearman's p is exact over every
    ordering of the points up to 7 (scipy's t approximation gives p = 0 for 3 points in
    order, where it is 1/3), the t approximation above. The points are taken as exact:
    their own sampling noise is not in the interval. Raises ValueError below 3 points."""
    from scipy import stats  # ~0.5 s to import: only where a correlation is asked for

    if len(x) < 3:
        raise ValueError("a correlation needs at least 3 points")
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    spearman_p = float(spearman.pvalue)
    if math.factorial(len(x)) <= EXACT_ORDERINGS:  # Spearman's r is Pearson's of the ranks
        spearman_p = float(stats.pearsonr(stats.rankdata(x), stats.rankdata(y),
                                          method=stats.PermutationMethod()).pvalue)
    interval = pearson.confidence_interval(0.95)
    low, high = (float(v) for v in (interval.low, interval.high))
    return {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "pearson_low": -1.0 if math.isnan(low) else low,
            "pearson_high": 1.0 if math.isnan(high) else high,
            "spearman_r": float(spearman.statistic), "spearman_p": spearman_p}


@dataclass(frozen=True)
class Quantity:
    """A per-language quantity audits can bound or compare."""

    name: str
    description: str
    higher_is_better: bool
    per_language: Callable[[Measurement], dict[str, Estimate]]
    distribution: bool = False  # needs the KL-divergence statistics
    value_range: tuple[float, float] | None = None  # what a value can be, where bounded


QUANTITIES = {q.name: q for q in (
    Quantity("disparity", "delta NLL(l) / delta NLL(en) on the same text", False,
             Measurement.disparity),
    Quantity("seed_disparity", "degradation(l) / degradation(en), per token (the seed's)", False,
             Measurement.seed_disparity),
    Quantity("degradation", "ppl_q / ppl_fp - 1", False, Measurement.degradation,
             value_range=(-1.0, math.inf)),
    Quantity("kld_disparity", "per-byte KL divergence(l) / per-byte KL divergence(en)", False,
             Measurement.kld_disparity, distribution=True),
    Quantity("mean_kld", "mean KL divergence per scored token, nats", False,
             Measurement.mean_kld, distribution=True, value_range=(0.0, math.inf)),
    Quantity("same_top_rate", "share of tokens whose FP and quantized argmax agree", True,
             Measurement.same_top_rate, distribution=True, value_range=(0.0, 1.0)),
)}


def quantity(name: str) -> Quantity:
    """The registered quantity `name`; an unknown name is a UsageError suggesting close ones,
    as is a value that is no name (a bound given where the quantity goes)."""
    if not isinstance(name, str):
        raise UsageError(f"a quantity is one of {', '.join(QUANTITIES)}, got {name!r}"
                         + (": a bound, where the quantity's name goes"
                            if isinstance(name, dict) or hasattr(name, "holds") else ""))
    if name not in QUANTITIES:
        close = difflib.get_close_matches(name, QUANTITIES, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise UsageError(f"unknown quantity '{name}'{hint}; known: {', '.join(QUANTITIES)}")
    return QUANTITIES[name]
