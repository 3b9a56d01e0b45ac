"""The learning-rate schedule every phase shares, counted in optimizer steps.

``cosine`` (the default): linear warmup over the first 5% of optimizer steps (at least one),
then cosine decay towards 0 at the last step. Warmup keeps fresh LoRA/DoRA weights and the
heads' Adam moments from a large first step; the cosine tail settles the adapter before the
best-epoch choice. ``constant``: the optimizer's own learning rates throughout.

The factor multiplies each parameter group's own rate, so LoRA+'s B/A ratio is kept.
"""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .errors import TrainingError

Schedule = Literal["cosine", "constant"]
WARMUP_FRACTION = 0.05


def lr_factor(step: int, total_steps: int) -> float:
    """The cosine schedule's multiplier for 0-based optimizer step `step` of `total_steps`."""
    warmup = max(1, math.ceil(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: Optimizer, schedule: Schedule, total_steps: int | None) -> LambdaLR:
    """A scheduler stepped once per optimizer step; cosine needs the total number of steps."""
    if schedule == "constant":
        return LambdaLR(optimizer, lambda _step: 1.0)
    if schedule != "cosine":
        raise TrainingError(f"unknown schedule '{schedule}'; use cosine or constant")
    if not total_steps:
        raise TrainingError(
            "the cosine schedule needs the number of steps, but the train loader has no len(); "
            "pass schedule='constant' or a sized loader"
        )
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps))
