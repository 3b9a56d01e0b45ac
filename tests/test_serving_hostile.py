"""What a public endpoint meets, against real KServe ModelServer processes on 127.0.0.1: every
hostile input of issue 13, each answered 400 / 404 / 405 / 408 / 413 with a clear message that
never quotes the input, and good requests in the same batch or right after still answered
exactly as before; then clients and contracts we did not write (a fuzz of real image bytes,
tritonclient with binary tensors, schemathesis with the Open Inference Protocol spec).

Servers: a router (short timeouts, 64 connections at most, corn's predictor dead) in front of a
tomato+corn predictor; a predictor with the model repository routes switched on (admin); a
predictor with one injected bug (`tests.faulty_predictor`) for what a 500 does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image, PngImagePlugin

from serving.local import ServerProcess, start_server
from tests.conftest import free_port
from tests.faulty_predictor import MARKER
from tests.images import (
    corrupt_exif_jpeg,
    encode,
    mutated_images,
    one_bit_png,
    png_header_only,
    real_jpeg,
)
from tests.serving_models import SPEC, trained_models
from tests.test_serving_telemetry import scrape, total

OIP_SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "open-inference-protocol"
HOSTILE_SERVING = {
    **SPEC["serving"],
    "header_timeout_s": 2,
    "body_timeout_s": 3,
    "keep_alive_timeout_s": 5,
    "max_connections": 64,
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict]:
    models = trained_models(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("hostile")
    ports = {k: free_port() for k in ("router", "predictor", "admin", "faulty", "dead")}
    local = {
        "predictor_urls": {
            "tomato": f"http://127.0.0.1:{ports['predictor']}",
            "corn": f"http://127.0.0.1:{ports['dead']}",  # nobody listens there
        }
    }
    specs = {
        "hostile": {**SPEC, "serving": {**HOSTILE_SERVING, **local}},
        "admin": {**SPEC, "serving": {**SPEC["serving"], "model_repository": True}},
    }
    for name, spec in specs.items():
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    hostile, admin = ["--spec", str(tmp / "hostile.yaml")], ["--spec", str(tmp / "admin.yaml")]
    tomato = f"tomato={models / 'adapters' / 'tomato'}"
    started: dict[str, ServerProcess] = {}
    try:
        for name, module, args in (
            (
                "predictor",
                "serving.predictor",
                ["--model-root", str(models / "adapters"), *hostile],
            ),
            ("router", "serving.router", ["--router", str(models / "router"), *hostile]),
            ("admin", "serving.predictor", ["--adapter", tomato, *admin]),
            ("faulty", "tests.faulty_predictor", ["--adapter", tomato, *hostile]),
        ):
            started[name] = start_server(
                module, args, tmp / f"{name}.log", port=ports[name], timeout_s=120
            )
        yield {"models": models, "servers": started, "tmp": tmp}
    finally:
        for server in started.values():
            server.stop()


# --------------------------------------------------------------------------- helpers


def url(servers: dict, name: str = "router") -> str:
    return servers["servers"][name].url


def port(servers: dict, name: str = "router") -> int:
    return int(url(servers, name).rsplit(":", 1)[1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1(*images: bytes, **fields: object) -> dict:
    return {"instances": [{"image": {"b64": b64(im)}, **fields} for im in images]}


def v2(*images: bytes, **request: object) -> dict:
    data = [b64(im) for im in images]
    inputs = [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]
    return {"inputs": inputs, **request}


def predict(servers: dict, body: object, name: str = "router", **kw: object) -> httpx.Response:
    path = "/v1/models/aads:predict" if name == "router" else "/v1/models/tomato:predict"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url(servers, name) + path, content=content, timeout=60, **kw)


def infer(servers: dict, body: object, name: str = "router", **kw: object) -> httpx.Response:
    model = "aads" if name == "router" else "tomato"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{url(servers, name)}/v2/models/{model}/infer", content=content, timeout=60, **kw
    )


def tomato(servers: dict, i: int = 0) -> bytes:
    return sorted((servers["models"] / "data" / "base" / "tomato").rglob("*.jpg"))[i].read_bytes()


def good_answer(servers: dict, image: bytes | None = None, name: str = "router") -> dict:
    """A request that must be answered: status 200 and a label, no error."""
    hint = {"crop_hint": "tomato"} if name == "router" else {}
    response = predict(servers, v1(image or tomato(servers), **hint), name)
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert answer["label"] and "error" not in answer, answer
    return answer


def refused(response: httpx.Response, status: int, *words: str) -> str:
    """The response is `status` with an ``{"error": ...}`` naming every word, short enough that
    it cannot carry the input."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    message = response.json()["error"]
    assert len(response.content) < 1000, len(response.content)
    for word in words:
        assert word in message, message
    return message


