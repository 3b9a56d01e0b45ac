"""Mixed precision for training, decided once from ``TrainingSettings.precision``.

- ``auto``: bf16 autocast on a CUDA device that supports it (DINOv3 was trained in bf16 and bf16
  needs no loss scaling), float32 everywhere else; on a CPU bf16 is slow, so only when asked.
- ``bf16``: bf16 autocast on CUDA, or on the CPU (``torch.autocast("cpu")``) when asked there.
- ``fp16``: fp16 autocast with a ``GradScaler`` (fp16 gradients underflow without it); CUDA only.
- ``fp32``: no autocast.

Parameters stay in their own dtype (float32 for adapters): autocast only changes what matmuls
compute in. A disabled GradScaler is a no-op, so the loop has one code path for every setting.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .errors import TrainingError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32, bf16 or fp16 (never auto)."""

    name: str
    device_type: str

    def autocast(self) -> AbstractContextManager[object]:
        """The context the forward pass and loss run in."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.name])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler: enabled for fp16 only."""
        if self.name == "fp16":
            return torch.amp.GradScaler("cuda")
        return torch.amp.GradScaler(self.device_type, enabled=False)


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """Turn ``auto|fp32|bf16|fp16`` into what this device will run; impossible asks raise."""
    cuda = device.type == "cuda"
    if setting == "auto":
        name = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        return Precision(name, device.type)
    if setting not in ("fp32", "bf16", "fp16"):
        raise TrainingError(f"unknown precision '{setting}'; use auto, fp32, bf16 or fp16")
    if setting == "fp16" and not cuda:
        raise TrainingError(f"precision fp16 needs a CUDA device, not {device}; use bf16 or fp32")
    if setting == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"{torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32")
    return Precision(setting, device.type)
