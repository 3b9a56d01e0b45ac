"""Run one adapter phase as a Kubeflow Trainer ``TrainJob`` (torchrun DDP over several GPUs
or nodes), for backbones whose training does not fit one GPU pod.

Kubeflow Trainer v2 (``trainer.kubeflow.org/v1alpha1``) starts ``numNodes`` pods from the
``torch-distributed`` ClusterTrainingRuntime and sets torchrun's ``PET_*`` variables; each pod
runs ``torchrun -m aads.trainjob ...`` (this module's `main`), whose ranks train one phase
with DDP (`aads.training`). Inputs and outputs go through the object store, not shared disks:
the submitting step publishes the manifest folder and the previous package under a scratch
prefix, rank 0 publishes the new package there, and the submitting step fetches it back.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aads import phases
from aads.cluster import STORAGE_KEYS, secret_env
from aads.config import PlatformConfig, parse_config_text
from aads.errors import Unavailable
from aads.phases import Phase
from aads.runner import log_phase, phase_run, run_manifest_phase
from aads.tracking import RunRef

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
PLURAL = "trainjobs"
CONFIG_ENV = "AADS_CONFIG"


class TrainJobError(Unavailable):
    """The TrainJob failed, timed out, or could not be created; the message says which."""


@dataclass(frozen=True)
class TrainJobSpec:
    """What to run and where; `scratch` is the ``s3://`` prefix for this job's inputs/outputs."""

    name: str
    namespace: str
    image: str
    crop: str
    phase: str
    scratch: str
    has_previous: bool
    nodes: int = 1
    gpus_per_node: int = 8
    runtime: str = "torch-distributed"
    s3_secret: str = "aads-s3"


def job_name(run_id: str, crop: str, phase: str) -> str:
    """A DNS-1123 name, unique per run, crop and phase (<= 63 characters)."""
    raw = f"aads-{crop}-p{phase}-{run_id}".lower()
    return re.sub(r"[^a-z0-9-]+", "-", raw)[:63].strip("-")


def render_trainjob(spec: TrainJobSpec, config_text: str) -> dict[str, Any]:
    """The TrainJob object (a dict, ready for ``kubectl apply`` or the Kubernetes API)."""
    phases.get(spec.phase)  # an unknown phase: UnknownPhase naming the known ones
    if not spec.scratch.startswith("s3://"):
        raise TrainJobError(f"scratch must be an s3:// prefix, got {spec.scratch!r}")
    args = ["--crop", spec.crop, "--phase", spec.phase, "--scratch", spec.scratch]
    if spec.has_previous:
        args.append("--has-previous")
    # The storage Secret's keys are the variables they fill (`aads.cluster.secret_env`: one
    # layout for the chart, the pipeline and TrainJobs). The spec travels as an env var: it
    # holds no secrets (credentials come from the Secret).
    env = [{"name": CONFIG_ENV, "value": config_text}] + [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": spec.s3_secret, "key": key, "optional": False}},
        }
        for key, name in secret_env(STORAGE_KEYS).items()
    ]
    gpus = str(spec.gpus_per_node)
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "aads",
                "app.kubernetes.io/component": "adapter-training",
                "aads.io/crop": spec.crop,
                "aads.io/phase": spec.phase,
            },
        },
        "spec": {
            "runtimeRef": {
                "name": spec.runtime,
                "kind": "ClusterTrainingRuntime",
                "apiGroup": API_GROUP,
            },
            "trainer": {
                "image": spec.image,
                "command": ["torchrun", "-m", "aads.trainjob"],
                "args": args,
                "env": env,
                "numNodes": spec.nodes,
                "resourcesPerNode": {
                    "limits": {"nvidia.com/gpu": gpus},
                    "requests": {"nvidia.com/gpu": gpus},
                },
            },
        },
    }


# --------------------------------------------------------------------------- submitting side

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_IMAGE = "ghcr.io/aads-platform/aads-components:0.1.0"


@dataclass(frozen=True)
class TrainerPlacement:
    """Where a phase's TrainJob runs: the spec its pods get (YAML text), the KFP run it belongs
    to, the image, the namespace and the size of the job."""

    config_text: str
    run_id: str
    image: str
    namespace: str
    nodes: int
    gpus_per_node: int

    @classmethod
    def from_pod(
        cls,
        config_text: str,
        run_id: str,
        *,
        nodes: int,
        gpus_per_node: int,
        env: Mapping[str, str],
        namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE,
    ) -> TrainerPlacement:
        """The placement as a pipeline step's pod sees it: the image from ``AADS_IMAGE`` (the
        pipeline sets the step's own), the namespace of its service account."""
        namespace = namespace_file.read_text().strip() if namespace_file.is_file() else "default"
        return cls(
            config_text,
            run_id,
            env.get("AADS_IMAGE", DEFAULT_IMAGE),
            namespace,
            nodes,
            gpus_per_node,
        )


