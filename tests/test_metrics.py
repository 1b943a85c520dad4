import math
import warnings

import numpy as np
import pytest
import scipy.stats

from quantfair import metrics, weights
from quantfair.metrics import Measurement


def make(nll_fp, nll_q, tokens, languages=("en", "he")):
    nll_fp, nll_q, tokens = (np.array(a, dtype=float) for a in (nll_fp, nll_q, tokens))
    return Measurement(languages, nll_fp, nll_q, tokens, tokens * 2, tokens * 3)


def test_scalar_metrics_on_hand_computed_numbers():
    assert metrics.perplexity(2 * math.log(3), 2) == pytest.approx(3)
    assert metrics.bits_per_byte(math.log(2) * 8, 4) == pytest.approx(2)
    assert metrics.fertility(5, 20) == 0.25
    assert metrics.degradation(nll_q=4.0, nll_fp=2.0, tokens=2) == pytest.approx(math.e - 1)


def test_disparities_on_hand_computed_numbers():
    # en: delta 1+1 = 2 over 4 tokens; he: delta 3+5 = 8 over 8 tokens.
    m = make(nll_fp=[[1, 1], [2, 2]], nll_q=[[2, 2], [5, 7]], tokens=[[2, 2], [4, 4]])
    assert m.disparity()["he"].value == pytest.approx(4.0)
    expected_seed = math.expm1(8 / 8) / math.expm1(2 / 4)
    assert m.seed_disparity()["he"].value == pytest.approx(expected_seed)
    assert m.degradation()["en"].value == pytest.approx(math.expm1(0.5))
    assert m.mean_disparity().value == pytest.approx(4.0)


def test_disparity_is_undefined_when_english_is_within_noise():
    m = make(nll_fp=[[10, 10, 10], [10, 10, 10]], nll_q=[[10.5, 9.5, 10], [12, 13, 14]],
             tokens=[[100] * 3, [100] * 3])
    result = m.disparity()["he"]
    assert not result.defined and "within noise" in result.undefined
    assert "undefined" in str(result)
    assert not m.mean_disparity().defined


def test_disparity_is_undefined_when_english_loss_falls_and_says_so():
    """An artifact fine-tuned on English: its loss falls in every unit, no noise about it."""
    m = make(nll_fp=[[10, 10, 10], [10, 10, 10]], nll_q=[[8, 7.5, 8.2], [12, 13, 14]],
             tokens=[[100] * 3, [100] * 3])
    result = m.disparity()["he"]
    assert not result.defined and "en loss fell (95% CI below 0)" in result.undefined
    assert "within noise" not in result.undefined


def test_a_quantization_that_changes_nothing_is_undefined_without_numpy_warnings():
    """An artifact equal to the FP model: every resample's ratio is 0/0."""
    m = make(nll_fp=[[10, 10], [10, 10]], nll_q=[[10, 10], [10, 10]],
             tokens=[[100, 100], [100, 100]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = m.disparity()["he"]
    assert not result.defined and math.isnan(result.low) and math.isnan(result.high)
    # no noise to tell it from (more units would not help, as they may within noise)
    assert result.undefined == "en loss is unchanged in every unit"


def test_disparity_is_undefined_below_the_noise_floor():
    m = make(nll_fp=[[10, 10], [10, 10]], nll_q=[[10.01, 10.01], [11, 11]],
             tokens=[[1000, 1000], [1000, 1000]])
    assert "below" in m.disparity()["he"].undefined


def test_bootstrap_ci_covers_the_true_ratio_on_synthetic_data():
    rng = np.random.default_rng(1)
    units, true_ratio = 200, 3.0
    en_delta = rng.normal(1.0, 0.3, units)
    he_delta = true_ratio * en_delta + rng.normal(0, 0.5, units)
    fp = np.full((2, units), 50.0)
    m = make(fp, fp + np.stack([en_delta, he_delta]), np.full((2, units), 20.0))
    result = m.disparity()["he"]
    assert result.low < true_ratio < result.high
    assert result.high - result.low < 0.5  # informative, not trivially wide


def test_bootstrap_resamples_units_jointly():
    index = metrics.bootstrap_indices(10, samples=5)
    assert index.shape == (5, 10) and np.array_equal(index, metrics.bootstrap_indices(10, 5))


def test_correlation_and_weight_statistics():
    r = metrics.correlation([1, 2, 3, 4], [2, 4, 6, 8.5])
    assert r["pearson_r"] > 0.99 and r["spearman_r"] == pytest.approx(1.0)
    # Spearman's p over every ordering: 2 of 4! = 24 give |rho| = 1 (it was p = 0)
    assert r["spearman_p"] == pytest.approx(2 / 24)
    assert metrics.correlation([1, 2, 3], [3, 2, 1.5])["spearman_p"] == pytest.approx(2 / 6)
    stats = weights.weight_statistics(np.array([0.0, 0.0, 0.0, 0.0, 10.0] * 20))
    assert stats["variance"] == pytest.approx(16.0)
    assert stats["sparsity"] == pytest.approx(0.8)
    gaussian = weights.weight_statistics(np.random.default_rng(0).normal(size=100_000))
    assert abs(gaussian["kurtosis"]) < 0.1 and gaussian["outlier_share"] == pytest.approx(
        0.0027, abs=0.001)


def test_weight_statistics_over_chunks_and_arrays_equal_whole_array_library_values(
        monkeypatch):
    monkeypatch.setattr(weights, "CHUNK", 1000)  # several chunks, a partial last one
    rng = np.random.default_rng(1)
    parts = [rng.standard_t(3, size=2500).astype(np.float32) + 2,  # heavy tails, off zero
             rng.normal(size=(40, 30)).astype(np.float32)]
    flat = np.concatenate([p.ravel() for p in parts]).astype(np.float64)
    z = (flat - flat.mean()) / flat.std()
    got = weights.weight_statistics(parts)
    assert got["variance"] == pytest.approx(flat.var(), rel=1e-12)
    assert got["kurtosis"] == pytest.approx(scipy.stats.kurtosis(flat), rel=1e-10)
    assert got["outlier_share"] == np.mean(np.abs(z) > 3) > 0
    assert got["sparsity"] == np.mean(np.abs(flat) < 0.1 * flat.std()) > 0
    assert math.isnan(weights.weight_statistics(np.ones(10))["kurtosis"])


def test_bootstrap_pairs_fp_with_q_and_languages_with_each_other():
    """Units differ wildly, but every unit loses exactly 1 nat in English and 2 in Hebrew:
    resampled together, degradation and disparity do not vary at all."""
    fp = np.array([np.linspace(10, 500, 20)] * 2)
    delta = np.array([np.ones(20), 2 * np.ones(20)])
    m = make(fp, fp + delta, np.array([np.linspace(5, 100, 20)] * 2))
    he = m.disparity()["he"]
    assert he.low == pytest.approx(he.high) == pytest.approx(2.0)
    per_token = make(fp, fp + delta, np.full((2, 20), 10.0)).degradation()["en"]
    assert per_token.low == pytest.approx(per_token.high) == pytest.approx(math.expm1(0.1))
