"""Training checkpoints: what is trained, saved atomically, loaded without unpickling code.

Only the trainable part of a model is saved: parameters with ``requires_grad`` and the buffers
of modules that own one (a BatchNorm in a trained head). The frozen backbone is rebuilt from its
source, so a checkpoint of a LoRA run on a 7B backbone stays megabytes, and the best-weights copy
kept in memory stays small too.

Files are written with ``torch.save`` through `aads.atomic` (a crash leaves the previous file)
and read with ``torch.load(weights_only=True)`` only: they hold tensors, numbers, strings and
plain containers, never pickled objects that could run code. A `fingerprint` (the caller's
description of the run: backbone, phase, classes) is stored and compared before resuming.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aads.atomic import atomic_write

from .errors import CheckpointMismatch, TrainingError

FORMAT = "aads-train-state/1"
SHOWN_CHARS = 60


def trainable_names(model: nn.Module) -> list[str]:
    """State-dict names of trainable parameters and of the buffers of modules that own one."""
    names: list[str] = []
    for module_name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not any(p.requires_grad for p in params.values()):
            continue
        prefix = f"{module_name}." if module_name else ""
        names += [prefix + n for n, p in params.items() if p.requires_grad]
        names += [prefix + n for n, _ in module.named_buffers(recurse=False)]
    persistent = model.state_dict(keep_vars=True)  # drops non-persistent buffers (caches)
    return [n for n in names if n in persistent]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable part of `model`, by name."""
    tensors = model.state_dict(keep_vars=True)
    return {n: tensors[n].detach().to("cpu", copy=True) for n in trainable_names(model)}


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a `trainable_state` back into `model`; other names or shapes raise first."""
    targets = model.state_dict(keep_vars=True)
    names = trainable_names(model)
    missing = [n for n in names if n not in state]
    unexpected = sorted(set(state) - set(names))
    reshaped = [n for n in names if n in state and tuple(state[n].shape) != tuple(targets[n].shape)]
    if missing or unexpected or reshaped:
        raise CheckpointMismatch(
            "saved weights do not fit this model: "
            + "; ".join(
                f"{what}: {_names(found)}"
                for what, found in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("other shape", reshaped),
                )
                if found
            ),
            [*missing, *unexpected, *reshaped],
        )
    with torch.no_grad():
        for n in names:
            targets[n].copy_(state[n])


def check_fingerprint(
    path: Path, saved: Mapping[str, str], current: Mapping[str, str] | None
) -> None:
    """Raise `CheckpointMismatch` naming every key whose value differs (or exists on one side)."""
    now = dict(current or {})
    differing = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if differing:
        details = ", ".join(
            f"{k} (saved {_short(saved.get(k))}, now {_short(now.get(k))})" for k in differing
        )
        raise CheckpointMismatch(
            f"{path} was written by another run; it differs in {details}. Delete it or pass "
            "resume=False to start over",
            differing,
        )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (tensors and plain data) to `path` atomically."""
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **payload}, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True``; foreign files raise."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError) as err:
        raise TrainingError(f"{path}: not a readable training checkpoint ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointMismatch(f"{path}: format {found!r} is not {FORMAT!r}", ["format"])
    return payload


def _short(value: str | None) -> str:
    if value is None:
        return "<absent>"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _names(names: list[str], shown: int = 5) -> str:
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