def submit_phase(
    config: PlatformConfig,
    manifest_dir: Path,
    crop: str,
    phase: Phase | str,
    previous: Path | None,
    out_dir: Path,
    placement: TrainerPlacement,
    *,
    tracking: RunRef | None = None,
) -> Path:
    """Train `phase` of `crop` as a TrainJob: inputs published to a scratch prefix of the
    object store, the job created and awaited, its package fetched back into `out_dir`
    (atomically). Its MLflow run (with `tracking`) has the settings, dataset and the phase's
    metrics, and the epochs the job's pods ran, from the package's record once it is back."""
    from aads.adapters.package import read_meta, verify_package
    from aads.atomic import atomic_dir
    from aads.storage import get_dir, open_store, put_dir

    phase = phases.get(phase)
    name = job_name(placement.run_id, crop, phase.number)
    prefix = "/".join(p for p in (config.storage.prefix.strip("/"), "trainjobs", name) if p)
    scratch = f"s3://{config.storage.bucket}/{prefix}"
    uris = scratch_uris(scratch)
    before = len(read_meta(previous).phases) if previous is not None else 0
    extra = {"trainjob": name, "nodes": str(placement.nodes)}
    with phase_run(config, tracking, crop, phase, extra) as run:
        for key, local in (("manifest", manifest_dir), ("previous", previous)):
            if local is not None:
                store, key_prefix = open_store(uris[key], config.storage)
                put_dir(store, Path(local), key_prefix)
        spec = TrainJobSpec(
            name=name,
            namespace=placement.namespace,
            image=placement.image,
            crop=crop,
            phase=phase.number,
            scratch=scratch,
            has_previous=previous is not None,
            nodes=placement.nodes,
            gpus_per_node=placement.gpus_per_node,
        )
        run_trainjob(render_trainjob(spec, placement.config_text))
        store, out_prefix = open_store(uris["output"], config.storage)
        with atomic_dir(Path(out_dir)) as tmp:
            get_dir(store, out_prefix, tmp)
            verify_package(tmp)
        log_phase(run, Path(out_dir), phase, before, replay=True)
    return Path(out_dir)


def run_trainjob(
    body: dict[str, Any], *, timeout_s: float = 24 * 3600, poll_s: float = 30.0
) -> None:
    """Create the TrainJob and wait until its ``Complete`` or ``Failed`` condition."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
    except client.ApiException as err:
        if err.status != 409:  # 409: a retried step finds the job it already created
            raise TrainJobError(
                f"cannot create TrainJob {namespace}/{name}: {err.reason}"
            ) from None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        outcome = trainjob_outcome(job)
        if outcome == "Complete":
            return
        if outcome == "Failed":
            raise TrainJobError(f"TrainJob {namespace}/{name} failed: {condition_message(job)}")
        time.sleep(poll_s)
    raise TrainJobError(f"TrainJob {namespace}/{name} did not finish in {timeout_s:.0f} s")


def trainjob_outcome(job: dict[str, Any]) -> str:
    """``Complete``, ``Failed`` or ``""`` (still running) from the TrainJob's conditions."""
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return ""


def condition_message(job: dict[str, Any]) -> str:
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("type") == "Failed":
            return str(cond.get("message") or cond.get("reason") or "no message")
    return "no message"


# --------------------------------------------------------------------------- inside the job


def scratch_uris(scratch: str) -> dict[str, str]:
    base = scratch.rstrip("/")
    return {k: f"{base}/{k}" for k in ("manifest", "previous", "output")}


def train_in_job(
    config: PlatformConfig, crop: str, phase: str, scratch: str, has_previous: bool, work: Path
) -> Path | None:
    """What each rank runs: fetch inputs, train the phase (DDP across ranks), rank 0 publishes.

    Returns the local package on rank 0, None on the others.
    """
    import torch.distributed as dist

    from aads.storage import fetch_dir_cached, open_store, put_dir

    uris = scratch_uris(scratch)
    manifest_dir = fetch_dir_cached(uris["manifest"], config.storage)
    previous = fetch_dir_cached(uris["previous"], config.storage) if has_previous else None
    out = Path(work) / "package"
    run_manifest_phase(config, phase, crop, manifest_dir, previous, out)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank != 0:
        return None
    store, prefix = open_store(uris["output"], config.storage)
    put_dir(store, out, prefix)
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of the TrainJob's pods (``torchrun -m aads.trainjob``)."""
    import os
    import tempfile

    parser = argparse.ArgumentParser(prog="aads.trainjob", description=__doc__.split("\n")[0])
    parser.add_argument("--crop", required=True)
    parser.add_argument("--phase", required=True, choices=list(phases.NUMBERS))
    parser.add_argument("--scratch", required=True, help="s3:// prefix of this job's I/O")
    parser.add_argument("--has-previous", action="store_true")
    args = parser.parse_args(argv)
    config = parse_config_text(os.environ[CONFIG_ENV], CONFIG_ENV)
    with tempfile.TemporaryDirectory() as work:
        train_in_job(config, args.crop, args.phase, args.scratch, args.has_previous, Path(work))


if __name__ == "__main__":
    main()
