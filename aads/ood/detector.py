"""The OOD detector an adapter serves with: estimator + per-class thresholds + its record.

`fit_detector` fits the Gaussian on training features and the thresholds on held-out ones
(scores of images a model was fitted on are optimistically small, so thresholds from them
reject too many real in-distribution images). `OODDetector.verdicts` turns a batch of features
(and the head's logits) into one answer per image: a disease class, or ``unknown`` with the
nearest class as a hint, never an out-of-distribution image forced into a class.

On disk (the adapter package's ``ood/`` folder, or any directory):
``calibration.safetensors`` (means, precision(s), thresholds; float64) and
``calibration.json`` (`CalibrationRecord`: method, feature space, per-class thresholds and
where each came from, sample counts, the manifest hash the data came from, evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load_file, save_file

from aads.atomic import atomic_write, atomic_write_text
from aads.config import OODSettings
from aads.ood.mahalanobis import MahalanobisEstimator, OODError
from aads.ood.thresholds import ClassThresholds, fit_thresholds

CALIBRATION_TENSORS = "calibration.safetensors"
CALIBRATION_RECORD = "calibration.json"
UNKNOWN = "unknown"
FORMAT = "aads-ood/1"


class ClassCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float
    source: str = Field(description="'class' (its own scores) or 'pooled' (too few of its own)")
    fit_samples: int
    calibration_samples: int = Field(description="held-out scores its threshold was set on")
    leave_one_out_samples: int = Field(
        0,
        description="of those, training images scored against the class fitted without them "
        "(a class a continuation added from a few photos; see aads.continual.ood)",
    )


class CalibrationRecord(BaseModel):
    """``calibration.json``: everything needed to read, audit and reproduce a calibration."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    settings: OODSettings
    classes: list[str]
    feature_dim: int
    shrinkage: float
    covariance_fallback_classes: list[str] = Field(default_factory=list)
    pooled_threshold: float
    per_class: dict[str, ClassCalibration]
    manifest_sha256: str = ""
    fitted: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    evaluation: dict[str, float] = Field(default_factory=dict)


class Verdict(BaseModel):
    """One image's answer. ``label`` is a class name, or ``unknown`` when ``is_ood``."""

    label: str
    is_ood: bool
    predicted_class: str = Field(description="the head's argmax (the nearest class without logits)")
    confidence: float = Field(description="softmax probability of predicted_class; 0..1")
    nearest_class: str = Field(description="class with the smallest Mahalanobis score: the hint")
    distance: float = Field(description="that smallest (squared; relative if configured) score")
    threshold: float = Field(description="the nearest class's threshold; OOD when distance > it")


@dataclass(frozen=True)
class Detection:
    """Vectorised verdict parts for N samples."""

    nearest: np.ndarray  # (N,) class index
    score: np.ndarray  # (N,) smallest class score
    threshold: np.ndarray  # (N,) threshold of the nearest class
    is_ood: np.ndarray  # (N,) bool


@dataclass
class OODDetector:
    estimator: MahalanobisEstimator
    thresholds: ClassThresholds
    record: CalibrationRecord

    @property
    def classes(self) -> list[str]:
        return self.record.classes

    def detect(self, features: np.ndarray) -> Detection:
        nearest, score = self.estimator.min_distance(features)
        threshold = self.thresholds.values[nearest]
        return Detection(nearest, score, threshold, score > threshold)

    def verdicts(self, features: np.ndarray, logits: np.ndarray | None = None) -> list[Verdict]:
        """One `Verdict` per row of `features`; `logits` (N, C) are the head's, same class order."""
        found = self.detect(features)
        if logits is not None:
            logits = np.asarray(logits, dtype=np.float64)
            if logits.shape != (len(found.score), len(self.classes)):
                raise OODError(
                    f"logits have shape {logits.shape}, expected ({len(found.score)}, "
                    f"{len(self.classes)}) for this calibration's classes"
                )
            shifted = np.exp(logits - logits.max(1, keepdims=True))
            probs = shifted / shifted.sum(1, keepdims=True)
            predicted = probs.argmax(1)
            confidence = probs[np.arange(len(probs)), predicted]
        else:
            predicted, confidence = found.nearest, np.ones(len(found.score))
        out = []
        for i in range(len(found.score)):
            is_ood = bool(found.is_ood[i])
            out.append(
                Verdict(
                    label=UNKNOWN if is_ood else self.classes[predicted[i]],
                    is_ood=is_ood,
                    predicted_class=self.classes[predicted[i]],
                    confidence=float(confidence[i]),
                    nearest_class=self.classes[found.nearest[i]],
                    distance=float(found.score[i]),
                    threshold=float(found.threshold[i]),
                )
            )
        return out