def raw_exchange(port_: int, data: bytes, wait_s: float = 6.0) -> tuple[bytes, float]:
    """Send `data` on a fresh socket and read until the server closes it (or `wait_s`)."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_)) as sock:
        sock.settimeout(wait_s)
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            out += b"<still open>"
    return out, time.monotonic() - began


def memory_mib(server: ServerProcess) -> dict[str, float]:
    status = Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak(server: ServerProcess) -> None:
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


# --------------------------------------------------------------------------- isolation


@pytest.mark.slow
def test_the_corrupt_exif_jpeg_and_fifteen_good_images_in_one_request_all_get_answers(servers):
    """The issue's 808-byte JPEG made all 15 neighbours 500; each now gets its own answer."""
    poisoned = corrupt_exif_jpeg(real_jpeg())
    good = [tomato(servers, i % 3) for i in range(15)]
    response = infer(servers, v2(poisoned, *good), "predictor")
    assert response.status_code == 200, response.text
    diagnosis = next(o for o in response.json()["outputs"] if o["name"] == "diagnosis")
    answers = [json.loads(d) for d in diagnosis["data"]]
    assert len(answers) == 16 and all(a["label"] for a in answers)
    alone = [good_answer(servers, image, "predictor") for image in good[:3]]
    assert [a["label"] for a in answers[1:4]] == [a["label"] for a in alone]
    # A batch of 16 and a batch of 1 run different GEMM shapes: equal to float32 rounding.
    assert [a["confidence"] for a in answers[1:4]] == pytest.approx(
        [a["confidence"] for a in alone], abs=1e-4
    )


@pytest.mark.slow
def test_poisoned_requests_among_concurrent_good_ones_fail_no_one(servers):
    """One poisoned request among 15 concurrent good ones (they share dynamic batches)."""

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            bodies = [v1(corrupt_exif_jpeg(real_jpeg(7)), crop_hint="tomato")] + [
                v1(tomato(servers, i % 3), crop_hint="tomato") for i in range(15)
            ]
            return await asyncio.gather(
                *(client.post(url(servers) + "/v1/models/aads:predict", json=b) for b in bodies)
            )

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 16
    for response in responses:
        (answer,) = response.json()["predictions"]
        assert answer["label"] and answer["routing"]["source"] == "crop_hint"


@pytest.mark.slow
def test_a_bad_image_is_an_error_entry_for_itself_and_its_neighbour_is_answered(servers):
    bad = b"this is not an image at all"
    response = predict(servers, v1(bad, tomato(servers), crop_hint="tomato"))
    assert response.status_code == 200
    first, second = response.json()["predictions"]
    assert first["error"] == {
        "code": 400,
        "message": "image 0: not an image (JPEG, PNG or WebP expected)",
    }
    assert second["label"] and "error" not in second


# --------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_more_images_than_the_limit_is_413_naming_the_limit(servers):
    refused(predict(servers, v1(*[tomato(servers)] * 65)), 413, "65 images", "limit is 64")
    good_answer(servers)


