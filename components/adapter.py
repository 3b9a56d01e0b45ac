"""Crop-adapter components: one phase of training, OOD calibration, evaluation."""

from typing import NamedTuple

from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from components.image import aads_component


@aads_component
def train_adapter_phase(
    config: str,
    manifest: Input[Dataset],
    crop: str,
    phase: str,
    phases: list,
    adapter: Output[Model],
    metrics: Output[Metrics],
    previous: Input[Model] = None,
    trainer_nodes: int = 0,
    trainer_gpus_per_node: int = 8,
    kfp_run_id: str = "",
    tracking_uri: str = "",
    mlflow_run: Input[Artifact] = None,
):
    """Phase 1 (DoRA), 2 (SD-LoRA) or 3 (CONEC-LoRA) of `crop`; a phase not in `phases` or
    not configured for the crop passes `previous` through unchanged. With `trainer_nodes` > 0
    the phase runs as a Kubeflow Trainer TrainJob (torchrun DDP on that many nodes). With a
    parent run, the phase's MLflow run nests under it."""
    import os
    from pathlib import Path

    from aads.steps import component_inputs, train_phase_step
    from aads.trainjob import TrainerPlacement

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri, mlflow_run=mlflow_run)
    trainer = None
    if trainer_nodes > 0:
        trainer = TrainerPlacement.from_pod(
            config,
            kfp_run_id,
            nodes=trainer_nodes,
            gpus_per_node=trainer_gpus_per_node,
            env=os.environ,
        )
    numbers = train_phase_step(
        step.config,
        Path(manifest.path),
        crop,
        phase,
        Path(previous.path) if previous is not None else None,
        Path(adapter.path),
        phases=[str(p) for p in phases],
        tracking=step.tracking,
        trainer=trainer,
    )
    adapter.metadata.update({"crop": crop, "phase": phase})
    for name, value in numbers.items():
        metrics.log_metric(name, value)


@aads_component
def calibrate_ood(
    config: str,
    manifest: Input[Dataset],
    adapter: Input[Model],
    calibrated: Output[Model],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    tracking_uri: str = "",
    mlflow_run: Input[Artifact] = None,
):
    """Mahalanobis statistics (train split), per-class thresholds (val), AUROC (test)."""
    import os
    from pathlib import Path

    from aads.reporting import roc_curves
    from aads.steps import calibrate_step, component_inputs

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri, mlflow_run=mlflow_run)
    numbers = calibrate_step(
        step.config,
        Path(manifest.path),
        Path(adapter.path),
        Path(calibrated.path),
        tracking=step.tracking,
    )
    for name, value in numbers.items():
        if value == value:  # KFP metrics must be numbers, NaN is not
            metrics.log_metric(name, value)
    curves = roc_curves(Path(calibrated.path))
    if curves:  # the near-OOD curve when the crop has hold-out diseases, else far-OOD
        curve = next(iter(curves.values()))
        roc.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])


@aads_component
def evaluate_adapter(
    config: str,
    adapter: Input[Model],
    kfp_run_id: str,
    git_sha: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    model_card: Output[Markdown],
    report: Output[HTML],
    tracking_uri: str = "",
    mlflow_run: Input[Artifact] = None,
) -> NamedTuple("EvaluationOutputs", [("passed", bool), ("gate", str)]):
    """Gate the package against the configured minimums; model card and report for the UI
    and, with a parent run, the crop's evaluation run in MLflow (passed or failed)."""
    import os
    from collections import namedtuple
    from pathlib import Path

    from aads.reporting import last_confusion
    from aads.steps import component_inputs, evaluate_step

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri, mlflow_run=mlflow_run)
    result = evaluate_step(
        step.config,
        Path(adapter.path),
        kfp_run_id=kfp_run_id,
        git_sha=git_sha,
        tracking=step.tracking,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    matrix = last_confusion(Path(adapter.path), result.meta)
    if matrix is not None:
        confusion.log_confusion_matrix(*matrix)
    Path(model_card.path).write_text(result.model_card, encoding="utf-8")
    Path(report.path).write_text(result.html, encoding="utf-8")
    return namedtuple("EvaluationOutputs", ["passed", "gate"])(
        result.gate.passed, result.gate.summary()
    )
