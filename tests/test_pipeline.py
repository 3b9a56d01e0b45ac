"""The KFP training pipeline: compiled YAML matches the code, and whole local runs (kfp.local)
register gated versions in a real MLflow server, with data and MLflow artifacts in S3 too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from helm_python import Chart
from mlflow import MlflowClient
from PIL import Image

from aads.cluster import ClusterFileError, load_cluster, spec_text
from aads.config import ConfigError, SynthSettings, load_config, parse_config
from aads.data.synth import synthesize
from aads.inference import Diagnoser, resolve_model
from aads.mlflow_server import local_mlflow_server
from aads.ood import UNKNOWN
from aads.steps import HEADLINE_TAGS
from aads.storage import open_store, put_dir
from pipelines.compile import MANIFEST_YAML, PIPELINE_YAML, compiled_texts
from pipelines.local import run_local
from tests.conftest import ROOT

TINY = {"source": "random:tiny", "image_size": 32}
BACKBONES = {
    "dinov3": TINY,
    "dinov2": {"source": "random:dinov2_tiny", "image_size": 28},  # 2 x 2 patches of 14
}
"""Both generations pass the same whole-pipeline test: DINOv2 is a config choice, not a fork."""


def spec(cache_dir: Path, backbone: dict = TINY, **overrides) -> dict:
    base = {
        "crops": [
            {
                "name": "tomato",
                "phase1_classes": ["healthy", "early_blight", "leaf_mold"],
                "phase2_batches": [["septoria"]],
                "phase3_domains": ["field"],
                "ood_holdout": ["mosaic_virus"],
            },
            {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
        ],
        "router": backbone,
        "adapter": {"backbone": backbone, "dora": {"r": 2, "alpha": 4}, "sd_lora": {"rank": 2}},
        "training": {
            name: {"epochs": 1, "batch_size": 16, "early_stopping_patience": None}
            for name in ("router", "phase1", "phase2", "phase3")
        },
        "storage": {"cache_dir": str(cache_dir)},
        # Random weights: every level at 0, so the run registers and its MLflow side is seen.
        "gate": {
            "min_accuracy": 0.0,
            "min_retention": 0.0,
            "min_near_ood_auroc": 0.0,
            "min_far_ood_auroc": 0.0,
            "min_router_crop_accuracy": 0.0,
        },
        # Own model names: the session's MLflow server is shared with other test files.
        "registry": {
            "experiment": "aads-pipeline-test",
            "adapter_model_prefix": "pipeline-test-adapter-",
            "router_model_name": "pipeline-test-router",
        },
    }
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    settings = SynthSettings(images_per_class=6, images_per_domain_class=4, image_size=32)
    synthesize(parse_config(spec(root)), root, settings=settings)
    return root


def pipeline_runs(client: MlflowClient, experiment: str, kfp_run_id: str) -> list:
    """Every run of one pipeline run (`kfp_run_id` "": of the only one in the experiment)."""
    exp = client.get_experiment_by_name(experiment)
    where = f"tags.kfp_run_id = '{kfp_run_id}'" if kfp_run_id else ""
    return client.search_runs([exp.experiment_id], filter_string=where)


# --------------------------------------------------------------------------- compiled YAML


@pytest.mark.slow
def test_committed_pipeline_yaml_and_manifests_match_the_code():
    """Run `aads pipeline compile` after changing the pipeline or a component."""
    for path, text in compiled_texts().items():
        assert path.read_text() == text, f"{path} is stale: run `aads pipeline compile`"


def test_compiled_pipeline_loads_with_kfp():
    from kfp.components import load_component_from_file

    pipeline = load_component_from_file(str(PIPELINE_YAML))
    assert pipeline.name == "aads-training"
    assert set(pipeline.component_spec.inputs) == {
        "data_uri",
        "config_uri",
        "config_yaml",
        "crops",
        "phases",
        "tracking_uri",
        "git_sha",
        "trainer_nodes",
        "trainer_gpus_per_node",
    }


def pipeline_task(spec: dict, name: str) -> dict:
    """A task of the compiled pipeline, wherever it sits (the exit handler wraps the body)."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return next(d["tasks"][name] for d in dags if name in d["tasks"])


