"""OOD calibration of a real adapter package: stored inside it, checksummed, loaded with it,
answering unknown images as unknown; the CLI's calibrate and evaluate commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from aads.adapters.loading import load_adapter
from aads.adapters.package import PackageError, read_meta, update_package, verify_package
from aads.adapters.phases.phase1 import train_phase1
from aads.backbone import preprocess_image
from aads.cli import app
from aads.config import SynthSettings, parse_config
from aads.data.ingest import ingest, write_ingest_outputs
from aads.data.synth import synthesize
from aads.ood import UNKNOWN, OODError, load_detector
from aads.ood.calibrate import adapter_features, calibrate_package, ood_rows
from aads.ood.reference import MAX_ROWS, load_reference_features, reference_sample

TINY = {"source": "random:tiny", "image_size": 32}
SPEC = {
    "crops": [
        {
            "name": "tomato",
            "phase1_classes": ["healthy", "early_blight", "leaf_mold"],
            "ood_holdout": ["mosaic_virus"],
        },
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
    "router": TINY,
    "adapter": {
        "backbone": TINY,
        "dora": {"r": 2, "alpha": 4},
        "ood": {"threshold": {"min_samples": 2}},
    },
    "training": {"phase1": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None}},
}


@pytest.fixture(scope="module")
def config():
    return parse_config(SPEC)


@pytest.fixture(scope="module")
def dataset(config, tmp_path_factory) -> tuple[Path, list, Path]:
    root = tmp_path_factory.mktemp("data")
    synth = SynthSettings(images_per_class=10, images_per_domain_class=0, image_size=32)
    synthesize(config, root, settings=synth)
    result = ingest(root, config=config)
    manifest_dir = tmp_path_factory.mktemp("manifest")
    write_ingest_outputs(result, manifest_dir)
    return root, result.rows, manifest_dir / "manifest.csv"


@pytest.fixture(scope="module")
def trained(config, dataset, tmp_path_factory) -> Path:
    root, rows, _ = dataset
    return train_phase1(config, "tomato", rows, root, tmp_path_factory.mktemp("pkgs") / "p1")


@pytest.fixture(scope="module")
def calibrated(config, dataset, trained, tmp_path_factory):
    root, rows, _ = dataset
    pkg = tmp_path_factory.mktemp("cal") / "p1"
    shutil.copytree(trained, pkg)
    result = calibrate_package(config, pkg, rows, root, manifest_sha256="abc123")
    return pkg, result


@pytest.mark.slow
def test_calibration_is_stored_in_the_package_and_checksummed(calibrated):
    pkg, _ = calibrated
    sums = verify_package(pkg)
    for name in ("calibration.json", "calibration.safetensors", "roc.png", "roc.json"):
        assert f"ood/{name}" in sums


@pytest.mark.slow
def test_calibration_keeps_its_validation_features_as_drift_reference(calibrated, dataset):
    pkg, _ = calibrated
    root, rows, _ = dataset
    assert "ood/reference_features.safetensors" in verify_package(pkg)
    reference = load_reference_features(pkg / "ood")
    adapter = load_adapter(pkg)
    validation = ood_rows(rows, adapter.meta).calibration
    expected = adapter_features(adapter, validation, root).features
    assert reference.dtype == np.float32 and reference.shape == expected.shape
    np.testing.assert_allclose(reference, expected, rtol=1e-5, atol=1e-5)


def test_reference_sample_is_bounded_seeded_and_in_row_order():
    features = np.arange(2000 * 3, dtype=np.float64).reshape(2000, 3)
    sample = reference_sample(features)
    assert sample.shape == (MAX_ROWS, 3) and sample.dtype == np.float32
    assert np.array_equal(sample, reference_sample(features))
    assert np.all(np.diff(sample[:, 0]) > 0)


@pytest.mark.slow
def test_package_metadata_names_the_method_and_the_data(calibrated):
    pkg, result = calibrated
    ood = read_meta(pkg).ood
    assert ood["method"] == "mahalanobis/shared_ledoit_wolf/l2"
    assert ood["manifest_sha256"] == "abc123"
    assert ood["near_auroc"] == pytest.approx(result.metrics["near_auroc"], abs=1e-6)


@pytest.mark.slow
def test_record_counts_and_thresholds_match_the_fitted_detector(calibrated):
    _, result = calibrated
    record, thresholds = result.detector.record, result.detector.thresholds
    assert record.classes == ["healthy", "early_blight", "leaf_mold"]
    for c, name in enumerate(record.classes):
        assert record.per_class[name].threshold == thresholds.values[c]
        assert record.per_class[name].fit_samples == result.detector.estimator.counts_[c]


@pytest.mark.slow
def test_loaded_adapter_carries_the_calibration_round_trip_identical(calibrated, dataset):
    pkg, result = calibrated
    root, rows, _ = dataset
    adapter = load_adapter(pkg)
    feats = adapter_features(adapter, [r for r in rows if r.crop == "tomato"], root).features
    a, b = adapter.ood.detect(feats), result.detector.detect(feats)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.is_ood, b.is_ood)
    assert adapter.ood.record == result.detector.record


@pytest.mark.slow
def test_verdicts_answer_unknown_with_the_nearest_class_as_hint(calibrated, dataset):
    pkg, _ = calibrated
    root, rows, _ = dataset
    adapter = load_adapter(pkg)
    far = [r for r in rows if r.crop == "corn"][:8]
    pixels = np.stack([_pixels(root / r.path, adapter) for r in far])
    import torch

    verdicts = adapter.verdicts(torch.from_numpy(pixels))
    assert len(verdicts) == len(far)
    for v in verdicts:
        assert v.is_ood == (v.distance > v.threshold)
        assert (v.label == UNKNOWN) == v.is_ood
        assert v.nearest_class in adapter.classes and 0.0 <= v.confidence <= 1.0


@pytest.mark.slow
def test_an_uncalibrated_package_refuses_verdicts_with_the_command_to_run(trained):
    adapter = load_adapter(trained)
    assert adapter.ood is None
    import torch

    with pytest.raises(PackageError, match="aads ood calibrate"):
        adapter.verdicts(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow
def test_a_failed_update_leaves_the_package_untouched(calibrated, tmp_path):
    pkg = tmp_path / "p1"
    shutil.copytree(calibrated[0], pkg)
    before = verify_package(pkg)

    def broken(staging: Path, meta):
        (staging / "ood" / "calibration.json").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        update_package(pkg, broken)
    assert verify_package(pkg) == before
    assert load_detector(pkg / "ood") is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_rows_without_a_validation_split_are_refused(trained, dataset):
    _, rows, _ = dataset
    meta = read_meta(trained)
    no_val = [r for r in rows if r.split != "val"]
    with pytest.raises(OODError, match="validation-split"):
        ood_rows(no_val, meta)


@pytest.mark.slow
def test_ood_rows_assign_unknown_classes_to_near_and_other_crops_to_far(trained, dataset):
    _, rows, _ = dataset
    parts = ood_rows(rows, read_meta(trained))
    assert {r.label for r in parts.near} == {"mosaic_virus"}
    assert {r.crop for r in parts.far} == {"corn"}
    assert {r.split for r in parts.fit} == {"train"}


@pytest.mark.slow
def test_cli_calibrate_then_evaluate_writes_the_report(config, dataset, trained, tmp_path):
    _, _, manifest = dataset
    pkg = tmp_path / "p1"
    shutil.copytree(trained, pkg)
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(SPEC))
    runner = CliRunner()
    common = ["--package", str(pkg), "--config", str(cfg), "--manifest", str(manifest)]
    result = runner.invoke(app, ["ood", "calibrate", *common, "--no-loco"])
    assert result.exit_code == 0, result.output
    assert (pkg / "ood" / "calibration.json").is_file()
    out = tmp_path / "report"
    result = runner.invoke(app, ["ood", "evaluate", *common, "--out", str(out), "--compare"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ood-metrics.json").read_text())
    assert {"near_auroc", "far_auroc", "loco_auroc"} <= set(report["metrics"])
    assert set(report["leave_one_class_out"]) == {"healthy", "early_blight", "leaf_mold", "mean"}
    methods = json.loads((out / "methods.json").read_text())["methods"]
    assert len(methods) == 4 * 2 * 2 * 2
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_on_a_folder_that_is_not_a_package_is_one_clear_error(dataset, tmp_path):
    _, _, manifest = dataset
    runner = CliRunner()
    result = runner.invoke(
        app, ["ood", "evaluate", "--package", str(tmp_path), "--manifest", str(manifest)]
    )
    assert result.exit_code == 2
    assert "SHA256SUMS" in result.output


def _pixels(path: Path, adapter) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        tensor = preprocess_image(
            img,
            image_size=adapter.backbone.image_size,
            normalization=adapter.backbone.normalization,
        )
    return tensor.numpy()
