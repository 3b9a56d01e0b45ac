"""The numbers a person reads first about an adapter package, computed once for every place
that shows them: the model card, the HTML report, the evaluation run in MLflow and the
registered version's tags.

- **Accuracy** is the last phase's pooled test accuracy, read from that phase's confusion
  matrix (``metrics/phase<N>_test.json``): the same number the gate checks and the picture's
  title shows. It is a proportion of n images, so it comes with a 95 % Wilson interval
  (scipy's ``binomtest``), which stays inside [0, 1] and is honest at small n.
- **Per-class precision and recall** from the same confusion matrix.
- **Retention** per continual phase that ran, and forgetting; a retention above 1 or a
  negative forgetting is explained in one line, because both look like bugs and are not.
- **OOD**: near- and far-OOD AUROC, and the calibrated operating point (the share of
  in-distribution test images answered *unknown*, the share of OOD images accepted as a known
  class) with the counts behind each rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aads.adapters.package import METRICS_DIR, AdapterMeta
from aads.gate import ACCURACY_BY_PHASE, GateResult
from aads.metrics import wilson_interval
from aads.phases import PHASES

RETENTION_KEYS = {
    p.number: (
        p.retention.metric,
        p.retention.forgetting,
        f"{p.retention.kept} after phase {p.number}",
    )
    for p in PHASES
    if p.retention is not None
}
RETENTION_ABOVE_ONE = (
    "above 1: the earlier classes or domain are recognised better after this phase than "
    "before it (learning the new data helped them; on a small test set part of it is noise)"
)
NEGATIVE_FORGETTING = (
    "negative forgetting: accuracy on earlier tasks is higher now than at its best before "
    "(backward transfer), not an error"
)


@dataclass(frozen=True)
class Accuracy:
    value: float
    correct: int | None = None
    n: int | None = None
    low: float | None = None  # 95 % Wilson interval
    high: float | None = None

    def text(self) -> str:
        if self.n is None or self.low is None or self.high is None:
            return f"{self.value:.3f}"
        return (
            f"{self.value:.3f} (95 % CI {self.low:.3f}-{self.high:.3f}; "
            f"{self.correct} of {self.n} test images)"
        )


@dataclass(frozen=True)
class ClassScore:
    name: str
    precision: float | None  # None: the class was never predicted
    recall: float | None  # None: no test image of the class
    support: int


@dataclass(frozen=True)
class Retention:
    phase: str
    what: str
    retention: float | None
    forgetting: float | None

    def notes(self) -> list[str]:
        notes = []
        if self.retention is not None and self.retention > 1:
            notes.append(RETENTION_ABOVE_ONE)
        if self.forgetting is not None and self.forgetting < 0:
            notes.append(NEGATIVE_FORGETTING)
        return notes


@dataclass(frozen=True)
class OODHeadline:
    near_auroc: float | None
    far_auroc: float | None
    n_id: int | None
    n_near: int | None
    n_far: int | None
    id_rejected: float | None  # share of in-distribution test images answered unknown
    near_accepted: float | None  # share of near-OOD images accepted as a known class
    far_accepted: float | None

    @staticmethod
    def count(rate: float | None, n: int | None) -> str:
        if rate is None or n is None:
            return "not measured"
        return f"{rate:.1%} ({round(rate * n)} of {n})"


@dataclass(frozen=True)
class Headline:
    crop: str
    phase: str
    accuracy: Accuracy | None
    classes: list[ClassScore] = field(default_factory=list)
    retention: list[Retention] = field(default_factory=list)
    ood: OODHeadline | None = None
    gate: GateResult | None = None

    def metrics(self) -> dict[str, float]:
        """The headline as flat numbers (MLflow metrics of the evaluation run and its model)."""
        out: dict[str, float] = {}
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy.value
            if self.accuracy.low is not None and self.accuracy.high is not None:
                out["accuracy_ci95_low"] = self.accuracy.low
                out["accuracy_ci95_high"] = self.accuracy.high
            if self.accuracy.n is not None:
                out["test_images"] = float(self.accuracy.n)
        measured = [r.retention for r in self.retention if r.retention is not None]
        if measured:
            out["retention"] = min(measured)
        if self.ood is not None:
            for key in ("near_auroc", "far_auroc", "id_rejected", "near_accepted", "far_accepted"):
                value = getattr(self.ood, key)
                if value is not None:
                    out[key.replace("auroc", "ood_auroc")] = value
        return out


def build(pkg_dir: Path | None, meta: AdapterMeta, gate: GateResult | None) -> Headline:
    """The headline of a package (`pkg_dir` None: from `meta` alone, without the confusion
    matrix, so without interval and per-class scores)."""
    return Headline(
        crop=meta.crop,
        phase=meta.last_phase,
        accuracy=_accuracy(pkg_dir, meta),
        classes=_class_scores(pkg_dir, meta),
        retention=[
            Retention(phase, what, _number(meta.metrics.get(r)), _number(meta.metrics.get(f)))
            for phase, (r, f, what) in RETENTION_KEYS.items()
            if phase in {p.phase for p in meta.phases}
        ],
        ood=_ood(meta.ood) if meta.ood else None,
        gate=gate,
    )


def last_confusion(pkg_dir: Path | None, meta: AdapterMeta) -> dict | None:
    """The last phase's test confusion matrix (labels, matrix, accuracy, n), if the package
    has one."""
    if pkg_dir is None:
        return None
    path = Path(pkg_dir) / METRICS_DIR / f"phase{meta.last_phase}_test.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _accuracy(pkg_dir: Path | None, meta: AdapterMeta) -> Accuracy | None:
    value = _number(meta.metrics.get(ACCURACY_BY_PHASE.get(meta.last_phase, "")))
    if value is None:
        return None
    confusion = last_confusion(pkg_dir, meta)
    if not confusion or not confusion.get("n"):
        return Accuracy(value)
    cm = np.asarray(confusion["confusion_matrix"], dtype=int)
    correct, n = int(np.trace(cm)), int(cm.sum())
    low, high = wilson_interval(correct, n)
    return Accuracy(value, correct, n, low, high)


def _class_scores(pkg_dir: Path | None, meta: AdapterMeta) -> list[ClassScore]:
    confusion = last_confusion(pkg_dir, meta)
    if not confusion or not confusion.get("n"):
        return []
    cm = np.asarray(confusion["confusion_matrix"], dtype=int)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    return [
        ClassScore(
            name,
            float(cm[i, i] / predicted[i]) if predicted[i] else None,
            float(cm[i, i] / actual[i]) if actual[i] else None,
            int(actual[i]),
        )
        for i, name in enumerate(confusion["labels"])
    ]


def _ood(ood: dict) -> OODHeadline:
    def count(key: str) -> int | None:
        value = _number(ood.get(key))
        return None if value is None else int(round(value))

    def accepted(key: str) -> float | None:
        detected = _number(ood.get(key))
        return None if detected is None else 1.0 - detected

    return OODHeadline(
        near_auroc=_number(ood.get("near_auroc")),
        far_auroc=_number(ood.get("far_auroc")),
        n_id=count("n_id"),
        n_near=count("near_n_ood"),
        n_far=count("far_n_ood"),
        id_rejected=_number(ood.get("id_rejected")),
        near_accepted=accepted("near_detected"),
        far_accepted=accepted("far_detected"),
    )


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def is_count(key: str) -> bool:
    """Metric names that count images (``n_id``, ``far_n_ood``, ``images``...): shown as
    integers wherever metrics are listed."""
    name = key.rsplit(".", 1)[-1]
    return (
        name in ("n", "images", "rejected", "test_images")
        or name.startswith("n_")
        or "_n_" in name
        or name.endswith(("_n", "_count", "_images"))
    )


# --------------------------------------------------------------------------- rendering


def rows(h: Headline) -> list[tuple[str, str]]:
    """(what, value) rows of the headline table, shared by the Markdown and HTML renderings."""
    out: list[tuple[str, str]] = []
    out.append(("accuracy", h.accuracy.text() if h.accuracy else "not measured"))
    for r in h.retention:
        value = "not measured" if r.retention is None else f"{r.retention:.3f}"
        if r.forgetting is not None:
            value += f" (forgetting {r.forgetting:+.3f})"
        out.append((f"retention, {r.what}", value))
    if not h.retention:
        out.append(("retention", "not applicable (no continual phase ran)"))
    o = h.ood
    near_note = _gate_note(h.gate, "near-OOD AUROC")
    far_note = _gate_note(h.gate, "far-OOD AUROC")
    if o is None:
        out.append(("OOD check", "not calibrated"))
    else:
        out.append(("near-OOD AUROC (unknown diseases)", _auroc(o.near_auroc, o.n_near, near_note)))
        out.append(("far-OOD AUROC (other crops)", _auroc(o.far_auroc, o.n_far, far_note)))
        out.append(("in-distribution answered unknown", OODHeadline.count(o.id_rejected, o.n_id)))
        out.append(("near-OOD accepted as a disease", OODHeadline.count(o.near_accepted, o.n_near)))
        out.append(("far-OOD accepted as a disease", OODHeadline.count(o.far_accepted, o.n_far)))
    if h.gate is not None:
        out.append(("gate", h.gate.summary()))
    return out


def notes(h: Headline) -> list[str]:
    """One-line explanations of numbers that look wrong and are not."""
    return [f"Retention, {r.what}: {n}." for r in h.retention for n in r.notes()]


def _auroc(value: float | None, n: int | None, gate_note: str) -> str:
    if value is None:
        return gate_note or "not measured"
    return f"{value:.3f}" + (f" ({n} images)" if n else "")


def _gate_note(gate: GateResult | None, name: str) -> str:
    """What the gate says of a check it could not measure (not measured / not applicable)."""
    for check in gate.checks if gate else []:
        if check.name == name and check.value is None:
            return check.describe().removeprefix(f"{name} ")
    return ""


def markdown(h: Headline) -> list[str]:
    """The headline as Markdown lines: the summary table, per-class scores, notes."""
    lines = ["| measure | value |", "|---|---|", *[f"| {k} | {_md(v)} |" for k, v in rows(h)]]
    if h.classes:
        lines += ["", "| class | precision | recall | test images |", "|---|---|---|---|"]
        lines += [
            f"| {c.name} | {_rate(c.precision)} | {_rate(c.recall)} | {c.support} |"
            for c in h.classes
        ]
    extra = notes(h)
    return lines + ([""] + [f"- {n}" for n in extra] if extra else [])


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")
