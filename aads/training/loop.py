"""One training loop for every phase: router heads, DoRA, SD-LoRA and CONEC.

A phase plugs in what differs (the model, what to optimise, a loss on one batch, an
evaluation); `fit` owns the mechanics that must be the same everywhere and are easy to get
subtly wrong. The choices, made once here:

- Optimizer: AdamW(``lr``, ``weight_decay``) when given parameters or parameter groups; any
  ready optimizer otherwise (PEFT's LoRA+ helper builds one).
- Schedule: `aads.training.schedule` (5% linear warmup, then cosine), stepped per optimizer step.
- Precision: `aads.training.precision` (autocast + GradScaler from ``settings.precision``).
- Gradient accumulation: ``gradient_accumulation`` micro-batches per optimizer step, each loss
  divided by that count, so k micro-batches of b equal one batch of k*b; a short last group at
  the end of an epoch still steps, rescaled to the mean over the micro-batches it has.
- Clipping: global gradient norm clipped to `MAX_GRAD_NORM` (1.0) after unscaling; it guards
  the first steps of a fresh adapter and fp16 spikes, and rarely binds later.
- Early stopping on `monitor` after ``early_stopping_patience`` epochs without a strict
  improvement; the best epoch's trainable weights (a CPU copy) are restored at the end.
- Checkpoints: ``last.pt`` after every epoch (`aads.training.checkpoint`); resuming continues at
  the next epoch and ends with the same weights as an uninterrupted run.
- Distributed (under torchrun): the model is wrapped in DistributedDataParallel; the epoch loss
  and image count are summed over ranks; `eval_fn` runs on every rank (so it may shard the
  validation set and all-reduce itself) and rank 0's monitored value is broadcast, so all ranks
  stop and pick the best epoch together; rank 0 alone writes checkpoints and calls `progress`
  and `on_epoch_end`. Every rank must yield the same number of batches per epoch (a
  `DistributedSampler` pads to ensure it; `make_train_loader` uses one), or the ranks hang.

``settings.gradient_checkpointing`` is applied where the backbone is loaded
(`BackboneSettings.gradient_checkpointing`), not here; ``num_workers`` where loaders are built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from aads.config import TrainingSettings
from aads.progress import Progress

from .checkpoint import (
    check_fingerprint,
    load_checkpoint,
    load_trainable_state,
    save_checkpoint,
    trainable_state,
)
from .distributed import (
    all_reduce_sum,
    broadcast_from_main,
    is_main_process,
    world_size,
    wrap_ddp,
)
from .errors import CheckpointMismatch, TrainingError
from .precision import resolve_precision
from .schedule import Schedule, build_scheduler
from .seed import loader_generators, restore_rng_state, rng_state, seed_everything

MAX_GRAD_NORM = 1.0
CHECKPOINT_NAME = "last.pt"

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch) -> scalar``. Under DDP `model` is the DDP wrapper: call it, don't
reach for its methods, or gradients are not synchronised."""
EvalFn = Callable[[nn.Module], dict[str, float]]
"""``eval_fn(model) -> metrics``; called in eval mode under ``torch.no_grad`` after each epoch."""


@dataclass
class EpochLog:
    epoch: int  # 1-based
    train_loss: float  # mean of the micro-batch losses, over all ranks
    metrics: dict[str, float]
    seconds: float  # training part of the epoch, evaluation excluded
    images_per_s: float  # over all ranks
    lr: float  # first parameter group's rate at the epoch's last optimizer step


EpochCallback = Callable[[EpochLog], None]
"""``on_epoch_end(log)``: sees each finished epoch on rank 0 (the pipeline logs it to MLflow)."""


@dataclass
class FitResult:
    history: list[EpochLog]
    best_epoch: int  # the epoch whose weights the model holds now
    best_metric: float | None  # None when nothing was monitored
    stopped_early: bool
    resumed_from: int | None  # last completed epoch found in the checkpoint
    state_path: Path | None


@dataclass
class _Best:
    """The best epoch so far and a CPU copy of its trainable weights."""

    mode: str
    epoch: int = 0
    metric: float | None = None
    state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def update(self, epoch: int, value: float, model: nn.Module) -> None:
        better = not math.isnan(value) and (
            self.metric is None
            or (value > self.metric if self.mode == "max" else value < self.metric)
        )
        if not better:
            self.bad_epochs += 1
            return
        self.epoch, self.metric, self.bad_epochs = epoch, value, 0
        self.state = trainable_state(model)


@dataclass
class _Ticker:
    """``progress(done, total)`` per micro-batch over all epochs; a no-op off rank 0."""

    progress: Progress | None
    total: int
    done: int

    def resume(self) -> None:
        """A resumed run starts its bar where the checkpoint left off."""
        if self.progress is not None and self.done:
            self.progress(self.done, self.total)

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        """An early stop or a finished resume still closes the bar at total."""
        if self.progress is not None and self.total and self.done < self.total:
            self.progress(self.total, self.total)