def all_tasks(spec: dict) -> list[dict]:
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return [task for dag in dags for task in dag["tasks"].values()]


def compiled() -> list[dict]:
    return list(yaml.safe_load_all(PIPELINE_YAML.read_text()))


def test_every_parameter_a_ui_user_fills_has_a_description():
    inputs = compiled()[0]["root"]["inputDefinitions"]["parameters"]
    for name, spec in inputs.items():
        assert len(spec.get("description", "").split()) >= 5, name


def test_a_ui_run_needs_only_the_data_the_spec_comes_by_reference():
    inputs = compiled()[0]["root"]["inputDefinitions"]["parameters"]
    required = {name for name, spec in inputs.items() if not spec.get("isOptional")}
    assert required == {"data_uri"}
    assert inputs["config_uri"]["defaultValue"] == "/etc/aads/spec.yaml"
    assert inputs["config_yaml"]["defaultValue"] == ""
    # Every crop of the spec the chart installs, not ['tomato'].
    production = load_config(ROOT / "config" / "production.yaml")
    assert inputs["crops"]["defaultValue"] == production.crop_names


def test_the_spec_configmap_is_mounted_into_every_step():
    cluster = load_cluster()
    executors = compiled()[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) >= 9
    for name, executor in executors.items():
        (mount,) = executor["configMapAsVolume"]
        assert mount["configMapName"] == cluster.spec_config_map, name
        assert mount["mountPath"] == "/etc/aads" and mount["optional"] is True


def test_every_step_requests_cpu_and_memory_and_gpu_steps_a_gpu():
    executors = compiled()[0]["deploymentSpec"]["executors"]
    gpu_steps = 0
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"], name
        assert resources["resourceCpuLimit"] and resources["resourceMemoryLimit"], name
        if "accelerator" in resources:
            gpu_steps += 1
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert gpu_steps == 5  # router, phases 1-3, OOD calibration


def gpu_task_retries(docs: list[dict]) -> dict[str, dict]:
    found = {}

    def walk(tasks: dict) -> None:
        for name, task in tasks.items():
            if "retryPolicy" in task:
                found[name] = task["retryPolicy"]

    walk(docs[0]["root"]["dag"]["tasks"])
    for component in docs[0]["components"].values():
        walk(component.get("dag", {}).get("tasks", {}))
    return found


def test_gpu_steps_are_retried_and_the_crops_loop_is_capped():
    docs = compiled()
    retried = gpu_task_retries(docs)
    assert set(retried) == {
        "train-router",
        "train-adapter-phase",
        "train-adapter-phase-2",
        "train-adapter-phase-3",
        "calibrate-ood",
    }
    assert all(r["maxRetryCount"] == load_cluster().retries.gpu_steps for r in retried.values())
    loop = next(t for t in all_tasks(docs[0]) if "parameterIterator" in t)
    assert loop["iteratorPolicy"]["parallelismLimit"] == load_cluster().max_parallel_crops
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("crops")


def test_training_steps_request_a_gpu_and_registration_never_uses_the_cache():
    docs = compiled()
    assert pipeline_task(docs[0], "preprocess")["cachingOptions"] == {}  # enableCache absent
    assert pipeline_task(docs[0], "resolve-config")["cachingOptions"] == {}
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = platform["exec-register-adapter"]["secretAsEnv"]
    assert {s["secretName"] for s in secrets} == {"aads-s3", "aads-mlflow"}
    assert "nodeSelector" in platform["exec-train-adapter-phase"]


