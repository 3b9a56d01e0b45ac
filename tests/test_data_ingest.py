"""Ingest turns folders into a manifest; bad files go to the rejects report, never a crash."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aads.config import PlatformConfig, SplitFractions, load_config, parse_config
from aads.data.ingest import NothingIngested, closest, ingest, require_images, write_ingest_outputs
from aads.data.layout import LayoutError, slugify
from aads.data.manifest import ManifestError, read_manifest, select
from aads.data.splits import split_counts


def jpeg_bytes(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.fixture
def messy_plantvillage(tmp_path: Path) -> Path:
    """PlantVillage-style folder with every kind of bad file a user can leave in it."""
    root = tmp_path / "pv"
    for i in range(6):
        put(root, f"Tomato___healthy/h{i}.jpg", jpeg_bytes(i))
        put(root, f"Tomato___Early_blight/e{i}.JPG", jpeg_bytes(100 + i))
    put(root, "Tomato___Early_blight/truncated.jpg", jpeg_bytes(200)[:300])
    put(root, "Tomato___Early_blight/notes.txt", b"field notes, not an image")
    put(root, "Tomato___Early_blight/copy_of_h0.jpg", jpeg_bytes(0))
    put(root, "Tomato___healthy/copy_of_h1.jpg", jpeg_bytes(1))
    put(root, "Tomato___Early_blight/tiny.png", jpeg_bytes(300, size=8))
    put(root, "Tomato___Early_blight/empty.jpg", b"")
    (root / "Tomato___Leaf_Mold").mkdir()
    put(root, "README.md", b"# dataset")
    return root


def reasons(result) -> dict[str, str]:
    return {r.path: r.reason for r in result.rejects}


def test_plantvillage_names_become_slugs():
    assert slugify("Pepper,_bell") == "pepper_bell"
    assert slugify("Corn_(maize)") == "corn_maize"


def test_ingest_lists_each_bad_file_with_its_reason_and_keeps_the_good_ones(messy_plantvillage):
    result = ingest(messy_plantvillage)
    got = reasons(result)
    assert got["Tomato___Early_blight/truncated.jpg"] == "corrupt"
    assert got["Tomato___Early_blight/notes.txt"] == "not_an_image"
    assert got["Tomato___healthy/h1.jpg"] == "duplicate"
    assert got["Tomato___Early_blight/copy_of_h0.jpg"] == "conflicting_labels"
    assert got["Tomato___Early_blight/tiny.png"] == "too_small"
    assert got["Tomato___Early_blight/empty.jpg"] == "empty_file"
    assert got["Tomato___Leaf_Mold"] == "empty_class"
    assert got["README.md"] == "misplaced"
    assert len(result.rows) == 11
    assert {(r.crop, r.label) for r in result.rows} == {
        ("tomato", "healthy"),
        ("tomato", "early_blight"),
    }


def test_duplicate_names_the_copy_that_was_kept_first_in_path_order(messy_plantvillage):
    dup = next(r for r in ingest(messy_plantvillage).rejects if r.reason == "duplicate")
    assert dup.detail == "same bytes as Tomato___healthy/copy_of_h1.jpg"


def test_same_image_under_two_labels_is_used_for_neither(messy_plantvillage):
    result = ingest(messy_plantvillage)
    conflicted = {r.path for r in result.rejects if r.reason == "conflicting_labels"}
    assert conflicted == {"Tomato___Early_blight/copy_of_h0.jpg", "Tomato___healthy/h0.jpg"}
    assert not any(r.path.endswith("h0.jpg") for r in result.rows)


def test_crop_prefix_repeated_in_plantvillage_class_is_dropped(tmp_path):
    put(tmp_path, "Tomato___Tomato_mosaic_virus/a.jpg", jpeg_bytes(1))
    put(tmp_path, "Tomato___Tomato_mosaic_virus/b.jpg", jpeg_bytes(2))
    assert {r.label for r in ingest(tmp_path).rows} == {"mosaic_virus"}


def test_crop_part_class_layout_with_domain_folders(tmp_path):
    for i in range(3):
        put(tmp_path, f"base/tomato/fruit/healthy/{i}.jpg", jpeg_bytes(i))
        put(tmp_path, f"field/tomato/leaf/healthy/{i}.jpg", jpeg_bytes(10 + i))
    rows = ingest(tmp_path, layout="crop-part-class", domain_dirs=True).rows
    assert {(r.domain, r.part) for r in rows} == {("base", "fruit"), ("field", "leaf")}


def test_unrecognisable_layout_is_a_clear_error(tmp_path):
    put(tmp_path, "a/b/c/d/e/f.jpg", jpeg_bytes(1))
    with pytest.raises(LayoutError, match="--layout"):
        ingest(tmp_path)


def test_splits_are_stratified_and_independent_of_file_names(tmp_path):
    for i in range(20):
        put(tmp_path / "one", f"tomato/healthy/{i}.jpg", jpeg_bytes(i))
        put(tmp_path / "two", f"tomato/healthy/renamed_{19 - i}.jpg", jpeg_bytes(i))
    a = {r.sha256: r.split for r in ingest(tmp_path / "one").rows}
    b = {r.sha256: r.split for r in ingest(tmp_path / "two").rows}
    assert a == b
    assert sorted(a.values()).count("train") == 14
    assert sorted(a.values()).count("test") == 3


def test_every_split_gets_an_image_once_a_class_has_three():
    assert split_counts(3, SplitFractions(train=0.8, val=0.1, test=0.1)) == (1, 1, 1)
    assert split_counts(1, SplitFractions()) == (1, 0, 0)


def test_phase_assignment_follows_the_config(tmp_path, demo_config_path):
    config = load_config(demo_config_path)
    for i in range(3):
        put(tmp_path, f"base/tomato/leaf/healthy/{i}.jpg", jpeg_bytes(i))
        put(tmp_path, f"base/tomato/leaf/mosaic_virus/{i}.jpg", jpeg_bytes(10 + i))
        put(tmp_path, f"base/tomato/leaf/yellow_leaf_curl/{i}.jpg", jpeg_bytes(20 + i))
        put(tmp_path, f"low_light/tomato/leaf/healthy/{i}.jpg", jpeg_bytes(30 + i))
        put(tmp_path, f"base/wheat/leaf/rust/{i}.jpg", jpeg_bytes(40 + i))
    rows = ingest(tmp_path, config=config, layout="crop-part-class", domain_dirs=True).rows
    phase = {(r.crop, r.domain, r.label): (r.phase, r.task) for r in rows}
    assert phase == {
        ("tomato", "base", "healthy"): ("1", ""),
        ("tomato", "base", "mosaic_virus"): ("2", "1"),
        ("tomato", "base", "yellow_leaf_curl"): ("ood", ""),
        ("tomato", "low_light", "healthy"): ("3", "low_light"),
    }


def test_missing_configured_classes_are_reported(tmp_path, demo_config_path):
    config = load_config(demo_config_path)
    for i in range(3):
        put(tmp_path, f"tomato/healthy/{i}.jpg", jpeg_bytes(i))
    summary = ingest(tmp_path, config=config).summary
    assert "early_blight" in summary["missing_classes"]["tomato"]
    assert "pepper" in summary["missing_classes"]


def test_outputs_roundtrip_and_hash_is_stable(messy_plantvillage, tmp_path):
    first = ingest(messy_plantvillage)
    paths = write_ingest_outputs(first, tmp_path / "out")
    rows = read_manifest(paths["manifest"])
    assert sorted(rows, key=lambda r: r.path) == sorted(first.rows, key=lambda r: r.path)
    second = ingest(messy_plantvillage)
    write_ingest_outputs(second, tmp_path / "out2")
    assert first.manifest_sha256 == second.manifest_sha256
    assert "corrupt" in paths["rejects"].read_text()
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_select_filters_rows(messy_plantvillage):
    rows = ingest(messy_plantvillage).rows
    assert {r.label for r in select(rows, labels=["healthy"])} == {"healthy"}
    assert all(r.split == "test" for r in select(rows, split="test"))


def test_malformed_manifest_names_the_line(tmp_path):
    bad = tmp_path / "manifest.csv"
    bad.write_text(
        "path,sha256,crop,part,label,domain,split,phase,task,width,height\n"
        "a.jpg,x,tomato,leaf,healthy,base,holdout,1,,48,48\n"
    )
    with pytest.raises(ManifestError, match=r"manifest.csv:2: split 'holdout'"):
        read_manifest(bad)


def aliased_config(data: dict | None = None, **crop) -> PlatformConfig:
    """A spec with one crop, pepper (healthy, bacterial_spot), changed by `crop`."""
    spec = {"name": "pepper", "phase1_classes": ["healthy", "bacterial_spot"], **crop}
    return parse_config(
        {
            "crops": [spec],
            "router": {"source": "random:tiny"},
            "adapter": {"backbone": {"source": "random:tiny"}},
            "data": data or {},
        }
    )


def test_folders_reach_a_configured_crop_through_its_alias(tmp_path):
    for i in range(3):
        put(tmp_path, f"Pepper,_bell/healthy/{i}.jpg", jpeg_bytes(i))
        put(tmp_path, f"Pepper,_bell/Bacterial_spot/{i}.jpg", jpeg_bytes(10 + i))
    result = ingest(tmp_path, config=aliased_config(aliases=["Pepper,_bell"]))
    assert {(r.crop, r.label, r.phase) for r in result.rows} == {
        ("pepper", "healthy", "1"),
        ("pepper", "bacterial_spot", "1"),
    }
    assert result.unused == []


def test_images_of_unnamed_crops_classes_and_domains_are_listed_as_unused(tmp_path):
    for i in range(2):
        put(tmp_path, f"base/pepper/leaf/healthy/{i}.jpg", jpeg_bytes(i))
        put(tmp_path, f"base/pepper/leaf/bacterial_spot/{i}.jpg", jpeg_bytes(10 + i))
        put(tmp_path, f"base/pepper/leaf/mosaic/{i}.jpg", jpeg_bytes(20 + i))
        put(tmp_path, f"base/okra/leaf/healthy/{i}.jpg", jpeg_bytes(30 + i))
        put(tmp_path, f"field/pepper/leaf/healthy/{i}.jpg", jpeg_bytes(40 + i))
    result = ingest(tmp_path, config=aliased_config(), layout="crop-part-class", domain_dirs=True)
    assert {r.label for r in result.rows} == {"healthy", "bacterial_spot"}
    assert {(u.crop, u.label, u.domain, u.reason) for u in result.unused} == {
        ("pepper", "mosaic", "base", "class"),
        ("okra", "healthy", "base", "crop"),
        ("pepper", "healthy", "field", "domain"),
    }
    assert [u["images"] for u in result.summary["unused"]] == [2, 2, 2]


def test_an_image_the_config_excludes_by_path_is_rejected_with_its_reason(tmp_path):
    for i in range(3):
        put(tmp_path, f"pepper/healthy/{i}.jpg", jpeg_bytes(i))
        put(tmp_path, f"pepper/bacterial_spot/{i}.jpg", jpeg_bytes(10 + i))
    config = aliased_config({"exclude": [{"path": "pepper/healthy/1.jpg", "reason": "a fruit"}]})
    result = ingest(tmp_path, config=config)
    assert reasons(result)["pepper/healthy/1.jpg"] == "excluded"
    assert {r.detail for r in result.rejects} == {"a fruit"}
    assert len(result.rows) == 5


@pytest.mark.parametrize(
    ("name", "candidates", "expected"),
    [
        ("corn", ["corn_maize", "pepper_bell", "potato"], "corn_maize"),
        ("gray_leaf_spot", ["cercospora_leaf_spot_gray_leaf_spot", "common_rust"],
         "cercospora_leaf_spot_gray_leaf_spot"),
        ("early_blight", ["early_bligth", "healthy"], "early_bligth"),
        ("mosaic_virus", ["healthy", "leaf_mold"], None),
    ],
)  # fmt: skip
def test_the_closest_label_is_one_that_contains_the_name_or_else_the_most_similar(
    name, candidates, expected
):
    assert closest(name, candidates) == expected


def test_ingest_of_nothing_usable_is_an_error_naming_where_the_reasons_are(tmp_path):
    put(tmp_path, "okra/healthy/0.jpg", jpeg_bytes(0))
    result = ingest(tmp_path, config=aliased_config())
    with pytest.raises(NothingIngested, match="1 of crops, classes or domains"):
        require_images(result, tmp_path / "out")


def test_four_levels_under_folders_that_name_no_crop_are_domain_crop_class(tmp_path):
    for i in range(3):
        put(tmp_path, f"base/Pepper,_bell/healthy/{i}.jpg", jpeg_bytes(i))
    result = ingest(tmp_path, config=aliased_config(aliases=["Pepper,_bell"]))
    assert result.summary["layout"] == "crop-class"
    assert {(r.domain, r.crop, r.label) for r in result.rows} == {("base", "pepper", "healthy")}


def test_four_levels_under_crop_folders_stay_crop_part_class(tmp_path):
    for i in range(3):
        put(tmp_path, f"pepper/fruit/healthy/{i}.jpg", jpeg_bytes(i))
    rows = ingest(tmp_path, config=aliased_config()).rows
    assert {(r.crop, r.part, r.label) for r in rows} == {("pepper", "fruit", "healthy")}


def test_five_levels_are_crop_part_class_under_domain_folders(tmp_path):
    for i in range(3):
        put(tmp_path, f"field/tomato/fruit/healthy/{i}.jpg", jpeg_bytes(i))
    rows = ingest(tmp_path).rows
    assert {(r.domain, r.crop, r.part) for r in rows} == {("field", "tomato", "fruit")}
