"""The OOD check after a task learned without the old images: carried forward, and measured.

After a continuation the adapter answers from moved features (SD-LoRA's magnitudes and
CONEC's shared LoRAs change every image's features a little), and new classes have no
statistics yet. Two ways forward, chosen by what the team has:

- **with an evaluation set as large as the parent's check** (``continuation.ood: auto``; see
  `aads.continual.run._re_estimates`): re-estimate everything (`calibrate_package` on the
  task's images plus the evaluation set: Gaussians on their ``train`` split, thresholds on
  ``val``, AUROC on ``test`` against hold-out diseases and other crops), as the full pipeline
  does;
- **without one, or with one thinner than the parent's check**: carry the parent's
  calibration (old classes' means, covariances, thresholds) and add the new classes' means and
  thresholds from the task's own ``train`` and ``val`` images under the child's features. An
  evaluation set is re-estimated on only when it fits every old class on at least as many
  images as the parent's check was fitted on: measured on the demo's field loop, re-estimating
  pepper's check on the 6 evaluation images a class (the parent's: 40) dropped far-OOD AUROC
  from 1.000 to 0.768, while carrying it kept 0.994 against the parent's 0.995.

A new class is learned from a handful of photos (a captured cluster), so its validation split
may hold one or two images, and a threshold set on those is about their median: half the
class's own photos would be answered unknown. So a new class with fewer than
``threshold.min_samples`` validation scores also gets leave-one-out scores of its training
images (each scored against the class's mean and covariance fitted without it: a held-out
score, slightly pessimistic since the class keeps all its images), and its threshold is set
on both (recorded as ``leave_one_out_samples``).

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
from aads.ood.thresholds import POOLED, ClassThresholds, fit_thresholds


def own_covariance_minimum(settings: OODSettings) -> int:
    """How many training photos a class a continuation adds needs for its own covariance.

    The estimator fits one from `MIN_PER_CLASS_SAMPLES` (2), which is harmless where classes
    have dozens of images; a class learned from a few captured photos is another matter.
    Measured on the demo's field loop (pepper + anthracnose, v1's check carried): the new class
    fitted on 2 photos with its own Ledoit-Wolf covariance cost far-OOD AUROC 0.272 against
    the parent, with the old classes' pooled covariance 0.003. So it takes as many photos as
    a class needs for a threshold of its own (``threshold.min_samples``)."""
    return max(MIN_PER_CLASS_SAMPLES, settings.threshold.min_samples)


def _new_class_precisions(
    state: dict[str, np.ndarray],
    x: np.ndarray,
    index: np.ndarray,
    pooled: np.ndarray,
    n_old: int,
    n_new: int,
    min_own: int,
) -> dict[str, np.ndarray]:
    """Per-class covariances for the added classes: a class with `min_own` images
    (`own_covariance_minimum`) gets its own Ledoit-Wolf covariance, a thinner one the old
    classes' `pooled` precision (`_pooled_precision`: the within-class covariance the parent's
    classes share), listed as a fallback class."""
    old_precision = state["precision"][:n_old]
    precisions, fallback = [], list(state["fallback_classes"].astype(int))
    for i in range(n_new):
        own = x[index == i]
        precisions.append(_class_precision(own, pooled, min_own))
        if len(own) < min_own:
            fallback.append(n_old + i)
    return {
        "precision": np.concatenate([old_precision, np.stack(precisions)]),
        "fallback_classes": np.asarray(fallback, dtype=np.int64),
    }


def _with_leave_one_out(
    grown: MahalanobisEstimator,
    features: np.ndarray,
    index: np.ndarray,
    scores: np.ndarray,
    score_index: np.ndarray,
    settings: OODSettings,
    n_old: int,
    pooled: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`scores` (new classes' validation scores, class `score_index`) plus, for each new class
    with fewer than ``threshold.min_samples`` of them, the leave-one-out scores of its training
    images (`features` of new class `index`; see the module's docstring). `pooled` is the old
    classes' pooled precision with per-class covariances (a thin class is fitted on it, as in
    `_new_class_precisions`), None with a shared one. Returns the scores, their classes and how
    many leave-one-out scores each class got."""
    state = grown.state_dict()
    held_out = np.zeros(len(grown.means_) - n_old, dtype=np.int64)
    min_samples, min_own = settings.threshold.min_samples, own_covariance_minimum(settings)
    extra, extra_index = [], []
    for i in range(len(held_out)):
        own = features[index == i]
        if (score_index == i).sum() >= min_samples or len(own) < 2:
            continue
        x = grown.transform(own)
        for j in range(len(own)):
            rest = np.delete(x, j, axis=0)
            one = {**state, "means": rest.mean(0, keepdims=True), "counts": np.asarray([len(rest)])}
            one["fallback_classes"] = np.zeros(0, dtype=np.int64)
            if pooled is not None:  # per-class covariances: fitted as the class itself is
                one["precision"] = _class_precision(rest, pooled, min_own)[None]
            est = MahalanobisEstimator.from_state_dict(
                one, grown.covariance, grown.feature_space, grown.relative
            )
            extra.append(float(est.score_samples(own[j : j + 1])[0, 0]))
            extra_index.append(i)
        held_out[i] = len(own)
    return (
        np.concatenate([scores, np.asarray(extra, dtype=np.float64)]),
        np.concatenate([score_index, np.asarray(extra_index, dtype=np.int64)]).astype(np.int64),
        held_out,
    )


