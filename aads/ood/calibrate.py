"""Calibrate and evaluate an adapter package's OOD check on the images of a manifest.

Which images play which part, for the package's crop:

- in-distribution: the package's classes in the domains it knows; the Gaussians are fitted on
  the ``train`` split, thresholds on ``val`` (held out), metrics use ``test``;
- near-OOD: the same crop's images of classes the package does not know (the config's
  ``ood_holdout`` classes, and classes of later phases it has not learned yet);
- far-OOD: other crops' images (at most `FAR_OOD_LIMIT`, chosen by hash so runs agree).

Features are the adapter's own pooled features (after DoRA, SD-LoRA and CONEC routing), the
vector its head reads, extracted once per image and reused by every method compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aads.adapters.loading import LoadedAdapter, load_adapter
from aads.adapters.package import OOD_DIR, AdapterMeta, update_package
from aads.adapters.phases.common import image_loader
from aads.config import OODSettings, PlatformConfig, TrainingSettings
from aads.data.manifest import ManifestRow
from aads.ood.detector import OODDetector, fit_detector, save_detector
from aads.ood.evaluation import leave_one_class_out, ood_metrics, operating_point, save_roc
from aads.ood.mahalanobis import OODError
from aads.ood.reference import reference_sample, save_reference_features
from aads.progress import Progress

FAR_OOD_LIMIT = 400
ROC_NAME = "roc"


@dataclass(frozen=True)
class OODRows:
    fit: list[ManifestRow]
    calibration: list[ManifestRow]
    test: list[ManifestRow]
    near: list[ManifestRow]
    far: list[ManifestRow]


def ood_rows(rows: list[ManifestRow], meta: AdapterMeta, far_limit: int = FAR_OOD_LIMIT) -> OODRows:
    """Split a manifest into the parts above for the package described by `meta`."""
    known, domains = set(meta.classes), set(meta.domains)
    mine = [r for r in rows if r.crop == meta.crop and r.domain in domains]
    inside = [r for r in mine if r.label in known]
    far = sorted((r for r in rows if r.crop != meta.crop), key=lambda r: r.sha256)[:far_limit]
    parts = OODRows(
        fit=[r for r in inside if r.split == "train"],
        calibration=[r for r in inside if r.split == "val"],
        test=[r for r in inside if r.split == "test"],
        near=[r for r in mine if r.label not in known],
        far=far,
    )
    if not parts.fit:
        raise OODError(
            f"no training images of {meta.crop}'s classes {meta.classes} in the manifest"
        )
    if not parts.calibration:
        raise OODError(
            f"no validation-split images of {meta.crop}'s classes: thresholds need held-out "
            "in-distribution images (data.splits.val > 0)"
        )
    return parts


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, F) float64
    logits: np.ndarray  # (N, C) float64
    labels: np.ndarray  # (N,) index into the package's classes; -1 for unknown labels


def adapter_features(
    adapter: LoadedAdapter,
    rows: list[ManifestRow],
    data_root: Path,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> FeatureSet:
    """The adapter's pooled features and logits for `rows`, in row order."""
    width, classes = adapter.backbone.feature_dim, adapter.classes
    if not rows:
        return FeatureSet(np.zeros((0, width)), np.zeros((0, len(classes))), np.zeros(0, int))
    labels_present = sorted({r.label for r in rows})
    loader = image_loader(
        rows,
        data_root,
        labels_present,
        adapter.backbone,
        TrainingSettings(batch_size=batch_size),
        train=False,
    )
    feats, logits = [], []
    for pixels, _, _ in loader:
        f, z = adapter.features_and_logits(pixels)
        feats.append(f.double())
        logits.append(z.double())
        if progress:
            progress(sum(len(x) for x in feats), len(rows))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index.get(r.label, -1) for r in rows])
    return FeatureSet(torch.cat(feats).numpy(), torch.cat(logits).numpy(), labels)


@dataclass
class CalibrationResult:
    detector: OODDetector
    metrics: dict[str, float]
    loco: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    reference: np.ndarray | None = None  # drift's reference: a sample of calibration features
    reference_total: int = 0
    # label -> (in-distribution rejected, OOD detected) at the calibrated thresholds
    operating_points: dict[str, tuple[float, float]] = field(default_factory=dict)