@pytest.mark.slow
def test_cluster_settings_change_the_compiled_pipeline_without_code(tmp_path):
    settings = yaml.safe_load((ROOT / "config" / "cluster.yaml").read_text())
    settings["registry"] = "registry.example.com/agri"
    settings["secrets"] = {"storage": "agri-s3", "registry": "agri-mlflow"}
    settings["gpu"]["node_selector"] = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    settings["max_parallel_crops"] = 2
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(settings))
    text = compiled_texts(cluster=str(path))[PIPELINE_YAML]
    assert "image: registry.example.com/agri/aads-components:" in text
    assert "image: ghcr.io" not in text
    assert "secretName: agri-s3" in text and "secretName: agri-mlflow" in text
    assert "cloud.google.com/gke-accelerator" in text and "parallelismLimit: 2" in text


def test_a_bad_cluster_settings_file_names_the_field(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("registry: ''\n")
    with pytest.raises(ClusterFileError, match="registry"):
        load_cluster(path)


def test_one_pipeline_version_name_for_upload_submit_the_chart_job_and_the_manifests(tmp_path):
    from pipelines.submit import version_name_here
    from pipelines.training import pipeline_version_name

    (manifest_version,) = [
        d for d in yaml.safe_load_all(MANIFEST_YAML.read_text()) if d["kind"] == "PipelineVersion"
    ]
    assert manifest_version["metadata"]["name"] == pipeline_version_name()
    notes = Chart.load(ROOT / "charts").render(
        {"kfp": {"uploadPipeline": True}}, name="aads", namespace="aads"
    )["aads/templates/NOTES.txt"]
    assert f"as aads-training version {pipeline_version_name()}." in notes
    os.chdir(tmp_path)  # the upload Job's image has no git checkout: the released name
    try:
        assert version_name_here() == pipeline_version_name()
    finally:
        os.chdir(ROOT)
    assert pipeline_version_name("0123456789abcdef") == f"{pipeline_version_name()}-g0123456789ab"
    dirty = pipeline_version_name("0123456789abcdef", dirty=True, stamp=7)
    assert dirty.endswith("-g0123456789ab-dirty-7")


def test_every_tracked_step_gets_mlflow_and_the_run_ends_whatever_happens():
    docs = compiled()
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in ("train-router", "train-adapter-phase", "calibrate-ood", "evaluate-adapter"):
        secrets = {s["secretName"] for s in platform[f"exec-{step}"]["secretAsEnv"]}
        assert load_cluster().secrets.registry in secrets, step
    closing = pipeline_task(docs[0], "close-pipeline-run")
    assert closing["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    phase = pipeline_task(docs[0], "train-adapter-phase")
    assert phase["inputs"]["artifacts"]["mlflow_run"] == {
        "componentInputArtifact": "pipelinechannel--open-pipeline-run-mlflow_run"
    }


def test_gitops_manifests_are_a_pipeline_and_its_version():
    kinds = [d["kind"] for d in yaml.safe_load_all(MANIFEST_YAML.read_text())]
    assert kinds == ["Pipeline", "PipelineVersion"]


# --------------------------------------------------------------------------- the spec by reference


def test_the_spec_comes_from_the_override_then_the_uri(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path)))
    assert spec_text(str(path)) == path.read_text()
    override = yaml.safe_dump(spec(tmp_path, name="override"))
    assert spec_text(str(path), override) == override


def test_the_spec_is_read_from_s3(s3_settings, tmp_path, monkeypatch):
    from aads.storage import S3Store

    store = S3Store(s3_settings.bucket, s3_settings)
    store.ensure_bucket()
    text = yaml.safe_dump(spec(tmp_path))
    store.write_bytes("specs/platform.yaml", text.encode())
    # As in a step: endpoint and keys from the storage Secret's environment variables.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{s3_settings.endpoint}")
    assert spec_text(f"s3://{s3_settings.bucket}/specs/platform.yaml") == text


def test_a_missing_or_bad_spec_is_refused_naming_what_to_do(tmp_path):
    with pytest.raises(ClusterFileError, match="mount the platform spec ConfigMap"):
        spec_text(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="crops"):
        spec_text("", "router: {source: random:tiny}\n")


