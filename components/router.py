"""Crop-router training component."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import aads_component


@aads_component
def train_router(
    config: str,
    manifest: Input[Dataset],
    router: Output[Model],
    metrics: Output[Metrics],
    tracking_uri: str = "",
    mlflow_run: Input[Artifact] = None,
) -> NamedTuple("RouterOutputs", [("passed", bool), ("gate", str)]):
    """Crop and plant-part heads on frozen router-backbone features; gate on crop accuracy.
    With a parent run, the step's MLflow run nests under it."""
    import os
    from collections import namedtuple
    from pathlib import Path

    from aads.steps import component_inputs, train_router_step

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri, mlflow_run=mlflow_run)
    outcome = train_router_step(
        step.config, Path(manifest.path), Path(router.path), tracking=step.tracking
    )
    for name, value in outcome.metrics.items():
        metrics.log_metric(name, value)
    router.metadata["gate"] = outcome.gate.summary()
    return namedtuple("RouterOutputs", ["passed", "gate"])(
        outcome.gate.passed, outcome.gate.summary()
    )
