"""The OOD check after a task learned without the old images: carried forward, and measured.

After a continuation the adapter answers from moved features (SD-LoRA's magnitudes and
CONEC's shared LoRAs change every image's features a little), and new classes have no
statistics yet. Two ways forward, chosen by what the team has:

- **with an evaluation set**: re-estimate everything (`calibrate_package` on the task's images
  plus the evaluation set: Gaussians on their ``train`` split, thresholds on ``val``, AUROC on
  ``test`` against hold-out diseases and other crops), as the full pipeline does;
- **without one**: carry the parent's calibration (old classes' means, the shared covariance,
  old thresholds) and add the new classes' means and thresholds from the task's own ``train``
  and ``val`` images under the child's features.

Either way the drift is measured and written into the package's metrics, so nobody has to
trust the carried statistics blind:

- ``ood_task_feature_shift``: the task's images through parent and child, the mean squared
  Mahalanobis distance (parent precision; with per-class covariances, that of the class the
  parent finds nearest) between the two feature vectors of each image,
  divided by the parent's pooled threshold (1.0: the shift alone is as large as the radius an
  image may be from its class mean);
- with an evaluation set, ``ood_old_score_ratio``: the mean own-class score of the evaluation
  set's old-class images under the parent's carried statistics, child features over parent
  features (1.0: the old classes did not move; 2.0: they sit twice as far out), and
  ``ood_old_rejected_carried`` / ``ood_old_rejected_parent``: the share of those images the
  carried thresholds would call unknown with child / parent features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aads.adapters.loading import LoadedAdapter
from aads.adapters.package import OOD_DIR, AdapterMeta, update_package
from aads.config import OODSettings
from aads.continual.base import ContinuationError
from aads.data.manifest import ManifestRow
from aads.gaussians import pinvh
from aads.ood.calibrate import FeatureSet, adapter_features
from aads.ood.detector import (
    CalibrationRecord,
    ClassCalibration,
    OODDetector,
    save_detector,
)
from aads.ood.mahalanobis import MIN_PER_CLASS_SAMPLES, MahalanobisEstimator, own_class_precision
from aads.ood.thresholds import ClassThresholds, fit_thresholds


def _new_class_precisions(
    state: dict[str, np.ndarray], x: np.ndarray, index: np.ndarray, n_old: int, n_new: int
) -> dict[str, np.ndarray]:
    """Per-class covariances for the added classes, by the estimator's own rule: a class with
    `MIN_PER_CLASS_SAMPLES` images gets its own Ledoit-Wolf covariance, a thinner one the old
    classes' pooled covariance (their count-weighted mean: the within-class covariance the
    parent's classes share), listed as a fallback class."""
    old_precision = state["precision"][:n_old]
    counts = state["counts"][:n_old].astype(np.float64)
    covariances = np.stack([_pinvh(p) for p in old_precision])
    pooled = _pinvh(np.tensordot(counts / counts.sum(), covariances, axes=1))
    precisions, fallback = [], list(state["fallback_classes"].astype(int))
    for i in range(n_new):
        own = x[index == i]
        if len(own) >= MIN_PER_CLASS_SAMPLES:
            precisions.append(own_class_precision(own))
        else:
            precisions.append(pooled)
            fallback.append(n_old + i)
    return {
        "precision": np.concatenate([old_precision, np.stack(precisions)]),
        "fallback_classes": np.asarray(fallback, dtype=np.int64),
    }


def _pinvh(matrix: np.ndarray) -> np.ndarray:
    return pinvh(torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float64))).numpy()


