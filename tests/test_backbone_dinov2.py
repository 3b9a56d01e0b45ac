"""DINOv2, the ungated fallback generation: its table rows, ``random:dinov2_*`` loading, token
layout, patch-14 image sizes, and every adapter (DoRA, SD-LoRA, CONEC-LoRA) on its modules."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from aads.adapters.conec.model import ConecHeads, ConecLoRA, apply_conec, conec_logits
from aads.adapters.dora.model import apply_dora
from aads.adapters.sd_lora.model import SDLoRA, apply_sd_lora, sd_lora_layers
from aads.backbone import (
    LVD142M,
    LVD1689M,
    VARIANTS,
    BackboneError,
    extract_features,
    get_variant,
    load_backbone,
    lora_target_regex_for,
    resolve_lora_targets,
    save_backbone,
    vit_blocks,
)
from aads.config import (
    BackboneSettings,
    CONECSettings,
    ConfigError,
    DoRASettings,
    SDLoRASettings,
    parse_config,
)
from aads.modelcard import backbone_licence

# id -> (width, depth, heads, mlp, mlp_size): the facebook/dinov2-* configs on the Hub. The
# giant's SwiGLU hidden width is 1536 x 4 x 2/3 = 4096 (each of gate and up).
DINOV2_SHAPES = {
    "facebook/dinov2-small": (384, 12, 6, "gelu", 1536),
    "facebook/dinov2-base": (768, 12, 12, "gelu", 3072),
    "facebook/dinov2-large": (1024, 24, 16, "gelu", 4096),
    "facebook/dinov2-giant": (1536, 40, 24, "swiglu", 4096),
}
TINY = 28  # 2 x 2 patches of 14: the cheapest image size on the patch grid


def settings(source: str = "random:dinov2_tiny", **kw) -> BackboneSettings:
    return BackboneSettings(**{"source": source, "image_size": TINY, "device": "cpu", **kw})


def pixels(n: int = 2, size: int = TINY) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def tiny_swiglu() -> Dinov2Model:
    """A 2-block DINOv2 with the giant's SwiGLU MLP (the real giant is 1.1 B parameters)."""
    config = Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, use_swiglu_ffn=True
    )
    return Dinov2Model(config).eval()


# --------------------------------------------------------------------------- the table


def test_the_table_lists_the_four_released_dinov2_checkpoints():
    dinov2 = {v.hf_id for v in VARIANTS if v.generation == "dinov2"}
    assert dinov2 == set(DINOV2_SHAPES)


@pytest.mark.parametrize("hf_id", sorted(DINOV2_SHAPES))
def test_dinov2_variant_shape_patch_and_tokens(hf_id):
    v = get_variant(hf_id)
    assert (v.width, v.depth, v.heads, v.mlp, v.mlp_size) == DINOV2_SHAPES[hf_id]
    assert (v.family, v.patch_size, v.register_tokens, v.image_size) == ("vit", 14, 0, 518)


def test_dinov2_keys_are_the_authors_hub_names():
    keys = {v.key for v in VARIANTS if v.generation == "dinov2"}
    assert keys == {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"}


def test_dinov2_is_apache_licensed_and_not_gated():
    assert {(v.licence, v.gated) for v in VARIANTS if v.generation == "dinov2"} == {
        ("Apache-2.0", False)
    }


def test_dinov2_uses_imagenet_statistics():
    v = get_variant("facebook/dinov2-base")
    assert v.normalization == LVD142M
    assert (LVD142M.mean, LVD142M.std) == (LVD1689M.mean, LVD1689M.std)


def test_giant_config_is_swiglu_with_the_hub_mlp_width():
    config = get_variant("facebook/dinov2-giant").hf_config()
    assert (config.model_type, config.use_swiglu_ffn, config.mlp_ratio) == ("dinov2", True, 4)
    with torch.device("meta"):
        mlp = Dinov2Model(config).encoder.layer[0].mlp
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features) == (4096, 4096)