@pytest.mark.slow
def test_a_decompression_bomb_is_413_too_many_pixels_naming_its_size(servers):
    response = predict(servers, v1(png_header_only(20_000, 20_000)))
    refused(response, 413, "image 0", "400.0 MP", "over the 40.0 MP limit")
    good_answer(servers)


@pytest.mark.slow
def test_the_pixel_budget_refuses_the_issues_request_before_decoding_anything(servers):
    """64 one-bit PNGs of 6300 x 6300 (0.3 MB on the wire, 2.5 gigapixels) took 3.5 GB:
    now a 413 from the headers alone, and neither process's peak memory moves."""
    router, predictor = servers["servers"]["router"], servers["servers"]["predictor"]
    images = [one_bit_png(6300)] * 64
    for name, server in (("router", router), ("predictor", predictor)):
        reset_peak(server)
        before = memory_mib(server)
        response = predict(servers, v1(*images), name)
        refused(response, 413, "64 images", "2540.2 MP", "per-request limit")
        grown = memory_mib(server)["VmHWM"] - before["VmRSS"]
        assert grown < 40, f"{name} peak grew {grown:.0f} MiB"
    good_answer(servers)


@pytest.mark.slow
def test_a_request_within_the_budget_is_decoded_one_image_at_a_time_in_bounded_memory(servers):
    """Six 40-megapixel one-bit PNGs (238 MP, under the budget) are each decoded and shrunk in
    turn: the predictor's peak grows by about one decoded frame, not six."""
    predictor = servers["servers"]["predictor"]
    reset_peak(predictor)
    before = memory_mib(predictor)
    response = predict(servers, v1(*[one_bit_png(6300)] * 6), "predictor")
    assert response.status_code == 200 and len(response.json()["predictions"]) == 6
    grown = memory_mib(predictor)["VmHWM"] - before["VmRSS"]
    assert grown < 200, f"peak grew {grown:.0f} MiB for 6 x 40 MP"  # 6 frames in RGB: 714 MiB


@pytest.mark.slow
def test_health_probes_answer_while_large_images_decode(servers):
    """Decoding runs off the event loop: while two 40-megapixel RGBA PNGs decode (a second or
    more each), readiness keeps answering, each probe in a fraction of the decode time."""
    rgba = encode(Image.new("RGBA", (6320, 6320), (10, 200, 30, 128)), "PNG")
    body = v1(rgba, rgba)
    began = time.monotonic()
    worker = threading.Thread(target=predict, args=(servers, body, "predictor"))
    worker.start()
    probes = []
    while worker.is_alive():
        sent = time.monotonic()
        assert httpx.get(url(servers, "predictor") + "/v2/health/ready").status_code == 200
        probes.append(time.monotonic() - sent)
        time.sleep(0.05)
    worker.join()
    took = time.monotonic() - began
    assert len(probes) >= 3 and max(probes) < took / 2, (probes, took)


# --------------------------------------------------------------------------- admin surface


@pytest.mark.parametrize("action", ["load", "unload"])
@pytest.mark.slow
def test_the_model_repository_routes_do_not_exist_by_default(servers, action):
    for name, model in (("router", "aads"), ("predictor", "tomato")):
        response = httpx.post(f"{url(servers, name)}/v2/repository/models/{model}/{action}")
        refused(response, 404, "no such path")
        assert httpx.get(url(servers, name) + "/v2/health/ready").json() == {"ready": True}
    good_answer(servers)


@pytest.mark.slow
def test_with_the_repository_switched_on_an_unloaded_model_is_not_ready(servers):
    admin = url(servers, "admin")
    assert httpx.get(admin + "/v2/health/ready").status_code == 200
    assert httpx.post(admin + "/v2/repository/models/tomato/unload").status_code == 200
    refused(httpx.get(admin + "/v2/health/ready"), 503, "not ready", "tomato")
    refused(predict(servers, v1(tomato(servers)), "admin"), 404, "no model named 'tomato'")
    assert httpx.get(admin + "/v2/").json()["extensions"] == [
        "binary_tensor_data",
        "model_repository",
    ]


