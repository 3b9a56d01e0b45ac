"""Seeding and the random state a checkpoint needs to resume a run bit for bit.

`seed_everything` makes a fresh run a function of its seed on CPU (python, numpy, torch and
CUDA generators). `rng_state` / `restore_rng_state` capture every generator the next epoch will
draw from, including a DataLoader's own generator, as tensors and numbers only, so a checkpoint
loads with ``torch.load(weights_only=True)`` and an interrupted run resumes with the same
shuffles and dropout masks it would have had. (On CUDA, bit-identical results additionally need
``torch.use_deterministic_algorithms(True)``; seeding alone fixes the draws, not the kernels.)
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global generator, torch on CPU and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator for a DataLoader's shuffling: epoch order depends only on `seed`."""
    return torch.Generator().manual_seed(seed)


def loader_generators(loader: object) -> list[torch.Generator]:
    """The generators a DataLoader (and its sampler) draw shuffles and worker seeds from."""
    owners = (
        loader,
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    )
    found: list[torch.Generator] = []
    for owner in owners:
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not f for f in found):
            found.append(gen)
    return found


def rng_state(device: torch.device, generators: list[torch.Generator]) -> dict[str, Any]:
    """Every generator's state as tensors and plain numbers (weights_only-safe)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {
            "version": py_version,
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "loader": [g.get_state() for g in generators],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(
    state: dict[str, Any], device: torch.device, generators: list[torch.Generator]
) -> None:
    """Put every generator back where `rng_state` found it."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for gen, saved in zip(generators, state["loader"], strict=True):
        gen.set_state(saved)
