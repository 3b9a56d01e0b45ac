"""Registered versions are MLflow pyfunc models that answer what the KServe servers answer:
`mlflow.pyfunc.load_model("models:/...@candidate").predict(...)` against a real predictor and
router process (`serving.local`, serving the same registered versions), against MLflow's own
scoring server, and with hostile bytes."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.types import DataType
from PIL import Image

from aads.config import RegistrySettings
from aads.registry import Registry
from serving.local import serve_locally
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.slow  # a real server or a training run in every test

REGISTRY = RegistrySettings(
    experiment="pyfunc-test",
    adapter_model_prefix="pyfunc-test-adapter-",
    router_model_name="pyfunc-test-router",
)
ADAPTER, ROUTER = "pyfunc-test-adapter-tomato", "pyfunc-test-router"


def not_a_plant() -> bytes:
    board = (np.indices((64, 64)).sum(0) // 8 % 2).astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(np.stack([board, np.zeros_like(board), board], axis=-1)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(trained) -> list[bytes]:
    """Tomato and corn test images and a picture of no plant at all."""
    tomato = sorted((trained.data / "base" / "tomato").rglob("*.jpg"))[:3]
    corn = sorted((trained.data / "base" / "corn").rglob("*.jpg"))[:1]
    return [p.read_bytes() for p in (*tomato, *corn)] + [not_a_plant()]


@pytest.fixture(scope="module")
def registered(trained, mlflow_server):
    registry = Registry(REGISTRY, tracking_uri=mlflow_server)
    for name, folder in ((ADAPTER, trained.adapter), (ROUTER, trained.router)):
        registry.register_package(
            folder, name=name, tags={}, description="# card", metrics={}, kfp_run_id="pyfunc-1"
        )
    return registry


@pytest.fixture(scope="module")
def models(registered, mlflow_server, tmp_path_factory):
    """Both versions loaded the way MLflow users load them: by registered name and alias."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        return {
            name: mlflow.pyfunc.load_model(
                f"models:/{name}@candidate", dst_path=str(tmp_path_factory.mktemp(name))
            )
            for name in (ADAPTER, ROUTER)
        }


@pytest.fixture(scope="module")
def served(registered, mlflow_server, tmp_path_factory):
    """The KServe router and predictor as processes, serving the same registered versions."""
    spec = {**TINY_SPEC, "registry": REGISTRY.model_dump(mode="json")}
    with serve_locally(
        yaml.safe_dump(spec),
        f"models:/{ROUTER}@candidate",
        {"tomato": f"models:/{ADAPTER}@candidate"},
        tmp_path_factory.mktemp("serve"),
        tracking_uri=mlflow_server,
    ) as serving:
        yield serving


def v1(url: str, images: list[bytes]) -> list[dict]:
    body = {"instances": [{"image": {"b64": base64.b64encode(i).decode()}} for i in images]}
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


def without_version(answer: dict) -> dict:
    """The registry's version number is known to the predictor (it resolved the alias) and
    not to the logged model (the number is given after the model is logged)."""
    return {**answer, "model": {**answer["model"], "version": ""}}


def test_the_adapter_model_answers_what_the_predictor_answers(models, served, images):
    served_answers = v1(f"{served.predictor_url}/v1/models/tomato:predict", images)
    pyfunc_answers = models[ADAPTER].predict(pd.DataFrame({"image": images}))
    assert [a["model"]["version"] for a in served_answers] == ["1"] * len(images)
    assert json.dumps([without_version(a) for a in pyfunc_answers], sort_keys=True) == json.dumps(
        [without_version(a) for a in served_answers], sort_keys=True
    )


def test_the_router_model_routes_as_the_router_server(models, served, images):
    served_answers = v1(f"{served.router_url}/v1/models/aads:predict", images)
    routes = models[ROUTER].predict(pd.DataFrame({"image": images}))
    assert json.dumps(routes, sort_keys=True) == json.dumps(
        [a["routing"] for a in served_answers], sort_keys=True
    )


def test_the_signature_states_an_image_column_and_the_answer_fields(models):
    signature = models[ADAPTER].metadata.signature
    assert [(c.name, c.type) for c in signature.inputs.inputs] == [("image", DataType.binary)]
    outputs = {c.name for c in signature.outputs.inputs}
    assert {"label", "is_ood", "confidence", "top_k", "ood", "model"} <= outputs


def test_the_input_example_is_a_request_mlflow_serving_accepts(models, registered):
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    found = registered.resolve(ADAPTER, "candidate")
    model = registered.client.get_logged_model(found.model_uri.removeprefix("models:/"))
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model.artifact_location}/serving_input_example.json",
            tracking_uri=registered.tracking_uri,
        )
    )
    example = json.loads(local.read_text())
    assert example["dataframe_split"]["columns"] == ["image"]
    client = TestClient(scoring_server.init(models[ADAPTER]))
    response = client.post("/invocations", json=example)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


def test_mlflow_scoring_server_answers_base64_images_as_the_model(models, images):
    """MLflow's own REST server (what `mlflow models serve` runs) decodes the binary column."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    client = TestClient(scoring_server.init(models[ADAPTER]))
    rows = [[base64.b64encode(i).decode()] for i in images[:2]]
    response = client.post(
        "/invocations",
        json={"dataframe_split": {"columns": ["image"], "data": rows}},
    )
    assert response.status_code == 200, response.text
    direct = models[ADAPTER].predict(pd.DataFrame({"image": images[:2]}))
    assert response.json()["predictions"] == direct
    bad = client.post(
        "/invocations",
        json={
            "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"x").decode()]]}
        },
    )
    assert bad.status_code == 400 and "image 0" in bad.text


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048))
def test_hostile_bytes_are_a_bad_input_error_naming_the_image(models, data):
    try:
        answers = models[ADAPTER].predict(pd.DataFrame({"image": [data]}))
    except MlflowException as err:
        assert err.error_code == "INVALID_PARAMETER_VALUE" and "image 0" in err.message
    else:  # the rare random bytes that decode as an image get an answer like any image
        assert len(answers) == 1


def test_a_table_without_an_image_column_is_refused_naming_it(models):
    with pytest.raises(MlflowException, match="image"):
        models[ADAPTER].predict(pd.DataFrame({"photo": [b""]}))
