"""The MLflow model registry and model cards, against a real MLflow server on loopback."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image

from aads.adapters.package import (
    AdapterMeta,
    PackageContents,
    PhaseRecord,
    verify_package,
    write_package,
)
from aads.config import RegistrySettings
from aads.modelcard import backbone_licence, model_card
from aads.registry import (
    HTTP_ENV,
    Registry,
    RegistryError,
    RegistryUnavailable,
    adapter_model_name,
)
from tests.conftest import free_port

TAGS = {
    "git_sha": "0123abc",
    "manifest_sha256": "f" * 64,
    "backbone": "random:tiny",
    "backbone_licence": "none (built in code for tests and demos)",
    "gate": '{"passed": true}',
}


def tomato_meta() -> AdapterMeta:
    return AdapterMeta(
        crop="tomato",
        classes=["healthy", "early_blight", "late_blight"],
        domains=["base", "low_light"],
        backbone_settings={"source": "random:tiny", "image_size": 32},
        backbone_signature={"model_type": "dinov3_vit", "hidden_size": "32"},
        adapter_settings={"dora": {"r": 4, "alpha": 8.0}, "sd_lora": {"rank": 2}},
        phases=[
            PhaseRecord(
                phase="1", added=["healthy", "early_blight"], epochs=2, metrics={"acc": 0.9}
            ),
            PhaseRecord(phase="2", task="0", added=["late_blight"], epochs=1, metrics={"acc": 0.8}),
            PhaseRecord(phase="3", task="low_light", added=["low_light"], epochs=1),
        ],
        metrics={"accuracy": 0.8125, "old_class_retention": 0.95},
        manifest_sha256="f" * 64,
        ood={
            "method": "mahalanobis/shared/pooled",
            "threshold": "percentile",
            "near_auroc": 0.9123,
        },
    )


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuine checksummed adapter package, written without training."""
    return write_package(
        PackageContents(
            meta=tomato_meta(),
            heads={"head.0.weight": torch.zeros(3, 4), "head.0.bias": torch.zeros(3)},
        ),
        tmp_path_factory.mktemp("pkg") / "tomato",
    )


@pytest.fixture(scope="module")
def confusion_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plots") / "cm.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def settings(mlflow_server: str) -> RegistrySettings:
    return RegistrySettings(tracking_uri=mlflow_server, experiment="aads-test")


@pytest.fixture(scope="module")
def registry(settings: RegistrySettings) -> Registry:
    return Registry(settings)


def register(registry: Registry, pkg: Path, name: str, kfp_run_id: str, **kw):
    return registry.register_package(
        pkg,
        name=name,
        tags=TAGS,
        description=f"# card for {kfp_run_id}",
        metrics={"accuracy": 0.8125, "nan_metric": float("nan")},
        kfp_run_id=kfp_run_id,
        **kw,
    )


@pytest.fixture
def fresh_name() -> str:
    """A model name no other test uses: tests share one server."""
    return f"aads-adapter-t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def tomato_v1(registry: Registry, settings: RegistrySettings, pkg: Path, confusion_png: Path):
    return register(
        registry,
        pkg,
        adapter_model_name(settings, "tomato"),
        "kfp-run-1",
        images={"confusion_matrix": confusion_png},
    )


@pytest.fixture
def two_versions(registry: Registry, pkg: Path, fresh_name: str) -> str:
    register(registry, pkg, fresh_name, "run-a")
    register(registry, pkg, fresh_name, "run-b")
    return fresh_name


# --------------------------------------------------------------------------- registration


def test_registering_a_package_creates_version_1_with_tags_card_and_candidate(tomato_v1):
    assert (tomato_v1.name, tomato_v1.version) == ("aads-adapter-tomato", "1")
    assert tomato_v1.tags == {**TAGS, "kfp_run_id": "kfp-run-1"}
    assert tomato_v1.description == "# card for kfp-run-1"
    assert tomato_v1.aliases == ["candidate"]
    assert tomato_v1.source.endswith("/package")


