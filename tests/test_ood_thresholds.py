"""Per-class OOD thresholds: the configured statistic of each class's held-out scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aads.config import ThresholdSettings
from aads.ood import OODError, fit_thresholds
from aads.ood.thresholds import threshold_statistic

PERCENTILE_95 = ThresholdSettings(mode="percentile", percentile=95.0, min_samples=2)
MEAN_2STD = ThresholdSettings(mode="mean_std", k=2.0, min_samples=2)


def test_percentile_threshold_interpolates_the_sorted_scores_linearly():
    # sorted [1, 2, 3, 4, 10]: the 95th percentile sits at index 0.95 * (5 - 1) = 3.8,
    # i.e. 4 + 0.8 * (10 - 4) = 8.8.
    scores = np.array([10.0, 3.0, 1.0, 4.0, 2.0, 0.5, 0.7])
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    t = fit_thresholds(scores, labels, 2, PERCENTILE_95)
    assert t.values[0] == pytest.approx(8.8, rel=1e-12)
    assert t.values[1] == pytest.approx(0.5 + 0.95 * (0.7 - 0.5), rel=1e-12)
    assert t.source == ["class", "class"]


def test_percentile_threshold_equals_numpy_percentile_per_class():
    rng = np.random.default_rng(0)
    scores, labels = rng.chisquare(8, 300), rng.integers(0, 3, 300)
    settings = ThresholdSettings(mode="percentile", percentile=90.0)
    t = fit_thresholds(scores, labels, 3, settings)
    want = [np.percentile(scores[labels == c], 90.0) for c in range(3)]
    np.testing.assert_allclose(t.values, want, rtol=1e-12)


def test_mean_std_threshold_is_mean_plus_k_sample_stds():
    # [1, 2, 3, 4, 10]: mean 4, squared deviations 9+4+1+0+36 = 50, ddof=1 variance 50/4.
    scores = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    t = fit_thresholds(scores, np.zeros(5, dtype=int), 1, MEAN_2STD)
    assert t.values[0] == pytest.approx(4.0 + 2.0 * math.sqrt(12.5), rel=1e-12)


def test_thin_and_empty_classes_get_the_pooled_threshold_and_say_so():
    settings = ThresholdSettings(mode="percentile", percentile=95.0, min_samples=3)
    scores = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 5.0, 6.0, 7.0, 100.0])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2])  # class 2: one score, class 3: none
    t = fit_thresholds(scores, labels, 4, settings)
    pooled = np.percentile(scores, 95.0)
    assert t.pooled == pytest.approx(pooled, rel=1e-12)
    assert t.source == ["class", "class", "pooled", "pooled"]
    assert t.values[0] == pytest.approx(8.8, rel=1e-12)
    assert t.values[1] == pytest.approx(np.percentile([5.0, 6.0, 7.0], 95.0), rel=1e-12)
    assert t.values[2] == t.values[3] == t.pooled
    np.testing.assert_array_equal(t.counts, [5, 3, 1, 0])


def test_single_score_has_zero_spread_in_mean_std_mode():
    assert threshold_statistic(np.array([3.5]), MEAN_2STD) == 3.5


def test_threshold_statistic_of_no_scores_is_an_error():
    with pytest.raises(OODError):
        threshold_statistic(np.array([]), PERCENTILE_95)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_are_rejected(bad):
    with pytest.raises(OODError, match="NaN or inf"):
        fit_thresholds(np.array([1.0, bad, 2.0]), np.array([0, 0, 1]), 2, PERCENTILE_95)


def test_no_scores_are_rejected():
    with pytest.raises(OODError):
        fit_thresholds(np.array([]), np.array([], dtype=int), 2, PERCENTILE_95)


@pytest.mark.parametrize("labels", [[0, 1, 2], [0, -1, 1]])
def test_labels_outside_the_classes_are_rejected(labels):
    with pytest.raises(OODError, match="labels"):
        fit_thresholds(np.array([1.0, 2.0, 3.0]), np.array(labels), 2, PERCENTILE_95)


def test_scores_and_labels_of_different_lengths_are_rejected():
    with pytest.raises(OODError):
        fit_thresholds(np.array([1.0, 2.0, 3.0]), np.array([0, 1]), 2, PERCENTILE_95)


def test_scores_that_are_not_a_vector_are_rejected():
    with pytest.raises(OODError):
        fit_thresholds(np.ones((2, 2)), np.zeros((2, 2), dtype=int), 2, PERCENTILE_95)
