"""Capture of answered images: what is kept, where it goes, what is stripped, and that it never
delays or fails a request (store down, queue full, garbage). Real moto S3 on loopback, real
JPEGs with EXIF and GPS written by PIL, real PlantVillage photos."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image
from pydantic import BaseModel

from aads.answer import Answer
from aads.capture.images import CaptureImageError, pixels_only_jpeg
from aads.capture.records import (
    UNKNOWN_CROP,
    CaptureRecord,
    CaptureStore,
    answer_verdict,
    in_sample,
    open_capture_store,
)
from aads.capture.settings import CaptureSettings
from aads.capture.writer import CaptureWriter
from aads.config import ConfigError, StorageSettings, parse_config
from aads.storage import LocalStore, S3Store
from tests.conftest import free_port

NOON = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def photo(seed: int, size: tuple[int, int] = (48, 32), exif: Image.Exif | None = None) -> bytes:
    """A small distinct JPEG (random pixels: every seed hashes differently)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, **({"exif": exif.tobytes()} if exif else {}))
    return out.getvalue()


def answer(label: str = "healthy", crop: str | None = "tomato", **extra: object) -> dict:
    """An answer as the router sends it today (the fields capture reads)."""
    is_ood = label == "unknown"
    return {
        "crop": crop,
        "label": label,
        "is_ood": is_ood,
        "confidence": 0.9,
        "ood": {"distance": 12.0, "threshold": 10.0, "nearest_class": "early_blight"},
        "model": {"name": f"aads-adapter-{crop}", "version": "3"},
        "routing": {"crop": crop or "tomato", "crop_confidence": 0.8, "is_ood": crop is None},
        **extra,
    }


NOT_A_CROP = answer("unknown", crop=None, reason="not one of the known crops")


def local_writer(root: Path, **settings: object) -> CaptureWriter:
    s = CaptureSettings(enabled=True, **settings)
    return CaptureWriter(s, CaptureStore(LocalStore(root), s.prefix), clock=lambda: NOON)


def only_record(root: Path) -> CaptureRecord:
    (path,) = root.rglob("*.json")
    return CaptureRecord.model_validate_json(path.read_bytes())


