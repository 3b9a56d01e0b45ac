"""`aads ood evaluate`: an OOD evaluation report folder for one adapter package.

Writes ``ood-metrics.json`` (headline metrics, per-class leave-one-class-out, the settings and
the data it ran on), ``roc.png`` + ``roc.json`` (near- and far-OOD curves) and, with
`compare`, ``methods.json`` + ``methods.md`` (every method on the same features, best first).
The package itself is not modified; `aads ood calibrate` stores a calibration in it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from aads.atomic import atomic_write_text
from aads.config import PlatformConfig
from aads.data.manifest import ManifestRow
from aads.ood.calibrate import ROC_NAME, calibrate_features, package_features
from aads.ood.evaluation import save_roc
from aads.ood.selection import best_method, compare_methods
from aads.progress import Progress

METRICS_FILE = "ood-metrics.json"
METHODS_FILE = "methods.json"
METHOD_COLUMNS = (
    "covariance",
    "feature_space",
    "relative",
    "threshold",
    "mean_auroc",
    "near_auroc",
    "loco_auroc",
    "far_auroc",
    "near_fpr95_id",
    "near_fpr95_ood",
    "id_rejected",
    "near_detected",
    "balanced_operating_accuracy",
)


@dataclass
class OODReport:
    metrics: dict[str, float]
    loco: dict[str, dict[str, float]]
    methods: list[dict[str, object]] = field(default_factory=list)


def evaluate_package(
    config: PlatformConfig,
    pkg_dir: Path,
    rows: list[ManifestRow],
    data_root: Path,
    out_dir: Path,
    *,
    manifest_sha256: str = "",
    loco: bool = True,
    compare: bool = False,
    progress: Progress | None = None,
) -> OODReport:
    meta, parts = package_features(config, pkg_dir, rows, data_root, progress=progress)
    settings = config.adapter.ood
    result = calibrate_features(
        parts, meta.classes, settings, manifest_sha256=manifest_sha256, loco=loco
    )
    out_dir = Path(out_dir)
    if result.curves:
        title = f"{meta.crop}: OOD ROC"
        save_roc(result.curves, out_dir, ROC_NAME, title, result.operating_points)
    payload = {
        "package": str(pkg_dir),
        "crop": meta.crop,
        "classes": meta.classes,
        "settings": settings.model_dump(mode="json"),
        "manifest_sha256": manifest_sha256,
        "counts": {name: int(len(p.labels)) for name, p in parts.items()},
        "metrics": result.metrics,
        "leave_one_class_out": result.loco,
    }
    atomic_write_text(out_dir / METRICS_FILE, _json(payload))
    methods: list[dict[str, object]] = []
    if compare:
        methods = compare_methods(parts, meta.classes, settings.threshold)
        best = best_method(methods)
        methods.sort(key=lambda r: (r is not best, -float(r["mean_auroc"])))
        atomic_write_text(out_dir / METHODS_FILE, _json({"best": best, "methods": methods}))
        atomic_write_text(out_dir / "methods.md", method_table(methods))
    return OODReport(result.metrics, result.loco, methods)


def method_table(rows: list[dict[str, object]]) -> str:
    """Markdown table of `METHOD_COLUMNS` (missing metrics shown as '-')."""
    lines = [
        "| " + " | ".join(METHOD_COLUMNS) + " |",
        "|" + "---|" * len(METHOD_COLUMNS),
    ]
    for r in rows:
        cells = []
        for c in METHOD_COLUMNS:
            v = r.get(c, "-")
            cells.append(f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json(payload: object) -> str:
    return json.dumps(_finite(payload), indent=2) + "\n"


def _finite(value: object) -> object:
    """JSON has no NaN: non-finite numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
