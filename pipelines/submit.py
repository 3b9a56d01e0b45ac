"""Submit the training pipeline to a Kubeflow Pipelines cluster with `kfp.Client`."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from aads.config import parse_config_text
from aads.errors import Unavailable
from aads.phases import NUMBERS as PHASE_NUMBERS
from pipelines.training import PIPELINE_NAME, default_pipeline, pipeline_version_name


def git_sha(repo: Path = Path(".")) -> str:
    """The checkout's commit, or "" outside a git checkout (recorded on every version)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_dirty(repo: Path = Path(".")) -> bool:
    """Whether the checkout has uncommitted changes to tracked files."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def version_name_here() -> str:
    """This checkout's pipeline version name (`pipelines.training.pipeline_version_name`)."""
    import time

    return pipeline_version_name(git_sha(), git_dirty(), int(time.time()))


class SubmitError(Unavailable):
    """KFP could not be reached or refused the upload; the message names the host."""


def upload(
    host: str,
    version_name: str,
    *,
    namespace: str | None = None,
    cluster: str | None = None,
    spec: str | None = None,
) -> tuple[str, str, bool]:
    """Publish the training pipeline (placed by the `cluster` settings file) as
    ``version_name`` of ``aads-training``.

    Returns (pipeline id, version id, created). A version of that name already there is kept
    and reported, so a Helm hook or a retried CI job can run this any number of times.
    """
    import kfp

    pipeline = default_pipeline(cluster, spec)
    try:
        client = kfp.Client(host=host, namespace=namespace)
        return _upload(client, pipeline, version_name, namespace)
    except Exception as err:  # kfp raises urllib3/ApiException/ValueError; report one line
        raise SubmitError(f"KFP at {host}: {type(err).__name__}: {str(err)[:300]}") from None


def _upload(  # noqa: ANN001 - kfp.Client
    client, pipeline: Callable, version_name: str, namespace: str | None
) -> tuple[str, str, bool]:
    from kfp import compiler

    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is not None:
        existing = _version_named(client, pipeline_id, version_name)
        if existing is not None:
            return pipeline_id, existing, False
    with tempfile.TemporaryDirectory() as tmp:
        package = str(Path(tmp) / "pipeline.yaml")
        compiler.Compiler().compile(pipeline, package)
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
    data_uri: str,
    version_name: str,
    *,
    config_text: str = "",
    config_uri: str = "",
    crops: list[str] | None = None,
    phases: list[str] | None = None,
    experiment: str = "aads",
    namespace: str | None = None,
    git_sha: str = "",
    cluster: str | None = None,
    spec: str | None = None,
) -> str:
    """Upload ``version_name`` of the ``aads-training`` pipeline (kept if present), create a
    run, return its URL. The run reads the spec at `config_uri` (default: the chart's
    ConfigMap) unless `config_text` gives one; `crops` empty: every configured crop."""
    import kfp

    if config_text:
        parse_config_text(config_text, "config")  # refuse a bad spec before contacting KFP
    params = {
        "data_uri": data_uri,
        "config_yaml": config_text,
        "crops": list(crops or []),
        "phases": list(phases or PHASE_NUMBERS),
        "git_sha": git_sha,
    }
    if config_uri:
        params["config_uri"] = config_uri
    pipeline = default_pipeline(cluster, spec)
    try:
        client = kfp.Client(host=host, namespace=namespace)
        pipeline_id, version_id, _ = _upload(client, pipeline, version_name, namespace)
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=version_name,
            pipeline_id=pipeline_id,
            version_id=version_id,
            params=params,
        )
    except Exception as err:  # kfp raises urllib3/ApiException/ValueError; report one line
        raise SubmitError(f"KFP at {host}: {type(err).__name__}: {str(err)[:300]}") from None
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