def stored(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def s3_bucket(s3_settings: StorageSettings) -> StorageSettings:
    """A fresh bucket per test on the session's moto server."""
    fresh = s3_settings.model_copy(update={"bucket": f"capture-{uuid.uuid4().hex[:12]}"})
    S3Store(fresh.bucket, fresh).ensure_bucket()
    return fresh


# --------------------------------------------------------------------------- what is kept


def test_verdicts_are_read_from_the_answer_fields():
    assert answer_verdict(answer("healthy")) == "known"
    assert answer_verdict(answer("unknown")) == "unknown"
    assert answer_verdict(NOT_A_CROP) == "not_a_known_crop"
    assert answer_verdict({"crop": "tomato", "error": {"code": 503, "message": "down"}}) == "none"
    assert answer_verdict({"scouting": True, "regions": []}) == "none"


def test_disease_unknowns_are_kept_under_their_crop_and_crop_unknowns_apart(tmp_path):
    with local_writer(tmp_path, sample_rate=0.0) as w:
        assert w.offer(photo(1), answer("unknown")) == "queued"
        assert w.offer(photo(2), NOT_A_CROP) == "queued"
        assert w.offer(photo(3), answer("healthy")) == "not_sampled"
    day = "2026-05-04"
    a, b = (hashlib.sha256(photo(i)).hexdigest() for i in (1, 2))
    assert stored(tmp_path) == sorted(
        [
            f"capture/tomato/{day}/{a}.jpg",
            f"capture/tomato/{day}/{a}.json",
            f"capture/{UNKNOWN_CROP}/{day}/{b}.jpg",
            f"capture/{UNKNOWN_CROP}/{day}/{b}.json",
        ]
    )


def test_a_disabled_writer_keeps_nothing_and_runs_no_thread(tmp_path):
    before = threading.active_count()
    writer = CaptureWriter(
        CaptureSettings(), CaptureStore(LocalStore(tmp_path), "capture"), clock=lambda: NOON
    )
    assert threading.active_count() == before
    assert writer.offer(photo(1), answer("unknown")) == "disabled"
    assert writer.close() and stored(tmp_path) == []


def test_error_entries_are_not_captured(tmp_path):
    with local_writer(tmp_path, sample_rate=1.0) as w:
        outcome = w.offer(photo(1), {"crop": "tomato", "error": {"code": 503, "message": "x"}})
    assert outcome == "no_verdict" and stored(tmp_path) == []
    assert w.stats().skipped == {"no_verdict": 1}


@pytest.mark.slow
def test_sampling_is_chosen_by_image_hash_and_agrees_between_writers(tmp_path):
    images = [photo(i) for i in range(300)]
    kept = []
    for n in range(2):
        with local_writer(tmp_path / str(n), sample_rate=0.3) as w:
            kept.append({i for i, im in enumerate(images) if w.offer(im, answer()) == "queued"})
    assert kept[0] == kept[1]
    assert 0.2 < len(kept[0]) / len(images) < 0.4
    expected = {i for i, im in enumerate(images) if in_sample(hashlib.sha256(im).hexdigest(), 0.3)}
    assert kept[0] == expected


def test_sample_rate_zero_keeps_no_known_answer_and_one_keeps_all(tmp_path):
    images = [photo(i) for i in range(40)]
    with local_writer(tmp_path / "none", sample_rate=0.0) as w:
        assert {w.offer(im, answer()) for im in images} == {"not_sampled"}
    with local_writer(tmp_path / "all", sample_rate=1.0) as w:
        assert {w.offer(im, answer()) for im in images} == {"queued"}
    assert w.stats().written == 40


@pytest.mark.slow
def test_records_say_whether_an_unknown_was_also_in_the_unbiased_sample(tmp_path):
    images = [photo(i) for i in range(60)]
    with local_writer(tmp_path, sample_rate=0.5) as w:
        for im in images:
            w.offer(im, answer("unknown"))
    records = [CaptureRecord.model_validate_json(p.read_bytes()) for p in tmp_path.rglob("*.json")]
    assert len(records) == 60
    for r in records:
        assert r.reason == "unknown" and r.in_sample == in_sample(r.sha256, 0.5)


def test_the_same_image_twice_is_written_once(tmp_path):
    with local_writer(tmp_path) as w:
        assert w.offer(photo(1), answer("unknown")) == "queued"
        assert w.offer(photo(1), answer("unknown")) == "duplicate"
    assert len(stored(tmp_path)) == 2


def test_an_image_another_replica_stored_today_is_not_written_again(tmp_path):
    with local_writer(tmp_path) as first:
        first.offer(photo(1), answer("unknown", request_id="a"))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with local_writer(tmp_path) as second:  # its memory is empty; the store remembers
        assert second.offer(photo(1), answer("unknown")) == "queued"
    assert second.stats().skipped == {"duplicate": 1} and second.stats().written == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_an_answer_given_as_a_pydantic_model_is_stored_as_its_json(tmp_path):
    class Answer(BaseModel):
        crop: str
        label: str
        is_ood: bool

    with local_writer(tmp_path) as w:
        assert w.offer(photo(1), Answer(crop="tomato", label="unknown", is_ood=True)) == "queued"
    record = only_record(tmp_path)
    assert record.answer == {"crop": "tomato", "label": "unknown", "is_ood": True}


def test_crop_names_that_are_not_slugs_never_become_keys(tmp_path):
    with local_writer(tmp_path) as w:
        assert w.offer(photo(1), answer("unknown", crop="../../etc")) == "invalid"
        assert w.offer(photo(2), answer("unknown"), crop="Tomato/x") == "invalid"
    assert stored(tmp_path) == []


# --------------------------------------------------------------------------- the S3 layout


def test_written_layout_and_record_on_s3(s3_bucket):
    settings = CaptureSettings(enabled=True, sample_rate=0.0)
    with CaptureWriter.from_settings(settings, s3_bucket, clock=lambda: NOON) as w:
        w.offer(photo(7), answer("unknown"), request_id="req-42", client="203.0.113.9")
    sha = hashlib.sha256(photo(7)).hexdigest()
    target = open_capture_store(settings, s3_bucket)
    keys = sorted(o.key for o in target.store.list("capture/"))
    assert keys == [f"capture/tomato/2026-05-04/{sha}.jpg", f"capture/tomato/2026-05-04/{sha}.json"]
    record = json.loads(target.store.read_bytes(keys[1]))
    assert record["sha256"] == sha and record["request_id"] == "req-42"
    assert record["model"] == {"name": "aads-adapter-tomato", "version": "3"}
    assert record["variant"] == "champion" and record["verdict"] == "unknown"
    assert record["time"].startswith("2026-05-04T12:00:00")
    assert record["answer"]["ood"]["nearest_class"] == "early_blight"
    assert record["client"] is None  # not configured: the address is never stored
    assert "203.0.113.9" not in target.store.read_bytes(keys[1]).decode()
    stored_jpeg = target.store.read_bytes(keys[0])
    assert hashlib.sha256(stored_jpeg).hexdigest() == record["image"]["sha256"]


def test_client_address_is_stored_only_when_configured(tmp_path):
    with local_writer(tmp_path, record_client=True) as w:
        w.offer(photo(1), answer("unknown"), client="203.0.113.9")
    record = only_record(tmp_path)
    assert record.client == "203.0.113.9"


def test_canary_answers_are_recorded_as_canary(tmp_path):
    canary = answer("unknown")
    canary["routing"] |= {"variant": "canary", "canary_version": "4"}
    with local_writer(tmp_path) as w:
        w.offer(photo(1), canary)
    assert only_record(tmp_path).variant == "canary"


def test_records_are_read_back_for_a_crop_and_window(tmp_path):
    days = [datetime(2026, 5, d, 9, tzinfo=UTC) for d in (1, 3, 5)]
    for i, day in enumerate(days):
        s = CaptureSettings(enabled=True)
        with CaptureWriter(
            s, CaptureStore(LocalStore(tmp_path), "capture"), clock=lambda d=day: d
        ) as w:
            w.offer(photo(i), answer("unknown"))
    (tmp_path / "capture/tomato/2026-05-03/garbage.json").write_text("{not json")
    got = CaptureStore(LocalStore(tmp_path), "capture").records(
        "tomato", datetime(2026, 5, 2, tzinfo=UTC), datetime(2026, 5, 6, tzinfo=UTC)
    )
    assert [r.time.day for r in got.records] == [3, 5]
    assert got.unreadable == ["capture/tomato/2026-05-03/garbage.json"]


def test_a_long_window_lists_the_crop_once_and_keeps_only_its_days(tmp_path):
    days = [datetime(2026, m, 1, 9, tzinfo=UTC) for m in (1, 3, 5)]
    for i, day in enumerate(days):
        target = CaptureStore(LocalStore(tmp_path), "capture")
        with CaptureWriter(CaptureSettings(enabled=True), target, clock=lambda d=day: d) as w:
            w.offer(photo(i), answer("unknown"))
    got = CaptureStore(LocalStore(tmp_path), "capture").records(
        "tomato", datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    )
    assert [r.time.month for r in got.records] == [3, 5]


# --------------------------------------------------------------------------- pixels only


def gps_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "ACME-CAM"
    exif[ExifTags.Base.BodySerialNumber] = "SN-0042"
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (52.0, 30.0, 15.5), 3: "E", 4: (13.0, 24.0, 7.25)}
    return exif


