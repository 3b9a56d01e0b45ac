"""What the settings of every adapter method share: a strict settings base, which transformer
blocks an adapter touches, and which modules (by role) it wraps.

Each method keeps its own settings beside its code (``aads/adapters/<method>/config.py``, as
PEFT does); `aads.config` embeds them in the platform spec and re-exports them. So this module
and every method's ``config.py`` are pure pydantic: cheap to import, no torch, and nothing from
`aads.config` (that would be circular).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

BlockSelection = Literal["all", "first_half", "second_half"] | list[Annotated[int, Field(ge=0)]]
"""Which transformer blocks an adapter touches: a named range or explicit 0-based indices."""

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("up_proj", "down_proj", "gate_proj")
LoraModule = Literal["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
"""LoRA targets by role, in DINOv3's names; on DINOv2 `aads.backbone.targets` maps them to its
own (a GELU MLP's up_proj / down_proj are fc1 / fc2 there)."""


class MethodSettings(BaseModel):
    """Base of every method's settings: unknown keys are errors naming the field, values are
    frozen once validated (as every model of the platform spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
