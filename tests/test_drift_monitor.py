"""`aads monitor` end to end: real calibrated packages (phase 1, and phase 3 with CONEC domains)
on the `random:tiny` backbone, answers from the real `Diagnoser`, captured by the real
`CaptureWriter` into moto S3, read back by the command; quiet traffic exits 0, a flood of
unknowns and a shifted domain mix exit 4, every bad input is one clear error."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from aads.adapters.package import update_package
from aads.adapters.phases.phase1 import train_phase1
from aads.adapters.phases.phase3 import train_phase3
from aads.backbone import open_image
from aads.capture.settings import CaptureSettings
from aads.capture.writer import CaptureWriter
from aads.cli import app
from aads.config import PlatformConfig, StorageSettings, SynthSettings, parse_config
from aads.data.ingest import ingest
from aads.data.synth import synthesize
from aads.drift.monitor import DRIFT_EXIT_CODE, run_monitor
from aads.inference import Diagnoser
from aads.ood.calibrate import calibrate_package
from aads.ood.reference import REFERENCE_FILE
from aads.storage import S3Store
from tests.conftest import free_port

TINY = {"source": "random:tiny", "image_size": 32}
SPEC = {
    "crops": [
        {
            "name": "tomato",
            "phase1_classes": ["healthy", "early_blight", "leaf_mold"],
            "phase3_domains": ["field"],
            "ood_holdout": ["mosaic_virus"],
        },
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
    "router": TINY,
    "adapter": {
        "backbone": {**TINY, "device": "cpu"},
        "dora": {"r": 2, "alpha": 4},
        "conec": {"rank": 2, "alpha": 4},
        "ood": {"threshold": {"min_samples": 2}},
    },
    # A large validation split: it is the drift reference (the feature test needs >= 20 rows).
    "data": {"split": {"train": 0.5, "val": 0.35, "test": 0.15}},
    "training": {
        "phase1": {"epochs": 2, "batch_size": 16, "early_stopping_patience": None},
        "phase3": {"epochs": 1, "batch_size": 16, "early_stopping_patience": None},
    },
}


@dataclass
class World:
    config: PlatformConfig
    phase1: Path
    phase3: Path
    fresh: Path  # in-distribution images the adapters never saw (another synth seed)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("drift")
    config = parse_config(SPEC)
    synth = SynthSettings(images_per_class=24, images_per_domain_class=10, image_size=32)
    synthesize(config, tmp / "data", settings=synth)
    rows = ingest(tmp / "data", config=config).rows
    p1 = train_phase1(config, "tomato", rows, tmp / "data", tmp / "p1")
    p3 = train_phase3(config, "tomato", rows, tmp / "data", p1, tmp / "p3")
    for pkg in (p1, p3):
        calibrate_package(config, pkg, rows, tmp / "data", loco=False)
    synthesize(config, tmp / "fresh", settings=synth.model_copy(update={"seed": 7}))
    return World(config, p1, p3, tmp / "fresh")


@pytest.fixture
def bucket(s3_settings: StorageSettings) -> StorageSettings:
    fresh = s3_settings.model_copy(update={"bucket": f"drift-{uuid.uuid4().hex[:12]}"})
    S3Store(fresh.bucket, fresh).ensure_bucket()
    return fresh


def fresh_images(world: World, domain: str, limit: int) -> list[bytes]:
    paths = sorted((world.fresh / domain / "tomato").rglob("*.jpg"))
    known = {"healthy", "early_blight", "leaf_mold"}
    return [p.read_bytes() for p in paths if p.parent.name in known][:limit]


def noise_images(n: int) -> list[bytes]:
    """Pictures that are no tomato leaf at all: what a new field problem looks like to the
    adapter in the extreme."""
    rng = np.random.default_rng(11)
    out = []
    for _ in range(n):
        img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def capture(package: Path, storage: StorageSettings, images: list[bytes], rate: float) -> None:
    """Serve `images` with the real Diagnoser and offer each answer to the real writer, spread
    over the last three days, as the router will."""
    diagnoser = Diagnoser.from_dir(package, model_version="1")
    settings = CaptureSettings(enabled=True, sample_rate=rate)
    now = datetime.now(UTC)
    for i, data in enumerate(images):
        (answer,) = diagnoser.diagnose([open_image(data)])
        answer["routing"] = {"crop": "tomato", "source": "crop_hint"}
        when = now - timedelta(hours=1 + 24 * (i % 3))
        with CaptureWriter.from_settings(settings, storage, clock=lambda w=when: w) as writer:
            assert writer.offer(data, answer) in ("queued", "not_sampled")
        assert writer.stats().written + writer.stats().skipped.get("not_sampled", 0) == 1


def spec_file(tmp_path: Path, storage: StorageSettings) -> Path:
    spec = {
        **SPEC,
        "storage": {
            "endpoint": storage.endpoint,
            "secure": False,
            "region": storage.region,
            "bucket": storage.bucket,
            "retries": 1,
            "timeout_s": 2,
            "cache_dir": str(tmp_path / "cache"),
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def monitor_cli(tmp_path: Path, storage: StorageSettings, package: Path, *extra: str):
    out = tmp_path / "report"
    args = ["monitor", "--crop", "tomato", "--since", "7d", "--package", str(package)]
    args += ["--config", str(spec_file(tmp_path, storage)), "--out", str(out), *extra]
    return CliRunner().invoke(app, args), out


def test_quiet_traffic_is_no_drift_and_the_report_is_written(world, bucket, tmp_path):
    capture(world.phase1, bucket, fresh_images(world, "base", 45), rate=1.0)
    result, out = monitor_cli(tmp_path, bucket, world.phase1)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "monitor.json").read_text())
    assert report["drifted"] is False and report["exit_code"] == 0
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["unknown rate"]["measured"] and not checks["unknown rate"]["significant"]
    assert checks["feature drift"]["measured"] and not checks["feature drift"]["significant"]
    assert not checks["domain mix"]["measured"]  # a phase-1 adapter knows one domain
    assert report["records"]["in_window"] == 45 and report["model_versions"] == {"1": 45}
    assert (out / "monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "No significant drift" in (out / "monitor.html").read_text()


def test_a_flood_of_unknown_pictures_is_drift_and_exits_4(world, bucket, tmp_path):
    images = fresh_images(world, "base", 30) + noise_images(60)
    capture(world.phase1, bucket, images, rate=0.5)
    result, out = monitor_cli(tmp_path, bucket, world.phase1)
    assert result.exit_code == DRIFT_EXIT_CODE, result.output
    report = json.loads((out / "monitor.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["unknown rate"]["significant"], checks["unknown rate"]["message"]
    assert checks["feature drift"]["significant"], checks["feature drift"]["message"]
    assert "DRIFT" in result.output
    assert "Drift: tomato" in (out / "monitor.html").read_text()


def test_field_only_traffic_shifts_the_domain_mix_of_a_conec_adapter(world, bucket):
    capture(world.phase3, bucket, fresh_images(world, "field", 40), rate=1.0)
    config = world.config.model_copy(update={"storage": bucket})
    report = run_monitor(
        config, "tomato", datetime.now(UTC) - timedelta(days=7), package=world.phase3
    )
    mix = report.check("domain mix")
    assert mix.measured and set(mix.detail["training_share"]) == {"base", "field"}
    assert mix.detail["observed_share"]["field"] > 0.8
    assert mix.significant and report.exit_code == DRIFT_EXIT_CODE


def test_a_package_without_reference_features_says_how_to_get_them(world, bucket, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(world.phase1, old)
    update_package(old, lambda staging, meta: (staging / "ood" / REFERENCE_FILE).unlink() or meta)
    capture(world.phase1, bucket, fresh_images(world, "base", 25), rate=1.0)
    config = world.config.model_copy(update={"storage": bucket})
    report = run_monitor(config, "tomato", datetime.now(UTC) - timedelta(days=7), package=old)
    check = report.check("feature drift")
    assert not check.measured
    assert check.message == (
        "feature drift not measured: the package has no reference features; recalibrate with "
        "aads ood calibrate"
    )


def test_records_older_than_the_window_are_left_out(world, bucket):
    capture(world.phase1, bucket, fresh_images(world, "base", 9), rate=1.0)
    config = world.config.model_copy(update={"storage": bucket})
    report = run_monitor(
        config, "tomato", datetime.now(UTC) - timedelta(hours=12), package=world.phase1
    )
    assert report.records["in_window"] == 3  # one of each three days' images


def test_an_unknown_crop_is_a_clear_error(world, bucket, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "monitor",
            "--crop",
            "potato",
            "--package",
            str(world.phase1),
            "--config",
            str(spec_file(tmp_path, bucket)),
        ],
    )
    assert result.exit_code == 2 and "unknown crop 'potato'" in result.output


def test_a_window_that_is_not_one_is_a_clear_error(world, bucket, tmp_path):
    result, _ = monitor_cli(tmp_path, bucket, world.phase1, "--since", "last tuesday")
    assert result.exit_code == 2 and "--since" in result.output


def test_another_crops_package_is_refused(world, bucket, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "monitor",
            "--crop",
            "corn",
            "--package",
            str(world.phase1),
            "--config",
            str(spec_file(tmp_path, bucket)),
        ],
    )
    assert result.exit_code == 2 and "not 'corn'" in result.output


def test_a_capture_store_that_is_down_exits_3(world, bucket, tmp_path):
    dead = bucket.model_copy(update={"endpoint": f"127.0.0.1:{free_port()}"})
    result, _ = monitor_cli(tmp_path, dead, world.phase1)
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.output
