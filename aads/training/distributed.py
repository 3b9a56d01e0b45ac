"""Data-parallel training under torchrun: one process per GPU (or per CPU slot on gloo).

torchrun starts N copies of the same program with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT set; `init_distributed` is the one place that reads them. Each rank trains on its
shard of the data (`make_train_loader` puts a `DistributedSampler` under the loader; `fit`
calls ``set_epoch`` every epoch) and `fit` wraps the model in `DistributedDataParallel`, which
averages gradients of the trainable parameters across ranks in backward. Ranks therefore hold
identical weights after every step, so rank 0 alone writes checkpoints and reports progress.

Typical use, in a script started with ``torchrun --nproc_per_node 4 train.py``::

    with distributed_session() as ctx:
        loader = make_train_loader(dataset, settings)
        fit(model, params, loader, settings=settings, loss_fn=loss_fn, device=ctx.device)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from aads.backbone.device import resolve_device
from aads.config import TrainingSettings

from .errors import TrainingError
from .seed import seeded_generator


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job and the device it trains on. Which rank writes and
    reports is `is_main_process`'s answer, the one place that decides it."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(
    environ: Mapping[str, str] | None = None, *, device: str = "auto", timeout_s: float = 1800
) -> DistContext:
    """Join the process group torchrun described (nccl on CUDA, gloo on CPU).

    Without WORLD_SIZE > 1 this is a single process and no group is created. On CUDA each rank
    takes GPU ``LOCAL_RANK``.
    """
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if target.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                "start torchrun with --nproc_per_node <= the number of GPUs"
            )
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise TrainingError(f"WORLD_SIZE={world} but {missing} unset; start with torchrun")
        dist.init_process_group(
            backend="nccl" if target.type == "cuda" else "gloo",
            init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
            device_id=target if target.type == "cuda" else None,
        )
    return DistContext(rank, world, local_rank, target)


def destroy_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(
    environ: Mapping[str, str] | None = None, *, device: str = "auto"
) -> Iterator[DistContext]:
    """`init_distributed` on entry, `destroy_distributed` on exit (also after an error)."""
    ctx = init_distributed(environ, device=device)
    try:
        yield ctx
    finally:
        destroy_distributed()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 and in a single-process run: the rank that writes and reports."""
    return rank() == 0


def make_train_loader(
    dataset: Dataset,
    settings: TrainingSettings,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A train loader of ``settings.batch_size`` per rank whose order depends only on the seed.

    With several ranks a `DistributedSampler` gives each rank every world_size-th sample
    (padded so all ranks take the same number of steps); alone, a seeded shuffle.
    """
    workers = settings.num_workers
    common: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "num_workers": workers,
        "drop_last": drop_last,
        "pin_memory": pin_memory,
        "collate_fn": collate_fn,
        "persistent_workers": workers > 0,
    }
    if world_size() > 1:
        sampler = DistributedSampler(
            dataset, shuffle=shuffle, seed=settings.seed, drop_last=drop_last
        )
        return DataLoader(dataset, sampler=sampler, **common)
    return DataLoader(dataset, shuffle=shuffle, generator=seeded_generator(settings.seed), **common)


def wrap_ddp(
    model: nn.Module, device: torch.device, *, find_unused_parameters: bool = False
) -> DistributedDataParallel:
    """DDP over the trainable parameters (frozen ones take no part in the all-reduce)."""
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" and device.index is not None else None,
        find_unused_parameters=find_unused_parameters,
        gradient_as_bucket_view=True,
    )


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place; a no-op alone)."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_from_main(value: float, device: torch.device) -> float:
    """Rank 0's `value` on every rank, so every rank takes the same stop/best decision."""
    if world_size() == 1:
        return value
    carrier = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(carrier, src=0)
    return float(carrier.item())
