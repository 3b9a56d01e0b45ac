"""The MLflow model registry against a real MLflow server on loopback: every version is a
pyfunc model of a real package, idempotent by KFP run, aliases, lookups, verified downloads."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest

from aads.adapters.package import verify_package
from aads.config import RegistrySettings, ServingSettings
from aads.inference import Diagnoser
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
    "gate": "passed",
    "metric.accuracy": "0.8125",
}


@pytest.fixture(scope="module")
def settings(mlflow_server: str) -> RegistrySettings:
    return RegistrySettings(tracking_uri=mlflow_server, experiment="aads-test")


@pytest.fixture(scope="module")
def registry(settings: RegistrySettings) -> Registry:
    return Registry(settings)


@pytest.fixture(scope="module")
def pkg(trained) -> Path:
    return trained.adapter


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
def evaluation_run(registry: Registry) -> str:
    """A run standing for the pipeline's evaluation run of the package."""
    experiment = registry.experiment_id(registry.settings.experiment)
    return registry.client.create_run(experiment, run_name="tomato: evaluation").info.run_id


@pytest.fixture(scope="module")
def tomato_v1(registry: Registry, settings: RegistrySettings, pkg: Path, evaluation_run: str):
    return register(
        registry, pkg, adapter_model_name(settings, "tomato"), "kfp-run-1", run_id=evaluation_run
    )


@pytest.fixture
def two_versions(registry: Registry, pkg: Path, fresh_name: str) -> str:
    register(registry, pkg, fresh_name, "run-a")
    register(registry, pkg, fresh_name, "run-b")
    return fresh_name


def an_image(trained) -> bytes:
    return next((trained.data / "base" / "tomato").rglob("*.jpg")).read_bytes()


# --------------------------------------------------------------------------- registration


@pytest.mark.slow
def test_registering_a_package_creates_version_1_with_tags_card_and_candidate(tomato_v1):
    assert (tomato_v1.name, tomato_v1.version) == ("aads-adapter-tomato", "1")
    assert tomato_v1.tags == {**TAGS, "kfp_run_id": "kfp-run-1"}
    assert tomato_v1.description == "# card for kfp-run-1"
    assert tomato_v1.aliases == ["candidate"]


@pytest.mark.slow
def test_a_version_is_a_logged_pyfunc_model_holding_the_package(tomato_v1, registry):
    assert tomato_v1.model_uri.startswith("models:/m-")
    assert tomato_v1.source.endswith("/artifacts/package")
    model_id = tomato_v1.model_uri.removeprefix("models:/")
    files = {a.path for a in registry.client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "adapter_code.py", "input_example.json", "requirements.txt"} <= files
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)  # models from code


@pytest.mark.slow
def test_the_version_links_to_its_evaluation_run_with_the_metrics_and_card(
    tomato_v1, registry, evaluation_run
):
    assert tomato_v1.run_id == evaluation_run
    model = registry.client.get_logged_model(tomato_v1.model_uri.removeprefix("models:/"))
    assert model.source_run_id == evaluation_run
    assert {m.key: m.value for m in model.metrics} == {"accuracy": 0.8125}  # NaN left out
    files = {a.path for a in registry.client.list_artifacts(evaluation_run)}
    assert "model_card.md" in files