def calibrate_features(
    parts: dict[str, FeatureSet],
    classes: list[str],
    settings: OODSettings,
    *,
    manifest_sha256: str = "",
    loco: bool = True,
) -> CalibrationResult:
    """Fit on ``fit``, threshold on ``calibration``, evaluate ``test`` vs ``near`` and ``far``."""
    fit, cal, test = parts["fit"], parts["calibration"], parts["test"]
    detector = fit_detector(
        fit.features,
        fit.labels,
        cal.features,
        cal.labels,
        classes,
        settings,
        manifest_sha256=manifest_sha256,
    )
    metrics: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    points: dict[str, tuple[float, float]] = {}
    if len(test.labels):
        id_found = detector.detect(test.features)
        metrics["id_rejected"] = operating_point(id_found.is_ood, np.zeros(0))["id_rejected"]
        for name, label in (
            ("near", "near-OOD: unknown diseases"),
            ("far", "far-OOD: other crops"),
        ):
            if len(parts[name].labels):
                found = detector.detect(parts[name].features)
                metrics |= {
                    f"{name}_{k}": v
                    for k, v in ood_metrics(id_found.score, found.score).items()
                    if k != "n_id"
                }
                metrics[f"{name}_detected"] = float(found.is_ood.mean())
                curves[label] = (id_found.score, found.score)
                points[label] = (metrics["id_rejected"], metrics[f"{name}_detected"])
        metrics["n_id"] = float(len(test.labels))
    loco_metrics: dict[str, dict[str, float]] = {}
    if loco and len(classes) >= 3 and len(test.labels):
        xy = {k: (parts[k].features, parts[k].labels) for k in ("fit", "calibration", "test")}
        loco_metrics = leave_one_class_out(
            xy["fit"], xy["calibration"], xy["test"], classes, settings
        )
        metrics |= {
            f"loco_{k}": v for k, v in loco_metrics["mean"].items() if not k.startswith("n_")
        }
    detector.record.evaluation = metrics
    reference = reference_sample(cal.features)
    return CalibrationResult(
        detector, metrics, loco_metrics, curves, reference, len(cal.features), points
    )


def package_features(
    config: PlatformConfig,
    pkg_dir: Path,
    rows: list[ManifestRow],
    data_root: Path,
    *,
    progress: Progress | None = None,
) -> tuple[AdapterMeta, dict[str, FeatureSet]]:
    """The package's features for each part of `ood_rows` (one pass over the images)."""
    adapter = load_adapter(
        pkg_dir,
        config.storage,
        device=config.adapter.backbone.device,
        dtype=config.adapter.backbone.dtype,
    )
    split = ood_rows(rows, adapter.meta)
    names = ("fit", "calibration", "test", "near", "far")
    ordered = [getattr(split, n) for n in names]
    everything = adapter_features(
        adapter,
        [r for part in ordered for r in part],
        data_root,
        batch_size=config.training.phase1.batch_size,
        progress=progress,
    )
    parts, start = {}, 0
    for name, part in zip(names, ordered, strict=True):
        stop = start + len(part)
        parts[name] = FeatureSet(
            everything.features[start:stop],
            everything.logits[start:stop],
            everything.labels[start:stop],
        )
        start = stop
    return adapter.meta, parts


def calibrate_package(
    config: PlatformConfig,
    pkg_dir: Path,
    rows: list[ManifestRow],
    data_root: Path,
    *,
    manifest_sha256: str = "",
    loco: bool = True,
    write: bool = True,
    progress: Progress | None = None,
) -> CalibrationResult:
    """Calibrate the package's OOD check; with `write`, store it in the package's ``ood/``."""
    meta, parts = package_features(config, pkg_dir, rows, data_root, progress=progress)
    result = calibrate_features(
        parts, meta.classes, config.adapter.ood, manifest_sha256=manifest_sha256, loco=loco
    )
    if write:
        write_calibration(pkg_dir, result)
    return result


def write_calibration(pkg_dir: Path, result: CalibrationResult) -> None:
    """Store detector + ROC (+ the reference feature sample drift monitoring compares with) in
    the package's ``ood/`` and a summary in ``adapter.json``."""

    def change(staging: Path, meta: AdapterMeta) -> AdapterMeta:
        ood_dir = staging / OOD_DIR
        save_detector(result.detector, ood_dir)
        if result.curves:
            title = f"{meta.crop}: OOD ROC"
            save_roc(result.curves, ood_dir, ROC_NAME, title, result.operating_points)
        if result.reference is not None:
            save_reference_features(ood_dir, result.reference, result.reference_total)
        s = result.detector.record.settings
        meta.ood = {
            "method": f"mahalanobis/{s.covariance}/{s.feature_space}"
            + ("/relative" if s.relative else ""),
            "threshold": s.threshold.mode,
            "manifest_sha256": result.detector.record.manifest_sha256,
            **{k: round(v, 6) for k, v in result.metrics.items() if np.isfinite(v)},
        }
        return meta

    update_package(pkg_dir, change)
