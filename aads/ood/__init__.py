"""Out-of-distribution detection: Mahalanobis scores, per-class thresholds, verdicts, metrics.

The maths (`mahalanobis`, `thresholds`, `evaluation`) works on feature arrays and knows nothing
of adapters; `detector` is what serving loads; `calibrate` (import it explicitly) runs the
whole fit + evaluation on an adapter package and a manifest.
"""

from aads.ood.detector import (
    UNKNOWN,
    CalibrationRecord,
    Detection,
    OODDetector,
    Verdict,
    fit_detector,
    load_detector,
    save_detector,
)
from aads.ood.evaluation import leave_one_class_out, ood_metrics, operating_point, save_roc
from aads.ood.mahalanobis import MahalanobisEstimator, OODError
from aads.ood.thresholds import ClassThresholds, fit_thresholds

__all__ = [
    "UNKNOWN",
    "CalibrationRecord",
    "ClassThresholds",
    "Detection",
    "MahalanobisEstimator",
    "OODDetector",
    "OODError",
    "Verdict",
    "fit_detector",
    "fit_thresholds",
    "leave_one_class_out",
    "load_detector",
    "ood_metrics",
    "operating_point",
    "save_detector",
    "save_roc",
]
