"""Feature cache: extract once per backbone, reuse by image hash, refuse a mismatched cache."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from aads.backbone import extract_features, load_backbone, preprocess_batch
from aads.config import BackboneSettings
from aads.data.ingest import ingest
from aads.features import (
    FeatureCacheError,
    extract_manifest_features,
    load_features,
    save_features,
)


@pytest.fixture
def small_dataset(tmp_path):
    root = tmp_path / "data"
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        for i in range(4):
            p = root / "tomato" / f"class{c}" / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40 + i, 40), (colour[0] - i, colour[1], colour[2])).save(p)
    return root, ingest(root).rows


def tiny(seed: int = 0, pooling: str = "cls_mean") -> BackboneSettings:
    return BackboneSettings(source="random:tiny", seed=seed, image_size=32, pooling=pooling)


def test_manifest_features_equal_direct_extraction_in_row_order(small_dataset):
    root, rows = small_dataset
    backbone = load_backbone(tiny())
    table = extract_manifest_features(backbone, rows, root, batch_size=5)
    direct = extract_features(
        backbone,
        preprocess_batch(
            [root / r.path for r in rows], backbone.image_size, backbone.normalization
        ),
    )
    assert table.sha256 == [r.sha256 for r in rows]
    torch.testing.assert_close(table.features, direct, rtol=1e-4, atol=1e-5)


def test_dataloader_workers_give_the_same_features(small_dataset):
    root, rows = small_dataset
    backbone = load_backbone(tiny())
    inline = extract_manifest_features(backbone, rows, root, batch_size=4)
    workers = extract_manifest_features(backbone, rows, root, batch_size=4, num_workers=2)
    torch.testing.assert_close(inline.features, workers.features)


def test_saved_features_roundtrip_exactly(small_dataset, tmp_path):
    root, rows = small_dataset
    backbone = load_backbone(tiny())
    table = extract_manifest_features(backbone, rows, root)
    save_features(table, tmp_path / "f.safetensors")
    again = load_features(tmp_path / "f.safetensors", expect=backbone)
    assert again.sha256 == table.sha256
    assert torch.equal(again.features, table.features)
    assert torch.equal(again.take(table.sha256[::-1]), table.features.flip(0))


def test_cache_from_another_backbone_is_refused(small_dataset, tmp_path):
    root, rows = small_dataset
    table = extract_manifest_features(load_backbone(tiny(seed=0)), rows, root)
    save_features(table, tmp_path / "f.safetensors")
    with pytest.raises(FeatureCacheError, match="another backbone setup.*backbone: cached"):
        load_features(tmp_path / "f.safetensors", expect=load_backbone(tiny(seed=1)))
    with pytest.raises(FeatureCacheError, match="pooling"):
        load_features(tmp_path / "f.safetensors", expect=load_backbone(tiny(pooling="cls")))


def test_missing_image_hash_is_a_clear_error(small_dataset):
    root, rows = small_dataset
    table = extract_manifest_features(load_backbone(tiny()), rows[:2], root)
    with pytest.raises(FeatureCacheError, match="no cached features"):
        table.take([rows[5].sha256])


def test_a_file_that_is_not_a_feature_cache_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(FeatureCacheError, match="not a readable feature file"):
        load_features(bad)
