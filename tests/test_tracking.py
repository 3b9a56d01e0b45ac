"""MLflow as its users use it, against a real `mlflow server`: one parent run per pipeline run,
each step a nested run with its settings as params, per-epoch metric histories, the dataset as
an input and the KFP run id as a tag; retried steps replace their run; a failed gate and a
failed step are recorded; the parent ends with every crop's verdict."""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from aads.config import RegistrySettings, parse_config
from aads.steps import (
    close_pipeline_run_step,
    evaluate_step,
    open_pipeline_run_step,
    preprocess,
    train_phase_step,
    train_router_step,
)
from aads.tracking import RunRef, StepRun, Tracker, run_ref, step_run
from tests.conftest import TINY_SPEC, free_port

EPOCHS = 3


@pytest.fixture(scope="module")
def config():
    spec = {
        **TINY_SPEC,
        "training": {
            name: {"epochs": EPOCHS, "batch_size": 8, "early_stopping_patience": None}
            for name in ("router", "phase1")
        },
        "registry": {"experiment": "tracking-test"},
        "gate": {"min_accuracy": 0.0, "min_router_crop_accuracy": 0.0},
    }
    return parse_config(spec)


@pytest.fixture(scope="module")
def manifest(config, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    preprocess(config, str(trained.data), out)
    return out


def open_run(config, mlflow_server: str, kfp_run_id: str, run_file) -> dict[str, str]:
    return open_pipeline_run_step(
        config,
        "name: x\n",
        tracking_uri=mlflow_server,
        kfp_run_id=kfp_run_id,
        data_uri="/data",
        crops=["tomato"],
        phases=["1"],
        run_file=run_file,
    )


@pytest.fixture
def pipeline(config, mlflow_server, tmp_path):
    """A fresh pipeline run: its KFP run id and the reference every step gets."""
    kfp_run_id = f"kfp-{uuid.uuid4().hex[:8]}"
    opened = open_run(config, mlflow_server, kfp_run_id, tmp_path / "mlflow_run")
    return kfp_run_id, RunRef(mlflow_server, opened["run_id"])


@pytest.fixture(scope="module")
def client(mlflow_server):
    return MlflowClient(tracking_uri=mlflow_server)


def children(client, ref: RunRef, view=ViewType.ACTIVE_ONLY):
    parent = client.get_run(ref.parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{ref.parent_run_id}'",
        run_view_type=view,
    )


# --------------------------------------------------------------------------- the parent run


@pytest.mark.slow
def test_a_pipeline_run_is_opened_once_per_kfp_run(config, mlflow_server, pipeline, tmp_path):
    kfp_run_id, ref = pipeline
    again = open_run(config, mlflow_server, kfp_run_id, tmp_path / "again")
    assert again["run_id"] == ref.parent_run_id
    assert again["url"].endswith(f"/runs/{ref.parent_run_id}")


@pytest.mark.slow
def test_the_parent_run_holds_the_pipelines_parameters_and_spec(client, pipeline):
    kfp_run_id, ref = pipeline
    run = client.get_run(ref.parent_run_id)
    assert run.data.tags["kfp_run_id"] == kfp_run_id
    assert run.data.params["crops"] == "tomato" and run.data.params["data_uri"] == "/data"
    assert run.data.params["adapter.backbone"] == "random:tiny"
    assert [a.path for a in client.list_artifacts(ref.parent_run_id)] == ["config.yaml"]


@pytest.mark.slow
def test_a_step_finds_the_parent_run_from_the_pipelines_run_file(tmp_path, mlflow_server):
    from aads.tracking import write_run_file

    write_run_file(tmp_path / "run", mlflow_server, "abc123", "7")
    assert run_ref("", str(tmp_path / "run"), {"MLFLOW_TRACKING_URI": mlflow_server}) == RunRef(
        mlflow_server, "abc123"
    )
    assert run_ref("", None, {"MLFLOW_TRACKING_URI": mlflow_server}) is None


# --------------------------------------------------------------------------- step runs


@pytest.fixture
def phase1_run(config, manifest, pipeline, client, tmp_path):
    _, ref = pipeline
    train_phase_step(config, manifest, "tomato", "1", None, tmp_path / "p1", tracking=ref)
    (run,) = children(client, ref)
    return run


@pytest.mark.slow
def test_a_training_step_is_a_nested_run_named_after_the_step(phase1_run, pipeline):
    kfp_run_id, ref = pipeline
    tags = phase1_run.data.tags
    assert tags["mlflow.parentRunId"] == ref.parent_run_id and tags["kfp_run_id"] == kfp_run_id
    assert (tags["aads.step"], tags["aads.crop"]) == ("phase1", "tomato")
    assert phase1_run.info.run_name == "tomato: phase 1 (DoRA)"
    assert phase1_run.info.status == "FINISHED"


@pytest.mark.slow
def test_a_training_step_logs_its_settings_as_params(phase1_run, config):
    params = phase1_run.data.params
    assert params["training.lr"] == str(config.training.phase1.lr)
    assert params["training.epochs"] == str(EPOCHS) and params["training.seed"] == "0"
    assert params["dora.r"] == "2" and params["dora.modules"] == "q_proj,v_proj"
    assert params["backbone.source"] == "random:tiny" and params["backbone.image_size"] == "32"
    assert params["data.split_seed"] == "0"
    assert params["classes"] == "healthy,early_blight,leaf_mold"


@pytest.mark.slow
def test_every_epoch_is_a_point_of_the_loss_and_validation_histories(phase1_run, client):
    run_id = phase1_run.info.run_id
    for key in ("train_loss", "val_accuracy", "lr"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
    assert "phase1_test_accuracy" in phase1_run.data.metrics
    plots = [a.path for a in client.list_artifacts(run_id, "plots")]
    assert plots == ["plots/phase1_test.png"]


@pytest.mark.slow
def test_the_dataset_is_the_runs_input_with_source_hash_and_counts(phase1_run, manifest):
    import json

    summary = json.loads((manifest / "ingest.json").read_text())
    (entry,) = phase1_run.inputs.dataset_inputs
    tags = {t.key: t.value for t in entry.tags}
    assert entry.dataset.digest == summary["manifest_sha256"][:16]
    assert tags["manifest_sha256"] == summary["manifest_sha256"]
    assert json.loads(entry.dataset.source)["uri"] == summary["data_uri"]
    assert tags["mlflow.data.context"] == "training"
    assert int(tags["images.train"]) > 0 and int(tags["images.test"]) > 0
    profile = json.loads(entry.dataset.profile)
    assert profile["num_rows"] == summary["images"]


@pytest.mark.slow
def test_a_retried_step_replaces_its_earlier_run(config, manifest, pipeline, client, tmp_path):
    _, ref = pipeline
    for attempt in ("a", "b"):
        train_phase_step(config, manifest, "tomato", "1", None, tmp_path / attempt, tracking=ref)
    (active,) = children(client, ref)
    assert active.data.tags["aads.attempt"] == "2"
    deleted = [r for r in children(client, ref, ViewType.ALL) if r.info.lifecycle_stage != "active"]
    assert len(deleted) == 1  # kept, restorable: `mlflow runs restore`


@pytest.mark.slow
def test_the_router_step_is_a_run_with_its_history_and_gate(config, manifest, pipeline, client):
    _, ref = pipeline
    outcome = train_router_step(config, manifest, manifest.parent / "router", tracking=ref)
    (run,) = [r for r in children(client, ref) if r.data.tags["aads.step"] == "router"]
    assert run.data.tags["gate"] == outcome.gate.verdict == "passed"
    assert run.data.params["training.epochs"] == str(EPOCHS)
    history = client.get_metric_history(run.info.run_id, "val_crop_accuracy")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_a_failing_step_ends_its_run_failed_with_the_reason(config, pipeline, client):
    _, ref = pipeline
    with pytest.raises(RuntimeError, match="out of memory"):
        with step_run(config.registry, ref, "phase2", crop="tomato", run_name="tomato: phase 2"):
            raise RuntimeError("CUDA out of memory")
    (run,) = children(client, ref)
    assert run.info.status == "FAILED"
    assert run.data.tags["aads.error"] == "RuntimeError: CUDA out of memory"


@pytest.mark.slow
def test_epoch_metrics_survive_a_tracking_server_that_stops_answering(
    config, pipeline, client, mlflow_server
):
    """One attempt per epoch while training (it must not stall), the rest when the step ends."""
    from aads.training import EpochLog

    _, ref = pipeline
    live = Tracker(config.registry, tracking_uri=mlflow_server)
    run = live.start_step(ref, "phase1", crop="corn", run_name="corn: phase 1")
    dead = Tracker(config.registry, tracking_uri=f"http://127.0.0.1:{free_port()}")
    run.tracker = dead
    start = time.monotonic()
    run.log_epoch(EpochLog(1, 0.9, {"val_accuracy": 0.5}, 1.0, 10.0, 1e-3))
    assert time.monotonic() - start < 10 and len(run.pending) == 5
    run.tracker = live
    run.log_epoch(EpochLog(2, 0.7, {"val_accuracy": 0.6}, 1.0, 10.0, 1e-3))
    run.end()
    losses = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in losses] == [(1, 0.9), (2, 0.7)]


@pytest.mark.slow
def test_epochs_trained_elsewhere_are_logged_from_the_packages_record(
    config, manifest, pipeline, client, tmp_path
):
    """A TrainJob's pods train the phase; its run gets the epochs when the package is back."""
    from aads.runner import log_phase, phase_run

    _, ref = pipeline
    pkg = tmp_path / "p1"
    train_phase_step(config, manifest, "tomato", "1", None, pkg)  # no tracking: "elsewhere"
    with phase_run(config, ref, "tomato", "1") as run:
        log_phase(run, pkg, "1", 0, replay=True)
    history = client.get_metric_history(run.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_without_a_pipeline_run_a_step_logs_nothing(config, manifest, tmp_path):
    run = StepRun(None)
    run.log_metrics({"x": 1.0})
    assert not run.enabled
    numbers = train_phase_step(config, manifest, "tomato", "1", None, tmp_path / "p1")
    assert "phase1_test_accuracy" in numbers


# --------------------------------------------------------------------------- gate and the end


@pytest.mark.slow
def test_a_failed_gate_is_recorded_on_the_evaluation_run(config, trained, pipeline, client):
    _, ref = pipeline
    strict = config.model_copy(
        update={"gate": config.gate.model_copy(update={"min_accuracy": 1.0})}
    )
    evaluation = evaluate_step(strict, trained.adapter, kfp_run_id="k", tracking=ref)
    assert not evaluation.gate.passed
    (run,) = children(client, ref)
    assert run.info.run_name == "tomato: evaluation" and run.info.status == "FINISHED"
    assert run.data.tags["gate"] == "failed"
    assert run.data.tags["gate_detail"] == evaluation.gate.summary()
    assert run.data.params["gate.min_accuracy"] == "1.0"
    assert run.data.metrics["accuracy"] == evaluation.headline.accuracy.value
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model_card.md", "report.html", "gate.json", "plots"} <= files


@pytest.mark.slow
def test_the_pipeline_run_ends_with_every_crops_verdict(config, trained, pipeline, client):
    kfp_run_id, ref = pipeline
    evaluate_step(config, trained.adapter, tracking=ref)
    hanging = Tracker(config.registry, tracking_uri=ref.tracking_uri).start_step(
        ref, "phase2", crop="corn", run_name="corn: phase 2"
    )
    close_pipeline_run_step(
        config,
        tracking_uri=ref.tracking_uri,
        kfp_run_id=kfp_run_id,
        succeeded=True,
        message="",
    )
    parent = client.get_run(ref.parent_run_id)
    assert parent.info.status == "FINISHED"
    gate = "passed" if evaluate_step(config, trained.adapter).gate.passed else "failed"
    assert parent.data.tags["gate.tomato"] == gate
    assert client.get_run(hanging.run_id).info.status == "FAILED"  # a step killed mid-way
    summary = client.download_artifacts(ref.parent_run_id, "summary.md")
    assert f"| tomato | {gate} |" in open(summary).read()


@pytest.mark.slow
def test_closing_a_pipeline_that_never_opened_a_run_does_nothing(config, mlflow_server):
    assert (
        close_pipeline_run_step(
            config,
            tracking_uri=mlflow_server,
            kfp_run_id="never-opened",
            succeeded=False,
            message="boom",
        )
        == ""
    )


def test_a_tracking_server_that_is_down_is_a_clear_unavailable_error(config, tmp_path):
    from aads.tracking import TrackingUnavailable

    dead = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(RegistrySettings(experiment="x"), tracking_uri=dead, retries=1)
    with pytest.raises(TrackingUnavailable, match=f"MLflow at {dead} unreachable"):
        tracker.open_pipeline_run("k", run_name="x", params={})
