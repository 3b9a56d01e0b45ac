"""OOD evaluation: AUROC, FPR@95 (both conventions), AUPR-In/Out, ROC curves, and the
leave-one-class-out protocol, all from scikit-learn's ranking metrics.

Conventions. The score is the detector's: larger = more out-of-distribution. AUROC is
threshold-free and symmetric. FPR@95 has two conventions in the literature and both are
reported:

- ``fpr95_id`` (OpenOOD v1.5): OOD is the positive class; the share of in-distribution images
  flagged OOD at the threshold that catches 95 % of OOD images.
- ``fpr95_ood`` (classic, Hendrycks & Gimpel / Liang et al.): in-distribution is positive; the
  share of OOD images accepted at the threshold that keeps 95 % of in-distribution images.

AUPR-In ranks in-distribution as positive (by the negated score), AUPR-Out ranks OOD as
positive. At the calibrated thresholds the operating point is reported too: in-distribution
images wrongly rejected (``id_rejected``) and OOD images caught (``ood_detected``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from aads.atomic import atomic_write, atomic_write_text
from aads.config import OODSettings
from aads.ood.detector import fit_detector
from aads.ood.mahalanobis import OODError

TARGET_RECALL = 0.95


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, both FPR@95 conventions, AUPR-In and AUPR-Out for two score sets."""
    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise OODError(
            f"OOD metrics need both in-distribution ({len(id_scores)}) and OOD "
            f"({len(ood_scores)}) samples"
        )
    y_ood = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    scores = np.r_[id_scores, ood_scores]
    fpr, tpr, _ = roc_curve(y_ood, scores)
    fpr_in, tpr_in, _ = roc_curve(1 - y_ood, -scores)
    return {
        "auroc": float(roc_auc_score(y_ood, scores)),
        "fpr95_id": _fpr_at_recall(fpr, tpr),
        "fpr95_ood": _fpr_at_recall(fpr_in, tpr_in),
        "aupr_in": float(average_precision_score(1 - y_ood, -scores)),
        "aupr_out": float(average_precision_score(y_ood, scores)),
        "n_id": float(len(id_scores)),
        "n_ood": float(len(ood_scores)),
    }


def operating_point(id_is_ood: np.ndarray, ood_is_ood: np.ndarray) -> dict[str, float]:
    """Rates at the calibrated thresholds (what serving will actually do)."""
    return {
        "id_rejected": float(np.mean(id_is_ood)) if len(id_is_ood) else float("nan"),
        "ood_detected": float(np.mean(ood_is_ood)) if len(ood_is_ood) else float("nan"),
    }


def _fpr_at_recall(fpr: np.ndarray, tpr: np.ndarray, recall: float = TARGET_RECALL) -> float:
    """Smallest FPR whose TPR reaches `recall` (the first ROC point at or above it)."""
    return float(fpr[np.searchsorted(tpr, recall, side="left")])


def roc_points(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, list[float]]:
    """ROC curve with OOD as positive, as lists for JSON and KFP ``ClassificationMetrics``."""
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr, tpr, thresholds = roc_curve(y, np.r_[id_scores, ood_scores])
    finite = np.where(np.isfinite(thresholds), thresholds, np.nan)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "thresholds": [None if np.isnan(t) else float(t) for t in finite],  # type: ignore[misc]
    }


def save_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
    name: str,
    title: str,
    operating_points: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Path]:
    """``<name>.json`` (points + AUROC per curve) and ``<name>.png`` (all curves, one plot).

    `curves` maps a label ("near-OOD: held-out classes", ...) to (id_scores, ood_scores);
    `operating_points` maps a label to (in-distribution rejected, OOD detected) at the
    calibrated thresholds, marked on its curve: what serving will actually do.
    """
    out_dir = Path(out_dir)
    points = operating_points or {}
    payload = {
        label: {
            **roc_points(i, o),
            "auroc": ood_metrics(i, o)["auroc"],
            **(
                {"operating_point": {"fpr": points[label][0], "tpr": points[label][1]}}
                if label in points
                else {}
            ),
        }
        for label, (i, o) in curves.items()
    }
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    atomic_write_text(json_path, json.dumps({"title": title, "curves": payload}, indent=2) + "\n")
    atomic_write(png_path, lambda tmp: _plot_roc(payload, title, tmp))
    return {"json": json_path, "png": png_path}


def _plot_roc(payload: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.6), dpi=110)
    try:
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        for label, curve in payload.items():
            (line,) = ax.plot(
                curve["fpr"], curve["tpr"], lw=2, label=f"{label} (AUROC {curve['auroc']:.3f})"
            )
            point = curve.get("operating_point")
            if point:
                ax.plot(
                    point["fpr"],
                    point["tpr"],
                    marker="o",
                    ms=8,
                    mfc="white",
                    mec=line.get_color(),
                    mew=2,
                    ls="none",
                    label=f"calibrated: {point['fpr']:.0%} ID rejected, "
                    f"{point['tpr']:.0%} OOD caught",
                )
        ax.set_xlabel("in-distribution flagged OOD (FPR)")
        ax.set_ylabel("OOD detected (TPR)")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.02, 1.02)  # operating points on an edge stay visible
        ax.set_title(title)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def leave_one_class_out(
    fit: tuple[np.ndarray, np.ndarray],
    calibration: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
    settings: OODSettings,
) -> dict[str, dict[str, float]]:
    """Each class held out in turn as near-OOD: fit and calibrate on the others, then score the
    others' test images (in-distribution) against all images of the held-out class.

    Each part is (features, labels indexing `classes`). The held-out class's images from every
    part count as OOD, since the detector never saw them. Returns metrics per held-out class
    and their mean under ``"mean"``. Note: with adapter features the backbone itself was
    trained on the held-out class, which makes this near-OOD setting harder than a truly
    unseen disease, not easier.
    """
    if len(classes) < 3:
        raise OODError("leave-one-class-out needs at least 3 classes (2 stay in-distribution)")
    out: dict[str, dict[str, float]] = {}
    for held, name in enumerate(classes):
        keep = [c for c in range(len(classes)) if c != held]
        inside = [_without_class(xy, held, len(classes)) for xy in (fit, calibration)]
        detector = fit_detector(*inside[0], *inside[1], [classes[c] for c in keep], settings)
        ood_x = np.concatenate([x[y == held] for x, y in (fit, calibration, test)])
        id_found = detector.detect(_without_class(test, held, len(classes))[0])
        ood_found = detector.detect(ood_x)
        out[name] = {
            **ood_metrics(id_found.score, ood_found.score),
            **operating_point(id_found.is_ood, ood_found.is_ood),
        }
    keys = next(iter(out.values())).keys()
    out["mean"] = {k: float(np.nanmean([m[k] for m in out.values()])) for k in keys}
    return out


def _without_class(
    xy: tuple[np.ndarray, np.ndarray], held: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The samples of every class but `held`, labels renumbered 0..classes-2."""
    x, y = xy
    keep = y != held
    remap = np.arange(classes) - (np.arange(classes) > held)
    return x[keep], remap[y[keep]]
