"""PlantVillage as published ingests as the config means it: its folder names reach the
configured crops and classes through aliases, and each of the sample's warts is handled the
way the README says (read in place from ../shared/data/plantvillage or
$AADS_PLANTVILLAGE_DIR)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml
from typer.testing import CliRunner

from aads.backbone import LVD1689M, preprocess_image
from aads.cli import app
from aads.config import load_config, parse_config
from aads.data.images import probe_image
from aads.data.ingest import ingest
from aads.data.samples import plantvillage_sample

from .conftest import ROOT

SAMPLE, LOOKED_AT = plantvillage_sample()
pytestmark = pytest.mark.skipif(
    SAMPLE is None, reason=f"the PlantVillage sample is not there (looked at {LOOKED_AT})"
)
SCREENSHOT = (
    "Pepper,_bell___healthy/42f083e2-272d-4f83-ad9a-573ee90e50ec___"
    "Screen Shot 2015-05-06 at 4.01.13 PM.png"
)
FRUIT = "Tomato___healthy/7de93009-6180-4027-8779-76947cda3e2f___2700323949_95aa2eaa01_o.jpg"
DUPLICATES = {
    "Tomato___Late_blight/e5d707cd-077c-43af-bda9-6138e516ff51___GHLB2 Leaf 8999.JPG": (
        "Tomato___Late_blight/5f21282c-e2ef-4c4a-ace1-b5701fe7effc___GHLB2 Leaf 8999.JPG"
    ),
    "Tomato___healthy/a5de43e7-fc2f-4a14-a8e6-c0f2f94c84f1___GH_HL Leaf 434.JPG": (
        "Tomato___healthy/488feb1c-4b9f-44e7-8aa6-4103a9601f5f___GH_HL Leaf 434.JPG"
    ),
}


@pytest.fixture(scope="module")
def plantvillage():
    return ingest(SAMPLE, config=load_config(ROOT / "config" / "plantvillage.yaml"))


def corn_and_pepper_spec(**corn_changes) -> dict:
    """A spec naming only corn and pepper, by the short names, with PlantVillage's as aliases."""
    spec = yaml.safe_load((ROOT / "config" / "plantvillage.yaml").read_text())
    spec["crops"] = [c for c in spec["crops"] if c["name"] in ("corn", "pepper")]
    spec["crops"][1].update(corn_changes)
    return spec


def rejected(result) -> dict[str, tuple[str, str]]:
    return {r.path: (r.reason, r.detail) for r in result.rejects}


def test_a_config_naming_corn_and_pepper_uses_every_corn_and_pepper_image():
    result = ingest(SAMPLE, config=parse_config(corn_and_pepper_spec()))
    per_crop = Counter(r.crop for r in result.rows)
    assert per_crop == {"corn": 96, "pepper": 48}  # 25 pepper files, one excluded screenshot
    assert Counter(r.label for r in result.rows if r.crop == "corn") == {
        "healthy": 24,
        "common_rust": 24,
        "northern_leaf_blight": 24,
        "gray_leaf_spot": 24,
    }
    assert result.summary["missing_classes"] == {} and result.summary["warnings"] == []


def test_crops_the_config_does_not_name_are_counted_by_label_not_kept():
    result = ingest(SAMPLE, config=parse_config(corn_and_pepper_spec()))
    unused = {(u["crop"], u["label"]): u["images"] for u in result.summary["unused"]}
    assert unused[("potato", "late_blight")] == 24
    assert unused[("tomato", "spider_mites_two_spotted_spider_mite")] == 24
    # every file of the 10 tomato and 3 potato folders, warts included (they are not checked)
    assert sum(unused.values()) == result.summary["unused_images"] == 245 + 72
    assert {r.crop for r in result.rows} == {"corn", "pepper"}


def test_without_aliases_the_warning_names_the_plantvillage_crop_that_is_closest():
    spec = corn_and_pepper_spec()
    for crop in spec["crops"]:
        crop.pop("aliases", None)
    summary = ingest(SAMPLE, config=parse_config(spec)).summary
    assert summary["images"] == 0
    assert summary["missing_detail"]["corn"]["closest_crop"] == "corn_maize"
    assert summary["missing_detail"]["pepper"]["closest_crop"] == "pepper_bell"
    assert any("corn: no images" in w and "'corn_maize'" in w for w in summary["warnings"])


