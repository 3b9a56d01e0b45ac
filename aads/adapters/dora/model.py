"""Phase 1 adapter maths: DoRA through PEFT on the configured blocks and modules.

DoRA (Liu et al., ICML 2024) is PEFT's ``LoraConfig(use_dora=True)``: W = m * (W0 + BA) /
||W0 + BA||. Targets are a regex over the backbone's own module names
(``layer.{i}.attention.q_proj``...; a GELU DINOv2 names its MLP ``fc1``/``fc2``) because PEFT's
``layers_to_transform`` matches nothing on a bare backbone (DESIGN.md s2).
Phase 2 starts by merging this adapter into the base weights (`merge_dora`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from aads.backbone import lora_target_regex, resolve_lora_targets, target_names
from aads.config import resolve_blocks

from .config import DoRASettings

ADAPTER_DIR = "dora"


def dora_config(
    settings: DoRASettings, depth: int, names: Mapping[str, str] | None = None
) -> LoraConfig:
    """PEFT's config; `names` maps module roles to the model's names (`target_names`)."""
    blocks = resolve_blocks(settings.blocks, depth)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_regex(blocks, settings.modules, names),
        use_dora=True,
        bias="none",
    )


def apply_dora(model: nn.Module, settings: DoRASettings, depth: int) -> PeftModel:
    """Wrap `model` (frozen) with trainable DoRA layers; errors early if nothing matches."""
    resolve_lora_targets(model, resolve_blocks(settings.blocks, depth), settings.modules)
    return get_peft_model(model, dora_config(settings, depth, target_names(model)))


def save_dora(model: PeftModel, package_dir: Path) -> None:
    """PEFT's own format (adapter_config.json + adapter_model.safetensors)."""
    model.save_pretrained(str(Path(package_dir) / ADAPTER_DIR), safe_serialization=True)


def load_dora(model: nn.Module, package_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(
        model, str(Path(package_dir) / ADAPTER_DIR), is_trainable=False
    )


def merge_dora(model: PeftModel) -> nn.Module:
    """Fold the adapter into the base weights: the plain backbone later phases build on."""
    with torch.no_grad():
        return model.merge_and_unload()