def fit_detector(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    calibration_features: np.ndarray,
    calibration_labels: np.ndarray,
    classes: list[str],
    settings: OODSettings,
    *,
    manifest_sha256: str = "",
) -> OODDetector:
    """Gaussians on `fit_*`, thresholds on held-out `calibration_*` (labels index `classes`)."""
    fit_labels, calibration_labels = np.asarray(fit_labels), np.asarray(calibration_labels)
    if len(fit_labels) and fit_labels.max() >= len(classes):
        raise OODError(f"labels must index the {len(classes)} classes")
    missing = sorted(set(range(len(classes))) - set(fit_labels.tolist()))
    if missing:
        raise OODError(
            "every class needs images to fit OOD statistics; none for "
            + ", ".join(repr(classes[c]) for c in missing)
        )
    estimator = MahalanobisEstimator(
        settings.covariance, settings.feature_space, settings.relative
    ).fit(fit_features, fit_labels)
    scores = estimator.score_samples(calibration_features)
    own = scores[np.arange(len(scores)), calibration_labels] if len(scores) else scores[:, 0]
    thresholds = fit_thresholds(own, calibration_labels, len(classes), settings.threshold)
    cal_counts = np.bincount(calibration_labels, minlength=len(classes))
    record = CalibrationRecord(
        settings=settings,
        classes=list(classes),
        feature_dim=estimator.n_features_in_,
        shrinkage=estimator.shrinkage_,
        covariance_fallback_classes=[classes[c] for c in estimator.fallback_classes_],
        pooled_threshold=thresholds.pooled,
        per_class={
            name: ClassCalibration(
                threshold=float(thresholds.values[c]),
                source=thresholds.source[c],
                fit_samples=int(estimator.counts_[c]),
                calibration_samples=int(cal_counts[c]),
            )
            for c, name in enumerate(classes)
        },
        manifest_sha256=manifest_sha256,
    )
    return OODDetector(estimator, thresholds, record)


def save_detector(detector: OODDetector, out_dir: Path) -> None:
    """Tensors first, the record last: a folder with a record has matching tensors."""
    out_dir = Path(out_dir)
    tensors = {f"estimator.{k}": v for k, v in detector.estimator.state_dict().items()}
    tensors["thresholds"] = np.ascontiguousarray(detector.thresholds.values, dtype=np.float64)
    atomic_write(out_dir / CALIBRATION_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(
        out_dir / CALIBRATION_RECORD, detector.record.model_dump_json(indent=2) + "\n"
    )


def load_detector(ood_dir: Path) -> OODDetector | None:
    """The detector saved in `ood_dir`, or None when it holds no calibration."""
    ood_dir = Path(ood_dir)
    record_path = ood_dir / CALIBRATION_RECORD
    if not record_path.is_file():
        return None
    try:
        record = CalibrationRecord.model_validate_json(record_path.read_text())
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise OODError(f"{record_path}: invalid ({fields})") from None
    tensors_path = ood_dir / CALIBRATION_TENSORS
    if not tensors_path.is_file():
        raise OODError(f"{ood_dir}: {CALIBRATION_RECORD} without {CALIBRATION_TENSORS}")
    tensors = load_file(str(tensors_path))
    state = {k.removeprefix("estimator."): v for k, v in tensors.items() if k != "thresholds"}
    s = record.settings
    estimator = MahalanobisEstimator.from_state_dict(
        state, s.covariance, s.feature_space, s.relative
    )
    values = tensors.get("thresholds")
    classes = record.classes
    if values is None or values.shape != (len(classes),) or len(estimator.means_) != len(classes):
        raise OODError(f"{tensors_path}: thresholds/means do not match the {len(classes)} classes")
    thresholds = ClassThresholds(
        values=values.astype(np.float64),
        source=[record.per_class[c].source for c in classes],
        counts=np.asarray([record.per_class[c].calibration_samples for c in classes]),
        pooled=record.pooled_threshold,
    )
    return OODDetector(estimator, thresholds, record)
