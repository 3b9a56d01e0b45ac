"""The one Gaussian-statistics implementation (OOD, classifier alignment, CONEC selector) equals
scikit-learn and scipy, adds groups without old data, and reads the files earlier versions
wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file, save_file
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

from aads.adapters.alignment import align_head
from aads.adapters.conec.selector import MahalanobisDomainSelector
from aads.gaussians import (
    STATS_KEYS,
    GaussianStatsError,
    SharedCovarianceGaussians,
    pinvh,
    precision_factor,
    squared_distances,
)
from aads.ood import MahalanobisEstimator

WIDTH, GROUPS = 48, 4


def grouped(per_group: int = 10, width: int = WIDTH, seed: int = 0):
    """Anisotropic groups; fewer samples than dimensions, so shrinkage and rank matter."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(GROUPS), per_group)
    x = rng.normal(0, 2, (GROUPS, width))[y] + rng.normal(size=(len(y), width)) * np.linspace(
        0.1, 3, width
    )
    return torch.from_numpy(x), torch.from_numpy(y)


def residuals(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    means = torch.stack([x[y == g].mean(0) for g in range(GROUPS)])
    return (x - means[y]).numpy()


def assert_close(got: torch.Tensor | np.ndarray, want: np.ndarray) -> None:
    got = got.numpy() if isinstance(got, torch.Tensor) else got
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())


def test_ledoit_wolf_covariance_shrinkage_and_precision_equal_sklearn():
    x, y = grouped()
    stats = SharedCovarianceGaussians.from_groups(x, y)
    reference = LedoitWolf(assume_centered=True).fit(residuals(x, y))
    covariance, shrinkage = stats.covariance("ledoit_wolf")
    precision, _ = stats.precision("ledoit_wolf")
    assert 0 < shrinkage < 1 and shrinkage == pytest.approx(reference.shrinkage_, rel=1e-9)
    assert_close(covariance, reference.covariance_)
    assert_close(precision, reference.precision_)


def test_empirical_precision_of_a_rank_deficient_covariance_equals_sklearn():
    x, y = grouped(per_group=5)  # 20 samples in 48 dimensions: rank 16 at most
    reference = EmpiricalCovariance(assume_centered=True).fit(residuals(x, y))
    precision, shrinkage = SharedCovarianceGaussians.from_groups(x, y).precision("empirical")
    assert shrinkage == 0.0
    assert_close(precision, reference.precision_)


def test_pinvh_equals_scipy_on_singular_and_regular_matrices():
    rng = np.random.default_rng(1)
    low_rank = rng.normal(size=(30, 5))
    for matrix in (low_rank @ low_rank.T, np.cov(rng.normal(size=(100, 30)).T)):
        assert_close(pinvh(torch.from_numpy(matrix)), scipy.linalg.pinvh(matrix))


def test_adding_groups_one_by_one_equals_fitting_them_together():
    x, y = grouped()
    together = SharedCovarianceGaussians.from_groups(x, y)
    incremental = SharedCovarianceGaussians()
    for g in range(GROUPS):
        assert incremental.add(x[y == g]) == g
    for a, b in zip(incremental.state_dict().values(), together.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


def test_squared_distances_equal_a_per_sample_loop_for_every_factor_shape():
    x, y = grouped()
    stats = SharedCovarianceGaussians.from_groups(x, y)
    means = stats.means()
    shared, _ = stats.precision()
    diagonal = 1 / stats.variances()
    per_group = torch.stack([shared * (g + 1) for g in range(GROUPS)])
    cases = [  # (precision as stored, each group's full matrix)
        (shared, [shared] * GROUPS),
        (diagonal, [torch.diag(diagonal)] * GROUPS),
        (per_group, list(per_group)),
    ]
    for precision, full in cases:
        want = np.array(
            [[float((v - m) @ p @ (v - m)) for m, p in zip(means, full, strict=True)] for v in x]
        )
        assert_close(squared_distances(x, means, precision_factor(precision)), want)


def test_the_three_users_compute_with_the_same_statistics():
    """The OOD estimator, the CONEC selector and alignment's draws all come from this module:
    on the same (unit-norm) features they agree with it exactly."""
    x, y = grouped()
    unit = torch.nn.functional.normalize(x, dim=1)
    stats = SharedCovarianceGaussians.from_groups(unit, y)
    precision, _ = stats.precision()
    ood = MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(unit.numpy(), y.numpy())
    selector = MahalanobisDomainSelector().fit(x, y)
    np.testing.assert_array_equal(ood.precision_, precision.numpy())
    torch.testing.assert_close(selector.precision_, precision, rtol=0, atol=0)
    d = squared_distances(unit, stats.means(), precision_factor(precision))
    np.testing.assert_array_equal(ood.score_samples(unit.numpy()), d.numpy())
    torch.testing.assert_close(selector.scores(x), d.sqrt(), rtol=0, atol=0)


def test_alignment_refits_a_head_from_the_statistics_alone():
    x, y = grouped(per_group=40, width=8)
    stats = SharedCovarianceGaussians.from_groups(x, y)
    head = torch.nn.Linear(8, GROUPS)
    torch.nn.init.zeros_(head.weight)
    align_head(head, stats, seed=0)
    with torch.no_grad():
        accuracy = (head(x.float()).argmax(1) == y).float().mean()
    assert accuracy > 0.9


def test_statistics_files_in_the_format_earlier_versions_wrote_still_load(tmp_path: Path):
    """``class_stats.safetensors`` and the selector part of ``conec.safetensors`` as written
    since phase 2 existed: int64 counts, float64 sums / scatter, a float64 scalar."""
    x, y = grouped()
    counts = torch.bincount(y)
    sums = torch.stack([x[y == g].sum(0) for g in range(GROUPS)])
    r = torch.from_numpy(residuals(x, y))
    written = {
        "counts": counts.to(torch.int64),
        "sums": sums,
        "scatter": r.T @ r,
        "fourth_power_sum": r.square().sum(1).square().sum(),
    }
    save_file(written, tmp_path / "class_stats.safetensors")
    save_file({f"selector.mahalanobis.{k}": v for k, v in written.items()}, tmp_path / "c.st")

    stats = SharedCovarianceGaussians.from_state_dict(
        load_file(tmp_path / "class_stats.safetensors")
    )
    selector = MahalanobisDomainSelector()
    prefix = "selector.mahalanobis."
    selector.load_state_dict(
        {k.removeprefix(prefix): v for k, v in load_file(tmp_path / "c.st").items()}
    )

    assert tuple(stats.state_dict()) == STATS_KEYS
    assert {k: v.dtype for k, v in stats.state_dict().items()} == {
        k: v.dtype for k, v in written.items()
    }
    reference = LedoitWolf(assume_centered=True).fit(r.numpy())
    assert_close(stats.precision()[0], reference.precision_)
    assert_close(selector.precision_, reference.precision_)


@pytest.mark.parametrize(
    ("features", "groups", "message"),
    [
        (torch.ones(4, 3), torch.tensor([0, 0, 2, 2]), r"groups \[1\] have none"),
        (torch.ones(4, 3), torch.tensor([0, 1]), "groups of shape"),
        (torch.ones(4), torch.tensor([0, 0, 1, 1]), r"must be \(N, F\)"),
        (torch.ones(0, 3), torch.zeros(0, dtype=torch.long), "no features"),
    ],
)
def test_bad_groups_are_refused_naming_the_problem(features, groups, message):
    with pytest.raises(GaussianStatsError, match=message):
        SharedCovarianceGaussians.from_groups(features, groups)
