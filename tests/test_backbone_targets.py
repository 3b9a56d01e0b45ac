"""LoRA target selection: a PEFT regex over DINOv3 module names, checked against the model."""

from __future__ import annotations

import re

import pytest
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from aads.backbone import BackboneError, load_backbone, lora_target_regex, resolve_lora_targets
from aads.backbone.targets import DINOV2_CHECKPOINT_NAMES
from aads.config import BackboneSettings, resolve_blocks


def model(source: str):
    return load_backbone(BackboneSettings(source=source, image_size=64, device="cpu")).model


def test_regex_for_attention_projections_of_late_blocks():
    assert (
        lora_target_regex([6, 7], ["q_proj", "v_proj"])
        == r".*layer\.(6|7)\.attention\.(q_proj|v_proj)"
    )


def test_regex_for_attention_and_mlp_modules():
    regex = lora_target_regex([8, 6, 7], ["v_proj", "up_proj", "q_proj"])
    assert regex == r".*layer\.(6|7|8)\.(attention\.(q_proj|v_proj)|mlp\.(up_proj))"


def test_regex_fullmatches_hf_names_and_not_neighbours():
    pattern = re.compile(lora_target_regex([1], ["q_proj"]))
    assert pattern.fullmatch("model.layer.1.attention.q_proj")
    assert pattern.fullmatch("base_model.model.model.layer.1.attention.q_proj")
    assert not pattern.fullmatch("model.layer.11.attention.q_proj")
    assert not pattern.fullmatch("model.layer.1.attention.q_proj.lora_A")


def test_second_half_of_small_resolves_to_exact_module_names():
    blocks = resolve_blocks("second_half", 12)
    names = resolve_lora_targets(model("random:small"), blocks, ["q_proj", "v_proj"])
    assert names == [
        f"model.layer.{i}.attention.{m}" for i in range(6, 12) for m in ("v_proj", "q_proj")
    ]


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_injects_lora_into_exactly_the_resolved_modules():
    tiny = model("random:tiny")
    wanted = resolve_lora_targets(tiny, [1], ["q_proj", "v_proj", "down_proj"])
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=lora_target_regex([1], ["q_proj", "v_proj", "down_proj"])
    )
    peft_model = get_peft_model(tiny, config)
    injected = [
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    ]
    assert (
        sorted(injected)
        == sorted(wanted)
        == [
            "model.layer.1.attention.q_proj",
            "model.layer.1.attention.v_proj",
            "model.layer.1.mlp.down_proj",
        ]
    )


def test_gate_proj_on_a_gelu_model_is_a_clear_error():
    with pytest.raises(BackboneError, match="gate_proj exists only in SwiGLU"):
        resolve_lora_targets(model("random:tiny"), [0], ["gate_proj"])


@pytest.mark.slow
def test_gate_proj_resolves_on_a_swiglu_model():
    names = resolve_lora_targets(model("random:vits16plus"), [11], ["gate_proj"])
    assert names == ["model.layer.11.mlp.gate_proj"]


@pytest.mark.parametrize("name", sorted(DINOV2_CHECKPOINT_NAMES))
def test_dinov2_checkpoint_names_are_refused_with_the_role_names(name):
    role = DINOV2_CHECKPOINT_NAMES[name]
    with pytest.raises(BackboneError, match=f"'{name}' is a DINOv2 module name.* use {role}"):
        lora_target_regex([0], [name])


def test_blocks_beyond_the_depth_are_refused():
    with pytest.raises(BackboneError, match=r"blocks \[2, 5\] out of range: this model has 2"):
        resolve_lora_targets(model("random:tiny"), [1, 2, 5], ["q_proj"])


def test_convnext_has_no_lora_targets():
    with pytest.raises(BackboneError, match="need a ViT"):
        resolve_lora_targets(model("random:tiny_convnext"), [0], ["q_proj"])