@dataclass
class _Loop:
    """The state one `fit` call carries from epoch to epoch."""

    model: nn.Module
    optimizer: Optimizer
    loader: Iterable[Any]
    settings: TrainingSettings
    loss_fn: LossFn
    eval_fn: EvalFn | None
    monitor: str | None
    device: torch.device
    schedule: Schedule
    best: _Best
    epoch: int = 0
    stopped_early: bool = False
    history: list[EpochLog] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.precision = resolve_precision(self.settings.precision, self.device)
        self.scaler = self.precision.grad_scaler()
        self.batches_per_epoch = _length(self.loader)
        steps = (
            math.ceil(self.batches_per_epoch / self.settings.gradient_accumulation)
            * self.settings.epochs
            if self.batches_per_epoch
            else None
        )
        self.scheduler = build_scheduler(self.optimizer, self.schedule, steps)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    # ------------------------------------------------------------------ one epoch

    def run_epoch(self, train_model: nn.Module, ticker: _Ticker) -> EpochLog:
        epoch = self.epoch + 1
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        loss, images, seconds, lr = self.train_epoch(train_model, ticker, epoch)
        metrics = self.evaluate()
        log = EpochLog(epoch, loss, metrics, seconds, images / seconds if seconds else 0.0, lr)
        self.track(epoch, loss, metrics)
        self.history.append(log)
        self.epoch = epoch
        return log

    def train_epoch(
        self, train_model: nn.Module, ticker: _Ticker, epoch: int
    ) -> tuple[float, int, float, float]:
        """(mean loss, images, seconds, last lr) of one pass over the loader, over all ranks."""
        self.model.train()
        k = self.settings.gradient_accumulation
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, batches, images
        images, in_group, lr = 0, 0, self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        for batch, last in _mark_last(self.loader):
            in_group += 1
            closes_group = in_group == k or last
            images += batch_size(batch)
            skip_sync = isinstance(train_model, DistributedDataParallel) and not closes_group
            with train_model.no_sync() if skip_sync else nullcontext():
                with self.precision.autocast():
                    loss = self.loss_fn(train_model, _to_device(batch, self.device))
                if loss.ndim:
                    raise TrainingError(f"loss_fn returned shape {tuple(loss.shape)}, not a scalar")
                self.scaler.scale(loss / k).backward()
            sums[0] += loss.detach().double()
            sums[1] += 1
            if closes_group:
                lr = self.step(k / in_group)
                in_group = 0
            ticker.tick()
        sums[2] = images
        loss_sum, batches, total_images = all_reduce_sum(sums).tolist()
        seconds = time.perf_counter() - start
        if not batches:
            raise TrainingError("the train loader yielded no batches")
        mean_loss = loss_sum / batches
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"train loss is {mean_loss} in epoch {epoch}: training diverged; lower lr "
                "or use precision fp32/bf16"
            )
        return mean_loss, int(total_images), seconds, lr

    def step(self, rescale: float) -> float:
        """One optimizer step on the accumulated gradients; returns the lr it used."""
        if rescale != 1.0:  # a short last group: mean over the micro-batches it has
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(rescale)
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(lr)

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            metrics = self.eval_fn(self.model)
        return {name: float(value) for name, value in metrics.items()}

    def track(self, epoch: int, loss: float, metrics: dict[str, float]) -> None:
        """Update the best epoch and decide whether to stop."""
        if self.monitor is None:
            return
        values = {"train_loss": loss, **metrics}
        if self.monitor not in values:
            raise TrainingError(
                f"monitor '{self.monitor}' is not among the metrics {sorted(values)}"
            )
        self.best.update(epoch, broadcast_from_main(values[self.monitor], self.device), self.model)
        patience = self.settings.early_stopping_patience
        self.stopped_early = (
            patience is not None
            and self.best.bad_epochs >= patience
            and epoch < self.settings.epochs
        )

    # ------------------------------------------------------------------ checkpoints

    def payload(self, fingerprint: Mapping[str, str] | None) -> dict[str, Any]:
        """Everything needed to continue; tensors and plain data only."""
        return {
            "fingerprint": dict(fingerprint or {}),
            "epoch": self.epoch,
            "stopped_early": self.stopped_early,
            "model": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": {
                "epoch": self.best.epoch,
                "metric": self.best.metric,
                "bad_epochs": self.best.bad_epochs,
                "state": self.best.state,
            },
            "history": [asdict(log) for log in self.history],
            "rng": rng_state(self.device, loader_generators(self.loader)),
        }

    def restore(self, path: Path, fingerprint: Mapping[str, str] | None) -> int:
        """Continue from `path`: refuse another run's file before touching anything."""
        payload = load_checkpoint(path)
        check_fingerprint(path, payload["fingerprint"], fingerprint)
        generators = loader_generators(self.loader)
        if len(generators) != len(payload["rng"]["loader"]):
            raise CheckpointMismatch(
                f"{path}: saved with {len(payload['rng']['loader'])} loader generator(s), the "
                f"train loader now has {len(generators)}; build it the same way to resume",
                ["loader"],
            )
        load_trainable_state(self.model, payload["model"])
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except ValueError as err:
            raise CheckpointMismatch(
                f"{path}: optimizer state does not fit: {err}", ["optimizer"]
            ) from None
        self.scheduler.load_state_dict(payload["scheduler"])
        if payload["scaler"]:
            self.scaler.load_state_dict(payload["scaler"])
        saved_best = payload["best"]
        self.best.epoch, self.best.metric = saved_best["epoch"], saved_best["metric"]
        self.best.bad_epochs, self.best.state = saved_best["bad_epochs"], saved_best["state"]
        self.history = [EpochLog(**log) for log in payload["history"]]
        self.epoch, self.stopped_early = payload["epoch"], payload["stopped_early"]
        restore_rng_state(payload["rng"], self.device, generators)
        return self.epoch


