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

from aads import headline
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
    data = headline.last_confusion(pkg_dir, meta)
    return (data["labels"], data["confusion_matrix"]) if data else None


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
    """One HTML page: the headline table first (`aads.headline`), then the gate's checks,
    every metric, the phase history and the pictures (confusion matrices, ROC), embedded."""
    pkg_dir = Path(pkg_dir)
    esc = html.escape
    top = headline.build(pkg_dir, meta, gate)
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>AADS adapter: {esc(meta.crop)}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:left}.failed{color:#b00}.passed{color:#070}"
        "img{max-width:440px;margin:4px}.note{color:#555}</style>",
        f"<h1>{esc(meta.crop)} adapter: phase {esc(meta.last_phase)}</h1>",
        "<h2>At a glance</h2><table>",
        *[f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in headline.rows(top)],
        "</table>",
    ]
    if top.classes:
        parts.append(
            "<table><tr><th>class</th><th>precision</th><th>recall</th><th>test images</th></tr>"
        )
        for c in top.classes:
            parts.append(
                f"<tr><td>{esc(c.name)}</td><td>{_rate(c.precision)}</td>"
                f"<td>{_rate(c.recall)}</td><td>{c.support}</td></tr>"
            )
        parts.append("</table>")
    parts += [f"<p class='note'>{esc(n)}</p>" for n in headline.notes(top)]
    parts.append(
        f"<p>classes: {esc(', '.join(meta.classes))}<br>domains: {esc(', '.join(meta.domains))}"
        f"<br>backbone: {esc(str(meta.backbone_settings.get('source', '')))}"
        f"<br>data manifest sha256: <code>{esc(meta.manifest_sha256)}</code></p>"
    )
    if gate is not None:
        parts.append(f"<h2 class='{gate.verdict}'>Gate {gate.verdict}</h2><table>")
        parts.append("<tr><th>check</th><th>value</th><th>minimum</th><th>outcome</th></tr>")
        for c in gate.checks:
            value = "-" if c.value is None else f"{c.value:.4f}"
            outcome = c.outcome + (f" ({c.note})" if c.note else "")
            parts.append(
                f"<tr><td>{esc(c.name)}</td><td>{value}</td><td>{c.minimum:g}</td>"
                f"<td class='{c.outcome}'>{esc(outcome)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>All metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
    for k, v in sorted(finite_metrics(meta).items()):
        shown = str(round(v)) if headline.is_count(k) else f"{v:.4f}"
        parts.append(f"<tr><td>{esc(k)}</td><td>{shown}</td></tr>")
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
    for png in pictures(pkg_dir):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<img alt='{esc(png.stem)}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts) + "\n"


def pictures(pkg_dir: Path) -> list[Path]:
    """The package's PNGs: confusion matrices per phase, then the OOD ROC curves."""
    pkg_dir = Path(pkg_dir)
    return sorted((pkg_dir / METRICS_DIR).glob("*.png")) + sorted((pkg_dir / OOD_DIR).glob("*.png"))


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
