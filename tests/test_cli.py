"""The `aads` command: each subcommand works end to end and bad input is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aads.cli import app

runner = CliRunner()


@pytest.fixture
def small_config(tmp_path: Path, demo_config_path: Path) -> Path:
    """The demo spec with fewer, smaller images so CLI tests run in seconds."""
    spec = yaml.safe_load(demo_config_path.read_text())
    # random:tiny instead of the demo's synthetic:mini: no pretraining minutes in unit tests.
    spec["router"] = {"source": "random:tiny", "image_size": 32}
    spec["adapter"]["backbone"] = {"source": "random:tiny", "image_size": 32}
    spec["data"]["synth"] = {
        "images_per_class": 3,
        "images_per_domain_class": 1,
        "image_size": 48,
        "seed": 0,
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_every_command_has_help():
    for cmd in (
        [],
        ["data"],
        ["data", "synth"],
        ["data", "ingest"],
        ["data", "stats"],
        ["backbone", "info"],
        ["backbone", "features"],
        ["config", "validate"],
        ["ood", "calibrate"],
        ["ood", "evaluate"],
        ["demo"],
    ):
        result = invoke(*cmd, "--help")
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage" in result.output


def test_config_validate_reports_the_bad_field_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "crops": [{"name": "Tomato", "phase1_classes": ["a", "b"]}],
                "router": {"source": "random:tiny"},
                "adapter": {"backbone": {"source": "random:tiny"}},
            }
        )
    )
    result = invoke("config", "validate", bad)
    assert result.exit_code == 2
    assert "error:" in result.output and "crops.0.name" in result.output
    assert "Traceback" not in result.output


def test_backbone_info_lists_the_real_variants_as_json():
    result = invoke("backbone", "info", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    ids = {v["hf_id"] for v in data["variants"]}
    assert "facebook/dinov3-vitl16-pretrain-lvd1689m" in ids
    assert "tiny" in data["random_presets"]


@pytest.mark.slow
def test_synth_ingest_stats_features_chain(tmp_path, small_config):
    data, out = tmp_path / "data", tmp_path / "manifest"
    assert invoke("data", "synth", "--config", small_config, "--out", data).exit_code == 0
    result = invoke("data", "ingest", data, "--config", small_config, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.csv").is_file() and (out / "rejects.csv").is_file()
    stats = invoke("data", "stats", out / "manifest.csv")
    assert stats.exit_code == 0 and "tomato" in stats.output
    feats = tmp_path / "router.safetensors"
    result = invoke(
        "backbone",
        "features",
        "--config",
        small_config,
        "--manifest",
        out / "manifest.csv",
        "--out",
        feats,
    )
    assert result.exit_code == 0, result.output
    assert feats.is_file()


def test_synth_with_an_unknown_domain_exits_2_naming_known_domains(tmp_path, small_config):
    spec = yaml.safe_load(small_config.read_text())
    spec["crops"][0]["phase3_domains"] = ["moonlight"]
    small_config.write_text(yaml.safe_dump(spec))
    result = invoke("data", "synth", "--config", small_config, "--out", tmp_path / "d")
    assert result.exit_code == 2
    assert "moonlight" in result.output and "low_light" in result.output


def test_ingest_of_a_missing_folder_exits_2(tmp_path, small_config):
    result = invoke("data", "ingest", tmp_path / "nope", "--config", small_config)
    assert result.exit_code == 2 and "not a directory" in result.output


def test_bad_layout_option_exits_2(tmp_path, small_config):
    result = invoke("data", "ingest", tmp_path, "--config", small_config, "--layout", "flat")
    assert result.exit_code == 2 and "'--layout': 'flat' is not one of" in result.output


def test_unavailable_backbone_exits_2_with_mirror_instructions(tmp_path, small_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = yaml.safe_load(small_config.read_text())
    spec["router"]["source"] = "facebook/dinov3-vits16-pretrain-lvd1689m"
    small_config.write_text(yaml.safe_dump(spec))
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,sha256,crop,part,label,domain,split,phase,task,width,height\n")
    (manifest.parent / "ingest.json").write_text(json.dumps({"root": str(tmp_path)}))
    result = invoke(
        "backbone",
        "features",
        "--config",
        small_config,
        "--manifest",
        manifest,
        "--out",
        tmp_path / "f.safetensors",
    )
    assert result.exit_code == 2
    assert "facebook/dinov3-vits16-pretrain-lvd1689m" in result.output
    assert "s3://" in result.output


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_a_summary(tmp_path, small_config):
    result = invoke("demo", "--config", small_config, "--workdir", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo" / "demo-summary.json").read_text())
    names = [s["name"] for s in summary["steps"]]
    assert names[:4] == ["synthesise data", "ingest + split", "router features", "train router"]
    assert "tomato: phase 3 CONEC-LoRA" in names and "corn: phase 2 SD-LoRA" in names
    assert "tomato: OOD calibration" in names
    assert set(summary["adapters"]) == {"tomato", "pepper", "corn"}
    for pkg in summary["adapters"].values():
        assert (Path(pkg) / "SHA256SUMS").is_file()
        assert (Path(pkg) / "ood" / "calibration.json").is_file()


def test_error_text_with_brackets_is_printed_verbatim(tmp_path):
    bad = tmp_path / "bad.yaml"
    crop = {"name": "tomato", "phase1_classes": ["a", "b"]}
    bad.write_text(
        yaml.safe_dump(
            {
                "crops": [crop, crop],
                "router": {"source": "random:tiny"},
                "adapter": {"backbone": {"source": "random:tiny"}},
            }
        )
    )
    result = invoke("config", "validate", bad)
    assert result.exit_code == 2 and "repeated: ['tomato']" in result.output


@pytest.mark.slow
def test_train_commands_chain_router_and_the_three_phases(tmp_path, small_config):
    data, manifest = tmp_path / "data", tmp_path / "manifest"
    invoke("data", "synth", "--config", small_config, "--out", data)
    invoke("data", "ingest", data, "--config", small_config, "--out", manifest)
    common = ["--config", small_config, "--manifest", manifest / "manifest.csv"]
    models = tmp_path / "models"
    assert invoke("train", "router", *common, "--out", models / "router").exit_code == 0
    steps = [
        ["phase1", "--crop", "pepper", "--out", models / "p1"],
        ["phase2", "--crop", "pepper", "--from", models / "p1", "--out", models / "p2"],
        ["phase3", "--crop", "pepper", "--from", models / "p2", "--out", models / "p3"],
    ]
    for step in steps:
        result = invoke("train", *step, *common)
        assert result.exit_code == 0, result.output
    assert "phase3_protected_retention" in result.output


def test_training_from_a_missing_package_exits_2(tmp_path, small_config):
    result = invoke(
        "train",
        "phase2",
        "--crop",
        "tomato",
        "--from",
        tmp_path / "nope",
        "--out",
        tmp_path / "out",
        "--config",
        small_config,
        "--manifest",
        tmp_path / "m.csv",
    )
    assert result.exit_code == 2 and "error:" in result.output


@pytest.mark.slow
def test_demo_on_a_folder_of_images_trains_on_them_instead_of_synthesising(tmp_path):
    from .test_data_ingest import jpeg_bytes, put

    crops = {"pepper": ["healthy", "bacterial_spot"], "corn": ["healthy", "common_rust"]}
    for c, (crop, classes) in enumerate(crops.items()):
        for k, label in enumerate(classes):
            for i in range(6):
                put(
                    tmp_path / "photos", f"{crop}/{label}/{i}.jpg", jpeg_bytes(100 * c + 10 * k + i)
                )
    spec = {
        "crops": [{"name": n, "phase1_classes": cls} for n, cls in crops.items()],
        "router": {"source": "random:tiny", "image_size": 32},
        "adapter": {"backbone": {"source": "random:tiny", "image_size": 32}},
        "training": {p: {"epochs": 1, "batch_size": 8} for p in ("router", "phase1")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = invoke(
        "demo", "-c", path, "--data", tmp_path / "photos", "--workdir", tmp_path / "w", "-o", "json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["name"] for s in summary["steps"]][:2] == ["ingest + split", "router features"]
    assert not (tmp_path / "w" / "data").exists()
    assert set(summary["metrics"]) == {"pepper", "corn"}
    assert "phase1_test_accuracy" in summary["metrics"]["corn"]