def carried_detector(
    parent: OODDetector,
    classes: list[str],
    fit: FeatureSet,
    calibration: FeatureSet,
    settings: OODSettings,
) -> OODDetector:
    """The parent's detector with `classes` beyond the parent's added: their means from `fit`
    (the child's features of the task's train images), their thresholds from `calibration`
    (its val images; a class with too few scores gets the new classes' pooled threshold)."""
    old = parent.classes
    if classes[: len(old)] != old:
        raise ContinuationError(f"the child's classes {classes} do not extend the parent's {old}")
    est = parent.estimator
    new = classes[len(old) :]
    state = est.state_dict()
    values, sources = parent.thresholds.values, list(parent.thresholds.source)
    counts = parent.thresholds.counts
    per_class = dict(parent.record.per_class)
    if new:
        x = est.transform(fit.features)
        index = fit.labels - len(old)
        missing = [c for i, c in enumerate(new) if not (index == i).any()]
        if missing:
            raise ContinuationError(f"no training images to carry OOD statistics for {missing}")
        means = np.stack([x[index == i].mean(0) for i in range(len(new))])
        fitted = np.bincount(index[index >= 0], minlength=len(new))
        state = {
            **state,
            "means": np.concatenate([state["means"], means]),
            "counts": np.concatenate([state["counts"], fitted]).astype(np.int64),
        }
        if est.covariance == "per_class":
            state |= _new_class_precisions(state, x, index, len(old), len(new))
        grown = MahalanobisEstimator.from_state_dict(
            state, est.covariance, est.feature_space, est.relative
        )
        cal_index = calibration.labels - len(old)
        keep = cal_index >= 0
        if not keep.any():
            raise ContinuationError(
                f"no validation images of {new} to set their OOD thresholds (the task's images "
                "are split train/val/test; add images)"
            )
        scores = grown.score_samples(calibration.features[keep])
        own = scores[np.arange(len(scores)), calibration.labels[keep]]
        added = fit_thresholds(own, cal_index[keep], len(new), settings.threshold)
        values = np.concatenate([values, added.values])
        sources += added.source
        counts = np.concatenate([counts, added.counts])
        for i, name in enumerate(new):
            per_class[name] = ClassCalibration(
                threshold=float(added.values[i]),
                source=added.source[i],
                fit_samples=int(fitted[i]),
                calibration_samples=int(added.counts[i]),
            )
        est = grown
    thresholds = ClassThresholds(values, sources, counts, parent.thresholds.pooled)
    record = CalibrationRecord(
        **{
            **parent.record.model_dump(exclude={"classes", "per_class", "fitted", "evaluation"}),
            "classes": classes,
            "covariance_fallback_classes": [classes[i] for i in est.fallback_classes_],
            "per_class": {c: per_class[c] for c in classes},
        }
    )
    return OODDetector(est, thresholds, record)


def task_feature_shift(parent: LoadedAdapter, child: LoadedAdapter, rows, root: Path) -> float:
    """``ood_task_feature_shift`` (see the module's docstring) over `rows`."""
    if parent.ood is None or not rows:
        return float("nan")
    before = adapter_features(parent, rows, root).features
    after = adapter_features(child, rows, root).features
    est = parent.ood.estimator
    a, b = est.transform(before), est.transform(after)
    precision = est.precision_
    diff = b - a
    if precision.ndim == 1:
        squared = (diff**2 * precision).sum(1)
    elif precision.ndim == 2:
        squared = np.einsum("ij,jk,ik->i", diff, precision, diff)
    else:  # per-class covariances: each image's shift in its nearest parent class's metric
        nearest, _ = est.min_distance(before)
        squared = np.einsum("ij,ijk,ik->i", diff, precision[nearest], diff)
    return float(squared.mean() / parent.ood.thresholds.pooled)


def old_class_drift(
    parent: LoadedAdapter, child: LoadedAdapter, rows: list[ManifestRow], root: Path
) -> dict[str, float]:
    """How far the evaluation set's old-class images moved from the parent's carried class
    statistics (see the module's docstring); `rows` are images of the parent's classes."""
    if parent.ood is None or not rows:
        return {}
    det = parent.ood
    out: dict[str, float] = {}
    scores = {}
    for name, adapter in (("parent", parent), ("carried", child)):
        found = adapter_features(adapter, rows, root)
        labels = np.asarray([det.classes.index(r.label) for r in rows])
        own = det.estimator.score_samples(found.features)[np.arange(len(rows)), labels]
        scores[name] = own
        out[f"ood_old_rejected_{name}"] = float((own > det.thresholds.values[labels]).mean())
    out["ood_old_score_ratio"] = float(scores["carried"].mean() / scores["parent"].mean())
    return out


def write_detector(pkg_dir: Path, detector: OODDetector, summary: dict[str, float]) -> None:
    """Store a carried detector in the package's ``ood/`` and its summary in ``adapter.json``."""

    def change(staging: Path, meta: AdapterMeta) -> AdapterMeta:
        save_detector(detector, staging / OOD_DIR)
        s = detector.record.settings
        meta.ood = {
            "method": f"mahalanobis/{s.covariance}/{s.feature_space}"
            + ("/relative" if s.relative else ""),
            "threshold": s.threshold.mode,
            "carried_from_parent": 1.0,
            **{k: round(v, 6) for k, v in summary.items() if np.isfinite(v)},
        }
        return meta

    update_package(pkg_dir, change)