# --------------------------------------------------------------------------- connections


@pytest.mark.slow
def test_idle_connections_cannot_lock_out_good_traffic(servers):
    """300 idle connections against a limit of 64: the longest-idle ones are closed for new
    ones, and a good request is answered at once."""
    sockets = [socket.create_connection(("127.0.0.1", port(servers))) for _ in range(300)]
    try:
        began = time.monotonic()
        good_answer(servers)
        assert time.monotonic() - began < 2
        time.sleep(0.2)
        closed = 0
        for sock in sockets:
            sock.settimeout(0.05)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
        assert closed >= 300 - 64, closed
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_an_idle_connection_is_closed_after_the_header_timeout(servers):
    out, took = raw_exchange(port(servers), b"", wait_s=6)
    assert out == b"" and 1.5 < took < 4  # header_timeout_s 2: closed without a word


@pytest.mark.slow
def test_headers_that_never_finish_get_408_and_the_connection_closes(servers):
    out, took = raw_exchange(port(servers), b"POST /v1/models/aads:predict HTTP/1.1\r\nHost: x\r\n")
    assert out.startswith(b"HTTP/1.1 408") and b"connection: close" in out and took < 4
    good_answer(servers)


@pytest.mark.slow
def test_headers_over_the_size_limit_get_431_and_the_connection_closes(servers):
    huge = b"X-Padding: " + b"a" * 100_000 + b"\r\n"
    head = b"POST /v1/models/aads:predict HTTP/1.1\r\nHost: x\r\n" + huge * 3 + b"\r\n"
    out, took = raw_exchange(port(servers), head)
    assert out.startswith(b"HTTP/1.1 431") and b"over 65536 bytes" in out and took < 2
    long_url = b"GET /v2/models/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_exchange(port(servers), long_url)[0].startswith(b"HTTP/1.1 431")
    good_answer(servers)


@pytest.mark.slow
def test_a_body_shorter_than_its_content_length_gets_408_not_a_wait_forever(servers):
    head = b"POST /v1/models/aads:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    out, took = raw_exchange(port(servers), head + b'{"instances"')
    assert out.startswith(b"HTTP/1.1 408") and b"<still open>" not in out and took < 5
    good_answer(servers)


@pytest.mark.slow
def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(servers):
    head = b"POST /v1/models/aads:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n"
    out, took = raw_exchange(port(servers), head)
    assert out.startswith(b"HTTP/1.1 413") and b"200000000 bytes is over the 1000000" in out
    assert b"connection: close" in out and took < 1
    good_answer(servers)


@pytest.mark.slow
def test_a_request_refused_before_its_route_is_still_counted_on_metrics(servers):
    """The guard answers some refusals (a declared body over the limit, a busy server) before
    any route runs; the routes count every request they answer, so the guard counts these."""
    router = servers["servers"]["router"]
    requests = "aads_requests_total"

    def refused_413() -> float:
        return total(scrape(router), requests, protocol="v1", code="413")

    before = refused_413()
    head = b"POST /v1/models/aads:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n"
    out, _ = raw_exchange(port(servers), head)
    assert out.startswith(b"HTTP/1.1 413")
    assert refused_413() == before + 1
    head = b"POST /v2/models/x/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n"
    raw_exchange(port(servers), head)  # refused too, but not an inference request
    assert total(scrape(router), requests, code="413") == before + 1


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_413_while_it_streams(servers):
    """70 MB sent chunked was answered 200: refused after the first megabyte, the answer
    read intact (the server drains before closing), memory untouched."""
    router = servers["servers"]["router"]
    reset_peak(router)
    before = memory_mib(router)
    chunk = b"x" * 65536
    head = b"POST /v1/models/aads:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port(servers))) as sock:
        sock.settimeout(10)
        sent = 0
        try:
            sock.sendall(head)
            while sent < 70 * 2**20:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:
            pass  # the server stopped reading: what a limit looks like from here
        response = b""
        while data := sock.recv(65536):
            response += data
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"over the 1000000 byte limit" in response and b"connection: close" in response
    assert memory_mib(router)["VmHWM"] - before["VmRSS"] < 40
    good_answer(servers)


