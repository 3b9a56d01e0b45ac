"""A champion that has learned a domain can still learn a new disease (issue 17's central
operation): a `classes` continuation of a CONEC-LoRA package keeps the network frozen and
learns the new class in the heads (`aads.adapters.phases.heads`), rehearsal-free.

The parent is the continuation world's phase-1 package after a real `domain` continuation
(phase 3, field); everything runs through `continue_from`, as the CLI and the pipeline do.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from aads.adapters import loading
from aads.adapters.loading import load_adapter
from aads.adapters.package import (
    CLASS_STATS_FILE,
    CONEC_FILE,
    HEADS_FILE,
    read_meta,
    read_tensors,
    update_package,
)
from aads.adapters.phases.common import AdapterTrainingError
from aads.cli import app
from aads.config import PlatformConfig, parse_config
from aads.continual import ContinuationError, continue_from
from aads.continual.data import learned_batches
from aads.data.ingest import ingest
from aads.ood.calibrate import adapter_features, calibrate_package
from aads.registry import Registry
from aads.tasks import TaskSpec, write_task
from serving.local import start_server
from tests.conftest import free_port
from tests.continual_world import DRAW, NEW, OLD, SPEC, ContinualWorld, build

SECOND = "mosaic_virus"  # the world's hold-out disease, drawn but never trained on


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ContinualWorld:
    return build(tmp_path_factory)


def classes_task(name: str = NEW) -> TaskSpec:
    return TaskSpec(kind="classes", crop="tomato", classes=[name])


def domain_task(name: str) -> TaskSpec:
    return TaskSpec(kind="domain", crop="tomato", domain=name, classes=OLD)


@pytest.fixture(scope="module")
def with_field(world, tmp_path_factory) -> Path:
    """The parent after a domain continuation: a phase-3 package, as every champion is."""
    out = tmp_path_factory.mktemp("with-field")
    result = continue_from(
        world.config,
        str(world.parent),
        domain_task("field"),
        world.field,
        out,
        eval_dir=world.evaluation,
    )
    assert read_meta(result.package).last_phase == "3"
    return result.package


@pytest.fixture(scope="module")
def child(world, with_field, tmp_path_factory) -> Path:
    """The phase-3 package continued with a classes task (the new disease's images only)."""
    out = tmp_path_factory.mktemp("heads-child")
    result = continue_from(
        world.config,
        str(with_field),
        classes_task(),
        world.new_class,
        out,
        eval_dir=world.evaluation,
    )
    return result.package


def test_phase_3_carries_the_class_statistics_a_later_classes_task_aligns_on(world, with_field):
    parent, carried = (
        read_tensors(world.parent, CLASS_STATS_FILE),
        read_tensors(with_field, CLASS_STATS_FILE),
    )
    assert carried is not None and set(carried) == set(parent)
    assert all(torch.equal(carried[k], parent[k]) for k in parent)


def test_a_classes_task_after_a_domain_is_learned_in_the_heads(child):
    meta = read_meta(child)
    assert meta.classes == [*OLD, NEW]
    assert meta.domains == ["base", "field"] and meta.has_domains
    assert [p.phase for p in meta.phases] == ["1", "3", "2"]
    record = meta.phases[-1]
    assert record.added == [NEW] and record.task == "0"
    assert record.metrics["learned_in_heads"] == 1.0
    assert learned_batches(meta) == (OLD, [[NEW]])


def test_every_domain_head_has_the_new_rows_and_later_heads_keep_their_old_rows(with_field, child):
    before, after = read_tensors(with_field, CONEC_FILE), read_tensors(child, CONEC_FILE)
    assert after["heads.1.weight"].shape[0] == len(OLD) + 1
    assert torch.equal(after["heads.1.weight"][: len(OLD)], before["heads.1.weight"])
    assert torch.equal(after["heads.1.bias"][: len(OLD)], before["heads.1.bias"])
    base = read_tensors(child, HEADS_FILE)
    assert torch.equal(base["head.0.weight"], after["heads.0.weight"])
    new_rows = after["heads.1.weight"][len(OLD) :]  # present, and competing with nothing
    assert not new_rows.any() and torch.isclose(
        after["heads.1.bias"][len(OLD)], before["heads.1.bias"].mean()
    )
    frozen = [k for k in before if not k.startswith("heads.")]  # shared, late sets, selector
    assert all(torch.equal(before[k], after[k]) for k in frozen)


def test_the_child_loads_and_names_the_new_disease(world, child):
    adapter = load_adapter(child, world.config.storage, device="cpu")
    assert adapter.conec is not None and adapter.conec.num_domains == 2
    rows = ingest(world.new_class, config=parse_config(DRAW), layout="crop-class").rows
    assert adapter.ood is not None and adapter.ood.classes == [*OLD, NEW]
    served = adapter_features(adapter, rows, world.new_class)  # selector routing, as served
    named = float((served.logits.argmax(1) == len(OLD)).mean())
    assert named > 0.5, f"only {named:.2f} of the new disease's images are named"


def test_the_child_continues_with_another_classes_task_and_a_domain_task(world, child, tmp_path):
    drawn = world.parent.parent / "drawn" / "base" / "tomato" / "leaf" / SECOND
    second = tmp_path / "second" / "tomato" / SECOND
    shutil.copytree(drawn, second)
    grand = continue_from(
        world.config, str(child), classes_task(SECOND), tmp_path / "second", tmp_path / "g1"
    ).package
    meta = read_meta(grand)
    assert meta.classes == [*OLD, NEW, SECOND] and [p.phase for p in meta.phases][-1] == "2"
    assert learned_batches(meta) == (OLD, [[NEW], [SECOND]])
    night = continue_from(
        world.config,
        str(child),
        domain_task("night"),
        world.field,
        tmp_path / "g2",
        eval_dir=world.evaluation,
    ).package
    meta = read_meta(night)
    assert meta.domains == ["base", "field", "night"] and meta.last_phase == "3"
    assert meta.classes == [*OLD, NEW] and learned_batches(meta) == (OLD, [[NEW]])
    assert read_tensors(night, CONEC_FILE)["heads.2.weight"].shape[0] == len(OLD) + 1


def test_the_child_is_recalibrated_on_images_of_every_class(world, child, tmp_path):
    pkg = shutil.copytree(child, tmp_path / "pkg")
    drawn, config = world.parent.parent / "drawn", parse_config(DRAW)
    calibrate_package(config, pkg, ingest(drawn, config=config).rows, drawn, loco=False)
    assert load_adapter(pkg, config.storage, device="cpu").ood.classes == [*OLD, NEW]


@pytest.fixture
def no_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a backbone was loaded before the input was refused")

    monkeypatch.setattr(loading, "package_backbone", refuse)


@pytest.mark.usefixtures("no_backbone")
def test_a_known_class_after_a_domain_is_refused_before_training(world, with_field, tmp_path):
    with pytest.raises(ContinuationError, match=r"\['early_blight'\] already known"):
        continue_from(
            world.config,
            str(with_field),
            classes_task("early_blight"),
            world.new_class,
            tmp_path / "o",
        )


@pytest.mark.usefixtures("no_backbone")
def test_a_domain_package_without_class_statistics_is_refused_before_training(
    world, with_field, tmp_path
):
    bare = shutil.copytree(with_field, tmp_path / "bare")

    def drop(staging: Path, meta):
        (staging / CLASS_STATS_FILE).unlink()
        return meta

    update_package(bare, drop)
    with pytest.raises(AdapterTrainingError, match="carries no class_stats"):
        continue_from(world.config, str(bare), classes_task(), world.new_class, tmp_path / "o")


@pytest.mark.slow
def test_a_real_predictor_process_serves_the_child_and_names_the_new_disease(
    world, child, tmp_path
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    port = free_port()
    server = start_server(
        "serving.predictor",
        ["--adapter", f"tomato={child}", "--spec", str(spec)],
        tmp_path / "predictor.log",
        port=port,
        timeout_s=120,
    )
    images = sorted((world.new_class / "tomato" / NEW).glob("*.jpg"))[:4]
    body = {
        "instances": [{"image": {"b64": base64.b64encode(p.read_bytes()).decode()}} for p in images]
    }
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/tomato:predict",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answers = json.loads(response.read())["predictions"]
    finally:
        server.stop()
    assert len(answers) == len(images)
    print(answers[0])
    assert any(a.get("label") == NEW or a.get("class") == NEW for a in answers), answers


def test_continuing_a_champion_with_domains_registers_a_child_that_knows_the_disease(
    world, with_field, mlflow_server, tmp_path
):
    prefix = "after-domains-adapter-"  # own names: the session's MLflow server is shared
    spec = {
        **SPEC,
        "registry": {
            "tracking_uri": mlflow_server,
            "experiment": "after-domains-test",
            "artifact_store": "s3://aads/mlflow",
            "adapter_model_prefix": prefix,
        },
        "storage": {"cache_dir": str(tmp_path / "cache")},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    config = PlatformConfig.model_validate(spec)
    registry = Registry(config.registry, tracking_uri=mlflow_server)
    name = f"{prefix}tomato"
    v1 = registry.register_package(
        with_field,
        name=name,
        tags={"gate": "passed"},
        description="# v1",
        metrics={},
        kfp_run_id="after-domains-v1",
    )
    registry.promote(name, v1.version)
    batch = shutil.copytree(world.new_class, tmp_path / "batch")
    write_task(batch, classes_task())
    result = CliRunner().invoke(
        app,
        [
            *("train", "continue", "--data", str(batch), "--eval", str(world.evaluation)),
            *("--out", str(tmp_path / "v2"), "--register", "--config", str(tmp_path / "spec.yaml")),
            *("-o", "json"),
        ],
    )
    assert result.exit_code == 0, result.output
    child = registry.resolve(name, json.loads(result.stdout)["registered"]["version"])
    assert child.tags["parent_version"] == v1.version and child.tags["task_kind"] == "classes"
    fetched = registry.download(name, child.version, tmp_path / "fetched")
    meta = read_meta(fetched)
    assert meta.classes == [*OLD, NEW] and meta.domains == ["base", "field"]
    assert load_adapter(fetched, config.storage, device="cpu").conec.num_domains == 2
    (tmp_path / "pyfunc").mkdir()
    with pytest.MonkeyPatch.context() as env:  # loaded as MLflow users load it
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        model = mlflow.pyfunc.load_model(
            f"models:/{name}@candidate", dst_path=str(tmp_path / "pyfunc")
        )
    images = [p.read_bytes() for p in sorted((world.new_class / "tomato" / NEW).glob("*.jpg"))]
    answers = model.predict(pd.DataFrame({"image": images[:4]}))
    assert len(answers) == 4 and all("error" not in a for a in answers), answers
