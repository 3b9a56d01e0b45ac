"""AADS's Prometheus metrics (`aads.telemetry`): the exposition text, parsed by
prometheus_client's own parser, has the documented names and types; every helper moves exactly
the series it should; label values stay bounded whatever the answers say; nothing raises into
a request; KServe's own ``/metrics`` handler serves them."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aads.capture.settings import CaptureSettings
from aads.capture.writer import CaptureWriter
from aads.config import StorageSettings
from aads.errors import ERROR_KINDS, BadInput, NotFound, TooLarge, Unavailable, error_kind
from aads.telemetry import OTHER, STAGES, Telemetry
from tests.conftest import free_port

EXPECTED = {
    "aads_requests": "counter",
    "aads_request_duration_seconds": "histogram",
    "aads_answers": "counter",
    "aads_answer_confidence_ratio": "histogram",
    "aads_ood_distance_ratio": "histogram",
    "aads_domain_picks": "counter",
    "aads_stage_duration_seconds": "histogram",
    "aads_batch_size_images": "histogram",
    "aads_calibrated_rejection_ratio": "gauge",
}
CAPTURE = {
    "aads_capture_offered": "counter",
    "aads_capture_written": "counter",
    "aads_capture_dropped": "counter",
    "aads_capture_skipped": "counter",
    "aads_capture_queue_images": "gauge",
    "aads_capture_queue_bytes": "gauge",
    "aads_capture_store_up": "gauge",
}


@pytest.fixture
def tele() -> Telemetry:
    t = Telemetry(CollectorRegistry())
    t.register_crops(["tomato", "corn"])
    t.register_model("tomato", "7", classes=["healthy", "early_blight"], domains=["base", "field"])
    return t


def families(t: Telemetry) -> dict:
    text = generate_latest(t.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(t: Telemetry, sample: str, **labels: str) -> float:
    """The value of one exposed sample (0 when the series does not exist)."""
    for family in families(t).values():
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return s.value
    return 0.0


def answer(label="early_blight", *, is_ood=False, crop="tomato", version="7", **extra) -> dict:
    """A wire answer as the predictor sends it: distance 12 against a threshold of 16 (known,
    ratio 0.75) or 8 (unknown, ratio 1.5)."""
    return {
        "label": label,
        "is_ood": is_ood,
        "confidence": 0.8,
        "crop": crop,
        "ood": {"distance": 12.0, "threshold": 8.0 if is_ood else 16.0},
        "model": {"name": f"aads-adapter-{crop}", "version": version},
        **extra,
    }


def answers(t: Telemetry, cls: str = "", **labels: str) -> float:
    """The count of `aads_answers_total` with these labels (the others empty)."""
    full = dict.fromkeys(("crop", "model_version", "variant", "verdict", "error_kind"), "")
    return value(t, "aads_answers_total", **{**full, **labels, "class": cls})


KNOWN = {
    "crop": "tomato",
    "model_version": "7",
    "variant": "champion",
    "verdict": "known",
    "class": "early_blight",
    "error_kind": "",
}


# --------------------------------------------------------------------------- names and types


def test_every_metric_is_exposed_with_its_conventional_name_and_type(tele, tmp_path):
    tele.observe_answer(answer())
    tele.observe_request("v2", 200, 0.1)
    tele.observe_stage("decode", 0.01)
    tele.observe_batch(4, "tomato", "7")
    tele.register_model("tomato", "7", rejection_rate=0.05)
    tele.observe_answer(answer(domain="field"))
    writer = CaptureWriter.from_settings(
        CaptureSettings(enabled=False), StorageSettings(cache_dir=tmp_path)
    )
    tele.track_capture(writer)
    # (prometheus_client also writes a `<name>_created` gauge per series; Prometheus stores it
    # as one more series, so it is left out here)
    found = {n: f.type for n, f in families(tele).items() if not n.endswith("_created")}
    assert found == {**EXPECTED, **CAPTURE}
    for name, kind in found.items():
        assert name.startswith("aads_")
        if kind == "histogram":
            assert name.endswith(("_seconds", "_ratio", "_images")), name
    text = generate_latest(tele.registry).decode()
    counters = [n for n, k in found.items() if k == "counter"]
    for name in counters:
        assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text
        assert f"\n{name}_total" in text, name  # samples of a counter end in _total


def test_the_default_instance_lives_on_the_registry_kserve_serves_at_metrics():
    from kserve.protocol.rest.server import metrics_handler
    from starlette.requests import Request

    from aads import telemetry

    telemetry.register_crops(["kserve_check"])
    telemetry.observe_answer({"label": "x", "is_ood": True, "crop": "kserve_check"})
    response = asyncio.run(metrics_handler(Request({"type": "http", "headers": []})))
    text = response.body.decode()
    assert 'aads_answers_total{class="",crop="kserve_check"' in text
    assert "request_predict_seconds" in text  # KServe's own histograms share the scrape


# --------------------------------------------------------------------------- each helper


def test_a_known_answer_counts_its_class_confidence_and_distance_ratio(tele):
    assert tele.observe_answer(answer()) == "known"
    assert value(tele, "aads_answers_total", **KNOWN) == 1
    labels = {"crop": "tomato", "model_version": "7", "variant": "champion"}
    conf = {**labels, "verdict": "known"}
    assert value(tele, "aads_answer_confidence_ratio_count", **conf) == 1
    assert value(tele, "aads_answer_confidence_ratio_sum", **conf) == pytest.approx(0.8)
    assert value(tele, "aads_ood_distance_ratio_sum", **labels) == pytest.approx(12 / 16)
    assert value(tele, "aads_ood_distance_ratio_bucket", **labels, le="0.75") == 1
    assert value(tele, "aads_ood_distance_ratio_bucket", **labels, le="0.5") == 0


def test_an_unknown_answer_counts_no_class_and_a_distance_ratio_above_one(tele):
    assert tele.observe_answer(answer("unknown", is_ood=True)) == "unknown"
    labels = {"crop": "tomato", "model_version": "7", "variant": "champion"}
    assert answers(tele, **labels, verdict="unknown") == 1
    assert value(tele, "aads_ood_distance_ratio_bucket", **labels, le="1.0") == 0
    assert value(tele, "aads_ood_distance_ratio_bucket", **labels, le="1.5") == 1


def test_a_picture_of_no_known_crop_is_counted_without_crop_version_or_variant(tele):
    rejected = {
        "label": "unknown",
        "is_ood": True,
        "confidence": 0.0,
        "crop": None,
        "ood": {"distance": 30.0, "threshold": 10.0, "nearest_class": "corn"},
        "routing": {"source": "router", "crop": "corn", "is_ood": True},
    }
    assert tele.observe_answer(rejected) == "not_a_known_crop"
    empty = {"crop": "", "model_version": "", "variant": ""}
    assert answers(tele, verdict="not_a_known_crop") == 1
    assert value(tele, "aads_ood_distance_ratio_sum", **empty) == pytest.approx(3.0)
    confidence = {**empty, "verdict": "not_a_known_crop"}
    assert value(tele, "aads_answer_confidence_ratio_count", **confidence) == 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"code": 400, "message": "not an image"}, "bad_input"),
        ({"code": 413, "message": "too large"}, "too_large"),
        ({"code": 404, "message": "no model"}, "not_found"),
        ({"code": 503, "message": "predictor down"}, "unavailable"),
        ({"code": 500, "message": "bug"}, "internal"),
        ("a predictor answered 500", "internal"),  # main's router: a plain string
    ],
)
def test_an_error_entry_is_counted_by_the_kind_of_its_status(tele, error, kind):
    assert tele.observe_answer({"crop": "tomato", "error": error}) == "error"
    assert answers(tele, crop="tomato", variant="champion", verdict="error", error_kind=kind) == 1


def test_error_kinds_are_the_error_hierarchys_kinds():
    assert [error_kind(e("x")) for e in (BadInput, TooLarge, NotFound, Unavailable)] == [
        "bad_input",
        "too_large",
        "not_found",
        "unavailable",
    ]
    assert error_kind(KeyError("x")) == "internal" and error_kind(422) == "bad_input"
    assert set(ERROR_KINDS) == {error_kind(s) for s in (400, 413, 404, 503, 500)}


def test_a_canary_answer_is_counted_under_the_canary_variant(tele):
    tele.register_model("tomato", "8", classes=["healthy", "early_blight"])
    routed = answer(version="8", routing={"source": "router", "variant": "canary"})
    tele.observe_answer(routed)
    tele.observe_answer(answer(routing={"source": "router", "variant": "stable"}))
    canary = {**KNOWN, "model_version": "8", "variant": "canary"}
    assert value(tele, "aads_answers_total", **canary) == 1
    assert value(tele, "aads_answers_total", **KNOWN) == 1


def test_explicit_crop_version_and_variant_override_the_answers(tele):
    tele.register_model("corn", "3", classes=["common_rust"])
    tele.observe_answer(answer("common_rust", crop=None, version="1"), "corn", "3", "canary")
    labels = {"crop": "corn", "model_version": "3", "variant": "canary", "verdict": "known"}
    assert answers(tele, "common_rust", **labels) == 1


def test_a_conec_domain_pick_is_counted_when_the_answer_names_it(tele):
    tele.observe_answer(answer(domain="field"))
    tele.observe_answer(answer())
    labels = {"crop": "tomato", "model_version": "7", "variant": "champion"}
    assert value(tele, "aads_domain_picks_total", **labels, domain="field") == 1


def test_a_scouted_photo_is_not_counted_again(tele):
    scouted = {"label": "early_blight", "is_ood": False, "crop": "tomato", "scouting": {"x": 1}}
    assert tele.observe_answer(scouted) is None
    assert sum(s.value for s in families(tele)["aads_answers"].samples) == 0


def test_an_answer_model_is_read_by_attribute_without_serialising_it(tele):
    model = SimpleNamespace(
        label="healthy",
        is_ood=False,
        confidence=0.9,
        crop="tomato",
        error=None,
        scouting=None,
        domain=None,
        ood=SimpleNamespace(distance=1.0, threshold=4.0),
        model=SimpleNamespace(name="aads-adapter-tomato", version="7"),
        routing=SimpleNamespace(variant="canary", is_ood=False),
    )
    assert tele.observe_answer(model) == "known"
    assert (
        value(tele, "aads_answers_total", **{**KNOWN, "class": "healthy", "variant": "canary"}) == 1
    )


def test_the_serving_answer_model_is_counted_like_its_wire_form(tele):
    answers = pytest.importorskip("aads.answer", reason="aads.answer lands with the serving work")
    model = answers.Answer(
        label="early_blight",
        is_ood=False,
        confidence=0.8,
        crop="tomato",
        ood=answers.OODVerdict(distance=12.0, threshold=16.0, nearest_class="early_blight"),
        model=answers.ModelRef(name="aads-adapter-tomato", version="7"),
    )
    tele.observe_answer(model)
    tele.observe_answer(model.wire())
    assert value(tele, "aads_answers_total", **KNOWN) == 2


def test_request_counts_and_durations(tele):
    tele.observe_request("v1", 200, 0.3)
    tele.observe_request("v2", 413, 0.01)
    tele.observe_request("grpc?", 999, float("nan"))
    assert value(tele, "aads_requests_total", protocol="v1", code="200") == 1
    assert value(tele, "aads_requests_total", protocol="v2", code="413") == 1
    assert value(tele, "aads_requests_total", protocol=OTHER, code=OTHER) == 1
    assert value(tele, "aads_request_duration_seconds_count", protocol="v1") == 1
    assert value(tele, "aads_request_duration_seconds_bucket", protocol="v1", le="0.25") == 0
    assert value(tele, "aads_request_duration_seconds_bucket", protocol="v1", le="0.5") == 1
    assert value(tele, "aads_request_duration_seconds_count", protocol=OTHER) == 0  # NaN: none


def test_a_stage_timer_records_the_blocks_wall_time(tele):
    with tele.stage_timer("decode"):
        pass
    with tele.stage_timer("predict", "tomato", "canary"):
        sum(range(10_000))
    decode = {"stage": "decode", "crop": "", "variant": ""}
    assert value(tele, "aads_stage_duration_seconds_count", **decode) == 1
    labels = {"stage": "predict", "crop": "tomato", "variant": "canary"}
    assert 0 < value(tele, "aads_stage_duration_seconds_sum", **labels) < 1
    tele.observe_stage("ood", 0.002, "tomato")
    ood = {"stage": "ood", "crop": "tomato", "variant": "champion"}
    assert value(tele, "aads_stage_duration_seconds_count", **ood) == 1


def test_a_stage_name_outside_the_four_stages_is_a_bug_caught_at_once(tele):
    with pytest.raises(ValueError, match="decode, route, predict, ood"):
        tele.stage_timer("postprocess")
    assert STAGES == ("decode", "route", "predict", "ood")


def test_batch_sizes_are_a_histogram_per_crop_and_version(tele):
    for n in (1, 3, 16):
        tele.observe_batch(n, "tomato", "7")
    labels = {"crop": "tomato", "model_version": "7"}
    assert value(tele, "aads_batch_size_images_count", **labels) == 3
    assert value(tele, "aads_batch_size_images_sum", **labels) == 20
    assert value(tele, "aads_batch_size_images_bucket", **labels, le="4.0") == 2


def test_a_loaded_models_rejection_rate_is_a_gauge_per_crop_and_version(tele):
    tele.register_model("tomato", "7", rejection_rate=0.05)
    tele.register_model("tomato", "8", rejection_rate=0.04)
    tele.register_model("tomato", "9", rejection_rate=float("nan"))  # no number: no series
    assert value(tele, "aads_calibrated_rejection_ratio", crop="tomato", model_version="7") == 0.05
    assert value(tele, "aads_calibrated_rejection_ratio", crop="tomato", model_version="8") == 0.04
    gauge = families(tele)["aads_calibrated_rejection_ratio"]
    assert {s.labels["model_version"] for s in gauge.samples} == {"7", "8"}


@pytest.mark.slow
def test_a_real_packages_rejection_rate_is_the_one_aads_monitor_tests_against(loop_world):
    from aads.adapters.loading import load_adapter
    from aads.adapters.package import OOD_DIR
    from aads.backbone import open_image
    from aads.drift.monitor import calibrated_rejection_rate
    from aads.inference import Diagnoser
    from aads.ood.reference import load_reference_features
    from tests.loop_world import fresh_images, noise_images

    t = Telemetry(CollectorRegistry())
    adapter = load_adapter(loop_world.phase3)
    rate = t.register_adapter(adapter, "3", loop_world.phase3)
    expected, _ = calibrated_rejection_rate(
        adapter, load_reference_features(loop_world.phase3 / OOD_DIR)
    )
    assert rate == expected and 0 < rate < 1
    assert value(t, "aads_calibrated_rejection_ratio", crop="tomato", model_version="3") == rate
    # The real Diagnoser's answers are counted by name: its classes were registered.
    t.register_crops(["tomato"])
    diagnoser = Diagnoser.from_dir(loop_world.phase3, model_version="3")
    images = fresh_images(loop_world, "base", 6) + noise_images(6)
    verdicts = [t.observe_answer(a) for a in diagnoser.diagnose([open_image(i) for i in images])]
    assert set(verdicts) <= {"known", "unknown"} and "unknown" in verdicts
    answers = families(t)["aads_answers"].samples
    named = {s.labels["class"] for s in answers if s.labels["verdict"] == "known"}
    assert named and named <= set(adapter.classes)
    assert sum(s.value for s in answers if s.name.endswith("_total")) == len(images)


# --------------------------------------------------------------------------- bounded labels


def test_a_crop_no_loaded_model_named_is_counted_as_other(tele):
    tele.observe_answer(answer(crop="'; DROP TABLE"))
    tele.observe_answer(answer(crop="wheat"))
    crops = {s.labels["crop"] for s in families(tele)["aads_answers"].samples}
    assert crops == {OTHER}


def test_a_relaying_router_learns_only_a_few_versions_and_classes_per_crop(tele):
    for v in range(20):
        tele.observe_answer(answer("healthy", version=str(100 + v)))
    versions = {s.labels["model_version"] for s in families(tele)["aads_answers"].samples}
    assert len(versions - {OTHER}) == 8 and OTHER in versions
    tele.observe_answer(answer("x" * 200))  # no sane class name
    tele.observe_answer(answer("with spaces"))
    classes = {s.labels["class"] for s in families(tele)["aads_answers"].samples}
    assert classes == {"healthy", OTHER}


def test_label_children_are_cached_so_a_repeat_answer_creates_nothing(tele):
    tele.observe_answer(answer())
    cached = len(tele._answer_children)
    for _ in range(100):
        tele.observe_answer(answer())
    assert len(tele._answer_children) == cached
    assert value(tele, "aads_answers_total", **KNOWN) == 101


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
)
_keys = st.sampled_from(
    ["label", "is_ood", "confidence", "crop", "ood", "model", "routing", "error", "domain",
     "distance", "threshold", "version", "variant", "code", "scouting", "name"]
)  # fmt: skip
_json = st.recursive(_leaf, lambda inner: st.dictionaries(_keys, inner, max_size=6), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_json, st.dictionaries(_keys, _json, max_size=8)), max_size=20))
@pytest.mark.slow
def test_no_answer_whatever_its_shape_raises_or_grows_the_label_space(bodies):
    t = Telemetry(CollectorRegistry())
    t.register_model("tomato", "7", classes=["healthy"])
    for body in bodies:
        verdict = t.observe_answer(body)
        assert verdict in (None, "known", "unknown", "not_a_known_crop", "error")
    for family in families(t).values():
        for s in family.samples:
            assert s.labels.get("crop", "") in ("", "tomato", OTHER)
            assert len(s.labels.get("class", "")) <= 64
            if "_sum" in s.name or "_bucket" in s.name:
                assert math.isfinite(s.value)


# --------------------------------------------------------------------------- capture, pulled


def test_the_capture_writers_counters_are_read_at_every_scrape(tele, tmp_path):
    settings_ = CaptureSettings(enabled=True, sample_rate=0.0, store=str(tmp_path / "store"))
    writer = CaptureWriter.from_settings(settings_, StorageSettings(cache_dir=tmp_path / "c"))
    tele.track_capture(writer)
    png = _png()
    with writer:
        writer.offer(png, answer("unknown", is_ood=True))
        writer.offer(png, answer("unknown", is_ood=True))  # the same image: a duplicate
        writer.offer(_png(1), answer())  # known and not in the 0 % sample
        writer.flush(10)
        assert value(tele, "aads_capture_offered_total") == 3
        assert value(tele, "aads_capture_written_total") == 1
        assert value(tele, "aads_capture_skipped_total", reason="duplicate") == 1
        assert value(tele, "aads_capture_skipped_total", reason="not_sampled") == 1
        assert value(tele, "aads_capture_queue_images") == 0
        assert value(tele, "aads_capture_store_up") == 1
    tele.track_capture(None)
    assert "aads_capture_offered" not in families(tele)


def test_a_capture_store_that_is_down_shows_as_drops_and_store_up_zero(tele, tmp_path):
    settings_ = CaptureSettings(
        enabled=True, store_timeout_s=1, store_retries=1, retry_after_s=60, writers=1
    )
    dead = StorageSettings(
        endpoint=f"127.0.0.1:{free_port()}", secure=False, bucket="gone", cache_dir=tmp_path
    )
    with CaptureWriter.from_settings(settings_, dead) as writer:
        tele.track_capture(writer)
        for i in range(3):
            writer.offer(_png(i), answer("unknown", is_ood=True))
        writer.flush(30)
        assert value(tele, "aads_capture_dropped_total", reason="store_unavailable") == 3
        assert value(tele, "aads_capture_store_up") == 0
        assert value(tele, "aads_capture_written_total") == 0


def _png(seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()