# --------------------------------------------------------------------------- local runs


# A whole kfp.local run is ~15 tasks, each its own Python process importing torch and MLflow:
# minutes on a shared 2-core machine, more than the suite's default limit.
WHOLE_RUN = pytest.mark.timeout(1500)


@WHOLE_RUN
@pytest.mark.parametrize("generation", list(BACKBONES))
@pytest.mark.slow
def test_local_run_registers_every_gated_model_with_tags_and_candidate_alias(
    generation, images, mlflow_server, tmp_path
):
    backbone = BACKBONES[generation]
    adapter_prefix = f"pipeline-test-{generation}-adapter-"
    registry = {
        "experiment": "aads-pipeline-test",
        "adapter_model_prefix": adapter_prefix,
        "router_model_name": f"pipeline-test-{generation}-router",
    }
    text = yaml.safe_dump(spec(tmp_path / "cache", backbone, registry=registry))
    run = run_local(
        text, str(images), tmp_path / "run", crops=["tomato"], tracking_uri=mlflow_server
    )
    tomato = run.crops["tomato"]
    assert tomato.passed and tomato.version == f"{adapter_prefix}tomato/1"
    assert run.router.passed and run.router.version == f"pipeline-test-{generation}-router/1"
    client = MlflowClient(tracking_uri=mlflow_server)
    version = client.get_model_version_by_alias(f"{adapter_prefix}tomato", "candidate")
    assert version.version == "1"
    tags = version.tags
    assert tags["crop"] == "tomato" and tags["phase"] == "3" and tags["gate"] == "passed"
    assert tags["kfp_run_id"] and len(tags["manifest_sha256"]) == 64
    assert tags["backbone"] == backbone["source"] and "metric.far_ood_auroc" in tags
    headline = {f"metric.{k}" for k in (*HEADLINE_TAGS, "accuracy_ci95")}
    assert {k for k in tags if k.startswith("metric.")} <= headline  # a few, not every metric
    assert "# " in version.description  # the model card

    # MLflow holds the pipeline run: one parent, a nested run per step, each finished.
    runs = pipeline_runs(client, "aads-pipeline-test", tags["kfp_run_id"])
    steps = sorted((r.data.tags["aads.step"], r.data.tags.get("aads.crop", "")) for r in runs)
    assert steps == [
        ("evaluation", "tomato"),
        ("ood", "tomato"),
        ("phase1", "tomato"),
        ("phase2", "tomato"),
        ("phase3", "tomato"),
        ("pipeline", ""),
        ("router", ""),
    ]
    assert {r.info.status for r in runs} == {"FINISHED"}
    evaluation = next(r for r in runs if r.data.tags["aads.step"] == "evaluation")
    assert version.run_id == evaluation.info.run_id and version.source.startswith("models:/m-")

    # The registered package serves: a tomato image gets one of its classes or "unknown".
    config = parse_config(yaml.safe_load(text))
    package = resolve_model(
        f"models:/{adapter_prefix}tomato@candidate",
        config.storage,
        config.registry,
        tracking_uri=mlflow_server,
    )
    image = Image.open(next((images / "base" / "tomato").rglob("*.jpg")))
    (answer,) = Diagnoser.from_dir(package.path, config.storage).diagnose([image])
    assert answer.label in [*config.crop("tomato").known_classes, UNKNOWN]


