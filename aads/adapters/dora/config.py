"""Phase 1 settings: DoRA (Liu et al., ICML 2024) through PEFT, ``adapter.dora`` in the spec."""

from __future__ import annotations

from pydantic import Field

from aads.adapters.config import BlockSelection, LoraModule, MethodSettings


class DoRASettings(MethodSettings):
    """Phase 1: PEFT LoRA with ``use_dora=True`` on the named modules of the chosen blocks."""

    r: int = Field(16, ge=1, le=512)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    blocks: BlockSelection = "all"
    modules: list[LoraModule] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    loraplus_lr_ratio: float = Field(16.0, ge=1.0, description="LoRA+ lr(B) / lr(A)")
