"""MLflow tracking components: open the pipeline run's parent run first, end it last."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.image import aads_component


@aads_component
def open_pipeline_run(
    config: str,
    data_uri: str,
    crops: list,
    phases: list,
    tracking_uri: str,
    git_sha: str,
    kfp_run_id: str,
    mlflow_run: Output[Artifact],
):
    """The MLflow parent run of this pipeline run (found again when retried), written to the
    `mlflow_run` artifact every training step reads to nest its own run under it (its
    metadata shows the run's id and page in the KFP UI)."""
    import os
    from pathlib import Path

    from aads.steps import component_inputs, open_pipeline_run_step

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri)
    opened = open_pipeline_run_step(
        step.config,
        config,
        tracking_uri=step.tracking_uri,
        kfp_run_id=kfp_run_id,
        data_uri=data_uri,
        crops=[str(c) for c in crops],
        phases=[str(p) for p in phases],
        run_file=Path(mlflow_run.path),
        git_sha=git_sha,
    )
    mlflow_run.metadata.update(opened)


@aads_component
def close_pipeline_run(
    config_uri: str,
    config_yaml: str,
    tracking_uri: str,
    kfp_run_id: str,
    status: dsl.PipelineTaskFinalStatus,
):
    """The pipeline's exit handler: end the parent run as the pipeline ended (finished or
    failed), with every crop's gate verdict and registered version. It reads the spec from
    the pipeline's parameters itself: an exit task may depend on no other task."""
    import os

    from aads.cluster import spec_text
    from aads.steps import close_pipeline_run_step, component_inputs

    spec = spec_text(config_uri, config_yaml)
    step = component_inputs(spec, os.environ, tracking_uri=tracking_uri)
    close_pipeline_run_step(
        step.config,
        tracking_uri=step.tracking_uri,
        kfp_run_id=kfp_run_id,
        succeeded=status.state == "SUCCEEDED",
        message=status.error_message or "",
    )