def test_model_card_names_the_apache_licence():
    assert backbone_licence("facebook/dinov2-base").startswith("Apache-2.0")


# --------------------------------------------------------------------------- loading


def test_random_dinov2_loads_with_one_prefix_token():
    backbone = load_backbone(settings())
    assert isinstance(backbone.model, Dinov2Model)
    assert backbone.source == "random:dinov2_tiny@seed=0"
    assert (backbone.generation.title, backbone.prefix_tokens, backbone.width) == ("DINOv2", 1, 64)
    assert backbone.normalization == LVD142M


def test_every_real_dinov2_shape_has_a_random_preset():
    from aads.backbone import PRESETS

    assert {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"} <= set(PRESETS)


def test_a_real_size_random_dinov2_builds_with_the_table_parameter_count():
    backbone = load_backbone(settings("random:dinov2_vits14", image_size=224))
    count = sum(p.numel() for p in backbone.model.parameters())
    assert count == get_variant("facebook/dinov2-small").num_parameters


def test_a_saved_dinov2_directory_loads_to_identical_features(tmp_path):
    backbone = load_backbone(settings())
    save_backbone(backbone, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "dinov2"
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "BitImageProcessor"

    again = load_backbone(settings(str(tmp_path)))
    assert isinstance(again.model, Dinov2Model)
    x = pixels()
    assert torch.equal(extract_features(again, x), extract_features(backbone, x))


# --------------------------------------------------------------------------- features


def test_cls_mean_skips_only_the_cls_token():
    backbone = load_backbone(settings())
    x = pixels()
    with torch.no_grad():
        tokens = backbone.model(pixel_values=x).last_hidden_state
    assert tokens.shape == (2, 1 + 2 * 2, 64)  # CLS + 4 patches, no registers
    expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
    torch.testing.assert_close(extract_features(backbone, x), expected)
    assert backbone.feature_dim == 128


def test_224_pixels_interpolate_the_position_embeddings_to_16_by_16_patches():
    backbone = load_backbone(settings(image_size=224))  # the preset was built for 4 x 4
    with torch.no_grad():
        out = backbone.model(pixel_values=pixels(1, 224))
    assert out.last_hidden_state.shape == (1, 1 + 16 * 16, 64)


def test_config_refuses_a_dinov2_image_size_off_the_patch_grid():
    spec = {
        "crops": [{"name": "tomato", "phase1_classes": ["a", "b"]}],
        "router": {"source": "random:dinov2_tiny", "image_size": 256},
        "adapter": {"backbone": {"source": "facebook/dinov2-base", "image_size": 224}},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(spec)
    assert "router.image_size" in str(err.value)
    assert "multiple of the patch size 14 (DINOv2), e.g. 252 or 266" in str(err.value)


def test_the_config_patch_sizes_agree_with_the_generation_table():
    from aads.backbone import GENERATIONS
    from aads.config import PATCH_SIZES

    assert PATCH_SIZES == {g.title: g.patch_size for g in GENERATIONS.values()}


def test_loading_a_dinov2_directory_at_256_pixels_is_refused(tmp_path):
    """256 suits DINOv3 and a path that does not name its generation passes the config; the
    patch convolution would silently drop 4 pixels, so the loaded model's patch decides."""
    directory = save_backbone(load_backbone(settings()), tmp_path / "plant-backbone")
    with pytest.raises(BackboneError, match="256 is not a multiple of the patch size 14"):
        load_backbone(settings(str(directory), image_size=256))


# --------------------------------------------------------------------------- LoRA targets


def test_roles_resolve_to_dinov2_module_names():
    model = load_backbone(settings()).model
    names = resolve_lora_targets(model, [1], ["q_proj", "v_proj", "up_proj", "down_proj"])
    assert names == [
        "encoder.layer.1.attention.q_proj",
        "encoder.layer.1.attention.v_proj",
        "encoder.layer.1.mlp.fc1",
        "encoder.layer.1.mlp.fc2",
    ]


def test_swiglu_dinov2_keeps_gate_up_down_names():
    names = resolve_lora_targets(tiny_swiglu(), [0], ["gate_proj", "up_proj"])
    assert names == ["encoder.layer.0.mlp.gate_proj", "encoder.layer.0.mlp.up_proj"]


def test_gate_proj_on_a_gelu_dinov2_is_a_clear_error():
    with pytest.raises(BackboneError, match="'gate_proj' does not exist in this DINOv2 model"):
        resolve_lora_targets(load_backbone(settings()).model, [0], ["gate_proj"])


@pytest.mark.parametrize("name", ["query", "fc1"])
def test_dinov2_checkpoint_names_are_refused_with_the_role_name(name):
    with pytest.raises(BackboneError, match=f"'{name}' is a DINOv2 module name.*use"):
        resolve_lora_targets(load_backbone(settings()).model, [0], [name])


def test_the_peft_regex_uses_the_model_own_names():
    model = load_backbone(settings()).model
    regex = lora_target_regex_for(model, [1], ["v_proj", "down_proj"])
    assert regex == r".*layer\.(1)\.(attention\.(v_proj)|mlp\.(fc2))"


def test_a_convnext_is_not_a_vit():
    with pytest.raises(BackboneError, match="not a DINOv3 or DINOv2 ViT"):
        vit_blocks(load_backbone(settings("random:tiny_convnext", image_size=64)).model)


# --------------------------------------------------------------------------- adapters


def one_step(parameters: list[nn.Parameter], loss: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    loss.backward()
    optimizer.step()


def test_dora_attaches_to_dinov2_modules_and_trains_a_step():
    backbone = load_backbone(settings())
    dora = DoRASettings(r=2, alpha=4, dropout=0.0, modules=["q_proj", "v_proj", "up_proj"])
    model = apply_dora(backbone.model, dora, backbone.depth)
    wrapped = sorted(
        n.removeprefix("base_model.model.")
        for n, m in model.named_modules()
        if isinstance(m, LoraLayer)
    )
    assert wrapped == [
        f"encoder.layer.{i}.{m}"
        for i in (0, 1)
        for m in ("attention.q_proj", "attention.v_proj", "mlp.fc1")
    ]
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    one_step(trainable, model(pixel_values=pixels()).pooler_output.square().mean())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))


def test_sd_lora_wraps_q_and_v_of_every_dinov2_block_and_trains_a_step():
    model = load_backbone(settings()).model
    targets = resolve_lora_targets(model, [0, 1], SDLoRASettings().modules)
    apply_sd_lora(model, targets)
    method = SDLoRA(model, SDLoRASettings(rank=2), torch.Generator().manual_seed(0))
    method.start_task(0)
    assert sorted(sd_lora_layers(model)) == [
        f"encoder.layer.{i}.attention.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")
    ]
    params = method.trainable_parameters()
    before = [p.detach().clone() for p in params]
    one_step(params, model(pixel_values=pixels()).pooler_output.square().mean())
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_conec_shares_the_first_dinov2_block_and_trains_a_new_domain():
    backbone = load_backbone(settings())
    state = apply_conec(backbone.model, CONECSettings(rank=2, alpha=4))
    assert sorted(state.shared) == [f"encoder.layer.0.attention.{m}" for m in ("q_proj", "v_proj")]
    assert sorted(state.late) == [f"encoder.layer.1.attention.{m}" for m in ("q_proj", "v_proj")]
    assert state.prefix_tokens == 1
    heads = ConecHeads(nn.Linear(backbone.feature_dim, 3))
    method = ConecLoRA(backbone.model, state, heads)
    method.start_task(1)
    params = method.trainable_parameters()
    before = [p.detach().clone() for p in params]
    logits = conec_logits(backbone.model, state, heads, pixels())
    one_step(params, F.cross_entropy(logits, torch.tensor([0, 2])))
    assert state.boundary_features.shape == (2, 128)
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