def test_exif_and_gps_are_gone_from_the_stored_image(s3_bucket):
    upload = photo(3, exif=gps_exif())
    assert Image.open(io.BytesIO(upload)).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # it had GPS
    settings = CaptureSettings(enabled=True)
    with CaptureWriter.from_settings(settings, s3_bucket, clock=lambda: NOON) as w:
        w.offer(upload, answer("unknown"))
    target = open_capture_store(settings, s3_bucket)
    key = next(o.key for o in target.store.list("capture/") if o.key.endswith(".jpg"))
    data = target.store.read_bytes(key)
    img = Image.open(io.BytesIO(data))
    assert len(img.getexif()) == 0 and not img.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert not {"exif", "xmp", "icc_profile", "comment"} & set(img.info)
    assert b"ACME-CAM" not in data and b"SN-0042" not in data and b"Exif" not in data


def test_orientation_is_applied_before_the_exif_is_dropped():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    raw = io.BytesIO()
    img.save(raw, "JPEG", exif=gps_exif(orientation=6).tobytes())  # displayed turned 90° CW
    clean = Image.open(io.BytesIO(pixels_only_jpeg(raw.getvalue()).jpeg)).convert("RGB")
    assert clean.size == (20, 40)
    top, bottom = clean.getpixel((10, 5)), clean.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_png_with_alpha_and_text_chunks_is_stored_as_plain_jpeg():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Location", "52.5N 13.4E")
    rgba = Image.new("RGBA", (30, 30), (0, 128, 0, 128))
    raw = io.BytesIO()
    rgba.save(raw, "PNG", pnginfo=info)
    clean = pixels_only_jpeg(raw.getvalue())
    assert clean.source_format == "PNG" and clean.jpeg[:3] == b"\xff\xd8\xff"
    assert b"52.5N" not in clean.jpeg


