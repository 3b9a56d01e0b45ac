"""`CaptureSlot`: the router's one capture writer follows the spec it answers under (built at
load, rebuilt when a reloaded spec changes capture or storage, closed at shutdown), on a local
capture folder (the server-level behaviour: tests/test_serving_telemetry.py)."""

from __future__ import annotations

from pathlib import Path

from aads.capture.slot import CaptureSlot
from aads.config import PlatformConfig, parse_config

CROPS = [{"name": "tomato", "phase1_classes": ["healthy", "early_blight"]}]


def spec(folder: Path | str | None, **capture: object) -> PlatformConfig:
    settings = {"enabled": folder is not None, **capture}
    if folder is not None:
        settings["store"] = str(folder)
    tiny = {"source": "random:tiny", "image_size": 32}
    return parse_config(
        {
            "crops": CROPS,
            "router": tiny,
            "adapter": {"backbone": tiny},
            "serving": {"capture": settings},
        }
    )


def test_capture_off_in_the_spec_means_no_writer():
    assert CaptureSlot(spec(None), metrics=False).writer is None


def test_the_same_spec_keeps_its_writer(tmp_path):
    config = spec(tmp_path / "a")
    slot = CaptureSlot(config, metrics=False)
    writer = slot.writer
    assert writer is not None and slot.writer_for(config) is writer
    equal = spec(tmp_path / "a")  # a reload with the same settings: a new object, same writer
    assert slot.writer_for(equal) is writer
    slot.close()
    slot.join(10)


def test_a_reload_that_changes_capture_builds_a_new_writer_and_closes_the_old(tmp_path):
    slot = CaptureSlot(spec(tmp_path / "a"), metrics=False)
    old = slot.writer
    new = slot.writer_for(spec(tmp_path / "b"))
    assert new is not None and new is not old
    slot.join(10)
    assert old is not None and old.stats().offered == 0 and old._closed  # noqa: SLF001
    assert "b" in new.target.description
    slot.close()
    slot.join(10)


def test_a_reload_that_turns_capture_off_closes_the_writer(tmp_path):
    slot = CaptureSlot(spec(tmp_path / "a"), metrics=False)
    old = slot.writer
    assert slot.writer_for(spec(None)) is None
    slot.join(10)
    assert old is not None and old._closed  # noqa: SLF001


def test_after_close_nothing_is_captured_whatever_the_spec(tmp_path):
    slot = CaptureSlot(spec(tmp_path / "a"), metrics=False)
    slot.close()
    assert slot.writer_for(spec(tmp_path / "b")) is None
    slot.join(10)


def test_a_capture_store_that_cannot_be_opened_leaves_capture_off_not_the_router():
    slot = CaptureSlot(spec("s3://"), metrics=False)  # no bucket
    assert slot.writer is None