def _new_thresholds(
    scores: np.ndarray, index: np.ndarray, n_new: int, settings: OODSettings, parent_pooled: float
) -> ClassThresholds:
    """The added classes' thresholds from their held-out `scores`, by the estimator's rule (a
    class with ``min_samples`` scores its own, a thinner one the pooled statistic), except that
    when all of them together hold fewer than ``min_samples`` (two captured photos: one to
    train on, one to test), the pooled threshold is the parent's, set on its many old-class
    scores, rather than a statistic of one or two."""
    if len(scores) >= settings.threshold.min_samples:
        return fit_thresholds(scores, index, n_new, settings.threshold)
    return ClassThresholds(
        np.full(n_new, parent_pooled),
        [POOLED] * n_new,
        np.bincount(index, minlength=n_new),
        parent_pooled,
    )


def _class_precision(x: np.ndarray, pooled: np.ndarray, min_own: int) -> np.ndarray:
    """An added class's precision from its (transformed) images `x`: its own Ledoit-Wolf one
    from `min_own` images (`own_covariance_minimum`), else the old classes' `pooled` one."""
    return own_class_precision(x) if len(x) >= min_own else pooled


def _pooled_precision(state: dict[str, np.ndarray], n_old: int) -> np.ndarray:
    """The precision of the old classes' pooled covariance (their count-weighted mean)."""
    counts = state["counts"][:n_old].astype(np.float64)
    covariances = np.stack([_pinvh(p) for p in state["precision"][:n_old]])
    return _pinvh(np.tensordot(counts / counts.sum(), covariances, axes=1))


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
        # One pseudo-inverse per old class: computed once, for the fit and leave-one-out alike.
        pooled = _pooled_precision(state, len(old)) if est.covariance == "per_class" else None
        if pooled is not None:
            min_own = own_covariance_minimum(settings)
            state |= _new_class_precisions(state, x, index, pooled, len(old), len(new), min_own)
        grown = MahalanobisEstimator.from_state_dict(
            state, est.covariance, est.feature_space, est.relative
        )
        cal_index = calibration.labels - len(old)
        keep = cal_index >= 0
        scores = grown.score_samples(calibration.features[keep])
        own = scores[np.arange(len(scores)), calibration.labels[keep]]
        own, own_index, held_out = _with_leave_one_out(
            grown, fit.features, index, own, cal_index[keep], settings, len(old), pooled
        )
        added = _new_thresholds(own, own_index, len(new), settings, parent.thresholds.pooled)
        values = np.concatenate([values, added.values])
        sources += added.source
        counts = np.concatenate([counts, added.counts])
        for i, name in enumerate(new):
            per_class[name] = ClassCalibration(
                threshold=float(added.values[i]),
                source=added.source[i],
                fit_samples=int(fitted[i]),
                calibration_samples=int(added.counts[i]),
                leave_one_out_samples=int(held_out[i]),
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