def test_large_photos_are_downscaled_to_the_configured_side():
    clean = pixels_only_jpeg(photo(1, size=(1200, 800)), max_side=300)
    assert (clean.width, clean.height) == (300, 200)


def test_real_plantvillage_photos_round_trip_as_pixels_only(plantvillage):
    photos = sorted(plantvillage.glob("Tomato___*/*.JPG"))[:5]
    assert photos
    for path in photos:
        data = path.read_bytes()
        clean = pixels_only_jpeg(data)
        original = Image.open(io.BytesIO(data))
        assert (clean.width, clean.height) == original.size
        diff = np.abs(
            np.asarray(Image.open(io.BytesIO(clean.jpeg)), dtype=float)
            - np.asarray(original.convert("RGB"), dtype=float)
        )
        assert diff.mean() < 4.0  # JPEG re-encoding at quality 90, nothing else changed


def test_a_real_photo_with_corrupt_exif_is_stored_without_its_exif_block(plantvillage):
    original = Image.open(sorted(plantvillage.glob("Tomato___*/*.JPG"))[0])
    raw = io.BytesIO()
    original.save(raw, "JPEG", exif=gps_exif(orientation=6).tobytes())
    broken = raw.getvalue().replace(b"Exif\x00\x00MM\x00*", b"Exif\x00\x00MM^*", 1)
    assert broken != raw.getvalue()  # the TIFF magic of its EXIF block is now invalid
    clean = pixels_only_jpeg(broken)
    assert (clean.width, clean.height) == original.size
    assert b"MM^*" not in clean.jpeg and b"ACME-CAM" not in clean.jpeg


def test_bytes_that_are_no_image_are_refused_by_the_encoder():
    with pytest.raises(CaptureImageError):
        pixels_only_jpeg(b"\xff\xd8\xff\xe0 not really a jpeg")


# --------------------------------------------------------------------------- never in the way


def test_garbage_bytes_are_dropped_and_counted_not_raised(tmp_path):
    with local_writer(tmp_path) as w:
        assert w.offer(b"<html>not an image</html>", answer("unknown")) == "queued"
        assert w.offer(photo(1)[:200], answer("unknown")) == "queued"  # truncated JPEG
    assert w.stats().dropped == {"undecodable": 2} and stored(tmp_path) == []


