"""What every KFP component reads the same way at its entry point (`aads.steps.component_inputs`):
the spec parameter, the MLflow server (the parameter, then the pod's environment, then the
spec) and the pipeline's parent run, in one place rather than in every component body."""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pytest

import components
from aads.config import ConfigError
from aads.steps import component_inputs
from aads.tracking import RunRef
from tests.conftest import TINY_SPEC

SPEC = json.dumps(TINY_SPEC)  # YAML's subset: what the pipeline passes as the config text
SERVER = {"MLFLOW_TRACKING_URI": "http://mlflow.aads:5000"}


def test_the_spec_parameter_is_parsed_and_validated():
    assert component_inputs(SPEC, {}).config.crop_names == ["tomato", "corn"]


def test_a_bad_spec_parameter_is_refused_naming_the_parameter_and_the_field():
    with pytest.raises(ConfigError, match="config parameter") as err:
        component_inputs("crops: 3\n", {})
    assert "crops" in str(err.value)


def test_the_tracking_server_is_the_parameter_then_the_environment_then_the_spec():
    assert component_inputs(SPEC, SERVER, tracking_uri="http://given").tracking_uri == (
        "http://given"
    )
    assert component_inputs(SPEC, SERVER).tracking_uri == "http://mlflow.aads:5000"
    assert component_inputs(SPEC, {}).tracking_uri is None  # registry.tracking_uri decides


def test_the_parent_run_is_the_one_the_mlflow_run_artifact_names(tmp_path):
    run_file = tmp_path / "mlflow_run"
    run_file.write_text(json.dumps({"run_id": "abc123"}))
    artifact = SimpleNamespace(path=str(run_file))
    assert component_inputs(SPEC, SERVER, mlflow_run=artifact).tracking == RunRef(
        "http://mlflow.aads:5000", "abc123"
    )
    given = component_inputs(SPEC, SERVER, tracking_uri="http://given", mlflow_run=artifact)
    assert given.tracking == RunRef("http://given", "abc123")


def test_a_step_run_on_its_own_has_no_parent_run(tmp_path):
    assert component_inputs(SPEC, SERVER).tracking is None
    missing = SimpleNamespace(path=str(tmp_path / "not-written"))
    assert component_inputs(SPEC, SERVER, mlflow_run=missing).tracking is None


def test_no_component_reads_the_tracking_server_or_the_parent_run_itself():
    for name in components.__all__:
        body = inspect.getsource(getattr(components, name).python_func)
        assert "environ.get(" not in body and "run_ref(" not in body, name
