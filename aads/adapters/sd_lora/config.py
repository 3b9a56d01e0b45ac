"""Phase 2 settings: SD-LoRA (Wu et al., ICLR 2025), ``adapter.sd_lora`` in the spec."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from aads.adapters.config import LoraModule, MethodSettings


class SDLoRASettings(MethodSettings):
    """Phase 2: SD-LoRA (Wu et al., ICLR 2025) on q and v of every block."""

    rank: int = Field(10, ge=1, le=512)
    variant: Literal["plain", "rr", "kd"] = Field(
        "plain", description="plain, -RR (rank shrinks per task), -KD (fold spanned directions)"
    )
    rank_schedule: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="ranks per task for the rr variant, e.g. [10, 8, 6]"
    )
    alpha_init: float = Field(0.8, gt=0)
    kd_threshold: float = Field(
        0.9, gt=0, le=1, description="-KD: fold when this share of a new direction is spanned"
    )
    modules: list[LoraModule] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)

    @model_validator(mode="after")
    def _schedule_for_rr(self) -> SDLoRASettings:
        if self.variant == "rr" and not self.rank_schedule:
            raise ValueError("rank_schedule is required when variant is 'rr' (e.g. [10, 8, 6])")
        return self
