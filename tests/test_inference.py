"""Serving core without servers: where models come from, shared weights (image checks:
test_uploads.py)."""

from __future__ import annotations

import pytest
import torch

from aads.adapters.package import verify_package
from aads.answer import answer_json_schema
from aads.backbone import open_image
from aads.config import RegistrySettings, StorageSettings
from aads.inference import Diagnoser, resolve_model, share_identical_parameters
from aads.registry import Registry


@pytest.mark.slow
def test_a_registry_alias_resolves_to_a_verified_local_package_and_its_version(
    mlflow_server, trained, tmp_path
):
    pkg = trained.adapter
    settings = RegistrySettings(experiment="inference-test")
    Registry(settings, tracking_uri=mlflow_server).register_package(
        pkg,
        name="inference-test-adapter",
        tags={},
        description="# card",
        metrics={},
        kfp_run_id="run-inference-test",
    )
    storage = StorageSettings(cache_dir=tmp_path / "cache")
    resolved = resolve_model(
        "models:/inference-test-adapter@candidate", storage, settings, tracking_uri=mlflow_server
    )
    assert resolved.version == "1"
    assert verify_package(resolved.path) == verify_package(pkg)
    again = resolve_model(
        "models:/inference-test-adapter/1", storage, settings, tracking_uri=mlflow_server
    )
    assert again.path == resolved.path  # cached by the version's source, verified


def test_a_local_folder_is_served_as_is_and_a_missing_one_is_a_clear_error(tmp_path):
    storage = StorageSettings(cache_dir=tmp_path / "cache")
    assert resolve_model(tmp_path, storage).path == tmp_path
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_model(tmp_path / "absent", storage)


def test_equal_weights_of_several_networks_become_one_tensor():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    b = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    b[0].load_state_dict(a[0].state_dict())  # shared layer; b[1] differs (the "adapter")
    x = torch.randn(3, 4)
    before = a(x), b(x)
    freed = share_identical_parameters([a, b])
    assert freed == (4 * 4 + 4) * 4
    assert b[0].weight.data_ptr() == a[0].weight.data_ptr()
    assert b[1].weight.data_ptr() != a[1].weight.data_ptr()
    assert torch.equal(a(x), before[0]) and torch.equal(b(x), before[1])


def test_a_phase3_adapters_answers_name_the_domain_its_selector_picked(loop_world):
    from tests.loop_world import fresh_images

    diagnoser = Diagnoser.from_dir(loop_world.phase3)
    images = fresh_images(loop_world, "base", 4) + fresh_images(loop_world, "field", 4)
    answers = diagnoser.diagnose([open_image(data) for data in images])
    assert {a.domain for a in answers} <= {"base", "field"}
    assert all(a.domain for a in answers)
    assert all(a.wire()["domain"] == a.domain for a in answers)


def test_a_phase1_adapters_answers_carry_no_domain(loop_world):
    from tests.loop_world import fresh_images

    diagnoser = Diagnoser.from_dir(loop_world.phase1)
    answers = diagnoser.diagnose([open_image(d) for d in fresh_images(loop_world, "base", 2)])
    assert all(a.domain is None and "domain" not in a.wire() for a in answers)


def test_the_answer_schema_documents_the_domain():
    props = answer_json_schema()["properties"]
    assert "CONEC" in props["domain"]["description"]
