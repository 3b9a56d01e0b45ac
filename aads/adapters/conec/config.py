"""Phase 3 settings: CONEC-LoRA (Paeedeh et al., arXiv 2510.16077), ``adapter.conec`` in the
spec."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aads.adapters.config import BlockSelection, LoraModule, MethodSettings


class CONECSettings(MethodSettings):
    """Phase 3: CONEC-LoRA. Early blocks share LoRAs trained under distillation; late blocks
    get one LoRA set per domain; a selector picks the set at inference."""

    shared_blocks: BlockSelection = "first_half"
    rank: int = Field(8, ge=1, le=512)
    alpha: float = Field(16.0, gt=0)
    modules: list[LoraModule] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    distill_weight: float = Field(1.0, ge=0)
    distill_temperature: float = Field(2.0, gt=0)
    selector: Literal["mahalanobis", "linear"] = "mahalanobis"
