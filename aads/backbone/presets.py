"""``random:<preset>`` backbones: DINOv3- and DINOv2-shaped models with seeded random weights.

Nothing here can download weights, so tests, the demo and benchmarks run the same code path
on a model built in code. ``tiny`` is for tests (milliseconds per batch); every real ViT and
ConvNeXt shape is available under its short key (``random:vitl16``), ``small`` being ViT-S/16.
DINOv2 presets start with ``dinov2_``: ``dinov2_tiny`` / ``dinov2_mini`` mirror ``tiny`` /
``mini`` with patch 14 and no register tokens, and the real shapes use the authors' torch.hub
names (``random:dinov2_vitb14`` is facebook/dinov2-base's shape).
Weights are a pure function of (preset, seed): bit-identical across calls, and building one
never touches the caller's global RNG state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

from .errors import BackboneError
from .variants import VARIANTS_BY_KEY

T = TypeVar("T")

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


def _tiny() -> PretrainedConfig:
    from transformers import DINOv3ViTConfig

    return DINOv3ViTConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_register_tokens=4,
        image_size=64,
    )


def _mini() -> PretrainedConfig:
    """Small enough to pretrain on CPU in minutes (`synthetic:mini`), deep enough (4 blocks)
    for CONEC's shared/per-domain split to mean something."""
    from transformers import DINOv3ViTConfig

    return DINOv3ViTConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_register_tokens=4,
        image_size=64,
    )


def _dinov2_tiny() -> PretrainedConfig:
    """DINOv2's layout at ``tiny``'s size: 4 x 4 patches of 14 at its 56 px (other sizes
    interpolate the position embeddings)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=64,
        mlp_ratio=2,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=56,
    )


def _dinov2_mini() -> PretrainedConfig:
    """``mini``'s DINOv2 counterpart (`synthetic:dinov2_mini`): 4 blocks, width 128."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=128,
        mlp_ratio=2,
        num_hidden_layers=4,
        num_attention_heads=4,
        patch_size=14,
        image_size=56,
    )


def _tiny_convnext() -> PretrainedConfig:
    from transformers import DINOv3ConvNextConfig

    return DINOv3ConvNextConfig(hidden_sizes=[16, 24, 32, 64], depths=[1, 1, 1, 1], image_size=64)


PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny": _tiny,
    "mini": _mini,
    "tiny_convnext": _tiny_convnext,
    "dinov2_tiny": _dinov2_tiny,
    "dinov2_mini": _dinov2_mini,
    "small": VARIANTS_BY_KEY["vits16"].hf_config,
    **{key: v.hf_config for key, v in VARIANTS_BY_KEY.items()},
}
"""Preset name -> config factory. Real shapes keep registers, layer scale, SwiGLU and (DINOv2)
the 518 px position-embedding grid."""


def preset_config(preset: str) -> PretrainedConfig:
    """The Hugging Face config of a preset; `BackboneError` listing the presets if unknown."""
    try:
        factory = PRESETS[preset]
    except KeyError:
        raise BackboneError(
            f"unknown random preset '{preset}'; presets: {', '.join(sorted(PRESETS))}"
        ) from None
    return factory()


def build_random_model(preset: str, seed: int = 0) -> PreTrainedModel:
    """A float32 CPU model of the preset's shape with weights drawn from `seed`.

    The construction runs inside `torch.random.fork_rng` with only the CPU generator seeded, so
    the caller's global RNG (CPU and CUDA) is exactly as it was afterwards.
    """
    from transformers import Dinov2Model, DINOv3ConvNextModel, DINOv3ViTModel

    config = preset_config(preset)
    model_class = {
        "dinov3_vit": DINOv3ViTModel,
        "dinov3_convnext": DINOv3ConvNextModel,
        "dinov2": Dinov2Model,
    }[config.model_type]
    return seeded(lambda: model_class(config), seed).float()


def seeded(build: Callable[[], T], seed: int) -> T:
    """Run `build` on the CPU with the CPU generator seeded, leaving the global RNG (CPU and
    CUDA) as it was: random weights that are a pure function of the seed."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        with torch.device("cpu"):
            return build()
