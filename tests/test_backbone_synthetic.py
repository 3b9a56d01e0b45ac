"""synthetic:<preset>: a DINOv3 pretrained in code on crops no config uses, built once, cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aads.backbone import load_backbone
from aads.backbone import synthetic as synthetic_module
from aads.backbone.synthetic import PRETRAIN_CROPS, PretrainRecipe, ensure_synthetic_backbone
from aads.config import BackboneSettings, StorageSettings, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def short_recipe(monkeypatch):
    """The real recipe takes minutes; the mechanics are the same with a tiny one."""
    monkeypatch.setattr(
        synthetic_module,
        "PretrainRecipe",
        lambda: PretrainRecipe(images_per_class=3, epochs=1, batch_size=16),
    )


def test_pretraining_crops_are_disjoint_from_every_shipped_config():
    names = {c["name"] for c in PRETRAIN_CROPS}
    for cfg in ("demo.yaml", "production.yaml"):
        assert not names & set(load_config(ROOT / "config" / cfg).crop_names)


def test_synthetic_backbone_is_built_once_then_loaded_from_cache(short_recipe, tmp_path):
    first = ensure_synthetic_backbone("tiny", 0, 32, tmp_path)
    record = json.loads((first / "pretraining.json").read_text())
    assert record["preset"] == "tiny" and record["crops"] == [c["name"] for c in PRETRAIN_CROPS]
    assert (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_synthetic_backbone("tiny", 0, 32, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(first.parent.glob(".*"))  # no staging folder left behind


def test_pretraining_twice_gives_the_same_weights(short_recipe, tmp_path):
    from safetensors.torch import load_file

    torch.rand(7)  # whatever the process drew before must not matter
    first = load_file(
        ensure_synthetic_backbone("tiny", 0, 32, tmp_path / "a") / "model.safetensors"
    )
    second = load_file(
        ensure_synthetic_backbone("tiny", 0, 32, tmp_path / "b") / "model.safetensors"
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_synthetic_source_loads_through_load_backbone(short_recipe, tmp_path):
    settings = BackboneSettings(source="synthetic:tiny", image_size=32)
    storage = StorageSettings(cache_dir=tmp_path)
    backbone = load_backbone(settings, storage)
    assert backbone.source == "synthetic:tiny@seed=0"
    pixels = torch.randn(2, 3, 32, 32)
    again = load_backbone(settings, storage)
    with torch.no_grad():
        assert torch.equal(
            backbone.model(pixel_values=pixels).pooler_output,
            again.model(pixel_values=pixels).pooler_output,
        )


def test_pretraining_changes_the_weights(short_recipe, tmp_path):
    trained = load_backbone(
        BackboneSettings(source="synthetic:tiny", image_size=32),
        StorageSettings(cache_dir=tmp_path),
    )
    random = load_backbone(BackboneSettings(source="random:tiny", image_size=32))
    w = "model.layer.0.attention.q_proj.weight"
    assert not torch.equal(trained.model.state_dict()[w], random.model.state_dict()[w])


def test_a_dinov2_preset_pretrains_and_loads_as_dinov2(short_recipe, tmp_path):
    from transformers import Dinov2Model

    backbone = load_backbone(
        BackboneSettings(source="synthetic:dinov2_tiny", image_size=42),
        StorageSettings(cache_dir=tmp_path),
    )
    assert isinstance(backbone.model, Dinov2Model) and backbone.prefix_tokens == 1
    random = load_backbone(BackboneSettings(source="random:dinov2_tiny", image_size=28))
    w = "encoder.layer.0.attention.q_proj.weight"
    assert not torch.equal(backbone.model.state_dict()[w], random.model.state_dict()[w])


def test_pretraining_views_crop_each_image_on_its_own():
    image = torch.rand(1, 3, 32, 32)
    views = synthetic_module.augment(
        image.repeat(6, 1, 1, 1), torch.Generator().manual_seed(0), 0.35
    )
    assert views.shape == (6, 3, 32, 32)
    assert all(not torch.allclose(views[i], views[j]) for i in range(6) for j in range(i + 1, 6))


def test_pretraining_views_of_the_whole_image_are_the_image_or_its_mirror():
    image = torch.rand(1, 3, 32, 32)
    views = synthetic_module.augment(
        image.repeat(16, 1, 1, 1), torch.Generator().manual_seed(0), min_area=1.0
    )
    same = [torch.allclose(v, image[0], atol=1e-5) for v in views]
    mirrored = [torch.allclose(v, image[0].flip(-1), atol=1e-5) for v in views]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(same) and any(mirrored)
