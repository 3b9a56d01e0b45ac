"""Mahalanobis scores are scikit-learn's covariance estimators' distances, without loops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

import aads.gaussians as gaussians
from aads.ood import MahalanobisEstimator, OODError

COVARIANCES = ["shared_ledoit_wolf", "shared_empirical", "diagonal", "per_class"]
CLASSES, PER_CLASS, WIDTH = 3, 15, 24  # width > samples per class: shrinkage matters


def make_data(seed=0, classes=CLASSES, per_class=PER_CLASS, width=WIDTH):
    """Anisotropic Gaussian classes (per-feature scales 0.2..3) around random means."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.2, 3.0, width)
    means = rng.normal(0.0, 2.0, (classes, width))
    y = np.repeat(np.arange(classes), per_class)
    x = means[y] + rng.normal(size=(len(y), width)) * scales
    return x, y


def assert_close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())


def test_shared_empirical_scores_equal_sklearn_mahalanobis():
    x, y = make_data()
    est = MahalanobisEstimator("shared_empirical", "raw").fit(x, y)
    cov = EmpiricalCovariance(assume_centered=True).fit(x - est.means_[y])
    want = np.stack([cov.mahalanobis(x - m) for m in est.means_], axis=1)
    assert_close(est.score_samples(x), want)


def test_shared_ledoit_wolf_scores_equal_sklearn_mahalanobis():
    x, y = make_data()
    est = MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x, y)
    lw = LedoitWolf(assume_centered=True).fit(x - est.means_[y])
    want = np.stack([lw.mahalanobis(x - m) for m in est.means_], axis=1)
    assert_close(est.score_samples(x), want)


def test_shared_ledoit_wolf_records_sklearns_shrinkage_strictly_between_0_and_1():
    x, y = make_data()
    est = MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x, y)
    lw = LedoitWolf(assume_centered=True).fit(x - est.means_[y])
    assert 0.0 < est.shrinkage_ < 1.0
    assert est.shrinkage_ == pytest.approx(lw.shrinkage_, rel=1e-12)


def test_per_class_scores_equal_sklearn_ledoit_wolf_per_class():
    x, y = make_data()
    est = MahalanobisEstimator("per_class", "raw").fit(x, y)
    fits = [LedoitWolf().fit(x[y == k]) for k in range(CLASSES)]
    assert all(0.0 < lw.shrinkage_ < 1.0 for lw in fits)
    want = np.stack([lw.mahalanobis(x) for lw in fits], axis=1)
    assert_close(est.score_samples(x), want)
    assert est.fallback_classes_ == []


def test_diagonal_scores_use_pooled_within_class_variances():
    x, y = make_data()
    est = MahalanobisEstimator("diagonal", "raw").fit(x, y)
    means = np.stack([x[y == k].mean(0) for k in range(CLASSES)])
    var = np.var(x - means[y], axis=0)
    want = np.stack([(((x - m) ** 2) / var).sum(1) for m in means], axis=1)
    assert_close(est.score_samples(x), want)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_l2_space_equals_raw_space_on_l2_normalised_inputs(covariance):
    x, y = make_data()
    normalised = x / np.linalg.norm(x, axis=1, keepdims=True)
    l2 = MahalanobisEstimator(covariance, "l2").fit(x, y)
    raw = MahalanobisEstimator(covariance, "raw").fit(normalised, y)
    assert_close(l2.score_samples(x), raw.score_samples(normalised))


def test_relative_score_subtracts_the_background_ledoit_wolf_distance():
    x, y = make_data()
    est = MahalanobisEstimator("shared_ledoit_wolf", "raw", relative=True).fit(x, y)
    lw = LedoitWolf(assume_centered=True).fit(x - est.means_[y])
    centre = x.mean(0)
    background = LedoitWolf(assume_centered=True).fit(x - centre).mahalanobis(x - centre)
    want = np.stack([lw.mahalanobis(x - m) for m in est.means_], axis=1) - background[:, None]
    assert_close(est.score_samples(x), want)
    np.testing.assert_allclose(est.background_mean_, centre, rtol=0, atol=1e-12)


def test_per_class_relative_background_is_shared_ledoit_wolf():
    x, y = make_data()
    plain = MahalanobisEstimator("per_class", "raw").fit(x, y)
    relative = MahalanobisEstimator("per_class", "raw", relative=True).fit(x, y)
    centre = x.mean(0)
    background = LedoitWolf(assume_centered=True).fit(x - centre).mahalanobis(x - centre)
    assert_close(relative.score_samples(x), plain.score_samples(x) - background[:, None])


