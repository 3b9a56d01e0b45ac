"""The backbone variant table and normalisation choice: DINOv3 facts from DESIGN.md section 2,
DINOv2 rows from the Hub configs (details in test_backbone_dinov2.py)."""

from __future__ import annotations

import pytest
import torch

from aads.backbone import (
    LVD142M,
    LVD1689M,
    SAT493M,
    VARIANTS,
    VARIANTS_BY_ID,
    BackboneError,
    find_variant,
    get_variant,
    normalization_for,
)

REAL_IDS = {
    "facebook/dinov3-vits16-pretrain-lvd1689m",
    "facebook/dinov3-vits16plus-pretrain-lvd1689m",
    "facebook/dinov3-vitb16-pretrain-lvd1689m",
    "facebook/dinov3-vitl16-pretrain-lvd1689m",
    "facebook/dinov3-vitl16-pretrain-sat493m",
    "facebook/dinov3-vith16plus-pretrain-lvd1689m",
    "facebook/dinov3-vit7b16-pretrain-lvd1689m",
    "facebook/dinov3-vit7b16-pretrain-sat493m",
    "facebook/dinov3-convnext-tiny-pretrain-lvd1689m",
    "facebook/dinov3-convnext-small-pretrain-lvd1689m",
    "facebook/dinov3-convnext-base-pretrain-lvd1689m",
    "facebook/dinov3-convnext-large-pretrain-lvd1689m",
    "facebook/dinov2-small",
    "facebook/dinov2-base",
    "facebook/dinov2-large",
    "facebook/dinov2-giant",
}

# id -> (width, depth, heads, mlp, mlp_size), DESIGN.md section 2
VIT_SHAPES = {
    "facebook/dinov3-vits16-pretrain-lvd1689m": (384, 12, 6, "gelu", 1536),
    "facebook/dinov3-vits16plus-pretrain-lvd1689m": (384, 12, 6, "swiglu", 1536),
    "facebook/dinov3-vitb16-pretrain-lvd1689m": (768, 12, 12, "gelu", 3072),
    "facebook/dinov3-vitl16-pretrain-lvd1689m": (1024, 24, 16, "gelu", 4096),
    "facebook/dinov3-vitl16-pretrain-sat493m": (1024, 24, 16, "gelu", 4096),
    "facebook/dinov3-vith16plus-pretrain-lvd1689m": (1280, 32, 20, "swiglu", 5120),
    "facebook/dinov3-vit7b16-pretrain-lvd1689m": (4096, 40, 32, "swiglu", 8192),
    "facebook/dinov3-vit7b16-pretrain-sat493m": (4096, 40, 32, "swiglu", 8192),
}


def test_table_holds_exactly_the_released_ids():
    assert set(VARIANTS_BY_ID) == REAL_IDS
    assert len(VARIANTS) == len(REAL_IDS)


@pytest.mark.parametrize("size_word", ["base", "giant"])
def test_invented_ids_are_not_variants_and_the_error_lists_real_ones(size_word):
    fake = f"facebook/dinov3-{size_word}"  # the seed plan's invented ids
    assert find_variant(fake) is None
    with pytest.raises(BackboneError, match="do not exist") as err:
        get_variant(fake)
    assert "facebook/dinov3-vitl16-pretrain-lvd1689m" in str(err.value)


def test_no_variant_has_the_invented_width_1408():
    assert all(v.width != 1408 for v in VARIANTS)


@pytest.mark.parametrize("hf_id", sorted(VIT_SHAPES))
def test_vit_variant_shape(hf_id):
    v = get_variant(hf_id)
    assert (v.width, v.depth, v.heads, v.mlp, v.mlp_size) == VIT_SHAPES[hf_id]
    assert (v.family, v.patch_size, v.register_tokens) == ("vit", 16, 4)


@pytest.mark.parametrize(
    ("size", "width"), [("tiny", 768), ("small", 768), ("base", 1024), ("large", 1536)]
)
def test_convnext_final_width(size, width):
    v = get_variant(f"facebook/dinov3-convnext-{size}-pretrain-lvd1689m")
    assert (v.family, v.width, v.register_tokens) == ("convnext", width, 0)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.key)
def test_parameter_count_equals_the_model_built_from_the_shape(variant):
    from transformers import AutoModel

    with torch.device("meta"):  # shapes only: even the 7B model costs no memory
        model = AutoModel.from_config(variant.hf_config())
    assert variant.num_parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("key", "millions"),
    [
        ("vits16", 22),
        ("vitb16", 86),
        ("vitl16", 303),
        ("vith16plus", 841),
        ("vit7b16", 6716),
        ("dinov2_vits14", 22),  # Hub model cards: 22.1M, 86.6M, 304M, 1.14B
        ("dinov2_vitb14", 87),
        ("dinov2_vitl14", 304),
        ("dinov2_vitg14", 1136),
    ],
)
def test_parameter_counts_match_the_published_sizes(key, millions):
    v = next(v for v in VARIANTS if v.key == key)
    assert round(v.num_parameters / 1e6) == pytest.approx(millions, abs=1)


def test_every_dinov3_variant_is_gated_under_the_dinov3_licence():
    dinov3 = [v for v in VARIANTS if v.generation == "dinov3"]
    assert {(v.licence, v.gated) for v in dinov3} == {("DINOv3 License", True)}


def test_real_swiglu_shape_uses_gated_silu_mlp_and_no_key_bias():
    config = get_variant("facebook/dinov3-vith16plus-pretrain-lvd1689m").hf_config()
    assert (config.use_gated_mlp, config.hidden_act, config.key_bias) == (True, "silu", False)
    assert config.num_register_tokens == 4


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.key)
def test_auto_normalization_follows_the_pretraining_dataset(variant):
    expected = SAT493M if "sat493m" in variant.hf_id else LVD1689M
    if variant.generation == "dinov2":
        expected = LVD142M
    assert normalization_for(variant.hf_id, "auto") == expected == variant.normalization


def test_satellite_statistics_are_the_published_ones():
    assert SAT493M.mean == (0.430, 0.411, 0.296) and SAT493M.std == (0.213, 0.156, 0.143)
    assert LVD1689M.mean == (0.485, 0.456, 0.406) and LVD1689M.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("source", "setting", "expected"),
    [
        ("facebook/dinov3-vitl16-pretrain-sat493m", "lvd1689m", LVD1689M),
        ("facebook/dinov3-vitl16-pretrain-lvd1689m", "sat493m", SAT493M),
        ("random:tiny", "auto", LVD1689M),
        ("random:vitl16_sat493m", "auto", SAT493M),
        ("/models/my-finetune", "auto", LVD1689M),
        ("s3://aads/backbones/facebook/dinov3-vit7b16-pretrain-sat493m", "auto", SAT493M),
    ],
)
def test_normalization_setting_overrides_and_defaults(source, setting, expected):
    assert normalization_for(source, setting) == expected


def test_a_directory_preprocessor_config_decides_auto(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        '{"image_mean": [0.430, 0.411, 0.296], "image_std": [0.213, 0.156, 0.143]}'
    )
    assert normalization_for(str(tmp_path), "auto", model_dir=tmp_path) == SAT493M
    assert normalization_for(str(tmp_path), "lvd1689m", model_dir=tmp_path) == LVD1689M