@pytest.mark.slow
def test_mlflow_pyfunc_loads_the_version_by_alias_and_answers_as_the_diagnoser(
    tomato_v1, trained, mlflow_server, monkeypatch, tmp_path
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # how MLflow users point at it
    model = mlflow.pyfunc.load_model(f"models:/{tomato_v1.name}@candidate", dst_path=str(tmp_path))
    image = an_image(trained)
    answers = model.predict(pd.DataFrame({"image": [image, image]}))
    diagnoser = Diagnoser.from_dir(trained.adapter)  # what the predictor runs on an upload
    pixels = diagnoser.prepare(image, "image", ServingSettings())
    expected = [a.wire() for a in diagnoser.diagnose_pixels([pixels, pixels])]
    assert json.dumps(answers, sort_keys=True) == json.dumps(expected, sort_keys=True)
    schema = model.metadata.signature
    assert [c.name for c in schema.inputs.inputs] == ["image"]
    assert {"label", "is_ood", "confidence", "top_k", "ood"} <= {
        c.name for c in schema.outputs.inputs
    }


@pytest.mark.slow
def test_registering_again_with_the_same_kfp_run_returns_the_same_version(
    registry, pkg, fresh_name
):
    first = register(registry, pkg, fresh_name, "run-a")
    again = register(registry, pkg, fresh_name, "run-a")
    assert again.version == first.version == "1" and again.model_uri == first.model_uri
    assert registry.versions(fresh_name) == ["1"]


@pytest.mark.slow
def test_a_model_logged_by_an_attempt_that_died_before_the_version_is_reused(
    registry, pkg, fresh_name
):
    experiment = registry.experiment_id(registry.settings.experiment)
    run = registry.client.create_run(experiment).info.run_id
    logged = registry._log_model(pkg, experiment, fresh_name, run, "run-died")
    version = register(registry, pkg, fresh_name, "run-died", run_id=run)
    assert version.model_uri == logged.model_uri


@pytest.mark.slow
def test_a_different_kfp_run_creates_the_next_version(registry, two_versions):
    assert registry.versions(two_versions) == ["1", "2"]
    assert registry.resolve(two_versions, "candidate").version == "2"


@pytest.mark.slow
def test_a_package_that_fails_its_checksums_is_not_registered(registry, pkg, tmp_path, fresh_name):
    broken = Path(shutil.copytree(pkg, tmp_path / "broken"))
    (broken / "heads.safetensors").write_bytes(b"not the weights")
    with pytest.raises(RegistryError, match="does not match its checksum"):
        register(registry, broken, fresh_name, "run-x")
    with pytest.raises(RegistryError, match="has no registered model"):
        registry.resolve(fresh_name, "1")


@pytest.mark.slow
def test_a_folder_without_checksums_is_not_registered(registry, pkg, tmp_path, fresh_name):
    unsealed = Path(shutil.copytree(pkg, tmp_path / "unsealed"))
    (unsealed / "SHA256SUMS").unlink()
    with pytest.raises(RegistryError, match="has no SHA256SUMS"):
        register(registry, unsealed, fresh_name, "run-x")


@pytest.mark.slow
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


@pytest.mark.slow
def test_first_promotion_makes_the_version_champion_and_sets_no_rollback(registry, two_versions):
    registry.promote(two_versions, "1")
    assert registry.resolve(two_versions, "champion").version == "1"
    with pytest.raises(RegistryError, match="no alias 'rollback'"):
        registry.resolve(two_versions, "rollback")


@pytest.mark.slow
def test_promotion_moves_the_previous_champion_to_rollback(registry, two_versions):
    registry.promote(two_versions, "1")
    registry.promote(two_versions, "2")
    assert registry.resolve(two_versions, "champion").version == "2"
    assert registry.resolve(two_versions, "rollback").version == "1"


@pytest.mark.slow
def test_set_alias_refuses_names_outside_the_allowed_aliases(registry, two_versions):
    with pytest.raises(RegistryError, match="candidate, champion, rollback"):
        registry.set_alias(two_versions, "production", "1")


# --------------------------------------------------------------------------- lookups


@pytest.mark.slow
def test_resolve_finds_a_version_by_alias_and_by_number(registry, two_versions):
    by_alias = registry.resolve(two_versions, "candidate")
    by_number = registry.resolve(two_versions, "2")
    assert by_alias == by_number
    assert by_number.tags["kfp_run_id"] == "run-b"


@pytest.mark.slow
def test_an_unknown_alias_lists_the_aliases_that_exist(registry, two_versions):
    with pytest.raises(RegistryError, match=r"no alias 'champion'; aliases: candidate -> v2"):
        registry.resolve(two_versions, "champion")


@pytest.mark.slow
def test_an_unknown_version_lists_the_versions_that_exist(registry, two_versions):
    with pytest.raises(RegistryError, match=r"no version 7; versions: 1, 2"):
        registry.resolve(two_versions, "7")


@pytest.mark.slow
def test_an_unknown_model_lists_the_registered_models(registry, two_versions):
    with pytest.raises(
        RegistryError, match=rf"no registered model 'aads-adapter-nope'.*{two_versions}"
    ):
        registry.resolve("aads-adapter-nope", "1")


# --------------------------------------------------------------------------- download


@pytest.mark.slow
def test_download_gives_the_package_with_identical_checksums(registry, tomato_v1, pkg, tmp_path):
    got = registry.download(tomato_v1.name, "candidate", tmp_path / "dl" / "tomato")
    assert got == tmp_path / "dl" / "tomato"
    assert verify_package(got) == verify_package(pkg)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_registry_calls_leave_mlflow_http_settings_as_they_found_them(settings):
    before = {k: os.environ.get(k) for k in HTTP_ENV}
    dead = Registry(settings, tracking_uri=f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(RegistryUnavailable):
        dead.resolve("aads-adapter-tomato", "1")
    assert {k: os.environ.get(k) for k in HTTP_ENV} == before


@pytest.mark.slow
def test_unavailable_message_never_shows_credentials(settings):
    dead = Registry(settings, tracking_uri=f"http://bob:s3cret@127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(RegistryUnavailable) as info:
        dead.resolve("aads-adapter-tomato", "1")
    assert "s3cret" not in str(info.value) and "bob" not in str(info.value)


def test_a_registry_without_a_tracking_uri_is_refused():
    with pytest.raises(RegistryError, match="no tracking URI"):
        Registry(RegistrySettings())