def test_min_distance_returns_the_nearest_class_and_its_score():
    x, y = make_data()
    est = MahalanobisEstimator().fit(x, y)
    probe = make_data(seed=1)[0]
    d = est.score_samples(probe)
    nearest, score = est.min_distance(probe)
    np.testing.assert_array_equal(nearest, d.argmin(1))
    np.testing.assert_array_equal(score, d.min(1))


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_state_dict_round_trip_gives_bit_identical_scores(covariance, relative):
    x, y = make_data()
    est = MahalanobisEstimator(covariance, "l2", relative).fit(x, y)
    loaded = MahalanobisEstimator.from_state_dict(est.state_dict(), covariance, "l2", relative)
    probe = make_data(seed=1)[0]
    assert np.array_equal(loaded.score_samples(probe), est.score_samples(probe))
    assert loaded.shrinkage_ == est.shrinkage_
    assert loaded.fallback_classes_ == est.fallback_classes_


def test_chunked_per_class_scoring_equals_a_per_sample_loop(monkeypatch):
    x, y = make_data()
    est = MahalanobisEstimator("per_class", "raw").fit(x, y)
    unchunked = est.score_samples(x)
    # 3 samples per chunk: 45 samples run in 15 chunks.
    monkeypatch.setattr(gaussians, "PER_GROUP_CHUNK_BYTES", 3 * 8 * CLASSES * WIDTH)
    chunked = est.score_samples(x)
    pairs = list(zip(est.means_, est.precision_, strict=True))
    looped = np.array([[(v - m) @ p @ (v - m) for m, p in pairs] for v in x])
    assert_close(chunked, looped)
    np.testing.assert_array_equal(chunked, unchunked)


# ---------------------------------------------------------------------- degenerate input


def singleton_class_data():
    """Classes 0 and 1 with 15 samples each, class 2 with a single sample."""
    x, y = make_data()
    keep = np.r_[np.flatnonzero(y < 2), np.flatnonzero(y == 2)[:1]]
    return x[keep], y[keep]


def test_one_sample_class_gets_finite_shared_ledoit_wolf_scores():
    x, y = singleton_class_data()
    est = MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x, y)
    assert np.isfinite(est.score_samples(x)).all()


def test_one_sample_class_falls_back_to_the_shared_covariance_in_per_class():
    x, y = singleton_class_data()
    per_class = MahalanobisEstimator("per_class", "raw").fit(x, y)
    shared = MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x, y)
    assert per_class.fallback_classes_ == [2]
    scores = per_class.score_samples(x)
    assert np.isfinite(scores).all()
    assert_close(scores[:, 2], shared.score_samples(x)[:, 2])


def test_constant_features_are_rejected():
    x, y = np.ones((10, 4)), np.repeat([0, 1], 5)
    with pytest.raises(OODError, match="no within-class variance"):
        MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x, y)


def test_one_constant_column_still_gives_finite_shared_ledoit_wolf_scores():
    x, y = make_data()
    x[:, 3] = 5.0
    est = MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x, y)
    assert np.isfinite(est.score_samples(x)).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_fit_features_are_rejected_naming_the_row(bad):
    x, y = make_data()
    x[7, 2] = bad
    with pytest.raises(OODError, match="row 7"):
        MahalanobisEstimator().fit(x, y)


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_score_features_are_rejected_naming_the_row(bad):
    x, y = make_data()
    est = MahalanobisEstimator().fit(x, y)
    x[4, 0] = bad
    with pytest.raises(OODError, match="row 4"):
        est.score_samples(x)


def test_features_of_another_width_are_rejected():
    x, y = make_data()
    est = MahalanobisEstimator().fit(x, y)
    with pytest.raises(OODError, match="width"):
        est.score_samples(x[:, :-1])


def test_zero_vector_cannot_be_scored_in_l2_space():
    x, y = make_data()
    est = MahalanobisEstimator(feature_space="l2").fit(x, y)
    x[0] = 0.0
    with pytest.raises(OODError, match="zero"):
        est.score_samples(x)


def test_a_class_without_samples_is_rejected_naming_it():
    x, y = make_data()
    y = np.where(y == 1, 2, y)  # labels 0 and 2 only
    with pytest.raises(OODError, match=r"classes \[1\] have none"):
        MahalanobisEstimator().fit(x, y)


def test_unfitted_estimator_cannot_score():
    with pytest.raises(OODError, match="not fitted"):
        MahalanobisEstimator().score_samples(np.ones((2, 4)))


def test_unknown_covariance_is_rejected():
    with pytest.raises(OODError, match="covariance"):
        MahalanobisEstimator("full")  # type: ignore[arg-type]
