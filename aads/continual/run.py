"""`continue_from`: one task on top of a registered version, gated against it.

Order matters: everything that can be refused is refused before a backbone is loaded (the
base's checksums and backbone, the task against what the base knows, every image of the
batch, the evaluation set); then the phase the task stands for runs with the same code as the
full pipeline (classes: phase 2, SD-LoRA, or on a parent that has learned domains the heads;
domain: phase 3, CONEC-LoRA; base: phase 1, DoRA)
on the task's images only; then the OOD check is carried forward or re-estimated
(`aads.continual.ood`), the child is measured beside its parent on the same images and gated
(`aads.continual.gate`), and the report is written (`aads.continual.report`).

Output: ``<out>/package`` (the child, whose ``adapter.json`` ``lineage`` records its parent
and the task) and ``<out>/report``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aads.adapters.package import (
    OOD_DIR,
    AdapterMeta,
    ContinuationRecord,
    backbone_settings_record,
    read_meta,
    update_package,
)
from aads.atomic import replace_dir
from aads.config import PlatformConfig
from aads.continual.base import ContinuationError, Parent, resolve_base
from aads.continual.data import (
    check_task,
    eval_data,
    joined_root,
    task_config,
    task_data,
)
from aads.continual.gate import (
    Measurement,
    continuation_gate,
    eval_rows,
    measure,
    ood_applicability,
)
from aads.continual.report import against_parent, write_report
from aads.data.manifest import ManifestRow
from aads.gate import GateResult, adapter_gate
from aads.phases import BY_TASK_KIND
from aads.progress import Progress
from aads.tasks import TaskSpec
from aads.tracking import GATE_DETAIL_TAG, GATE_TAG, RunRef, step_run

PACKAGE_DIR = "package"


@dataclass(frozen=True)
class Continuation:
    package: Path
    report: Path
    parent: Parent | None
    task: TaskSpec
    gate: GateResult
    parent_measure: Measurement
    child_measure: Measurement
    metrics: dict[str, float]
    card: str


@dataclass(frozen=True)
class Plan:
    """A continuation that passed every check before training."""

    config: PlatformConfig  # with the crop's spec derived for this task
    parent: Parent | None
    task: TaskSpec
    rows: list[ManifestRow]  # the task's images
    evaluation: list[ManifestRow]  # the evaluation set's images ([] without one)
    phase_rows: list[ManifestRow]  # what the phase reads: the task's images, plus for a domain
    # task the evaluation set's base-domain known-class images (CONEC's selector statistics)


def plan_continuation(
    config: PlatformConfig,
    base: str | Path | None,
    task: TaskSpec,
    data_dir: Path,
    *,
    eval_dir: Path | None = None,
    tracking_uri: str | None = None,
) -> Plan:
    """Every check before training (the docstring's first step); a `ContinuationError`, a
    `BaseNotFound` or the phase's own input error otherwise."""
    parent = None
    if base is not None and str(base).strip():
        parent = resolve_base(config, task.crop, base, tracking_uri=tracking_uri)
    check_task(task, parent.meta if parent else None)
    if parent is not None:
        _check_backbone(config, parent)
    derived = task_config(config, task, parent.meta if parent else None)
    data = task_data(derived, task, Path(data_dir))
    evaluation = eval_data(derived, Path(eval_dir), task.crop) if eval_dir else []
    if task.kind == "domain" and parent is not None and not parent.meta.has_domains:
        if not any(r.domain == "base" for r in evaluation if r.crop == task.crop):
            raise ContinuationError(
                f"task.domain '{task.domain}' is the parent's first domain: CONEC-LoRA's domain "
                "selector needs base-domain statistics of the known classes, fitted on the "
                "evaluation set's base-domain images; give one with --eval"
            )
    phase_rows = data.rows
    if task.kind == "domain" and parent is not None:
        phase_rows = [*data.rows, *_selector_rows(evaluation, task.crop, parent.meta.classes)]
    _check_phase_inputs(derived, task, parent, phase_rows)
    task = task.model_copy(update={"images": data.images})
    return Plan(derived, parent, task, data.rows, evaluation, phase_rows)


def _check_backbone(config: PlatformConfig, parent: Parent) -> None:
    wanted = backbone_settings_record(config.adapter.backbone)
    have = parent.meta.backbone_settings
    differ = sorted(k for k in set(wanted) | set(have) if wanted.get(k) != have.get(k))
    if differ:
        shown = "; ".join(f"{k}: parent {have.get(k)!r}, config {wanted.get(k)!r}" for k in differ)
        raise ContinuationError(
            f"--from {parent.source} was made for another backbone than adapter.backbone "
            f"({shown}); continue with the config it was trained with, or retrain"
        )


def _selector_rows(
    evaluation: list[ManifestRow], crop: str, classes: list[str]
) -> list[ManifestRow]:
    """The evaluation set's base-domain images of known classes, as phase 3 reads its
    selector's base statistics (``train`` split, no phase: never a training step)."""
    from dataclasses import replace

    return [
        replace(r, split="train", phase="", task="")
        for r in evaluation
        if r.crop == crop and r.domain == "base" and r.label in classes
    ]


def _check_phase_inputs(
    config: PlatformConfig,
    task: TaskSpec,
    parent: Parent | None,
    rows: list[ManifestRow],
) -> None:
    """The phase's own checks (package, settings, data), still before any backbone."""
    if parent is None:
        return
    if task.kind == "classes":
        from aads.adapters.phases.phase2 import check_phase2_inputs

        check_phase2_inputs(config, task.crop, rows, parent.path)
    else:
        from aads.adapters.phases.phase3 import check_phase3_inputs

        check_phase3_inputs(config, task.crop, rows, parent.path)


def _train(plan: Plan, root: Path, out: Path, progress: Progress | None, on_epoch_end) -> Path:
    """Exactly the task's phase (`aads.phases.BY_TASK_KIND`), with the train function the full
    pipeline's runner calls."""
    phase = BY_TASK_KIND[plan.task.kind]
    previous = plan.parent.path if phase.needs_previous else None
    return phase.train(
        plan.config,
        plan.task.crop,
        plan.phase_rows,
        root,
        previous,
        out,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )


def continue_from(
    config: PlatformConfig,
    base: str | Path | None,
    task: TaskSpec,
    data_dir: Path,
    out_dir: Path,
    *,
    eval_dir: Path | None = None,
    tracking: RunRef | None = None,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
) -> Continuation:
    """Learn `task` on top of `base` from `data_dir`'s images only; write ``<out>/package`` and
    ``<out>/report``; return the gate's verdict with both models' numbers (a refused candidate
    is returned too, `gate.passed` False: the caller decides whether to register)."""
    plan = plan_continuation(
        config, base, task, data_dir, eval_dir=eval_dir, tracking_uri=tracking_uri
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".work."))
    try:
        root = joined_root(work, Path(data_dir), Path(eval_dir) if eval_dir else None)
        phase = BY_TASK_KIND[task.kind].number
        with step_run(
            config.registry,
            tracking,
            "continuation",
            crop=task.crop,
            run_name=f"{task.crop}: continue {plan.parent.label if plan.parent else ''} "
            f"+ {task.domain or ', '.join(task.classes)}",
            params={
                "task.kind": task.kind,
                "task.classes": ",".join(task.classes),
                "task.domain": task.domain or "",
                "parent": plan.parent.source if plan.parent else "",
                "parent_version": plan.parent.version if plan.parent else "",
                "phase": phase,
            },
        ) as run:
            pkg = _train(plan, root, work / PACKAGE_DIR, progress, run.log_epoch)
            _record_lineage(pkg, plan)
            drift, recalibrated = _carry_ood(plan, pkg, root)
            result = _gate(plan, pkg, root, drift, recalibrated)
            run.log_metrics(result.metrics)
            run.set_tags({GATE_TAG: result.gate.verdict, GATE_DETAIL_TAG: result.gate.summary()})
            run.log_text(result.card, "model_card.md")
        final = out_dir / PACKAGE_DIR
        replace_dir(pkg, final)  # an earlier package there is kept until the new one is in place
        report = write_report(
            out_dir,
            read_meta(final),
            plan.parent.label if plan.parent else "-",
            result.parent_measure,
            result.child_measure,
            result.gate,
            result.card,
        )
        return Continuation(
            final,
            report,
            plan.parent,
            plan.task,
            result.gate,
            result.parent_measure,
            result.child_measure,
            result.metrics,
            result.card,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _record_lineage(pkg: Path, plan: Plan) -> None:
    parent = plan.parent
    record = ContinuationRecord(
        parent_model=parent.model if parent else "",
        parent_version=parent.version if parent else "",
        parent_source=parent.source if parent else "",
        parent_sha256=parent.digest if parent else "",
        task=plan.task,
    )

    def change(_staging: Path, meta: AdapterMeta) -> AdapterMeta:
        history = list(parent.meta.lineage) if parent else []
        meta.lineage = [*history, record]
        return meta

    update_package(pkg, change)


def _carry_ood(plan: Plan, pkg: Path, root: Path) -> tuple[dict[str, float], bool]:
    """Re-estimate the OOD check on task + evaluation images or carry the parent's, as
    ``continuation.ood`` says (`_re_estimates`; why: `aads.continual.ood`); measure the drift
    either way. Returns the drift numbers and whether it was re-estimated."""
    from aads.adapters.loading import load_adapter
    from aads.continual.ood import (
        carried_detector,
        old_class_drift,
        task_feature_shift,
        write_detector,
    )
    from aads.ood.calibrate import adapter_features, calibrate_package

    config, storage = plan.config, plan.config.storage
    device, dtype = config.adapter.backbone.device, config.adapter.backbone.dtype
    train = [r for r in plan.rows if r.split == "train"]
    classes = read_meta(pkg).classes
    carry = plan.parent is not None and plan.parent.meta.ood is not None
    recalibrate = not carry or _re_estimates(plan, classes)
    if recalibrate:
        calibrate_package(config, pkg, [*plan.rows, *plan.evaluation], root, loco=False)
    else:
        parent = load_adapter(plan.parent.path, storage, device=device, dtype=dtype)
        child = load_adapter(pkg, storage, device=device, dtype=dtype)
        val = [r for r in plan.rows if r.split == "val"]
        assert parent.ood is not None
        detector = carried_detector(
            parent.ood,
            child.classes,
            adapter_features(child, train, root),
            adapter_features(child, val, root),
            config.adapter.ood,
        )
        write_detector(pkg, detector, {})
    drift: dict[str, float] = {}
    if plan.parent is not None and plan.parent.meta.ood is not None:
        parent = load_adapter(plan.parent.path, storage, device=device, dtype=dtype)
        child = load_adapter(pkg, storage, device=device, dtype=dtype)
        drift["ood_task_feature_shift"] = task_feature_shift(parent, child, train, root)
        old = [
            r
            for r in plan.evaluation
            if r.crop == plan.task.crop
            and r.label in parent.classes
            and r.domain in parent.meta.domains
        ]
        drift |= old_class_drift(parent, child, old, root)
    return drift, recalibrate


def _re_estimates(plan: Plan, classes: list[str]) -> bool:
    """Whether ``continuation.ood`` re-estimates the child's OOD check rather than carrying the
    parent's: never for ``carry``; for ``re_estimate`` whenever the task's and the evaluation
    set's training splits show every class; for ``auto`` only when they also fit every class on
    as many images as the parent's check was fitted on."""
    from aads.ood.detector import load_detector

    mode = plan.config.continuation.ood
    fitted = Counter(
        r.label
        for r in [*plan.rows, *plan.evaluation]
        if r.crop == plan.task.crop and r.split == "train"
    )
    if mode == "carry" or not plan.evaluation or not all(fitted[c] for c in classes):
        return False
    if mode == "re_estimate":
        return True
    detector = load_detector(plan.parent.path / OOD_DIR) if plan.parent else None
    parent = detector.record.per_class.items() if detector else ()
    return all(fitted[c] >= cal.fit_samples for c, cal in parent)


@dataclass(frozen=True)
class _Gated:
    gate: GateResult
    parent_measure: Measurement
    child_measure: Measurement
    metrics: dict[str, float]
    card: str


def _gate(plan: Plan, pkg: Path, root: Path, drift: dict[str, float], recalibrated: bool) -> _Gated:
    """Measure parent and child on the same images, gate, and write the numbers into the
    package (``continuation_*``, and the drift into its ``ood`` summary and metrics)."""
    from aads.adapters.loading import load_adapter
    from aads.modelcard import backbone_licence, model_card

    config = plan.config
    device, dtype = config.adapter.backbone.device, config.adapter.backbone.dtype
    child = load_adapter(pkg, config.storage, device=device, dtype=dtype)
    parent_classes = plan.parent.meta.classes if plan.parent else []
    parent_domains = plan.parent.meta.domains if plan.parent else []
    rows = eval_rows(
        plan.rows,
        plan.evaluation,
        plan.task.crop,
        parent_classes,
        parent_domains,
        child.classes,
        recalibrated=recalibrated,
    )
    child_measure = measure(child, rows, root)
    if plan.parent is not None:
        parent = load_adapter(plan.parent.path, config.storage, device=device, dtype=dtype)
        parent_measure = measure(parent, rows, root)
        gate = continuation_gate(
            parent_measure,
            child_measure,
            config.gate,
            ood_applicability(config, plan.task.crop),
        )
    else:
        parent_measure = Measurement()
        gate = adapter_gate(child.meta, config)
    metrics = {
        **{f"continuation_{k}": v for k, v in child_measure.metrics.items()},
        **{f"continuation_parent_{k}": v for k, v in parent_measure.metrics.items()},
        **drift,
    }

    def change(_staging: Path, meta: AdapterMeta) -> AdapterMeta:
        meta.metrics = {**meta.metrics, **metrics}
        if meta.ood is not None and drift:
            meta.ood = {**meta.ood, **{k: round(v, 6) for k, v in drift.items() if v == v}}
        return meta

    update_package(pkg, change)
    meta = read_meta(pkg)
    label = plan.parent.label if plan.parent else "-"
    card = model_card(
        meta,
        pkg_dir=pkg,
        gate=gate,
        backbone_licence=backbone_licence(str(meta.backbone_settings.get("source", ""))),
        against_parent=against_parent(label, parent_measure, child_measure) if plan.parent else "",
    )
    return _Gated(
        gate, parent_measure, child_measure, {k: v for k, v in metrics.items() if v == v}, card
    )