@WHOLE_RUN
@pytest.mark.slow
def test_a_failing_gate_registers_nothing_and_leaves_a_report(images, tmp_path):
    strict = spec(tmp_path / "cache", gate={"min_accuracy": 1.0, "min_router_crop_accuracy": 1.0})
    with local_mlflow_server(tmp_path / "mlflow") as uri:
        run = run_local(
            yaml.safe_dump(strict),
            str(images),
            tmp_path / "run",
            crops=["corn"],
            phases=["1"],
            tracking_uri=uri,
        )
        assert MlflowClient(tracking_uri=uri).search_registered_models() == []
        runs = pipeline_runs(MlflowClient(tracking_uri=uri), "aads-pipeline-test", "")
    assert run.crops["corn"].passed is False and "accuracy" in run.crops["corn"].gate
    assert run.router.passed is False and run.router.version == ""
    reports = list(run.run_dir.rglob("gate-failure-report*/report"))
    assert len(reports) == 2 and "Not registered" in reports[0].read_text()
    # The failed gate is recorded in MLflow, on the crop's evaluation run and the parent run.
    evaluation = next(r for r in runs if r.data.tags["aads.step"] == "evaluation")
    assert evaluation.data.tags["gate"] == "failed"
    assert evaluation.data.tags["gate_detail"] == run.crops["corn"].gate
    parent = next(r for r in runs if r.data.tags["aads.step"] == "pipeline")
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["gate.corn"], parent.data.tags["gate.router"]) == ("failed", "failed")


@WHOLE_RUN
@pytest.mark.slow
def test_local_run_reads_data_from_s3_and_stores_mlflow_artifacts_in_s3(
    images, moto_endpoint, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage = {
        "endpoint": moto_endpoint,
        "secure": False,
        "region": "us-east-1",
        "bucket": "aads-pipeline",
        "cache_dir": str(tmp_path / "cache"),
    }
    config = parse_config(spec(tmp_path / "cache", storage=storage))
    store, _ = open_store("s3://aads-pipeline/data", config.storage)
    put_dir(store, images, "data")
    s3_env = {"MLFLOW_S3_ENDPOINT_URL": f"http://{moto_endpoint}"}
    with local_mlflow_server(
        tmp_path / "mlflow", artifacts="s3://aads-pipeline/mlflow", env=s3_env
    ) as uri:
        run = run_local(
            yaml.safe_dump(spec(tmp_path / "cache", storage=storage)),
            "s3://aads-pipeline/data",
            tmp_path / "run",
            crops=["corn"],
            phases=["1"],
            tracking_uri=uri,
        )
        assert run.crops["corn"].version == "pipeline-test-adapter-corn/1"
    stored = [o.key for o in store.list("mlflow/")]
    assert any(k.endswith("package/adapter.json") for k in stored)
    assert any(k.endswith("package/ood/calibration.safetensors") for k in stored)


# --------------------------------------------------------------------------- faults


def test_preprocess_with_the_object_store_down_fails_clearly_and_writes_nothing(
    s3_settings, tmp_path
):
    from aads.steps import preprocess
    from aads.storage import StoreUnavailable
    from tests.conftest import free_port

    dead = s3_settings.model_copy(update={"endpoint": f"127.0.0.1:{free_port()}", "retries": 2})
    config = parse_config({**spec(tmp_path / "cache"), "storage": dead.model_dump(mode="json")})
    with pytest.raises(StoreUnavailable, match="unreachable"):
        preprocess(config, "s3://aads-test/data", tmp_path / "manifest")
    assert not (tmp_path / "manifest").exists()


@pytest.mark.slow
def test_submit_to_an_unreachable_kfp_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from aads.cli import app
    from tests.conftest import free_port

    config = tmp_path / "spec.yaml"
    config.write_text(yaml.safe_dump(spec(tmp_path / "cache")))
    host = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app,
        ["pipeline", "submit", "--host", host, "--data", "s3://aads/data", "--config", str(config)],
    )
    assert result.exit_code == 3
    assert f"KFP at {host}" in result.output


@pytest.mark.slow
def test_upload_to_an_unreachable_kfp_is_one_clear_error():
    from typer.testing import CliRunner

    from aads.cli import app
    from tests.conftest import free_port

    host = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["pipeline", "upload", "--host", host, "--version-name", "v1"])
    assert result.exit_code == 3
    assert f"KFP at {host}" in result.output
