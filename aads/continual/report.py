"""What a continuation leaves for people: parent and candidate side by side, the gate, the card.

``<out>/report/`` holds ``comparison.json`` (both models' numbers on the same images),
``gate.json`` (every check) and ``model_card.md`` (the candidate's card with the side-by-side
section and its lineage), written whether the gate passed or refused the candidate, so a
refusal says which number fell short and by how much.
"""

from __future__ import annotations

import json
from pathlib import Path

from aads.adapters.package import AdapterMeta
from aads.atomic import atomic_write_text
from aads.continual.gate import MEASURES, Measurement
from aads.gate import GateResult

REPORT_DIR = "report"
LABELS = {
    "new_task_accuracy": "new-task accuracy (task test images)",
    "old_accuracy": "old-class accuracy (evaluation set)",
    "near_ood_auroc": "near-OOD AUROC (evaluation set)",
    "far_ood_auroc": "far-OOD AUROC (evaluation set)",
}


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def against_parent(parent_label: str, parent: Measurement, child: Measurement) -> str:
    """The model card's section: each measure for parent and candidate, and the change."""
    lines = [
        "## Against its parent",
        "",
        f"Parent {parent_label} and this candidate on the same images (n/a: not measurable, "
        "e.g. the parent cannot name the new classes).",
        "",
        f"| measure | parent {parent_label} | candidate | change |",
        "|---|---|---|---|",
    ]
    for key in MEASURES:
        a, b = parent.get(key), child.get(key)
        change = "n/a" if a is None or b is None else f"{b - a:+.4f}"
        lines.append(f"| {LABELS[key]} | {_cell(a)} | {_cell(b)} | {change} |")
    classes = sorted(set(parent.per_class) | set(child.per_class))
    if classes:
        lines += ["", "| old class | parent | candidate |", "|---|---|---|"]
        for name in classes:
            pa, ch = parent.per_class.get(name), child.per_class.get(name)
            lines.append(f"| {name} | {_cell(pa)} | {_cell(ch)} |")
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    meta: AdapterMeta,
    parent_label: str,
    parent: Measurement,
    child: Measurement,
    gate: GateResult,
    card: str,
) -> Path:
    folder = Path(out_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    comparison = {
        "crop": meta.crop,
        "parent": parent_label,
        "measures": {k: {"parent": parent.get(k), "candidate": child.get(k)} for k in MEASURES},
        "old_classes": {
            c: {"parent": parent.per_class.get(c), "candidate": child.per_class.get(c)}
            for c in sorted(set(parent.per_class) | set(child.per_class))
        },
    }
    atomic_write_text(folder / "comparison.json", json.dumps(comparison, indent=2) + "\n")
    atomic_write_text(folder / "gate.json", gate.model_dump_json(indent=2) + "\n")
    atomic_write_text(folder / "model_card.md", card)
    return folder