def test_a_class_without_its_alias_is_warned_with_the_labels_found_and_the_closest():
    spec = corn_and_pepper_spec(class_aliases={})
    summary = ingest(SAMPLE, config=parse_config(spec)).summary
    assert summary["missing_classes"] == {"corn": ["gray_leaf_spot"]}
    detail = summary["missing_detail"]["corn"]
    assert detail["closest"] == {"gray_leaf_spot": "cercospora_leaf_spot_gray_leaf_spot"}
    assert set(detail["labels_found"]) >= {"common_rust", "cercospora_leaf_spot_gray_leaf_spot"}
    (warning,) = summary["warnings"]
    assert "gray_leaf_spot" in warning and "common_rust" in warning and "closest" in warning


def test_the_spider_mites_folder_reaches_its_configured_class(plantvillage):
    labels = Counter(r.label for r in plantvillage.rows if r.crop == "tomato")
    assert labels["spider_mites"] == 24 and labels["mosaic_virus"] == 24


def test_the_whole_sample_ingests_with_every_wart_accounted_for(plantvillage):
    s = plantvillage.summary
    assert s["images"] == 458  # 460 distinct images, 2 known mislabels excluded
    assert s["rejects_by_reason"] == {"misplaced": 2, "duplicate": 2, "excluded": 2}
    assert s["unused_images"] == 0 and s["missing_classes"] == {}
    assert {r.crop for r in plantvillage.rows} == {"tomato", "pepper", "potato", "corn"}


def test_byte_identical_copies_keep_the_first_path_and_report_the_other(plantvillage):
    got = rejected(plantvillage)
    kept = {r.path for r in plantvillage.rows}
    for copy, first in DUPLICATES.items():
        assert got[copy] == ("duplicate", f"same bytes as {first}")
        assert first in kept


def test_the_png_screenshot_is_a_decodable_image_excluded_as_mislabelled(plantvillage):
    probe = probe_image(SAMPLE / SCREENSHOT, min_side=32, max_pixels=10**8)
    assert (probe.format, probe.width, probe.height) == ("PNG", 256, 256)
    pixels = preprocess_image(SAMPLE / SCREENSHOT, 64, LVD1689M)  # RGBA composited on white
    assert pixels.shape == (3, 64, 64)
    reason, detail = rejected(plantvillage)[SCREENSHOT]
    assert reason == "excluded" and "pepper fruit" in detail


def test_the_fruit_photo_in_a_leaf_class_is_excluded_with_its_reason(plantvillage):
    reason, detail = rejected(plantvillage)[FRUIT]
    assert reason == "excluded" and "tomato fruit" in detail
    assert FRUIT not in {r.path for r in plantvillage.rows}


def test_the_dataset_notes_beside_the_class_folders_are_reported_not_read(plantvillage):
    got = rejected(plantvillage)
    assert got["ATTRIBUTION.md"][0] == got["MANIFEST.csv"][0] == "misplaced"


def test_every_class_has_images_in_every_split(plantvillage):
    splits = Counter((r.crop, r.label, r.split) for r in plantvillage.rows)
    for crop, label in {(r.crop, r.label) for r in plantvillage.rows}:
        assert all(splits[(crop, label, s)] >= 3 for s in ("train", "val", "test")), label


def test_aads_data_ingest_of_the_sample_reports_counts_as_json(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "data",
            "ingest",
            str(SAMPLE),
            "--config",
            str(ROOT / "config" / "plantvillage.yaml"),
            "--out",
            str(tmp_path),
            "--output",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 458 and summary["layout"] == "plantvillage"
    on_disk = json.loads((tmp_path / "ingest.json").read_text())
    assert on_disk["manifest_sha256"] == summary["manifest_sha256"]


def test_the_sample_location_can_be_overridden(tmp_path):
    assert plantvillage_sample({"AADS_PLANTVILLAGE_DIR": str(tmp_path)})[0] == tmp_path
    missing, looked = plantvillage_sample({"AADS_PLANTVILLAGE_DIR": str(tmp_path / "x")})
    assert missing is None and "AADS_PLANTVILLAGE_DIR" in looked