@pytest.mark.slow
def test_a_500_says_only_internal_error_and_closes_its_connection(servers):
    """An injected bug: the caller gets "internal error" (not the 10 kB exception text) and
    ``Connection: close``; the log gets the traceback once, not once per request."""
    info = PngImagePlugin.PngInfo()
    info.add_text("note", MARKER.decode())
    faulty = encode(Image.new("RGB", (32, 32), (20, 160, 40)), "PNG", pnginfo=info)
    with httpx.Client(base_url=url(servers, "faulty"), timeout=30) as client:
        for _ in range(20):
            response = client.post("/v1/models/tomato:predict", json=v1(faulty))
            assert response.status_code == 500 and response.json() == {"error": "internal error"}
            assert response.headers["connection"] == "close"
        ok = client.post("/v1/models/tomato:predict", json=v1(tomato(servers)))
        assert ok.status_code == 200 and ok.json()["predictions"][0]["label"]
    log = servers["servers"]["faulty"].log.read_text()
    assert 1 <= log.count("Traceback") <= 2, log.count("Traceback")  # rate-limited: 10 s


@pytest.mark.slow
def test_repeated_bad_requests_leave_no_traceback_in_the_log(servers):
    router = servers["servers"]["router"]
    before = router.log.read_text().count("Traceback")
    for _ in range(50):
        predict(servers, b"{not json")
        predict(servers, v1(b"garbage"))
    assert router.log.read_text().count("Traceback") == before


# --------------------------------------------------------------------------- protocol


@pytest.mark.slow
def test_v2_binary_tensor_data_is_answered_as_base64_json_is(servers):
    image = tomato(servers)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(image)},
                }
            ],
            "parameters": {"crop_hint": "tomato"},
        }
    ).encode()
    body = header + struct.pack("<I", len(image)) + image
    binary = infer(servers, body, headers={"Inference-Header-Content-Length": str(len(header))})
    as_json = infer(servers, v2(image, parameters={"crop_hint": "tomato"}))
    assert binary.status_code == as_json.status_code == 200, binary.text
    outputs = [{o["name"]: o["data"] for o in r.json()["outputs"]} for r in (binary, as_json)]
    assert outputs[0] == outputs[1]
    assert len(binary.content) < 3000  # the answer, never the image


@pytest.mark.parametrize(
    ("body", "header", "words"),
    [
        (
            json.dumps(v2(b"hi")).encode() + b"\xff" * 500_000,
            str(len(json.dumps(v2(b"hi")))),
            ["binary section", "500000 bytes"],
        ),
        (b'{"inputs": []}', "999", ["Inference-Header-Content-Length"]),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 600_000},
                        }
                    ]
                }
            ).encode()
            + b"\x00" * 500_000,
            None,
            ["binary_data_size", "past the body"],
        ),
    ],
    ids=["unclaimed-binary", "header-past-end", "size-past-end"],
)
@pytest.mark.slow
def test_a_malformed_binary_request_is_a_400_that_never_echoes_it(servers, body, header, words):
    if header is None:
        header = str(body.index(b"}]}") + 3)
    response = infer(servers, body, headers={"Inference-Header-Content-Length": header})
    refused(response, 400, *words)


@pytest.mark.slow
def test_no_error_echoes_a_large_input(servers):
    junk = b"\xff\xd8\xff" + bytes(range(256)) * 700  # 180 kB, JPEG magic, no JPEG
    for response in (predict(servers, v1(junk)), infer(servers, v2(junk))):
        refused(response, 400, "image 0", "not an image")


