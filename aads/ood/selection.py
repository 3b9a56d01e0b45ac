"""Choose the OOD method by data: every estimator x feature space x relative x threshold rule,
scored on the same extracted features.

Ranking (documented so the default in ``config/*.yaml`` can be re-derived):

1. Separation first: the mean AUROC over the available OOD kinds (near: unknown diseases of
   the crop, loco: leave-one-class-out, far: other crops). AUROC does not depend on the
   threshold rule.
2. Then the threshold rule of that method with the best balanced operating accuracy at the
   calibrated thresholds: ((1 - id_rejected) + mean share of OOD detected) / 2, i.e. what a
   user of the served adapter actually gets.
"""

from __future__ import annotations

import itertools

import numpy as np

from aads.config import OODSettings, ThresholdSettings
from aads.ood.calibrate import FeatureSet, calibrate_features
from aads.ood.mahalanobis import COVARIANCES, FEATURE_SPACES

OOD_KINDS = ("near", "loco", "far")


def method_grid(base: ThresholdSettings) -> list[OODSettings]:
    """Every combination, thresholds otherwise as in `base` (k, percentile, min_samples)."""
    return [
        OODSettings(
            covariance=cov,
            feature_space=space,
            relative=relative,
            threshold=base.model_copy(update={"mode": mode}),
        )
        for cov, space, relative, mode in itertools.product(
            COVARIANCES, FEATURE_SPACES, (False, True), ("percentile", "mean_std")
        )
    ]


def method_row(settings: OODSettings, metrics: dict[str, float]) -> dict[str, object]:
    aurocs = [metrics[f"{k}_auroc"] for k in OOD_KINDS if f"{k}_auroc" in metrics]
    detected = [metrics[f"{k}_detected"] for k in OOD_KINDS if f"{k}_detected" in metrics]
    id_rejected = metrics.get("id_rejected", float("nan"))
    return {
        "covariance": settings.covariance,
        "feature_space": settings.feature_space,
        "relative": settings.relative,
        "threshold": settings.threshold.mode,
        "mean_auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
        "balanced_operating_accuracy": float(((1 - id_rejected) + np.mean(detected)) / 2)
        if detected
        else float("nan"),
        **metrics,
    }


def compare_methods(
    parts: dict[str, FeatureSet], classes: list[str], base: ThresholdSettings
) -> list[dict[str, object]]:
    """One row of metrics per method in `method_grid`, same features for all."""
    rows = []
    for settings in method_grid(base):
        metrics = calibrate_features(parts, classes, settings, loco=len(classes) >= 3).metrics
        metrics["loco_detected"] = metrics.get("loco_ood_detected", float("nan"))
        if not np.isfinite(metrics["loco_detected"]):
            del metrics["loco_detected"]
        rows.append(method_row(settings, metrics))
    return rows


def best_method(rows: list[dict[str, object]]) -> dict[str, object]:
    """The row the ranking above puts first (ties: earlier in `method_grid` order)."""
    best_auroc = max(float(r["mean_auroc"]) for r in rows)
    top = [r for r in rows if float(r["mean_auroc"]) >= best_auroc - 1e-12]
    return max(top, key=lambda r: float(r["balanced_operating_accuracy"]))
