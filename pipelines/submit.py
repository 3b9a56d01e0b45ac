"""Submit the training pipeline to a Kubeflow Pipelines cluster with `kfp.Client`."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from aads.config import parse_config_text
from aads.errors import Unavailable
from pipelines.training import PIPELINE_NAME, training_pipeline


class SubmitError(Unavailable):
    """KFP could not be reached or refused the upload; the message names the host."""


def upload(host: str, version_name: str, *, namespace: str | None = None) -> tuple[str, str, bool]:
    """Publish the training pipeline as ``version_name`` of ``aads-training``.

    Returns (pipeline id, version id, created). A version of that name already there is kept
    and reported, so a Helm hook or a retried CI job can run this any number of times.
    """
    import kfp

    try:
        return _upload(kfp.Client(host=host, namespace=namespace), version_name, namespace)
    except Exception as err:  # kfp raises urllib3/ApiException/ValueError; report one line
        raise SubmitError(f"KFP at {host}: {type(err).__name__}: {str(err)[:300]}") from None


def _upload(client, version_name: str, namespace: str | None) -> tuple[str, str, bool]:  # noqa: ANN001 - kfp.Client
    from kfp import compiler

    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is not None:
        existing = _version_named(client, pipeline_id, version_name)
        if existing is not None:
            return pipeline_id, existing, False
    with tempfile.TemporaryDirectory() as tmp:
        package = str(Path(tmp) / "pipeline.yaml")
        compiler.Compiler().compile(training_pipeline, package)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(
                package,
                pipeline_name=PIPELINE_NAME,
                description="AADS continual training: router, phases 1-3, OOD, gate, register",
                namespace=namespace,
            )
            pipeline_id = pipeline.pipeline_id
        version = client.upload_pipeline_version(
            package, pipeline_version_name=version_name, pipeline_id=pipeline_id
        )
    return pipeline_id, version.pipeline_version_id, True


def _version_named(client, pipeline_id: str, name: str) -> str | None:  # noqa: ANN001
    predicate = {"operation": "EQUALS", "key": "display_name", "string_value": name}
    found = client.list_pipeline_versions(
        pipeline_id, page_size=1, filter=json.dumps({"predicates": [predicate]})
    )
    versions = found.pipeline_versions or []
    return versions[0].pipeline_version_id if versions else None


def submit(
    host: str,
    config_text: str,
    data_uri: str,
    *,
    crops: list[str] | None = None,
    phases: list[str] | None = None,
    experiment: str = "aads",
    namespace: str | None = None,
    git_sha: str = "",
) -> str:
    """Upload a new version of the ``aads-training`` pipeline, create a run, return its URL."""
    import kfp

    config = parse_config_text(config_text, "config")
    crops = crops or config.crop_names
    version_name = f"{PIPELINE_NAME}-{(git_sha or 'dev')[:12]}-{int(time.time())}"
    try:
        client = kfp.Client(host=host, namespace=namespace)
        pipeline_id, version_id, _ = _upload(client, version_name, namespace)
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=version_name,
            pipeline_id=pipeline_id,
            version_id=version_id,
            params={
                "config": config_text,
                "data_uri": data_uri,
                "crops": crops,
                "phases": phases or ["1", "2", "3"],
                "git_sha": git_sha,
            },
        )
    except Exception as err:  # kfp raises urllib3/ApiException/ValueError; report one line
        raise SubmitError(f"KFP at {host}: {type(err).__name__}: {str(err)[:300]}") from None
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
