"""Where a backbone runs and in which precision, decided once from the settings.

``auto`` means: the GPU when there is one, in bfloat16 where the GPU supports it (DINOv3 was
trained in bf16; fp16 risks overflow in the 7B model), else float32. On a CPU the default is
float32: bf16/fp16 matmuls there are slow or unsupported, so they happen only when asked for.
"""

from __future__ import annotations

import torch

from .errors import BackboneError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(setting: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; an explicit ``cuda`` without a GPU is an error
    rather than a silent 100x slowdown."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise BackboneError("device 'cuda' requested but CUDA is not available on this machine")
    if setting not in ("cpu", "cuda"):
        raise BackboneError(f"unknown device '{setting}'; use auto, cpu or cuda")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on a CUDA device that supports it, float32 otherwise; explicit
    names are honoured on any device."""
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[setting]
    except KeyError:
        raise BackboneError(f"unknown dtype '{setting}'; use auto, {', '.join(DTYPES)}") from None