def _v2_input(**tensor: object) -> bytes:
    return json.dumps({"inputs": [{"shape": [1], "datatype": "BYTES", **tensor}]}).encode()


def _v1_instance(**fields: object) -> bytes:
    return json.dumps({"instances": [{"image": "aGk=", **fields}]}).encode()


VALIDATION = {
    "v2-nan-v1-body": ("v2", b'{"instances": [NaN]}', ["not valid JSON"]),
    "v2-nan-in-data": (
        "v2",
        _v2_input(name="image", data=["NaN"]).replace(b'"NaN"', b"NaN"),
        ["not valid JSON"],
    ),
    "v1-nan": ("v1", b'{"instances": [NaN]}', ["not valid JSON"]),
    "v1-integer-crop-hint": (
        "v1",
        _v1_instance(crop_hint=3),
        ["instances[0].crop_hint", "valid string"],
    ),
    "v2-integer-crop-hint": (
        "v2",
        json.dumps(v2(b"hi", parameters={"crop_hint": 3})).encode(),
        ["parameters.crop_hint", "valid string"],
    ),
    "v1-string-scouting": (
        "v1",
        _v1_instance(scouting="yes"),
        ["instances[0].scouting", "valid boolean"],
    ),
    "v2-string-scouting": (
        "v2",
        json.dumps(v2(b"hi", parameters={"scouting": "yes"})).encode(),
        ["parameters.scouting", "valid boolean"],
    ),
    "v2-string-shape": (
        "v2",
        _v2_input(name="image", data=[]).replace(b"[1]", b'"1"'),
        ["inputs[0].shape"],
    ),
    "v2-unknown-input": (
        "v2",
        _v2_input(name="pixels", data=["x"]),
        ["inputs[0].name", "unknown input"],
    ),
    "v2-unknown-output": (
        "v2",
        json.dumps(v2(b"hi", outputs=[{"name": "logits"}])).encode(),
        ["outputs[0].name", "unknown output"],
    ),
    "v1-typo-field": (
        "v1",
        _v1_instance(crop_hnt="tomato"),
        ["instances[0].crop_hnt", "Extra inputs"],
    ),
    "v1-not-an-object": ("v1", b"[1, 2, 3]", ["V1 requests are"]),
    "v2-empty": ("v2", b"", ["empty"]),
}


@pytest.mark.parametrize("case", sorted(VALIDATION))
@pytest.mark.slow
def test_validation_failures_are_400_naming_the_field_never_422(servers, case):
    path, body, words = VALIDATION[case]
    response = (predict if path == "v1" else infer)(servers, body)
    refused(response, 400, *words)
    assert "detail" not in response.json()
    good_answer(servers)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
@pytest.mark.slow
def test_json_without_a_content_type_is_accepted(servers, protocol):
    image = tomato(servers)
    send, body = (predict, v1(image)) if protocol == "v1" else (infer, v2(image))
    response = send(servers, json.dumps(body).encode(), headers={"content-type": ""})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/aads:predict"),
        ("GET", "/v2/models/aads/infer"),
        ("PUT", "/v2/models/aads/infer"),
        ("DELETE", "/v1/models/aads:predict"),
        ("POST", "/v2/health/ready"),
    ],
)
@pytest.mark.slow
def test_a_wrong_method_is_405_with_allow(servers, method, path):
    response = httpx.request(method, url(servers) + path)
    refused(response, 405, "method not allowed")
    assert response.headers["allow"] in ("POST", "GET")


@pytest.mark.slow
def test_an_unknown_model_or_version_is_404_naming_it(servers):
    image = tomato(servers)
    refused(httpx.post(url(servers) + "/v1/models/nope:predict", json=v1(image)), 404, "'nope'")
    versioned = httpx.post(url(servers) + "/v2/models/aads/versions/7/infer", json=v2(image))
    refused(versioned, 404, "no version '7'")
    good_answer(servers)


