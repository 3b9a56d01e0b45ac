"""`aads monitor` end to end: real calibrated packages (phase 1, and phase 3 with CONEC domains)
on the `random:tiny` backbone, answers from the real `Diagnoser`, captured by the real
`CaptureWriter` into moto S3, read back by the command; quiet traffic exits 0, a flood of
unknowns and a shifted domain mix exit 4, every bad input is one clear error."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aads.adapters.package import update_package
from aads.cli import app
from aads.config import StorageSettings
from aads.drift.monitor import DRIFT_EXIT_CODE, run_monitor
from aads.ood.reference import REFERENCE_FILE
from tests.conftest import free_port
from tests.loop_world import (
    capture,
    fresh_images,
    noise_images,
    spec_file,
)

pytestmark = pytest.mark.slow  # a real server or a training run in every test


def monitor_cli(
    tmp_path: Path, storage: StorageSettings, package: Path, *extra: str, crop: str = "tomato"
):
    out = tmp_path / "report"
    args = ["monitor", "--crop", crop, "--since", "7d", "--package", str(package)]
    args += ["--config", str(spec_file(tmp_path, storage)), "--out", str(out), *extra]
    return CliRunner().invoke(app, args), out


def test_quiet_traffic_is_no_drift_and_the_report_is_written(loop_world, fresh_bucket, tmp_path):
    capture(loop_world.phase1, fresh_bucket, fresh_images(loop_world, "base", 45), rate=1.0)
    result, out = monitor_cli(tmp_path, fresh_bucket, loop_world.phase1)
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


def test_a_flood_of_unknown_pictures_is_drift_and_exits_4(loop_world, fresh_bucket, tmp_path):
    images = fresh_images(loop_world, "base", 30) + noise_images(60)
    capture(loop_world.phase1, fresh_bucket, images, rate=0.5)
    result, out = monitor_cli(tmp_path, fresh_bucket, loop_world.phase1)
    assert result.exit_code == DRIFT_EXIT_CODE, result.output
    report = json.loads((out / "monitor.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["unknown rate"]["significant"], checks["unknown rate"]["message"]
    assert checks["feature drift"]["significant"], checks["feature drift"]["message"]
    assert "DRIFT" in result.output
    assert "Drift: tomato" in (out / "monitor.html").read_text()


def test_field_only_traffic_shifts_the_domain_mix_of_a_conec_adapter(loop_world, fresh_bucket):
    capture(loop_world.phase3, fresh_bucket, fresh_images(loop_world, "field", 40), rate=1.0)
    config = loop_world.config.model_copy(update={"storage": fresh_bucket})
    report = run_monitor(
        config, "tomato", datetime.now(UTC) - timedelta(days=7), package=loop_world.phase3
    )
    mix = report.check("domain mix")
    assert mix.measured and set(mix.detail["training_share"]) == {"base", "field"}
    assert mix.detail["observed_share"]["field"] > 0.8
    assert mix.significant and report.exit_code == DRIFT_EXIT_CODE


def test_a_package_without_reference_features_says_how_to_get_them(
    loop_world, fresh_bucket, tmp_path
):
    old = tmp_path / "old"
    shutil.copytree(loop_world.phase1, old)
    update_package(old, lambda staging, meta: (staging / "ood" / REFERENCE_FILE).unlink() or meta)
    capture(loop_world.phase1, fresh_bucket, fresh_images(loop_world, "base", 25), rate=1.0)
    config = loop_world.config.model_copy(update={"storage": fresh_bucket})
    report = run_monitor(config, "tomato", datetime.now(UTC) - timedelta(days=7), package=old)
    check = report.check("feature drift")
    assert not check.measured
    assert check.message == (
        "feature drift not measured: the package has no reference features; recalibrate with "
        "aads ood calibrate"
    )


def test_records_older_than_the_window_are_left_out(loop_world, fresh_bucket):
    capture(loop_world.phase1, fresh_bucket, fresh_images(loop_world, "base", 9), rate=1.0)
    config = loop_world.config.model_copy(update={"storage": fresh_bucket})
    report = run_monitor(
        config, "tomato", datetime.now(UTC) - timedelta(hours=12), package=loop_world.phase1
    )
    assert report.records["in_window"] == 3  # one of each three days' images


def test_an_unknown_crop_is_a_clear_error(loop_world, fresh_bucket, tmp_path):
    result, _ = monitor_cli(tmp_path, fresh_bucket, loop_world.phase1, crop="potato")
    assert result.exit_code == 2 and "unknown crop 'potato'" in result.output


def test_a_window_that_is_not_one_is_a_clear_error(loop_world, fresh_bucket, tmp_path):
    result, _ = monitor_cli(tmp_path, fresh_bucket, loop_world.phase1, "--since", "last tuesday")
    assert result.exit_code == 2 and "--since" in result.output


def test_another_crops_package_is_refused(loop_world, fresh_bucket, tmp_path):
    result, _ = monitor_cli(tmp_path, fresh_bucket, loop_world.phase1, crop="corn")
    assert result.exit_code == 2 and "not 'corn'" in result.output


def test_a_capture_store_that_is_down_exits_3(loop_world, fresh_bucket, tmp_path):
    dead = fresh_bucket.model_copy(update={"endpoint": f"127.0.0.1:{free_port()}"})
    result, _ = monitor_cli(tmp_path, dead, loop_world.phase1)
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.output


def test_an_empty_window_measures_nothing_and_is_no_alarm(loop_world, fresh_bucket):
    config = loop_world.config.model_copy(update={"storage": fresh_bucket})
    report = run_monitor(
        config, "tomato", datetime.now(UTC) - timedelta(days=7), package=loop_world.phase3
    )
    assert [c.measured for c in report.checks] == [False, False, False]
    assert report.exit_code == 0
    assert "no captured answers" in report.check("unknown rate").message
