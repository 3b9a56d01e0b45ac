"""Per-class OOD thresholds from held-out in-distribution scores.

Each calibration image is scored against its own (true) class; a class's threshold is either

- ``mean_std``: mean + k * std of those scores (the seed plan's rule; std with ddof=1), or
- ``percentile``: their empirical q-th percentile (linear interpolation, numpy's default).

Squared Mahalanobis distances are chi-square-like and right-skewed, so mean + 2 std does not
reject a predictable share of in-distribution images while the percentile does by
construction; both are offered and `benchmarks/ood.py` measures them. A class with fewer than
``min_samples`` calibration scores gets the pooled threshold (the same statistic over every
class's scores) and is recorded as such, so a thin class neither gets a noisy threshold nor
hides that it has none of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aads.config import ThresholdSettings
from aads.ood.mahalanobis import OODError

POOLED = "pooled"
OWN = "class"


@dataclass(frozen=True)
class ClassThresholds:
    """One threshold per class, where each came from, and how many scores it saw."""

    values: np.ndarray  # (C,) float64
    source: list[str]  # per class: "class" or "pooled"
    counts: np.ndarray  # (C,) calibration scores per class
    pooled: float

    def __post_init__(self) -> None:
        if not (len(self.values) == len(self.source) == len(self.counts)):
            raise OODError("thresholds, sources and counts must have one entry per class")


def threshold_statistic(scores: np.ndarray, settings: ThresholdSettings) -> float:
    """The threshold the settings' rule puts on one set of in-distribution scores."""
    if len(scores) == 0:
        raise OODError("a threshold needs at least one calibration score")
    if settings.mode == "percentile":
        return float(np.percentile(scores, settings.percentile))
    std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    return float(np.mean(scores)) + settings.k * std


def fit_thresholds(
    own_class_scores: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    settings: ThresholdSettings,
) -> ClassThresholds:
    """Thresholds for classes 0..num_classes-1 from held-out scores against the true class."""
    scores = np.asarray(own_class_scores, dtype=np.float64)
    y = np.asarray(labels)
    if scores.shape != y.shape or scores.ndim != 1:
        raise OODError(f"scores {scores.shape} and labels {y.shape} must be equal-length vectors")
    if not np.isfinite(scores).all():
        raise OODError("calibration scores contain NaN or inf")
    if len(scores) == 0:
        raise OODError("no held-out calibration images: thresholds need in-distribution scores")
    if y.min() < 0 or y.max() >= num_classes:
        raise OODError(f"labels must lie in 0..{num_classes - 1}")
    counts = np.bincount(y, minlength=num_classes)
    pooled = threshold_statistic(scores, settings)
    values, source = np.full(num_classes, pooled), [POOLED] * num_classes
    for c in np.flatnonzero(counts >= settings.min_samples):
        values[c] = threshold_statistic(scores[y == c], settings)
        source[c] = OWN
    return ClassThresholds(values, source, counts, pooled)
