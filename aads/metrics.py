"""Classification and continual-learning metrics, and the pictures users look at.

Numbers come from scikit-learn so they mean what the field means by them; the continual
learning measures follow the usual definitions (Chaudhry et al. 2018): retention is accuracy on
the earlier tasks' classes after learning new ones, relative to before; forgetting is the drop
from each class's best accuracy so far to its accuracy now, averaged over the old classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

from aads.atomic import atomic_write, atomic_write_text


def classification_summary(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix (as lists)."""
    idx = list(range(len(labels)))
    if len(y_true) == 0:
        return {
            "n": 0,
            "accuracy": float("nan"),
            "balanced_accuracy": float("nan"),
            "per_class_accuracy": {},
            "confusion_matrix": [],
            "labels": list(labels),
        }
    cm = confusion_matrix(y_true, y_pred, labels=idx)
    support = cm.sum(axis=1)
    per_class = {labels[i]: float(cm[i, i] / support[i]) for i in idx if support[i] > 0}
    present = sorted(set(y_true))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Balanced over the classes present in y_true, so absent classes do not count as 0.
        "balanced_accuracy": float(
            balanced_accuracy_score(y_true, y_pred)
            if len(present) > 1
            else per_class[labels[present[0]]]
        ),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a proportion `correct` / `n` (Wilson score, scipy's binomtest):
    unlike the normal approximation it stays inside [0, 1] and is honest at small n."""
    from scipy.stats import binomtest

    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def subset_accuracy(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[int]) -> float:
    """Accuracy on the samples whose true class is in `classes` (predictions over all)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    mask = np.isin(t, list(classes))
    return float((t[mask] == p[mask]).mean()) if mask.any() else float("nan")


def retention(before: float, after: float) -> float:
    """Share of earlier accuracy kept: after / before (1.0 = nothing lost)."""
    return float(after / before) if before > 0 else float("nan")


def average_forgetting(history: Sequence[Mapping[str, float]], old_classes: Sequence[str]) -> float:
    """Mean over `old_classes` of (best accuracy in earlier steps - accuracy in the last step).

    `history` is per-class accuracy after each step, oldest first, the last entry being now.
    """
    if len(history) < 2:
        return 0.0
    drops = []
    for c in old_classes:
        earlier = [h[c] for h in history[:-1] if c in h]
        if earlier and c in history[-1]:
            drops.append(max(earlier) - history[-1][c])
    return float(np.mean(drops)) if drops else float("nan")


def save_confusion_matrix(summary: dict, out_dir: Path, name: str, title: str) -> dict[str, Path]:
    """Write ``<name>.json`` (numbers) and ``<name>.png`` (a labelled heat map)."""
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    payload = {k: summary[k] for k in ("labels", "confusion_matrix", "accuracy", "n")}
    atomic_write_text(json_path, json.dumps({"title": title, **payload}, indent=2) + "\n")
    atomic_write(png_path, lambda tmp: _plot_confusion(summary, title, tmp))
    return {"json": json_path, "png": png_path}


def _accuracy_line(summary: dict) -> str:
    """``accuracy 0.792 (95 % CI 0.70-0.86, 76/96)``: the same number as the gate's."""
    n = int(summary["n"])
    if not n:
        return "accuracy n/a (no test images)"
    correct = int(np.trace(np.asarray(summary["confusion_matrix"], dtype=int)))
    low, high = wilson_interval(correct, n)
    return f"accuracy {summary['accuracy']:.3f} (95 % CI {low:.2f}-{high:.2f}, {correct}/{n})"


def _plot_confusion(summary: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = summary["labels"]
    cm = np.asarray(summary["confusion_matrix"], dtype=float)
    if cm.size == 0:
        cm = np.zeros((len(labels), len(labels)))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
    try:
        ax.imshow(norm, cmap="Greens", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}\n{_accuracy_line(summary)}", fontsize=10)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.6 else "black"
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", color=colour)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


HEADLINE = {
    "accuracy": (
        "accuracy",
        "phase3_test_accuracy",
        "phase2_test_accuracy",
        "phase1_test_accuracy",
    ),
    "retention": ("retention", "phase3_protected_retention", "phase2_retention"),
    "near_ood_auroc": ("near_ood_auroc", "ood_near_auroc"),
    "far_ood_auroc": ("far_ood_auroc", "ood_far_auroc"),
}
"""The numbers a person decides a model by, each from the last phase that measured it: test
accuracy (every test image of the last phase, pooled: what the gate checks), old-class
retention, AUROC against the crop's unseen diseases (near) and against other crops (far).
The headline's own names come first (`aads.headline`'s flat metrics and a registered
version's ``metric.*`` tags carry them); a package's raw metrics name them by phase."""


def headline_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """{accuracy, retention, near_ood_auroc, far_ood_auroc} for those the run measured
    (missing and NaN values are left out, never reported as 0)."""
    out = {}
    for name, keys in HEADLINE.items():
        value = next((metrics[k] for k in keys if k in metrics), None)
        if value is not None and value == value:
            out[name] = float(value)
    return out
