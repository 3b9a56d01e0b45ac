"""What the real servers export and keep: a router and a multi-adapter predictor as real KServe
ModelServer processes on 127.0.0.1, scraped at their own ``/metrics`` (parsed with
prometheus_client's own text parser), the router capturing to moto's S3 server; a second
router captures to a store that is down. The spec is followed while serving: capture switched
to another bucket by a kubelet-style ``..data`` swap goes there from then on."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from aads.capture.records import UNKNOWN_CROP, open_capture_store
from aads.capture.settings import CaptureSettings
from aads.config import StorageSettings
from aads.telemetry import VARIANT_ENV
from serving.local import ServerProcess, ServingFailed, start_server
from tests.conftest import free_port
from tests.images import encode, noise_png, not_a_plant
from tests.serving_models import SPEC, crop_images, trained_models
from tests.test_serving import post, v1
from tests.test_spec_reload import kubelet_write

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
CAPTURE = {"enabled": True, "sample_rate": 0.0, "store_timeout_s": 10, "retry_after_s": 0}


def storage_for(endpoint: str, bucket: str, tmp: Path) -> dict:
    return {
        "endpoint": endpoint,
        "secure": False,
        "region": "us-east-1",
        "bucket": bucket,
        "retries": 3,
        "timeout_s": 10,
        "cache_dir": str(tmp / "cache"),
    }


def write_spec(volume: Path, spec: dict) -> Path:
    """The spec as a ConfigMap volume holds it, updated as the kubelet updates it."""
    kubelet_write(volume, {"spec.yaml": yaml.safe_dump(spec)})
    return volume / "spec.yaml"


def scrape(server: ServerProcess) -> dict[str, list]:
    """``/metrics`` as {sample name: [(labels, value), ...]}."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_endpoint) -> Iterator[dict]:
    """A multi-adapter predictor, a router capturing to moto (bucket `capture-a`) and a router
    whose capture store is a port nobody listens on."""
    models = trained_models(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("serving-telemetry")
    for bucket in ("capture-a", "capture-b"):
        open_capture_store(
            CaptureSettings(), StorageSettings(**storage_for(moto_endpoint, bucket, tmp))
        ).store.ensure_bucket()  # type: ignore[attr-defined]
    predictor_port = free_port()
    serving = {
        **SPEC["serving"],
        "predictor_urls": {c: f"http://127.0.0.1:{predictor_port}" for c in ("tomato", "corn")},
        "capture": CAPTURE,
    }
    base = {**SPEC, "serving": serving}
    live = write_spec(
        tmp / "live", {**base, "storage": storage_for(moto_endpoint, "capture-a", tmp)}
    )
    dead = write_spec(
        tmp / "dead", {**base, "storage": storage_for(f"127.0.0.1:{free_port()}", "gone", tmp)}
    )
    env = {**os.environ, **CREDENTIALS}
    procs: list[ServerProcess] = []
    try:
        procs.append(
            start_server(
                "serving.predictor",
                ["--model-root", str(models / "adapters"), "--spec", str(live)],
                tmp / "predictor.log",
                port=predictor_port,
                env=env,
                timeout_s=120,
            )
        )
        for name, spec in (("router", live), ("router-dead-store", dead)):
            procs.append(
                start_server(
                    "serving.router",
                    ["--router", str(models / "router"), "--spec", str(spec)],
                    tmp / f"{name}.log",
                    env=env,
                    timeout_s=120,
                )
            )
        predictor, router, dead_router = procs
        yield {
            "tmp": tmp,
            "models": models,
            "predictor": predictor,
            "router": router,
            "dead_router": dead_router,
            "base": base,
            "endpoint": moto_endpoint,
        }
    finally:
        for p in procs:
            p.stop()


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def captured(world: dict, bucket: str, folder: str, min_records: int = 1) -> list:
    """The records under `folder` in `bucket`, waited for (the writer is asynchronous)."""
    store = open_capture_store(
        CaptureSettings(), StorageSettings(**storage_for(world["endpoint"], bucket, world["tmp"]))
    )
    deadline = time.monotonic() + 30
    while True:
        found = store.records(folder, datetime.now(UTC) - timedelta(hours=1)).records
        if len(found) >= min_records or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def test_the_routers_metrics_count_requests_answers_and_stages(world):
    router = world["router"]
    before = scrape(router)
    images = [p.read_bytes() for p in crop_images(world["models"], "tomato", 2)]
    status, body = post(port_of(router), "/v1/models/aads:predict", v1(*images, not_a_plant()))
    assert status == 200
    verdicts = [("known" if not a["is_ood"] else "unknown") for a in body["predictions"][:2]]
    after = scrape(router)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("aads_requests_total", protocol="v1", code="200") == 1
    assert grew("aads_request_duration_seconds_count", protocol="v1") == 1
    assert grew("aads_answers_total", verdict="not_a_known_crop") == 1
    for verdict in set(verdicts):
        assert grew(
            "aads_answers_total", crop="tomato", verdict=verdict, variant="champion"
        ) == verdicts.count(verdict)
    assert grew("aads_answer_confidence_ratio_count", crop="tomato") == 2
    assert grew("aads_ood_distance_ratio_count", crop="tomato") == 2
    assert grew("aads_stage_duration_seconds_count", stage="decode") == 1
    assert grew("aads_stage_duration_seconds_count", stage="route") == 1


def test_answers_are_counted_under_the_predictors_model_version_and_class(world):
    router = world["router"]
    images = [p.read_bytes() for p in crop_images(world["models"], "corn", 3)]
    _, body = post(port_of(router), "/v1/models/aads:predict", v1(*images, hint="corn"))
    after = scrape(router)
    for answer in body["predictions"]:
        if not answer["is_ood"]:
            assert total(after, "aads_answers_total", crop="corn", **{"class": answer["label"]})


def test_a_refused_request_is_counted_by_its_status(world):
    router = world["router"]
    before = total(scrape(router), "aads_requests_total", protocol="v1", code="400")
    status, _ = post(port_of(router), "/v1/models/aads:predict", {"instances": [{"image": 3}]})
    assert status == 400
    assert total(scrape(router), "aads_requests_total", protocol="v1", code="400") == before + 1


def test_the_predictor_exports_batches_forward_stages_and_its_rejection_rate(world):
    predictor, router = world["predictor"], world["router"]
    images = [p.read_bytes() for p in crop_images(world["models"], "tomato", 2)]
    post(port_of(router), "/v1/models/aads:predict", v1(*images, hint="tomato"))
    samples = scrape(predictor)
    assert total(samples, "aads_batch_size_images_count", crop="tomato") >= 1
    assert total(samples, "aads_stage_duration_seconds_count", stage="predict", crop="tomato")
    assert total(samples, "aads_stage_duration_seconds_count", stage="ood", crop="tomato")
    rates = {labels["crop"]: value for labels, value in samples["aads_calibrated_rejection_ratio"]}
    assert set(rates) == {"tomato", "corn"} and all(0 <= r <= 1 for r in rates.values())
    # The predictor counts no answers: the router that relays them does, once.
    assert total(samples, "aads_answers_total") == 0


def test_unknowns_are_captured_with_their_answer_and_knowns_are_not(world):
    router = world["router"]
    strangers = [not_a_plant()]
    hinted = [noise_png(32, seed=s) for s in range(3)]
    _, body = post(port_of(router), "/v1/models/aads:predict", v1(*strangers))
    assert body["predictions"][0]["routing"]["is_ood"] is True
    _, hinted_body = post(port_of(router), "/v1/models/aads:predict", v1(*hinted, hint="tomato"))
    unknown_crop = captured(world, "capture-a", UNKNOWN_CROP)
    assert any(r.verdict == "not_a_known_crop" for r in unknown_crop)
    disease_unknowns = [a for a in hinted_body["predictions"] if a["is_ood"]]
    tomato = captured(world, "capture-a", "tomato", len(disease_unknowns))
    assert sorted(r.verdict for r in tomato) == ["unknown"] * len(disease_unknowns)
    for record in tomato:
        assert record.answer["crop"] == "tomato" and record.answer["label"] == "unknown"
        assert record.model["name"] == "aads-adapter-tomato"
    samples = scrape(router)
    assert total(samples, "aads_capture_written_total") >= 1 + len(disease_unknowns)


def test_a_store_that_is_down_costs_no_answer_and_its_drops_are_on_metrics(world):
    router = world["dead_router"]
    strangers = [not_a_plant()] + [noise_png(24, seed=s) for s in range(20, 24)]
    began = time.monotonic()
    for image in strangers:
        status, body = post(port_of(router), "/v1/models/aads:predict", v1(image))
        assert status == 200 and body["predictions"][0]["label"]
    assert time.monotonic() - began < 30  # no request waited for the store
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        samples = scrape(router)
        if total(samples, "aads_capture_dropped_total", reason="store_unavailable"):
            break
        time.sleep(0.5)
    assert total(samples, "aads_capture_dropped_total", reason="store_unavailable") >= 1
    assert total(samples, "aads_capture_written_total") == 0
    assert total(samples, "aads_requests_total", code="200") >= len(strangers)


def test_a_reloaded_spec_sends_captures_to_its_new_store(world):
    spec = {**world["base"], "storage": storage_for(world["endpoint"], "capture-b", world["tmp"])}
    write_spec(world["tmp"] / "live", spec)
    time.sleep(5)  # the router polls its spec every 2 s
    post(port_of(world["router"]), "/v1/models/aads:predict", v1(not_a_plant()))
    found = captured(world, "capture-b", UNKNOWN_CROP)
    assert found, json.dumps(world["router"].log_tail())


def test_a_stopped_router_closes_its_capture_writer_after_writing_what_it_holds(world):
    router = world["router"]
    board = (np.indices((64, 64)).sum(0) // 4 % 2).astype(np.uint8) * 255
    stranger = encode(Image.fromarray(np.stack([board, board, board * 0], axis=-1)), "PNG")
    _, body = post(port_of(router), "/v1/models/aads:predict", v1(stranger))
    assert body["predictions"][0]["routing"]["is_ood"] is True
    router.stop()  # SIGTERM: KServe unloads its models, the router closes capture
    assert router.proc.returncode is not None
    log = router.log.read_text()
    assert "capture writer for" in log and "closed:" in log, log[-2000:]
    sha = hashlib.sha256(stranger).hexdigest()
    assert any(r.sha256 == sha for r in captured(world, "capture-b", UNKNOWN_CROP))


@pytest.mark.slow
def test_a_canary_predictor_labels_its_own_stage_timings_canary(world):
    """The router labels answers by the route it took; a predictor cannot see the route, so a
    canary's predictor is told (the chart sets AADS_VARIANT on a canary's pods)."""
    tmp = world["tmp"]
    spec = write_spec(
        tmp / "canary",
        {**world["base"], "storage": storage_for(world["endpoint"], "capture-a", tmp)},
    )
    canary = start_server(
        "serving.predictor",
        ["--model-root", str(world["models"] / "adapters"), "--spec", str(spec)],
        tmp / "predictor-canary.log",
        env={**os.environ, **CREDENTIALS, VARIANT_ENV: "canary"},
        timeout_s=120,
    )
    try:
        (image,) = crop_images(world["models"], "tomato", 1)
        status, _ = post(port_of(canary), "/v1/models/tomato:predict", v1(image.read_bytes()))
        assert status == 200
        samples = scrape(canary)
    finally:
        canary.stop()
    stage = "aads_stage_duration_seconds_count"
    assert total(samples, stage, stage="predict", crop="tomato", variant="canary") == 1
    assert total(samples, stage, variant="champion") == 0


@pytest.mark.slow
def test_a_predictor_refuses_a_variant_it_does_not_know_before_loading_anything(world):
    tmp = world["tmp"]
    with pytest.raises(ServingFailed, match=r"--variant \(or \$AADS_VARIANT\) must be one of"):
        start_server(
            "serving.predictor",
            ["--model-root", str(world["models"] / "adapters")],
            tmp / "predictor-blue.log",
            env={**os.environ, VARIANT_ENV: "blue"},
            timeout_s=60,
        )