def test_the_registration_run_holds_finite_metrics_plots_and_model_card(tomato_v1, registry):
    run = registry.client.get_run(tomato_v1.run_id)
    assert run.data.metrics == {"accuracy": 0.8125}
    assert run.data.params["git_sha"] == "0123abc"
    top = {a.path for a in registry.client.list_artifacts(tomato_v1.run_id)}
    assert top == {"package", "plots", "model_card.md"}
    plots = [a.path for a in registry.client.list_artifacts(tomato_v1.run_id, "plots")]
    assert plots == ["plots/confusion_matrix.png"]


def test_registering_again_with_the_same_kfp_run_returns_the_same_version(
    registry, pkg, fresh_name
):
    first = register(registry, pkg, fresh_name, "run-a")
    again = register(registry, pkg, fresh_name, "run-a")
    assert again.version == first.version == "1"
    assert registry.versions(fresh_name) == ["1"]


def test_a_different_kfp_run_creates_the_next_version(registry, two_versions):
    assert registry.versions(two_versions) == ["1", "2"]
    assert registry.resolve(two_versions, "candidate").version == "2"


def test_a_package_that_fails_its_checksums_is_not_registered(registry, pkg, tmp_path, fresh_name):
    import shutil

    broken = Path(shutil.copytree(pkg, tmp_path / "broken"))
    (broken / "heads.safetensors").write_bytes(b"not the weights")
    with pytest.raises(RegistryError, match="does not match its checksum"):
        register(registry, broken, fresh_name, "run-x")
    with pytest.raises(RegistryError, match="has no registered model"):
        registry.resolve(fresh_name, "1")


def test_tag_values_must_be_strings(registry, pkg, fresh_name):
    with pytest.raises(RegistryError, match=r"not strings: \['epochs'\]"):
        registry.register_package(
            pkg,
            name=fresh_name,
            tags={"epochs": 3},  # type: ignore[dict-item]
            description="",
            metrics={},
            kfp_run_id="run-a",
        )


# --------------------------------------------------------------------------- aliases


def test_first_promotion_makes_the_version_champion_and_sets_no_rollback(registry, two_versions):
    registry.promote(two_versions, "1")
    assert registry.resolve(two_versions, "champion").version == "1"
    with pytest.raises(RegistryError, match="no alias 'rollback'"):
        registry.resolve(two_versions, "rollback")


def test_promotion_moves_the_previous_champion_to_rollback(registry, two_versions):
    registry.promote(two_versions, "1")
    registry.promote(two_versions, "2")
    assert registry.resolve(two_versions, "champion").version == "2"
    assert registry.resolve(two_versions, "rollback").version == "1"


def test_set_alias_refuses_names_outside_the_allowed_aliases(registry, two_versions):
    with pytest.raises(RegistryError, match="candidate, champion, rollback"):
        registry.set_alias(two_versions, "production", "1")


# --------------------------------------------------------------------------- lookups


def test_resolve_finds_a_version_by_alias_and_by_number(registry, two_versions):
    by_alias = registry.resolve(two_versions, "candidate")
    by_number = registry.resolve(two_versions, "2")
    assert by_alias == by_number
    assert by_number.tags["kfp_run_id"] == "run-b"


def test_an_unknown_alias_lists_the_aliases_that_exist(registry, two_versions):
    with pytest.raises(RegistryError, match=r"no alias 'champion'; aliases: candidate -> v2"):
        registry.resolve(two_versions, "champion")


def test_an_unknown_version_lists_the_versions_that_exist(registry, two_versions):
    with pytest.raises(RegistryError, match=r"no version 7; versions: 1, 2"):
        registry.resolve(two_versions, "7")


def test_an_unknown_model_lists_the_registered_models(registry, two_versions):
    with pytest.raises(
        RegistryError, match=rf"no registered model 'aads-adapter-nope'.*{two_versions}"
    ):
        registry.resolve("aads-adapter-nope", "1")


# --------------------------------------------------------------------------- download


def test_download_gives_the_package_with_identical_checksums(registry, tomato_v1, pkg, tmp_path):
    got = registry.download(tomato_v1.name, "candidate", tmp_path / "dl" / "tomato")
    assert got == tmp_path / "dl" / "tomato"
    assert verify_package(got) == verify_package(pkg)


