"""Pure functions from per-unit NLLs (and distribution statistics) to degradation, disparity and
their uncertainty.

Arrays are indexed [language, unit]; the same units, in the same order, for every language
and for both the FP and the quantized model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
# English's quantization loss below this (nats per token) is treated as noise.
NOISE_FLOOR = 1e-3
# English's mean KL divergence below this (nats per token) is treated as noise: about 100x the
# float32 rounding of the per-token estimate (~1e-6 nats), so KLD ratios never compare rounding.
KLD_FLOOR = 1e-4
# llama.cpp's KLD percentiles (linear interpolation between sorted values, as numpy's default).
KLD_PERCENTILES = {"max": 100.0, "p99.9": 99.9, "p99": 99.0, "p95": 95.0, "p90": 90.0,
                   "median": 50.0}


def perplexity(nll: float, tokens: int) -> float:
    return math.exp(nll / tokens) if tokens else math.nan


def bits_per_byte(nll: float, n_bytes: int) -> float:
    return nll / (math.log(2) * n_bytes) if n_bytes else math.nan


def fertility(tokens: int, chars: int) -> float:
    return tokens / chars if chars else math.nan


def degradation(nll_q: float, nll_fp: float, tokens: int) -> float:
    """ppl_q / ppl_fp - 1 (the seed's metric)."""
    return math.expm1((nll_q - nll_fp) / tokens) if tokens else math.nan


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% bootstrap interval, or undefined with the reason."""

    value: float
    low: float
    high: float
    undefined: str = ""  # why the ratio is not reported; empty when defined

    @property
    def defined(self) -> bool:
        return not self.undefined

    def __str__(self) -> str:
        if self.undefined:
            return f"undefined ({self.undefined})"
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _interval(samples: np.ndarray) -> tuple[float, float]:
    with np.errstate(invalid="ignore"):
        low, high = np.nanpercentile(samples, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_indices(units: int, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Resampled unit indices, shared by every language and by FP and quantized results."""
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

    @property
    def ref(self) -> int:
        return self.languages.index(self.reference)

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
        value, samples = self._series("degradation")
        return {lang: Estimate(float(value[i]), *_interval(samples[i]))
                for i, lang in enumerate(self.languages)}

    def _undefined(self) -> str:
        """Why ratios to the reference are not reported (empty when they are)."""
        value, samples = self._series("delta")
        ref = self.ref
        if _interval(samples[ref])[0] <= 0:
            return f"{self.reference} loss change is within noise (95% CI includes 0)"
        if value[ref] / self.tokens[ref].sum() < NOISE_FLOOR:
            return f"{self.reference} loss change is below {NOISE_FLOOR} nats/token"
        return ""

    def _ratios(self, metric: str) -> dict[str, Estimate]:
        value, samples = self._series(metric)
        reason, ref = self._undefined(), self.ref
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio, ratio_samples = value / value[ref], samples / samples[ref]
        return {lang: Estimate(float(ratio[i]), *_interval(ratio_samples[i]), undefined=reason)
                for i, lang in enumerate(self.languages)}

    def disparity(self) -> dict[str, Estimate]:
        """delta NLL(l) / delta NLL(reference), on the same content in every language."""
        return self._ratios("delta")

    def seed_disparity(self) -> dict[str, Estimate]:
        """degradation(l) / degradation(reference) (per token, the seed's metric)."""
        return self._ratios("degradation")

    def mean_disparity(self, languages: Sequence[str] | None = None,
                       metric: str = "disparity") -> Estimate:
        """Mean of a disparity over the non-reference languages, bootstrapped jointly."""
        series = "delta" if metric == "disparity" else "degradation"
        value, samples = self._series(series)
        rows = [self.languages.index(lang) for lang in (languages or self.languages)
                if lang != self.reference and lang in self.languages]
        ref = self.ref
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = float((value[rows] / value[ref]).mean())
            mean_samples = (samples[rows] / samples[ref]).mean(axis=0)
        return Estimate(mean, *_interval(mean_samples), undefined=self._undefined())

    # -- distribution statistics, per language, as llama.cpp's perplexity.cpp defines them --
    def _sums(self, name: str) -> np.ndarray:
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

    def _estimates(self, value: np.ndarray, samples: np.ndarray,
                   undefined: str = "") -> dict[str, Estimate]:
        return {lang: Estimate(float(value[i]), *_interval(samples[i]), undefined=undefined)
                for i, lang in enumerate(self.languages)}

    def mean_kld(self) -> dict[str, Estimate]:
        """Mean KL divergence sum_v p_fp(v) (log p_fp(v) - log p_q(v)) per scored token, nats
        (llama.cpp's "Mean KLD"), with CIs."""
        return self._estimates(*self._per(self._sums("kld"), self.tokens))

    def kld_per_byte(self) -> dict[str, Estimate]:
        """KL divergence summed over the language's tokens per UTF-8 byte of its text, nats/byte
        (fair across tokenizer fertility), with CIs."""
        return self._estimates(*self._per(self._sums("kld"), self.bytes))

    def kld_percentiles(self) -> dict[str, dict[str, float]]:
        """Per language, the per-token KLD (nats) at llama.cpp's percentiles: `median`, `p90`,
        `p95`, `p99`, `p99.9` and `max`."""
        tokens = self._sums("kld_tokens")
        return {lang: {name: float(np.percentile(tokens[i], q))
                       for name, q in KLD_PERCENTILES.items()}
                for i, lang in enumerate(self.languages)}

    def same_top_rate(self) -> dict[str, Estimate]:
        """Share of scored tokens whose FP and quantized argmax agree (llama.cpp's "Same top
        p", as a fraction), with CIs."""
        return self._estimates(*self._per(self._sums("same_top"), self.tokens))

    def mean_delta_p(self) -> dict[str, Estimate]:
        """Mean of p_q(correct) - p_fp(correct) per scored token (a probability; llama.cpp's
        "Mean Δp"), with CIs."""
        return self._estimates(*self._per(self._sums("delta_p"), self.tokens))

    def rms_delta_p(self) -> dict[str, Estimate]:
        """Root mean square of the same delta-p (llama.cpp's "RMS Δp"), with CIs."""
        value, samples = self._per(self._sums("delta_p_sq"), self.tokens)
        return self._estimates(np.sqrt(value), np.sqrt(samples))

    def ln_ppl_ratio(self) -> dict[str, Estimate]:
        """Mean ln(ppl_q / ppl_fp) = (NLL_q - NLL_fp) per scored token, nats (llama.cpp's
        "Mean ln(PPL(Q)/PPL(base))"), with CIs."""
        return self._estimates(*self._per(self.nll_q - self.nll_fp, self.tokens))

    def kld_undefined(self) -> str:
        """Why KLD ratios to the reference are not reported (empty when they are). KLD is never
        negative, so its CI cannot include 0: a floor on the mean is the guard."""
        value, _ = self._per(self._sums("kld"), self.tokens)
        if value[self.ref] < KLD_FLOOR:
            return f"{self.reference} mean KLD is below {KLD_FLOOR} nats/token"
        return ""

    def kld_disparity(self) -> dict[str, Estimate]:
        """Per-byte KLD(l) / per-byte KLD(reference), with paired bootstrap CIs."""
        value, samples = self._per(self._sums("kld"), self.bytes)
        ref = self.ref
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._estimates(value / value[ref], samples / samples[ref],
                                   self.kld_undefined())


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman r with two-sided p-values."""
    if len(x) < 3:
        raise ValueError("a correlation needs at least 3 points")
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman_r": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}


def weight_statistics(weights: np.ndarray) -> dict[str, float]:
    """Variance, excess kurtosis, outlier share (|z| > 3) and near-zero share (|w| < 0.1 sd)."""
    flat = np.asarray(weights, dtype=np.float64).ravel()
    std = flat.std()
    z = (flat - flat.mean()) / std if std > 0 else np.zeros_like(flat)
    return {
        "variance": float(flat.var()),
        "kurtosis": float(stats.kurtosis(flat)),
        "outlier_share": float(np.mean(np.abs(z) > 3)),
        "sparsity": float(np.mean(np.abs(flat) < 0.1 * std)) if std > 0 else 1.0,
    }
