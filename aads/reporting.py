"""What a trained package shows people: headline metrics, confusion matrix and ROC curves as
plain data (for KFP's Metrics/ClassificationMetrics and MLflow), and a self-contained HTML
report (pictures embedded, so the KFP UI shows it without fetching anything).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from aads.adapters.package import METRICS_DIR, OOD_DIR, AdapterMeta
from aads.gate import GateResult

ROC_FILE = "roc.json"


def finite_metrics(meta: AdapterMeta) -> dict[str, float]:
    """The package's metrics plus its OOD summary, finite numbers only (KFP and MLflow)."""
    out = {k: float(v) for k, v in meta.metrics.items() if math.isfinite(v)}
    for k, v in (meta.ood or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[f"ood_{k}"] = float(v)
    return out


def last_confusion(pkg_dir: Path, meta: AdapterMeta) -> tuple[list[str], list[list[int]]] | None:
    """(labels, matrix) of the last phase's test confusion matrix, if the package has one."""
    path = Path(pkg_dir) / METRICS_DIR / f"phase{meta.last_phase}_test.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data["labels"], data["confusion_matrix"]


def roc_curves(pkg_dir: Path) -> dict[str, dict[str, list[float]]]:
    """The OOD calibration's ROC curves (label -> fpr, tpr, thresholds), thresholds finite.

    sklearn's first ROC threshold is +inf ("flag nothing"); KFP wants numbers, so it becomes
    the largest finite threshold plus one.
    """
    path = Path(pkg_dir) / OOD_DIR / ROC_FILE
    if not path.is_file():
        return {}
    curves = json.loads(path.read_text())["curves"]
    out = {}
    for label, c in curves.items():
        finite = [t for t in c["thresholds"] if t is not None]
        top = (max(finite) + 1.0) if finite else 1.0
        out[label] = {
            "fpr": c["fpr"],
            "tpr": c["tpr"],
            "thresholds": [top if t is None else t for t in c["thresholds"]],
        }
    return out


def html_report(pkg_dir: Path, meta: AdapterMeta, gate: GateResult | None = None) -> str:
    """One HTML page: gate, metrics, phase history, confusion matrices and ROC, embedded."""
    pkg_dir = Path(pkg_dir)
    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>AADS adapter: {esc(meta.crop)}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        ".failed{color:#b00}.passed{color:#070}img{max-width:440px;margin:4px}</style>",
        f"<h1>{esc(meta.crop)} adapter: phase {esc(meta.last_phase)}</h1>",
        f"<p>classes: {esc(', '.join(meta.classes))}<br>domains: {esc(', '.join(meta.domains))}"
        f"<br>backbone: {esc(str(meta.backbone_settings.get('source', '')))}"
        f"<br>data manifest sha256: <code>{esc(meta.manifest_sha256)}</code></p>",
    ]
    if gate is not None:
        verdict = "passed" if gate.passed else "failed"
        parts.append(f"<h2 class='{verdict}'>Gate {verdict}</h2><table>")
        parts.append("<tr><th>check</th><th>value</th><th>minimum</th><th>outcome</th></tr>")
        for c in gate.checks:
            value = "-" if c.value is None else f"{c.value:.4f}"
            parts.append(
                f"<tr><td>{esc(c.name)}</td><td>{value}</td><td>{c.minimum}</td>"
                f"<td class='{c.outcome}'>{c.outcome}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
    for k, v in sorted(finite_metrics(meta).items()):
        parts.append(f"<tr><td>{esc(k)}</td><td>{v:.4f}</td></tr>")
    parts.append("</table><h2>Phases</h2><table>")
    parts.append(
        "<tr><th>phase</th><th>task</th><th>added</th><th>epochs</th><th>seconds</th></tr>"
    )
    for p in meta.phases:
        parts.append(
            f"<tr><td>{p.phase}</td><td>{esc(p.task)}</td><td>{esc(', '.join(p.added))}</td>"
            f"<td>{p.epochs}</td><td>{p.seconds:.1f}</td></tr>"
        )
    parts.append("</table><h2>Pictures</h2>")
    pictures = sorted((pkg_dir / METRICS_DIR).glob("*.png")) + sorted(
        (pkg_dir / OOD_DIR).glob("*.png")
    )
    for png in pictures:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<img alt='{esc(png.stem)}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts) + "\n"
