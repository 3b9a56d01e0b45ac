"""Gate a continuation against its parent: both measured on the same images, side by side.

The whole-pipeline gate (`aads.gate`) asks absolute questions of one model. A continuation is
a change to a model that already serves, so its gate asks what changed, on the images the team
keeps for measuring (the evaluation set) and the task's own held-out images:

- new-task accuracy (the task's test images; new classes, or known classes in the new domain)
  at least ``gate.continuation.min_new_task_accuracy``;
- old-class accuracy (the evaluation set's images of the parent's classes, in the parent's
  domains) at most ``max_old_accuracy_drop`` below the parent's on the same images;
- near- and far-OOD AUROC (the evaluation set's in-distribution test images against its hold-out
  diseases and other crops) at most ``max_ood_auroc_drop`` below the parent's.

Without an evaluation set the old-class and OOD checks are "not measured", and
``gate.not_measured`` decides (it fails by default: nothing unmeasured ships). As in the
whole-pipeline gate, an OOD check that cannot apply is "not applicable" and never fails:
near-OOD when the crop's spec holds out no disease the child still does not know (the task may
have just learned the last one), far-OOD when the spec names no other crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aads.adapters.loading import LoadedAdapter
from aads.config import GateSettings, PlatformConfig
from aads.data.manifest import ManifestRow
from aads.gate import GateCheck, GateResult, _check, _not_applicable
from aads.ood.calibrate import adapter_features
from aads.ood.evaluation import ood_metrics

MEASURES = ("new_task_accuracy", "old_accuracy", "near_ood_auroc", "far_ood_auroc")


@dataclass(frozen=True)
class EvalRows:
    """The images both models are measured on (paths under one root)."""

    new_task: list[ManifestRow]  # the task's test images
    old: list[ManifestRow]  # evaluation images of the parent's classes and domains
    ood_id: list[ManifestRow]  # in-distribution images for AUROC (not used to fit the check)
    near: list[ManifestRow]  # the crop's images of classes neither model knows
    far: list[ManifestRow]  # other crops' images


def eval_rows(
    task_rows: list[ManifestRow],
    evaluation: list[ManifestRow],
    crop: str,
    parent_classes: list[str],
    parent_domains: list[str],
    child_classes: list[str],
    *,
    recalibrated: bool,
) -> EvalRows:
    """Split the images by role; with `recalibrated` (the child's OOD check was fitted on the
    evaluation set's train/val splits) only its test split measures AUROC."""
    mine = [r for r in evaluation if r.crop == crop]
    old = [r for r in mine if r.label in parent_classes and r.domain in parent_domains]
    test = [r for r in task_rows if r.split == "test"] or [r for r in task_rows if r.split == "val"]
    return EvalRows(
        new_task=test,
        old=old,
        ood_id=[r for r in old if r.split == "test"] if recalibrated else old,
        near=[r for r in mine if r.label not in child_classes],
        far=[r for r in evaluation if r.crop != crop],
    )


@dataclass
class Measurement:
    """One model's numbers on `EvalRows` (NaN: not measurable for this model)."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, float] = field(default_factory=dict)

    def get(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return None if value is None or not math.isfinite(value) else value


def measure(adapter: LoadedAdapter, rows: EvalRows, root: Path) -> Measurement:
    """Accuracy on the task and on old classes, and OOD AUROC, of one loaded adapter."""
    classes = adapter.classes
    out = Measurement()

    def predicted(part: list[ManifestRow]) -> tuple[np.ndarray, np.ndarray]:
        found = adapter_features(adapter, part, root)
        truth = np.asarray([classes.index(r.label) if r.label in classes else -1 for r in part])
        return truth, found.logits.argmax(1) if len(part) else np.zeros(0, int)

    for key, part in (("new_task_accuracy", rows.new_task), ("old_accuracy", rows.old)):
        if not part or any(r.label not in classes for r in part):
            out.metrics[key] = float("nan")  # e.g. the parent cannot name the new classes
            continue
        truth, pred = predicted(part)
        out.metrics[key] = float((truth == pred).mean())
        if key == "old_accuracy":
            for name in sorted({r.label for r in part}):
                hit = truth == classes.index(name)
                out.per_class[name] = float((pred[hit] == truth[hit]).mean())
    detector = adapter.ood
    for key, part in (("near_ood_auroc", rows.near), ("far_ood_auroc", rows.far)):
        if detector is None or not part or not rows.ood_id:
            out.metrics[key] = float("nan")
            continue
        inside = detector.detect(adapter_features(adapter, rows.ood_id, root).features).score
        outside = detector.detect(adapter_features(adapter, part, root).features).score
        out.metrics[key] = ood_metrics(inside, outside)["auroc"]
    return out


def continuation_gate(
    parent: Measurement,
    child: Measurement,
    gate: GateSettings,
    not_applicable: dict[str, str] | None = None,
) -> GateResult:
    """The checks in the module's docstring; a difference is measured only where both are.
    `not_applicable` names the OOD measures (``near_ood_auroc``, ``far_ood_auroc``) that cannot
    apply, with why (`ood_applicability`)."""
    not_applicable = not_applicable or {}
    limits = gate.continuation
    checks: list[GateCheck] = [
        _check(
            "new-task accuracy",
            "new_task_accuracy",
            child.get("new_task_accuracy"),
            limits.min_new_task_accuracy,
            gate,
        )
    ]
    if checks[0].value is None:  # nothing shows the task was learned
        checks[0] = checks[0].model_copy(
            update={"outcome": "failed", "note": "not measured (no test images of the task)"}
        )
    for name, key, allowed in (
        ("old-class accuracy vs parent", "old_accuracy", limits.max_old_accuracy_drop),
        ("near-OOD AUROC vs parent", "near_ood_auroc", limits.max_ood_auroc_drop),
        ("far-OOD AUROC vs parent", "far_ood_auroc", limits.max_ood_auroc_drop),
    ):
        if key in not_applicable:
            checks.append(_not_applicable(name, f"{key}_change", -allowed, not_applicable[key]))
            continue
        before, after = parent.get(key), child.get(key)
        change = None if before is None or after is None else after - before
        # `_check` passes value >= minimum: the change must be at least -allowed.
        check = _check(name, f"{key}_change", change, -allowed, gate)
        checks.append(check)
    return GateResult(passed=all(c.outcome != "failed" for c in checks), checks=checks)


def ood_applicability(config: PlatformConfig, crop: str) -> dict[str, str]:
    """The OOD measures that cannot apply to `crop`'s continuation under `config` (the spec
    derived for the task, whose hold-outs no longer list what the child learned), with why."""
    why: dict[str, str] = {}
    if not config.crop(crop).ood_holdout:
        why["near_ood_auroc"] = f"the spec holds out no disease of {crop} the child does not know"
    if len(config.crops) < 2:
        why["far_ood_auroc"] = "the spec names no other crop"
    return why
