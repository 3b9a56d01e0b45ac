"""The task lifecycle every continual-learning method follows, and the one driver that runs it.

A method is an object over a network it has already wrapped (SD-LoRA's `SDLoRA`, CONEC-LoRA's
`ConecLoRA`), with the same three verbs for every method:

- ``start_task(task)`` adds what the task trains (a new low-rank pair per layer; a new domain's
  late LoRA set and head) and freezes what earlier tasks learned;
- ``trainable_parameters()`` is what the task's optimiser gets, never a frozen weight;
- ``finish_task()`` closes the task (SD-LoRA turns the new pair into a unit direction and, for
  -KD, folds it; CONEC drops its distillation teacher) and returns the figures a phase records
  for it (``rank``, ``folded_layers``, ...).

`train_task` is the driver the phases share: it seeds the task, starts it, lets the phase set up
what is not the method's (a grown head, loaders, the loss), trains with the one training loop
(`aads.training.fit`) on the method's parameters plus the phase's, and finishes the task. A
further method is a folder under ``aads/adapters/`` (``config.py`` with its settings,
``model.py`` with a class implementing these verbs) that a phase hands to `train_task`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from aads.config import TrainingSettings
from aads.progress import Progress
from aads.training import EpochCallback, FitResult, fit
from aads.training.loop import EvalFn, LossFn


@runtime_checkable
class ContinualMethod(Protocol):
    """What `train_task` runs, task after task; the method's state lives in the network."""

    def start_task(self, task: int) -> None:
        """Add the parameters task `task` trains and freeze earlier ones. `task` is the task's
        index: a phase-2 batch index (SD-LoRA's -RR picks its rank by it), a new domain's
        index (CONEC: the next domain, 1 for the first after the base)."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the current task's optimiser trains."""
        ...

    def finish_task(self) -> dict[str, float]:
        """Close the current task; figures for the phase's record of it."""
        ...


@dataclass
class TaskSetup:
    """What a phase supplies for one task, built after the method has started it."""

    network: nn.Module  # pixels -> logits, what `fit` trains
    train_loader: Iterable[Any]
    loss_fn: LossFn
    eval_fn: EvalFn | None = None
    monitor: str | None = "val_accuracy"
    extra_parameters: list[nn.Parameter] = field(default_factory=list)  # e.g. a grown head


@dataclass
class TaskResult:
    setup: TaskSetup
    fit: FitResult
    report: dict[str, float]  # `finish_task`'s figures
    seconds: float


def train_task(
    method: ContinualMethod,
    task: int,
    setup: Callable[[], TaskSetup],
    *,
    settings: TrainingSettings,
    checkpoint_dir: Path | None = None,
    fingerprint: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    on_epoch_end: EpochCallback | None = None,
    device: torch.device | None = None,
) -> TaskResult:
    """Seed, ``start_task``, `setup()`, train, ``finish_task``: one task of one method.

    The global torch generator is seeded with ``settings.seed + task`` before ``start_task``,
    so a task's new adapter weights are the same on every run; `setup` runs after it, so it
    can read what the task added (a new domain's head). The optimiser trains
    ``trainable_parameters()`` followed by the setup's ``extra_parameters``.
    """
    start = time.perf_counter()
    torch.manual_seed(settings.seed + task)
    method.start_task(task)
    plan = setup()
    result = fit(
        plan.network,
        [*method.trainable_parameters(), *plan.extra_parameters],
        plan.train_loader,
        settings=settings,
        loss_fn=plan.loss_fn,
        eval_fn=plan.eval_fn,
        monitor=plan.monitor,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        progress=progress,
        on_epoch_end=on_epoch_end,
        device=device,
    )
    report = method.finish_task()
    return TaskResult(plan, result, report, time.perf_counter() - start)
