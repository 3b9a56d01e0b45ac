"""A phase as a Kubeflow Trainer TrainJob: the rendered object, and the pods' entry point run
here as one rank against a real S3 (moto)."""

from __future__ import annotations

import re

import pytest
import yaml

from aads.adapters.package import read_meta, verify_package
from aads.config import SynthSettings, parse_config
from aads.data.ingest import ingest, write_ingest_outputs
from aads.data.synth import synthesize
from aads.storage import get_dir, open_store, put_dir
from aads.trainjob import (
    CONFIG_ENV,
    TrainJobError,
    TrainJobSpec,
    job_name,
    main,
    render_trainjob,
    scratch_uris,
    trainjob_outcome,
)

TINY = {"source": "random:tiny", "image_size": 32}


def spec(**overrides) -> TrainJobSpec:
    values = {
        "name": "aads-tomato-p1-run42",
        "namespace": "kubeflow-user",
        "image": "ghcr.io/aads-platform/aads-components:0.1.0",
        "crop": "tomato",
        "phase": "1",
        "scratch": "s3://aads/trainjobs/aads-tomato-p1-run42",
        "has_previous": False,
        "nodes": 2,
        "gpus_per_node": 8,
    }
    values.update(overrides)
    return TrainJobSpec(**values)


def test_trainjob_runs_torchrun_on_the_torch_distributed_runtime_with_gpus_per_node():
    job = render_trainjob(spec(), "crops: []\n")
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "kind": "ClusterTrainingRuntime",
        "apiGroup": "trainer.kubeflow.org",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "-m", "aads.trainjob"]
    assert trainer["numNodes"] == 2
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8"}
    assert trainer["args"][:4] == ["--crop", "tomato", "--phase", "1"]


def test_trainjob_gets_credentials_only_from_the_secret():
    env = {e["name"]: e for e in render_trainjob(spec(), "crops: []\n")["spec"]["trainer"]["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "aads-s3"
    assert env[CONFIG_ENV]["value"] == "crops: []\n"


def test_rendered_trainjob_is_plain_yaml_for_kubectl():
    job = render_trainjob(spec(has_previous=True), "x: 1\n")
    assert yaml.safe_load(yaml.safe_dump(job)) == job
    assert "--has-previous" in job["spec"]["trainer"]["args"]


def test_job_names_are_dns_labels():
    name = job_name("Run_ID.With/odd chars" * 5, "tomato", "2")
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name)


def test_scratch_must_be_in_the_object_store():
    with pytest.raises(TrainJobError, match="s3://"):
        render_trainjob(spec(scratch="/tmp/x"), "")


def test_outcome_reads_the_complete_and_failed_conditions():
    running = {"status": {"conditions": [{"type": "Created", "status": "True"}]}}
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "OOM"}]}}
    assert [trainjob_outcome(j) for j in (running, done, failed, {})] == [
        "",
        "Complete",
        "Failed",
        "",
    ]


@pytest.mark.slow
def test_pod_entry_point_trains_the_phase_and_publishes_the_package(
    s3_settings, tmp_path, monkeypatch
):
    """What each TrainJob pod runs, here as a single rank (no torchrun): inputs from the
    scratch prefix, a complete package published back to it."""
    data = {
        "crops": [{"name": "tomato", "phase1_classes": ["healthy", "early_blight"]}],
        "router": TINY,
        "adapter": {"backbone": TINY, "dora": {"r": 2, "alpha": 4}},
        "training": {"phase1": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None}},
        "storage": s3_settings.model_dump(mode="json"),
    }
    config = parse_config(data)
    images, manifest = tmp_path / "images", tmp_path / "manifest"
    synthesize(config, images, settings=SynthSettings(images_per_class=4, image_size=32))
    write_ingest_outputs(ingest(images, config=config), manifest)
    scratch = f"s3://{s3_settings.bucket}/trainjobs/test"
    uris = scratch_uris(scratch)
    store, prefix = open_store(uris["manifest"], s3_settings)
    put_dir(store, manifest, prefix)
    monkeypatch.setenv(CONFIG_ENV, yaml.safe_dump(data))

    main(["--crop", "tomato", "--phase", "1", "--scratch", scratch])

    store, prefix = open_store(uris["output"], s3_settings)
    get_dir(store, prefix, tmp_path / "out")
    verify_package(tmp_path / "out")
    assert read_meta(tmp_path / "out").last_phase == "1"
