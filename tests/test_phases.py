"""The phase table and the one runner: every entry point trains a phase through `run_phase`
(and the router through `run_router`), bad inputs are refused before anything trains, and a
further method is one table entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aads import phases
from aads.adapters.package import read_meta, update_package, verify_package
from aads.atomic import atomic_dir
from aads.cli import app
from aads.config import ConfigError
from aads.data.ingest import ingest, write_ingest_outputs
from aads.errors import BadInput, exit_code
from aads.phases import PHASES, Phase, UnknownPhase
from aads.router import RouterError, load_router
from aads.runner import (
    ManifestInputs,
    PhaseInputError,
    check_inputs,
    phase_numbers,
    run_phase,
)
from aads.steps import ROUTER_TAGS, StepError, run_router, train_phase_step


def test_each_phase_has_its_own_number_name_and_settings_section():
    assert [p.number for p in PHASES] == ["1", "2", "3"]
    assert len({p.name for p in PHASES}) == len({p.settings_key for p in PHASES}) == len(PHASES)
    assert [p.method for p in PHASES] == ["DoRA", "SD-LoRA", "CONEC-LoRA"]
    assert [p.needs_previous for p in PHASES] == [False, True, True]


def test_a_phase_is_found_by_its_number_and_an_unknown_one_is_a_bad_input_naming_the_known():
    assert phases.get("2") is phases.SD_LORA and phases.get(phases.DORA) is phases.DORA
    with pytest.raises(UnknownPhase, match=r"one of 1, 2, 3, got '4'") as err:
        phases.get("4")
    assert isinstance(err.value, BadInput) and exit_code(err.value) == 2


@pytest.mark.slow
def test_a_phase_applies_to_a_crop_only_when_the_crop_lists_its_tasks(trained):
    tomato = trained.config.crop("tomato")  # phase-1 classes only
    assert [p.applies(tomato) for p in PHASES] == [True, False, False]
    both = tomato.model_copy(update={"phase2_batches": [["x"]], "phase3_domains": ["night"]})
    assert all(p.applies(both) for p in PHASES)


@pytest.mark.slow
def test_a_phase_run_records_the_method_settings_training_settings_and_tasks(trained):
    params = phases.DORA.params(trained.config, "tomato")
    assert set(params) == {"backbone", "dora", "training", "classes"}
    assert params["classes"] == ["healthy", "early_blight", "leaf_mold"]


def test_the_cli_has_one_train_command_per_phase_and_continuing_ones_need_from():
    runner = CliRunner()
    for phase in PHASES:
        result = runner.invoke(app, ["train", phase.name, "--help"])
        assert result.exit_code == 0 and phase.method in result.output
        assert ("--from" in result.output) == phase.needs_previous


# --------------------------------------------------------------------------- refusals


@pytest.mark.slow
def test_a_continuing_phase_without_the_previous_package_is_refused(trained, tmp_path):
    with pytest.raises(PhaseInputError, match=r"phase 2 \(SD-LoRA\) of tomato needs"):
        run_phase(trained.config, "2", "tomato", trained.rows, trained.data, None, tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_phase_one_refuses_a_previous_package_it_would_ignore(trained, tmp_path):
    with pytest.raises(PhaseInputError, match="takes no previous package"):
        check_inputs(trained.config, "1", "tomato", trained.adapter)


@pytest.mark.slow
def test_an_unknown_crop_is_refused_naming_the_configured_ones(trained, tmp_path):
    with pytest.raises(ConfigError, match="tomato"):
        check_inputs(trained.config, "1", "wheat", None)


@pytest.mark.slow
def test_a_damaged_previous_package_is_refused_before_training(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained.adapter, broken)
    (broken / "adapter.json").write_text("{}")
    with pytest.raises(BadInput):
        check_inputs(trained.config, "2", "tomato", broken)


# --------------------------------------------------------------------------- pass-through


@pytest.mark.slow
def test_a_phase_not_asked_for_passes_the_previous_package_through(trained, tmp_path):
    out = tmp_path / "p2"
    numbers = train_phase_step(
        trained.config, tmp_path / "unused", "tomato", "2", trained.adapter, out, phases=["1"]
    )
    assert numbers == {"skipped": 1.0}
    verify_package(out)
    assert read_meta(out) == read_meta(trained.adapter)


@pytest.mark.slow
def test_passing_through_needs_a_package_to_pass(trained, tmp_path):
    with pytest.raises(StepError, match="no package before phase 3"):
        train_phase_step(trained.config, tmp_path, "tomato", "3", None, tmp_path / "o")


# --------------------------------------------------------------------------- a fourth method


def _identity_train(config, crop, rows, data_root, previous, out_dir, **_: object) -> Path:
    """A method that learns nothing: the previous package plus one measured number."""
    with atomic_dir(Path(out_dir)) as tmp:
        shutil.copytree(previous, tmp, dirs_exist_ok=True)
    metrics = {"phase4_test_accuracy": 1.0}
    return update_package(
        Path(out_dir),
        lambda _, meta: meta.model_copy(update={"metrics": {**meta.metrics, **metrics}}),
    )


IDENTITY = Phase(
    number="4",
    method="identity",
    purpose="nothing (a test of the table)",
    settings_key="identity",
    card_fields=(),
    needs_previous=True,
    applies=lambda spec: True,
    data_params=lambda spec: {},
    train=_identity_train,
)


@pytest.mark.slow
def test_a_further_method_is_one_table_entry_the_runner_runs(trained, tmp_path):
    out = run_phase(
        trained.config,
        IDENTITY,
        "tomato",
        trained.rows,
        trained.data,
        trained.adapter,
        tmp_path / "p4",
    )
    verify_package(out)
    assert phase_numbers(out, IDENTITY) == {"phase4_test_accuracy": 1.0}
    assert IDENTITY.params(trained.config, "tomato").keys() == {"backbone"}  # no own settings
    with pytest.raises(PhaseInputError, match="identity"):
        run_phase(trained.config, IDENTITY, "tomato", trained.rows, trained.data, None, tmp_path)


# --------------------------------------------------------------------------- the router


def test_the_router_has_its_entry_beside_the_phases_with_its_step_and_headline_numbers():
    assert phases.ROUTER.name == "router" and phases.ROUTER not in PHASES
    assert phases.ROUTER.headline_metrics == ("test_crop_accuracy", "test_part_accuracy")
    assert ROUTER_TAGS == phases.ROUTER.headline_metrics  # a registered version's metric tags
    line = phases.ROUTER.line({"test_crop_accuracy": 0.95, "test_part_accuracy": 0.5})
    assert line == "crop accuracy 0.950, part accuracy 0.500"
    assert phases.ROUTER.line({}) == "crop accuracy nan, part accuracy nan"


@pytest.mark.slow
def test_the_router_runner_writes_the_router_and_gates_it(trained, tmp_path):
    out = tmp_path / "router"
    data = ManifestInputs(trained.rows, trained.data, "", str(trained.data))
    outcome = run_router(trained.config, data, out)
    assert load_router(out).crops == trained.config.crop_names
    assert [c.metric for c in outcome.gate.checks] == ["test_crop_accuracy"]
    assert outcome.metrics == json.loads((out / "router.json").read_text())["metrics"]
    assert [p.name for p in tmp_path.iterdir()] == ["router"]  # no staging folder left


@pytest.mark.slow
def test_a_router_that_fails_to_train_leaves_the_earlier_router_in_place(trained, tmp_path):
    out = tmp_path / "router"
    shutil.copytree(trained.router, out)
    before = (out / "router.json").read_text()
    no_corn = [r for r in trained.rows if r.crop != "corn"]
    with pytest.raises(RouterError, match="corn"):
        run_router(trained.config, ManifestInputs(no_corn, trained.data, "", ""), out)
    assert (out / "router.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["router"]


@pytest.mark.slow
def test_aads_train_router_trains_through_the_router_runner(trained, tmp_path):
    manifest = tmp_path / "manifest"
    write_ingest_outputs(ingest(trained.data, config=trained.config), manifest)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(trained.config.model_dump(mode="json")))
    out = tmp_path / "models" / "router"
    args = ["train", "router", "--config", config, "--manifest", manifest / "manifest.csv"]
    result = CliRunner().invoke(app, [*map(str, args), "--out", str(out), "--output", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["router"] == str(out) and report["metrics"]["test_crop_accuracy"] >= 0
    assert load_router(out).crops == trained.config.crop_names
    assert [p.name for p in out.parent.iterdir()] == ["router"]