@pytest.mark.slow
def test_per_image_errors_name_no_internal_url_or_exception_class(servers):
    """corn's predictor is down: its image gets a 503 entry saying so, in the caller's words;
    the URL and the exception go to the router's log."""
    corn = sorted((servers["models"] / "data" / "base" / "corn").rglob("*.jpg"))[0].read_bytes()
    response = predict(
        servers,
        {
            "instances": [
                {"image": {"b64": b64(corn)}, "crop_hint": "corn"},
                {"image": {"b64": b64(tomato(servers))}, "crop_hint": "tomato"},
            ]
        },
    )
    assert response.status_code == 200
    dead, alive = response.json()["predictions"]
    assert dead["error"] == {
        "code": 503,
        "message": "the corn predictor is unavailable; retry later",
    }
    assert alive["label"]
    text = response.text
    for leak in ("http://", "127.0.0.1", "Error", "Exception", "Traceback"):
        assert leak not in text
    assert "ConnectError" in servers["servers"]["router"].log.read_text()


# --------------------------------------------------------------------------- contracts


def oip_components() -> dict:
    path = OIP_SPEC / "rest_predict_v2.yaml"
    if not path.is_file():
        pytest.skip(f"the Open Inference Protocol spec is not at {path}")
    return yaml.safe_load(path.read_text())


def assert_valid(instance: object, schema_name: str) -> None:
    import jsonschema

    spec = oip_components()
    schema = {**spec["components"]["schemas"][schema_name], "components": spec["components"]}
    jsonschema.validate(instance, schema)
    if isinstance(instance, dict):  # the OIP wants strings and lists, never null
        assert None not in instance.values(), instance


@pytest.mark.slow
def test_v2_responses_and_metadata_are_valid_oip_objects_without_nulls(servers):
    base = url(servers)
    assert_valid(httpx.get(base + "/v2").json(), "metadata_server_response")
    assert_valid(httpx.get(base + "/v2/").json(), "metadata_server_response")
    for name, model in (("router", "aads"), ("predictor", "tomato")):
        meta = httpx.get(f"{url(servers, name)}/v2/models/{model}").json()
        assert_valid(meta, "metadata_model_response")
        assert isinstance(meta["versions"], list)
    response = infer(servers, v2(tomato(servers), id="req-1"))
    body = response.json()
    assert_valid(body, "inference_response")
    assert body["id"] == "req-1" and body["model_name"] == "aads"
    for output in body["outputs"]:
        assert_valid(output, "response_output")
    assert_valid(infer(servers, v2(b"junk")).json(), "inference_error_response")


