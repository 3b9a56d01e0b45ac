"""Serving with real KServe ModelServer processes on 127.0.0.1: the router transformer in front
of a multi-adapter predictor (and a single-adapter one), V1 and V2, bad input, a dead predictor.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from aads.vlm.synthetic import field_image
from serving.local import ServerProcess, start_server
from serving.router import canary_bucket
from tests.conftest import free_port
from tests.images import not_a_plant
from tests.serving_models import SPEC, trained_models


def start(args: list[str], port: int, log: Path) -> ServerProcess:
    module, *rest = args
    return start_server(module, rest, log, port=port, timeout_s=120)


def stop(server: ServerProcess) -> None:
    server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict]:
    """Router + one multi-adapter predictor (tomato, corn) + a single-adapter corn predictor."""
    models = trained_models(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("serving")
    (tmp / "adapters").symlink_to(models / "adapters", target_is_directory=True)
    (tmp / "router").symlink_to(models / "router", target_is_directory=True)
    (tmp / "data").symlink_to(models / "data", target_is_directory=True)
    ports = {k: free_port() for k in ("router", "multi", "single", "scouting")}
    spec = {
        **SPEC,
        "serving": {
            **SPEC["serving"],
            "predictor_urls": {
                "tomato": f"http://127.0.0.1:{ports['multi']}",
                "corn": f"http://127.0.0.1:{ports['multi']}",
            },
            # Half of corn's images go to the single-adapter predictor (Standard-mode canary).
            "canaries": {
                "corn": {
                    "url": f"http://127.0.0.1:{ports['single']}",
                    "percent": 50,
                    "version": "2",
                }
            },
            "scouting_url": f"http://127.0.0.1:{ports['scouting']}",
        },
        # The scouting service: vegetation proposals, random-weight SAM-2 and BioCLIP.
        "scouting": {
            "device": "cpu",
            "sam2": {"source": "random:tiny"},
            "bioclip": {"source": "random:tiny"},
        },
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    cfg = ["--spec", str(tmp / "spec.yaml")]
    procs = [
        start(
            ["serving.predictor", "--model-root", str(tmp / "adapters"), *cfg],
            ports["multi"],
            tmp / "multi.log",
        ),
        start(
            ["serving.predictor", "--adapter", f"corn={tmp / 'adapters' / 'corn'}", *cfg],
            ports["single"],
            tmp / "single.log",
        ),
        start(
            ["serving.router", "--router", str(tmp / "router"), *cfg],
            ports["router"],
            tmp / "router.log",
        ),
        start(
            ["serving.scouting", "--router-url", f"http://127.0.0.1:{ports['router']}", *cfg],
            ports["scouting"],
            tmp / "scouting.log",
        ),
    ]
    images = {
        crop: sorted((tmp / "data" / "base" / crop).rglob("*.jpg"))[:3]
        for crop in ("tomato", "corn")
    }
    try:
        yield {"tmp": tmp, "ports": ports, "images": images, "cfg": cfg}
    finally:
        for p in procs:
            stop(p)


def post(port: int, path: str, body: bytes | dict, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def b64(path_or_bytes: Path | bytes) -> str:
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return base64.b64encode(raw).decode()


def v1(*images: Path | bytes, hint: str | None = None) -> dict:
    return {
        "instances": [
            {"image": {"b64": b64(im)}, **({"crop_hint": hint} if hint else {})} for im in images
        ]
    }


def v2(*images: Path | bytes, shape: list[int] | None = None, datatype: str = "BYTES") -> dict:
    data = [b64(im) for im in images]
    return {
        "inputs": [
            {"name": "image", "shape": shape or [len(data)], "datatype": datatype, "data": data}
        ]
    }


# --------------------------------------------------------------------------- scouting


def field_jpeg(n_leaves: int, seed: int) -> tuple[bytes, list]:
    field = field_image(n_leaves, seed=seed)
    buf = io.BytesIO()
    field.image.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), field.boxes


@pytest.mark.slow
def test_a_scouting_request_answers_one_region_per_leaf_through_the_router(served):
    photo, boxes = field_jpeg(4, seed=7)
    body = {"instances": [{"image": {"b64": b64(photo)}, "scouting": True}]}
    status, answer = post(served["ports"]["router"], "/v1/models/aads:predict", body, timeout=60)
    assert status == 200, answer
    (answered,) = answer["predictions"]
    scouted = answered["scouting"]
    assert scouted["detector"] == "vegetation"
    assert len(scouted["regions"]) == len(boxes) == scouted["verdict"]["regions"]
    for region in scouted["regions"]:
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= scouted["width"] and 0 <= y0 < y1 <= scouted["height"]
        assert region["diagnosis"]["label"] and region["bioclip"]["probability"] > 0
    assert answered["label"] and "is_ood" in answered  # the flat fields every answer has


@pytest.mark.slow
def test_scouted_and_plain_images_share_a_request_and_keep_their_order(served):
    photo, _ = field_jpeg(2, seed=3)
    leaf = served["images"]["tomato"][0]
    body = {
        "instances": [
            {"image": {"b64": b64(leaf)}},
            {"image": {"b64": b64(photo)}, "scouting": True},
        ]
    }
    status, answer = post(served["ports"]["router"], "/v1/models/aads:predict", body, timeout=60)
    assert status == 200
    plain, scouted = answer["predictions"]
    assert "scouting" not in plain and plain["routing"]["source"] == "router"
    assert len(scouted["scouting"]["regions"]) == 2


@pytest.mark.slow
def test_a_scouting_flag_that_is_not_a_boolean_is_a_400_naming_it(served):
    body = {"instances": [{"image": {"b64": b64(served["images"]["corn"][0])}, "scouting": "yes"}]}
    status, answer = post(served["ports"]["router"], "/v1/models/aads:predict", body)
    assert status == 400 and "instances[0].scouting" in answer["error"]


# --------------------------------------------------------------------------- round trips


@pytest.mark.slow
def test_a_canary_gets_its_share_of_a_crops_images_and_says_so(served):
    corn = sorted((served["tmp"] / "data" / "base" / "corn").rglob("*.jpg"))
    body_in = v1(*corn, hint="corn")
    status, body = post(served["ports"]["router"], "/v1/models/aads:predict", body_in)
    assert status == 200
    variants = [a["routing"].get("variant", "stable") for a in body["predictions"]]
    expected = ["canary" if canary_bucket(p.read_bytes()) < 50 else "stable" for p in corn]
    assert variants == expected
    assert {"canary", "stable"} <= set(variants)  # both predictors answered
    for answer in body["predictions"]:
        assert answer["label"] and "error" not in answer
        if answer["routing"].get("variant") == "canary":
            assert answer["routing"]["canary_version"] == "2"


@pytest.mark.slow
def test_v1_round_trip_through_the_router_answers_every_image_in_order(served):
    tomato, corn = served["images"]["tomato"][0], served["images"]["corn"][0]
    status, body = post(served["ports"]["router"], "/v1/models/aads:predict", v1(tomato, corn))
    assert status == 200
    answers = body["predictions"]
    assert len(answers) == 2
    for answer in answers:
        assert {"label", "is_ood", "confidence", "top_k", "ood", "model", "routing"} <= set(answer)
        assert answer["routing"]["source"] == "router"
        assert answer["model"]["name"] == f"aads-adapter-{answer['crop']}"
        assert answer["ood"]["nearest_class"] in {t["class"] for t in answer["top_k"]} | {
            answer["ood"]["nearest_class"]
        }


@pytest.mark.slow
def test_v2_round_trip_through_the_router(served):
    images = served["images"]["corn"][:2]
    status, body = post(served["ports"]["router"], "/v2/models/aads/infer", v2(*images))
    assert status == 200
    outputs = {o["name"]: o for o in body["outputs"]}
    assert set(outputs) == {"diagnosis", "label", "confidence", "is_ood"}
    diagnoses = [json.loads(d) for d in outputs["diagnosis"]["data"]]
    assert [d["label"] for d in diagnoses] == outputs["label"]["data"]


@pytest.mark.slow
def test_crop_hint_skips_routing(served):
    image = served["images"]["tomato"][0]
    _, body = post(served["ports"]["router"], "/v1/models/aads:predict", v1(image, hint="corn"))
    answer = body["predictions"][0]
    assert answer["crop"] == "corn"
    assert answer["routing"]["source"] == "crop_hint" and "crop_confidence" not in answer["routing"]


@pytest.mark.slow
def test_an_out_of_distribution_image_is_answered_unknown_with_a_hint(served):
    _, body = post(
        served["ports"]["router"], "/v1/models/aads:predict", v1(not_a_plant(), hint="tomato")
    )
    answer = body["predictions"][0]
    assert answer["is_ood"] is True and answer["label"] == "unknown"
    assert answer["ood"]["distance"] > answer["ood"]["threshold"]
    assert answer["ood"]["nearest_class"] in {"healthy", "early_blight", "leaf_mold"}


@pytest.mark.slow
def test_multi_adapter_and_single_adapter_predictors_give_identical_answers(served):
    request = v2(*served["images"]["corn"])
    answers = []
    for port in (served["ports"]["multi"], served["ports"]["single"]):
        status, body = post(port, "/v2/models/corn/infer", request)
        assert status == 200
        diagnosis = next(o for o in body["outputs"] if o["name"] == "diagnosis")
        answers.append([json.loads(d) for d in diagnosis["data"]])
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_v2_metadata_and_readiness(served):
    ports = served["ports"]
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['multi']}/v2/models/tomato") as r:
        meta = json.loads(r.read())
    assert meta["name"] == "tomato"
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "crop_hint", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["platform"] and meta["versions"] == []  # a local folder has no version
    for port, model in ((ports["multi"], "corn"), (ports["router"], "aads")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/ready") as r:
            assert json.loads(r.read())["ready"] is True


# --------------------------------------------------------------------------- bad input


BAD_REQUESTS = {
    "not an image": (b"/v1/models/aads:predict", v1(b"this is not an image at all")),
    "empty body": (b"/v1/models/aads:predict", b""),
    "no instances": (b"/v1/models/aads:predict", {"instances": []}),
    "wrong V2 datatype": (b"/v2/models/aads/infer", v2(b"x", datatype="FP32")),
    "wrong V2 shape": (b"/v2/models/aads/infer", v2(b"x", shape=[1, 1])),
    "unknown crop_hint": (b"/v1/models/aads:predict", None),
    "unknown model": (b"/v1/models/nope:predict", {"instances": []}),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
@pytest.mark.slow
def test_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(served, case):
    path, body = BAD_REQUESTS[case]
    image = served["images"]["tomato"][0]
    if case == "unknown crop_hint":
        body = v1(image, hint="banana")
    status, answer = post(served["ports"]["router"], path.decode(), body)
    assert 400 <= status < 500, (status, answer)
    assert answer.get("error"), answer
    status, _ = post(served["ports"]["router"], "/v1/models/aads:predict", v1(image))
    assert status == 200


@pytest.mark.slow
def test_a_truncated_jpeg_is_refused_naming_the_image(served):
    data = served["images"]["tomato"][0].read_bytes()
    status, answer = post(
        served["ports"]["router"], "/v1/models/aads:predict", v1(data[: len(data) // 2])
    )
    assert status == 400 and "image 0" in answer["error"]


@pytest.mark.slow
def test_an_image_over_the_size_limit_is_refused(served):
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert len(buf.getvalue()) > 200_000
    status, answer = post(served["ports"]["router"], "/v1/models/aads:predict", v1(buf.getvalue()))
    assert status == 413 and "image 0" in answer["error"] and "byte limit" in answer["error"]


@pytest.mark.slow
def test_a_request_body_over_the_limit_is_refused(served):
    image = served["images"]["tomato"][0]
    body = v1(image) | {"padding": "x" * 1_200_000}
    status, answer = post(served["ports"]["router"], "/v1/models/aads:predict", body)
    assert status == 413 and "max_request_bytes" in answer["error"]


# --------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_a_dead_predictor_costs_only_its_own_images_an_error(served):
    tmp, cfg = served["tmp"], served["cfg"]
    corn_port, router_port = free_port(), free_port()
    spec = yaml.safe_load((tmp / "spec.yaml").read_text())
    spec["serving"]["predictor_urls"]["corn"] = f"http://127.0.0.1:{corn_port}"
    spec["serving"]["canaries"] = {}
    spec["serving"]["scouting_url"] = f"http://127.0.0.1:{free_port()}"  # nobody there
    (tmp / "dead.yaml").write_text(yaml.safe_dump(spec))
    corn = start(
        ["serving.predictor", "--adapter", f"corn={tmp / 'adapters' / 'corn'}", *cfg],
        corn_port,
        tmp / "corn-dies.log",
    )
    router = start(
        ["serving.router", "--router", str(tmp / "router"), "--spec", str(tmp / "dead.yaml")],
        router_port,
        tmp / "router-dead.log",
    )
    try:
        stop(corn)
        tomato_img, corn_img = served["images"]["tomato"][0], served["images"]["corn"][0]
        began = time.monotonic()
        status, body = post(
            router_port, "/v1/models/aads:predict", v1(corn_img, hint="corn") | {}, timeout=20
        )
        assert status == 200 and time.monotonic() - began < 10
        assert body["predictions"][0]["error"]["code"] == 503
        status, body = post(router_port, "/v1/models/aads:predict", v1(tomato_img, hint="tomato"))
        assert status == 200 and "label" in body["predictions"][0]
        mixed = v1(tomato_img, hint="tomato")
        mixed["instances"].append({"image": {"b64": b64(corn_img)}, "scouting": True})
        status, body = post(router_port, "/v1/models/aads:predict", mixed)
        assert status == 200 and "label" in body["predictions"][0]
        assert body["predictions"][1]["error"]["code"] == 503  # the scouting service is down
    finally:
        stop(router)
        shutil.rmtree(tmp / "unused", ignore_errors=True)


@pytest.mark.slow
def test_a_picture_of_no_known_crop_is_answered_unknown_by_the_router(served):
    """The router's own crop-level OOD check answers it; no adapter is asked."""
    _, body = post(served["ports"]["router"], "/v1/models/aads:predict", v1(not_a_plant()))
    answer = body["predictions"][0]
    assert answer["label"] == "unknown" and answer.get("crop") is None
    assert answer["reason"] == "not one of the known crops"
    assert answer["routing"]["is_ood"] is True and "model" not in answer


@pytest.mark.slow
def test_aads_predict_prints_one_row_per_image(served):
    from typer.testing import CliRunner

    from aads.cli import app

    images = [str(p) for p in served["images"]["corn"][:2]]
    url = f"http://127.0.0.1:{served['ports']['router']}"
    result = CliRunner().invoke(app, ["predict", *images, "--url", url, "--json"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output)
    assert len(answers) == 2 and all("label" in a for a in answers)


def test_aads_predict_against_nothing_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from aads.cli import app

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["predict", str(image), "--url", url])
    assert result.exit_code == 3 and "error:" in result.output