def fit(
    model: nn.Module,
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | Optimizer,
    train_loader: Iterable[Any],
    *,
    settings: TrainingSettings,
    loss_fn: LossFn,
    eval_fn: EvalFn | None = None,
    monitor: str | None = "val_accuracy",
    mode: Literal["max", "min"] = "max",
    schedule: Schedule = "cosine",
    checkpoint_dir: Path | None = None,
    fingerprint: Mapping[str, str] | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    on_epoch_end: EpochCallback | None = None,
    device: torch.device | None = None,
    find_unused_parameters: bool = False,
) -> FitResult:
    """Train `model` for ``settings.epochs`` and return it holding the best epoch's weights.

    `params` is what AdamW optimises (parameters or parameter groups) or a ready optimizer.
    `monitor` names a key of `eval_fn`'s metrics or ``train_loss``; None keeps the last
    epoch's weights and turns early stopping off. With `checkpoint_dir`, ``last.pt`` there is
    rewritten after each epoch (before `on_epoch_end`) and, when `resume`, continued from; a
    file from another `fingerprint` raises `CheckpointMismatch` before any step. Python, numpy
    and torch are seeded from ``settings.seed`` first (a resume then restores the saved random
    state). `device` defaults to where the model's parameters are; batches are moved there
    before `loss_fn` sees them. The model comes back in eval mode.
    """
    _check_monitor(eval_fn, monitor, mode)
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(device)
    seed_everything(settings.seed)
    loop = _Loop(
        model=model,
        optimizer=_optimizer(params, settings),
        loader=train_loader,
        settings=settings,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        monitor=monitor,
        device=device,
        schedule=schedule,
        best=_Best(mode),
    )
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    resumed_from = loop.restore(path, fingerprint) if path and resume and path.exists() else None
    main = is_main_process()
    per_epoch = loop.batches_per_epoch or 0
    ticker = _Ticker(
        progress if main else None, per_epoch * settings.epochs, per_epoch * loop.epoch
    )
    ticker.resume()
    train_model = (
        wrap_ddp(model, device, find_unused_parameters=find_unused_parameters)
        if world_size() > 1
        else model
    )
    loop.optimizer.zero_grad(set_to_none=True)
    while loop.epoch < settings.epochs and not loop.stopped_early:
        log = loop.run_epoch(train_model, ticker)
        if main and path is not None:
            save_checkpoint(path, loop.payload(fingerprint))
        if main and on_epoch_end is not None:
            on_epoch_end(log)
    ticker.finish()
    if loop.best.state is not None:
        load_trainable_state(model, loop.best.state)
    model.eval()
    return FitResult(
        history=loop.history,
        best_epoch=loop.best.epoch if monitor is not None else loop.epoch,
        best_metric=loop.best.metric,
        stopped_early=loop.stopped_early,
        resumed_from=resumed_from,
        state_path=path,
    )


def batch_size(batch: Any) -> int:
    """Images in a batch: the first dimension of its first tensor (0 when it holds none)."""
    tensor = _first_tensor(batch)
    if tensor is None:
        return 0
    return int(tensor.shape[0]) if tensor.ndim else 1


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(batch, Mapping | list | tuple):
        for item in items:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to `device`; everything else untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        moved = [_to_device(item, device) for item in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def _mark_last(batches: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """(batch, is_last) pairs: the last micro-batch must close its group even when the
    loader has no len()."""
    iterator = iter(batches)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | Optimizer,
    settings: TrainingSettings,
) -> Optimizer:
    if isinstance(params, Optimizer):
        return params
    groups = list(params)
    if not groups:
        raise TrainingError("nothing to train: the parameter list is empty")
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)


def _check_monitor(eval_fn: EvalFn | None, monitor: str | None, mode: str) -> None:
    if mode not in ("max", "min"):
        raise TrainingError(f"mode must be 'max' or 'min', not '{mode}'")
    if eval_fn is None and monitor not in (None, "train_loss"):
        raise TrainingError(
            f"monitor '{monitor}' needs an eval_fn; pass one, monitor='train_loss', or "
            "monitor=None to keep the last epoch's weights"
        )
