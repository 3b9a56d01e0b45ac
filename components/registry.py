"""Registration components (MLflow) and the report a failed gate leaves instead."""

from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.image import aads_component


@aads_component
def register_adapter(
    config: str,
    adapter: Input[Model],
    tracking_uri: str,
    kfp_run_id: str,
    git_sha: str,
    mlflow_run: Input[Artifact] = None,
) -> str:
    """New version of ``aads-adapter-<crop>`` with alias ``candidate`` (a pyfunc model linked to
    the crop's evaluation run in the pipeline's `mlflow_run`); returns its number.

    `tracking_uri` empty: ``MLFLOW_TRACKING_URI`` from the environment (a Kubernetes Secret),
    then the config's. Credentials for MLflow and its S3 artifact store come only from env.
    """
    import os
    from pathlib import Path

    from aads.steps import component_inputs, register_adapter_step

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri, mlflow_run=mlflow_run)
    version = register_adapter_step(
        step.config,
        Path(adapter.path),
        tracking_uri=step.tracking_uri,
        kfp_run_id=kfp_run_id,
        git_sha=git_sha,
        tracking=step.tracking,
    )
    return f"{version.name}/{version.version}"


@aads_component
def register_router(
    config: str,
    router: Input[Model],
    tracking_uri: str,
    kfp_run_id: str,
    git_sha: str,
    mlflow_run: Input[Artifact] = None,
) -> str:
    """New version of the router model with alias ``candidate``; returns its number."""
    import os
    from pathlib import Path

    from aads.steps import component_inputs, register_router_step

    step = component_inputs(config, os.environ, tracking_uri=tracking_uri, mlflow_run=mlflow_run)
    version = register_router_step(
        step.config,
        Path(router.path),
        tracking_uri=step.tracking_uri,
        kfp_run_id=kfp_run_id,
        git_sha=git_sha,
        tracking=step.tracking,
    )
    return f"{version.name}/{version.version}"


@aads_component
def gate_failure_report(subject: str, gate: str, report: Output[Markdown]):
    """What fell short, for the KFP UI; nothing is registered for `subject`."""
    from pathlib import Path

    Path(report.path).write_text(
        f"# Not registered: {subject}\n\nThe promotion gate {gate}.\n\n"
        "Nothing was registered for it in this run. Adjust the data or training settings, or "
        "the minimums under `gate:` in the platform spec, and run the pipeline again.\n",
        encoding="utf-8",
    )