def test_oversized_images_are_dropped_as_too_large(tmp_path):
    with local_writer(tmp_path, max_pixels=10_000) as w:
        w.offer(photo(1, size=(200, 100)), answer("unknown"))
    assert w.stats().dropped == {"too_large": 1}


class GatedStore(LocalStore):
    """A real folder store whose writes wait until the test opens the gate (a slow store)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.gate = threading.Event()

    def put_file(self, local, key, sha256=None):
        self.gate.wait(10)
        return super().put_file(local, key, sha256)


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    store = GatedStore(tmp_path)
    s = CaptureSettings(enabled=True, queue_size=3, writers=1)
    w = CaptureWriter(s, CaptureStore(store, "capture"), clock=lambda: NOON)
    outcomes = [w.offer(photo(i), answer("unknown")) for i in range(10)]
    # one image is being written (blocked), three wait, six find the queue full
    assert outcomes.count("queue_full") >= 6 and w.stats().dropped["queue_full"] >= 6
    store.gate.set()
    assert w.close(timeout=10)
    assert w.stats().written == 10 - w.stats().dropped["queue_full"]


def test_queued_bytes_are_bounded_as_well_as_queued_items(tmp_path):
    store = GatedStore(tmp_path)
    s = CaptureSettings(enabled=True, queue_size=1000, queue_bytes=2**20, writers=1)
    w = CaptureWriter(s, CaptureStore(store, "capture"), clock=lambda: NOON)
    big = [photo(i, size=(700, 500)) for i in range(30)]  # ~0.3 MB each of noise
    outcomes = [w.offer(im, answer("unknown")) for im in big]
    assert "queue_full" in outcomes
    assert w.stats().queue_bytes <= 2**20
    store.gate.set()
    w.close(timeout=20)


def test_store_down_drops_and_counts_and_offer_stays_immediate(s3_settings):
    dead = s3_settings.model_copy(update={"endpoint": f"127.0.0.1:{free_port()}"})
    s = CaptureSettings(enabled=True, store_timeout_s=1.0, retry_after_s=60)
    w = CaptureWriter.from_settings(s, dead, clock=lambda: NOON)
    latencies = []
    for i in range(300):
        start = time.perf_counter()
        w.offer(photo(i), answer("unknown"))
        latencies.append(time.perf_counter() - start)
    assert w.close(timeout=30)
    stats = w.stats()
    assert stats.written == 0
    assert stats.dropped.get("store_unavailable", 0) + stats.dropped.get("queue_full", 0) == 300
    assert stats.dropped["store_unavailable"] >= 1
    p99 = float(np.percentile(latencies, 99))
    assert p99 < 0.02, f"offer p99 {p99 * 1000:.1f} ms while the store is down"


def test_a_store_that_comes_back_is_written_to_again(tmp_path):
    class FlakyStore(LocalStore):
        down = True

        def put_file(self, local, key, sha256=None):
            if self.down:
                from aads.storage import StoreUnavailable

                raise StoreUnavailable("connection refused")
            return super().put_file(local, key, sha256)

    store = FlakyStore(tmp_path)
    w = CaptureWriter(
        CaptureSettings(enabled=True, retry_after_s=0.0, writers=1),
        CaptureStore(store, "capture"),
        clock=lambda: NOON,
    )
    w.offer(photo(1), answer("unknown"))
    w.flush(10)
    store.down = False
    w.offer(photo(1), answer("unknown"))  # dropped before: not remembered as captured
    w.close()
    assert w.stats().dropped == {"store_unavailable": 1} and w.stats().written == 1


@pytest.mark.slow
def test_close_flushes_everything_queued(s3_bucket):
    s = CaptureSettings(enabled=True, sample_rate=1.0)
    w = CaptureWriter.from_settings(s, s3_bucket, clock=lambda: NOON)
    for i in range(25):
        w.offer(photo(100 + i), answer())
    assert w.close(timeout=60)
    assert w.stats().written == 25
    target = open_capture_store(s, s3_bucket)
    assert len([o for o in target.store.list("capture/") if o.key.endswith(".json")]) == 25
    assert w.offer(photo(1), answer("unknown")) == "closed"


def test_close_gives_up_after_its_timeout_and_counts_the_rest(tmp_path):
    store = GatedStore(tmp_path)
    w = CaptureWriter(
        CaptureSettings(enabled=True, writers=1), CaptureStore(store, "capture"), clock=lambda: NOON
    )
    for i in range(5):
        w.offer(photo(i), answer("unknown"))
    threading.Timer(1.5, store.gate.set).start()
    assert not w.close(timeout=0.5)
    assert w.stats().dropped.get("shutdown", 0) >= 3


def test_offers_from_an_asyncio_server_and_async_close(tmp_path):
    async def serve() -> CaptureWriter:
        w = local_writer(tmp_path)

        async def request(i: int) -> str:
            await asyncio.sleep(0)
            return w.offer(photo(i), answer("unknown"))

        outcomes = await asyncio.gather(*(request(i) for i in range(20)))
        assert set(outcomes) == {"queued"}
        assert await w.aclose()
        return w

    w = asyncio.run(serve())
    assert w.stats().written == 20


def test_concurrent_offers_from_threads_are_all_counted(tmp_path):
    w = local_writer(tmp_path, sample_rate=0.0)
    images = [photo(i) for i in range(40)]

    def client(k: int) -> None:
        for i in range(k, 40, 4):
            w.offer(images[i], answer("unknown" if i % 2 else "healthy"))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    s = w.stats()
    assert s.offered == 40 and s.written == 20 and s.skipped == {"not_sampled": 20}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    image=st.binary(max_size=4096),
    body=st.dictionaries(
        st.sampled_from(["crop", "label", "is_ood", "error", "routing", "model", "ood", "x"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=20)
        | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        max_size=8,
    ),
)
def test_any_bytes_and_any_answer_never_raise(tmp_path, image, body):
    w = local_writer(tmp_path / "fuzz", sample_rate=1.0)
    try:
        assert isinstance(w.offer(image, body), str)
    finally:
        w.close(timeout=5)
    assert w.stats().dropped.get("internal", 0) == 0


# --------------------------------------------------------------------------- settings


def test_capture_is_off_by_default_in_the_spec():
    spec = parse_config(
        {
            "crops": [{"name": "tomato", "phase1_classes": ["a", "b"]}],
            "router": {"source": "random:tiny"},
            "adapter": {"backbone": {"source": "random:tiny"}},
        }
    )
    assert spec.serving.capture.enabled is False and spec.serving.capture.prefix == "capture"


def test_a_bad_capture_setting_names_its_field():
    with pytest.raises(ConfigError, match=r"serving\.capture\.sample_rate"):
        parse_config(
            {
                "crops": [{"name": "tomato", "phase1_classes": ["a", "b"]}],
                "router": {"source": "random:tiny"},
                "adapter": {"backbone": {"source": "random:tiny"}},
                "serving": {"capture": {"enabled": True, "sample_rate": 1.5}},
            }
        )


def test_a_prefix_that_could_escape_the_layout_is_refused():
    with pytest.raises(ValueError, match="prefix"):
        CaptureSettings(prefix="../secrets")


def routed(wire: dict) -> dict:
    return {**wire, "routing": {**wire["routing"], "source": "router"}}


@pytest.mark.parametrize(
    "wire",
    [
        routed(answer("healthy")),
        routed(answer("unknown")),
        routed(NOT_A_CROP),
        {"crop": "tomato", "error": {"code": 503, "message": "down"}},
    ],
    ids=["known", "unknown", "not_a_known_crop", "error"],
)
def test_an_answer_model_and_its_wire_form_have_one_verdict(wire):
    model = Answer.model_validate(wire)
    assert model.verdict == answer_verdict(wire) == answer_verdict(model.wire())