def test_download_replaces_the_destination_and_leaves_no_staging_behind(
    registry, tomato_v1, tmp_path
):
    dst = tmp_path / "dl" / "tomato"
    dst.mkdir(parents=True)
    (dst / "stale.txt").write_text("old")
    registry.download(tomato_v1.name, "1", dst)
    assert not (dst / "stale.txt").exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["tomato"]


# --------------------------------------------------------------------------- failures


def test_a_dead_server_raises_registry_unavailable_naming_the_uri_quickly(
    settings, pkg, registry, fresh_name
):
    dead_uri = f"http://127.0.0.1:{free_port()}"
    dead = Registry(settings, tracking_uri=dead_uri, retries=2)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=f"MLflow at {dead_uri} unreachable"):
        register(dead, pkg, fresh_name, "run-a")
    assert time.monotonic() - start < 30
    with pytest.raises(RegistryError, match="has no registered model"):
        registry.resolve(fresh_name, "1")  # nothing leaked to the live server either


def test_registry_calls_leave_mlflow_http_settings_as_they_found_them(settings):
    before = {k: os.environ.get(k) for k in HTTP_ENV}
    dead = Registry(settings, tracking_uri=f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(RegistryUnavailable):
        dead.resolve("aads-adapter-tomato", "1")
    assert {k: os.environ.get(k) for k in HTTP_ENV} == before


def test_unavailable_message_never_shows_credentials(settings):
    dead = Registry(settings, tracking_uri=f"http://bob:s3cret@127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(RegistryUnavailable) as info:
        dead.resolve("aads-adapter-tomato", "1")
    assert "s3cret" not in str(info.value) and "bob" not in str(info.value)


def test_a_registry_without_a_tracking_uri_is_refused():
    with pytest.raises(RegistryError, match="no tracking URI"):
        Registry(RegistrySettings())


# --------------------------------------------------------------------------- model card


@pytest.fixture(scope="module")
def card() -> str:
    gate = {"passed": True, "thresholds": {"accuracy": 0.7}}
    return model_card(tomato_meta(), kfp_run_id="kfp-run-42", git_sha="0123abc", gate=gate)


def test_model_card_names_the_crop_and_the_classes_in_head_order(card):
    assert "# Plant-disease adapter: tomato" in card
    assert "`healthy`, `early_blight`, `late_blight`" in card


def test_model_card_has_one_history_row_per_phase_record(card):
    history = card.split("## Continual-learning history")[1].split("## Provenance")[0]
    rows = [line for line in history.splitlines() if line.startswith("| ") and "phase" not in line]
    assert [r.split(" | ")[1] for r in rows] == ["DoRA", "SD-LoRA", "CONEC-LoRA"]


def test_model_card_reports_the_ood_auroc(card):
    assert "| near_auroc | 0.9123 |" in card


def test_model_card_states_the_backbone_licence(card):
    assert "- Backbone licence: none (built in code for tests and demos)" in card


def test_model_card_records_the_kfp_run_and_the_gate(card):
    assert "KFP run id: `kfp-run-42`" in card
    assert "Gate: **passed**" in card and "| accuracy | 0.7000 | 0.8125 |" in card


def test_model_card_lists_each_gate_check_with_minimum_and_outcome():
    check = {"name": "accuracy", "metric": "phase3_mean_accuracy", "value": 0.61, "minimum": 0.7}
    gate = {"passed": False, "checks": [{**check, "outcome": "failed"}]}
    card = model_card(tomato_meta(), gate=gate)
    assert "Gate: **FAILED**" in card
    assert "| accuracy | phase3_mean_accuracy | 0.7000 | 0.6100 | failed |" in card


@pytest.mark.parametrize(
    ("source", "licence"),
    [
        ("facebook/dinov3-vitl16-pretrain-lvd1689m", "DINOv3 License (Meta; gated"),
        ("synthetic:small", "none (built in code"),
        ("random:tiny", "none (built in code"),
        ("s3://mirror/dinov3", "unknown: check the weights' licence"),
    ],
)
def test_backbone_licence_follows_the_source(source, licence):
    assert backbone_licence(source).startswith(licence)