@pytest.mark.slow
def test_the_router_publishes_the_answer_schema_and_its_answers_validate_against_it(servers):
    import jsonschema

    spec = httpx.get(url(servers) + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    answer = schemas["Answer"]["properties"]
    assert {"label", "is_ood", "confidence", "routing", "error", "ood", "top_k"} <= set(answer)
    assert "/v1/models/{model_name}:predict" in spec["paths"]
    assert not any("repository" in path for path in spec["paths"])  # no admin surface

    def validate(instance: object, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        jsonschema.Draft202012Validator(schema).validate(instance)

    corn = sorted((servers["models"] / "data" / "base" / "corn").rglob("*.jpg"))[0].read_bytes()
    body = {
        "instances": [
            {"image": {"b64": b64(tomato(servers))}, "crop_hint": "tomato"},
            {"image": {"b64": b64(tomato(servers, 1))}},  # routed by the router
            {"image": {"b64": b64(corn)}, "crop_hint": "corn"},  # its predictor is down
            {"image": {"b64": b64(b"junk")}},
        ]
    }
    response = predict(servers, body)
    validate(response.json(), "V1Response")
    for answer_ in response.json()["predictions"]:
        validate(answer_, "Answer")
    validate(json.loads(json.dumps(v1(b"x"))), "V1Request")
    with pytest.raises(jsonschema.ValidationError):
        validate({"label": 3}, "Answer")


@settings(
    max_examples=40,
    deadline=30_000,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated_images())
@pytest.mark.slow
def test_fuzzed_real_images_never_500_and_never_fail_their_neighbour(servers, data):
    """Mutations of real JPEG and PNG bytes, each sent with a good image in one request."""
    response = predict(servers, v1(data, tomato(servers), crop_hint="tomato"))
    assert response.status_code == 200, response.text[:300]
    fuzzed, good = response.json()["predictions"]
    assert good["label"] and "error" not in good
    assert fuzzed.get("label") or fuzzed["error"]["code"] in (400, 413)


@pytest.mark.slow
def test_tritonclient_calls_the_router_with_binary_and_json_tensors(servers):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url(servers).removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("aads")
    meta = client.get_model_metadata("aads")
    assert [i["name"] for i in meta["inputs"]] == ["image", "crop_hint"]
    images = [tomato(servers, 0), tomato(servers, 1)]
    for binary in (True, False):
        tensor = triton.InferInput("image", [2], "BYTES")
        if binary:
            tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        else:  # JSON: BYTES elements are base64 text
            tensor.set_data_from_numpy(
                np.array([b64(im) for im in images], dtype=np.object_), binary_data=False
            )
        result = client.infer("aads", [tensor], parameters={"crop_hint": "tomato"})
        labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
        assert len(labels) == 2 and all(labels)
        diagnoses = [json.loads(d) for d in result.as_numpy("diagnosis")]
        assert [d["label"] for d in diagnoses] == labels
        assert result.as_numpy("confidence").dtype == np.float32
        assert result.as_numpy("is_ood").dtype == np.bool_
    client.close()


@pytest.mark.slow
def test_schemathesis_with_the_oip_spec_finds_no_5xx_and_no_schema_violation(servers):
    """Every operation of the OIP spec, generated by schemathesis against the router and a
    predictor. The spec templates paths as ``${MODEL_NAME}``, which OpenAPI does not read, and
    a model served from a folder has no version: the paths are tested without their
    ``/versions/...`` part (the OIP makes the version optional) with the served model's name."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
    )

    spec = oip_components()
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    for name, model in (("router", "aads"), ("predictor", "tomato")):
        schema = schemathesis.openapi.from_dict(served_paths(spec, model))
        base_url = url(servers, name)
        calls = [
            run_operation(op.ok(), base_url, checks, mode)
            for op in schema.get_all_operations()
            for mode in GenerationMode
        ]
        assert len(calls) == 12 and sum(c > 0 for c in calls) >= 8 and sum(calls) >= 50, calls
    good_answer(servers)


def served_paths(spec: dict, model: str) -> dict:
    """The OIP spec with OpenAPI path templates, unversioned paths and `model` as the only
    MODEL_NAME."""
    raw = json.loads(json.dumps(spec))
    paths = {}
    for path, item in raw["paths"].items():
        path = path.replace("/versions/${MODEL_VERSION}", "").replace(
            "${MODEL_NAME}", "{MODEL_NAME}"
        )
        params = [
            {**p, "schema": {"type": "string", "enum": [model]}}
            for p in item.pop("parameters", [])
            if p["name"] == "MODEL_NAME"
        ]
        paths[path] = {**item, **({"parameters": params} if params else {})}
    return {**raw, "paths": paths}


def run_operation(operation, base_url: str, checks: list, mode) -> int:  # noqa: ANN001
    """Generated cases of one operation (data that fits the schema, or not: `mode`), each sent
    and checked; the number sent."""
    sent = []

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:  # noqa: ANN001
        sent.append(case.call_and_validate(base_url=base_url, checks=checks).status_code)

    try:
        check()
    except Unsatisfiable:  # no negative case exists for an operation without inputs
        assert mode == "negative" and not sent
    return len(sent)
