"""The adapter phases, in one table: what each phase is, when it applies, and how it trains.

A crop adapter learns in phases: 1 DoRA on the base classes, 2 SD-LoRA on new class batches,
3 CONEC-LoRA on new imaging conditions. Everything that differs between phases (the method's
name and settings section, which crop field lists its tasks, whether it continues a previous
package, its metrics, the function that trains it) is an entry here, and every other module
(the runner, the KFP pipeline and component, the CLI, the demo, TrainJobs, the model card, the
gate) reads this table instead of comparing phase strings. A fourth method is one folder under
``aads/adapters/`` (its ``config.py`` and model) plus one `Phase` entry. The crop router,
trained once for every crop before the adapters, has its entry beside the table (`ROUTER`).

This module imports no torch: the training functions are imported when a phase trains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aads.config import CropSpec, PlatformConfig
from aads.data.manifest import ManifestRow
from aads.errors import BadInput
from aads.progress import Progress


class UnknownPhase(BadInput):
    """A phase number that is not in the table; the message lists the known ones."""


class TrainFn(Protocol):
    """Train one phase of `crop` on top of `previous` (None for a phase that starts from the
    backbone) and write the new adapter package to `out_dir`; returns the package folder."""

    def __call__(
        self,
        config: PlatformConfig,
        crop: str,
        rows: list[ManifestRow],
        data_root: Path,
        previous: Path | None,
        out_dir: Path,
        *,
        checkpoint_dir: Path | None = None,
        manifest_sha256: str = "",
        progress: Progress | None = None,
        on_epoch_end: Callable[..., None] | None = None,
    ) -> Path: ...


@dataclass(frozen=True)
class Retention:
    """How a continual phase reports what it kept of earlier tasks."""

    metric: str  # the package metric, e.g. phase2_retention
    forgetting: str  # the package metric, e.g. phase2_forgetting
    kept: str  # what was kept, in words: "old classes", "base domain"


@dataclass(frozen=True)
class Phase:
    """One phase: its identity, its inputs and its training function."""

    number: str  # as in the manifest's `phase` column and a package's record: "1", "2", "3"
    method: str  # the method's name, as people say it: "DoRA"
    purpose: str  # what it learns, in words (the model card)
    settings_key: str  # its section of `config.adapter` and of a package's adapter_settings
    card_fields: tuple[str, ...]  # the settings a model card shows
    needs_previous: bool  # continues the previous phase's package (else starts from nothing)
    applies: Callable[[CropSpec], bool]  # whether a crop configures this phase
    data_params: Callable[[CropSpec], Mapping[str, object]]  # its tasks, as MLflow params
    train: TrainFn
    retention: Retention | None = None
    summary: tuple[tuple[str, str, str], ...] = ()  # (label, metric, format) for one line

    @property
    def name(self) -> str:
        """``phase1``: the MLflow step, the `config.training` section, the metric prefix."""
        return f"phase{self.number}"

    @property
    def title(self) -> str:
        """``phase 1 (DoRA)``: what a person reads in run names and progress bars."""
        return f"phase {self.number} ({self.method})"

    @property
    def accuracy_metric(self) -> str:
        """Pooled test accuracy over every class (and domain) the phase leaves the package."""
        return f"{self.name}_test_accuracy"

    def params(self, config: PlatformConfig, crop: str) -> dict[str, object]:
        """The settings a run of this phase depends on, by section (MLflow params)."""
        sections: dict[str, object] = {"backbone": config.adapter.backbone}
        method = getattr(config.adapter, self.settings_key, None)
        if method is not None:
            sections[self.settings_key] = method
        training = getattr(config.training, self.name, None)
        if training is not None:
            sections["training"] = training
        return {**sections, **self.data_params(config.crop(crop))}

    def line(self, metrics: Mapping[str, float]) -> str:
        """The numbers a person wants from this phase, in one line."""
        return summary_line(self.summary, metrics)


def summary_line(summary: tuple[tuple[str, str, str], ...], metrics: Mapping[str, float]) -> str:
    """``label value, label value``: each (label, metric, format) of `summary` from `metrics`
    (nan where the metric was not measured)."""
    nan = float("nan")
    return ", ".join(f"{label} {metrics.get(key, nan):{fmt}}" for label, key, fmt in summary)


def _lazy(module: str, function: str, *, with_previous: bool) -> TrainFn:
    """A `TrainFn` that imports the phase's training code (torch, PEFT) when it first runs."""

    def train(config, crop, rows, data_root, previous, out_dir, **kwargs: Any) -> Path:
        from importlib import import_module

        fn = getattr(import_module(module), function)
        if with_previous:
            return fn(config, crop, rows, data_root, previous, out_dir, **kwargs)
        return fn(config, crop, rows, data_root, out_dir, **kwargs)

    train.__qualname__ = train.__name__ = function
    return train


DORA = Phase(
    number="1",
    method="DoRA",
    purpose="base disease classes",
    settings_key="dora",
    card_fields=("r", "alpha", "blocks", "modules"),
    needs_previous=False,
    applies=lambda spec: True,
    data_params=lambda spec: {"classes": spec.phase1_classes},
    train=_lazy("aads.adapters.phases.phase1", "train_phase1", with_previous=False),
    summary=(("test accuracy", "phase1_test_accuracy", ".3f"),),
)
SD_LORA = Phase(
    number="2",
    method="SD-LoRA",
    purpose="new disease classes (class-incremental, rehearsal-free)",
    settings_key="sd_lora",
    card_fields=("variant", "rank", "modules"),
    needs_previous=True,
    applies=lambda spec: bool(spec.phase2_batches),
    data_params=lambda spec: {"batches": [" ".join(b) for b in spec.phase2_batches]},
    train=_lazy("aads.adapters.phases.phase2", "train_phase2", with_previous=True),
    retention=Retention("phase2_retention", "phase2_forgetting", "old classes"),
    summary=(
        ("seen-class accuracy", "phase2_test_accuracy", ".3f"),
        ("old-class retention", "phase2_retention", ".2f"),
        ("forgetting", "phase2_forgetting", ".3f"),
    ),
)
CONEC_LORA = Phase(
    number="3",
    method="CONEC-LoRA",
    purpose="new imaging conditions (domain-incremental)",
    settings_key="conec",
    card_fields=("rank", "shared_blocks", "selector", "modules"),
    needs_previous=True,
    applies=lambda spec: bool(spec.phase3_domains),
    data_params=lambda spec: {"domains": spec.phase3_domains},
    train=_lazy("aads.adapters.phases.phase3", "train_phase3", with_previous=True),
    retention=Retention("phase3_protected_retention", "phase3_forgetting", "base domain"),
    summary=(
        ("test accuracy (all domains)", "phase3_test_accuracy", ".3f"),
        ("protected retention", "phase3_protected_retention", ".2f"),
        ("selector accuracy", "phase3_selector_accuracy", ".2f"),
    ),
)

PHASES: tuple[Phase, ...] = (DORA, SD_LORA, CONEC_LORA)
"""Every phase, in the order a crop adapter learns them."""

NUMBERS: tuple[str, ...] = tuple(p.number for p in PHASES)
"""The phase numbers a user passes (``--phase``, the pipeline's `phases` parameter)."""

BY_TASK_KIND: dict[str, Phase] = {"base": DORA, "classes": SD_LORA, "domain": CONEC_LORA}
"""The phase that learns each kind of task (`aads.tasks.TaskKind`): a continuation runs it."""


# --------------------------------------------------------------------------- the router


class RouterTrainFn(Protocol):
    """Fit the router's heads on `rows` of every configured crop (features computed from the
    images under `data_root`, or the cached `features` of `backbone`) and write the router to
    `out_dir`; returns its `aads.router.RouterTrainingResult` (metrics, epoch history)."""

    def __call__(
        self,
        config: PlatformConfig,
        rows: list[ManifestRow],
        data_root: Path,
        out_dir: Path,
        *,
        features: Any = None,  # aads.features.FeatureTable (torch: not imported here)
        backbone: Any = None,  # aads.backbone.Backbone
        progress: Progress | None = None,
        on_epoch_end: Callable[..., None] | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class RouterStage:
    """The crop router's entry beside the phase table: what it is and how it trains.

    Not a `Phase`: the router trains once for all crops (no crop, no previous package), may
    be handed a feature cache another step computed, and returns its training record rather
    than a package folder, so it cannot share `TrainFn`; nor does it have a phase number,
    continual tasks or retention. What it shares with the phases is read from here: its MLflow
    step's name (`name`), the words a model card uses (`method`, `purpose`), the headline
    numbers (`summary`) and its training function.
    """

    name: str  # the MLflow step and its run's name, the demo's folder for the router
    method: str  # how it decides, in words (the model card)
    purpose: str  # what it answers, in words (the model card)
    train: RouterTrainFn
    summary: tuple[tuple[str, str, str], ...] = ()  # (label, metric, format) for one line

    @property
    def headline_metrics(self) -> tuple[str, ...]:
        """The metrics a person reads first (a registered version's ``metric.*`` tags)."""
        return tuple(key for _, key, _ in self.summary)

    def line(self, metrics: Mapping[str, float]) -> str:
        """The numbers a person wants from the router, in one line."""
        return summary_line(self.summary, metrics)


def _train_router(config, rows, data_root, out_dir, **kwargs: Any) -> Any:
    """`aads.router.train_router`, imported (torch) when the router first trains."""
    from aads.router.training import train_router

    return train_router(config, rows, data_root, out_dir, **kwargs)


ROUTER = RouterStage(
    name="router",
    method="two linear heads (crop, plant part) on frozen backbone features",
    purpose="routes a photo to its crop and names the plant part",
    train=_train_router,
    summary=(
        ("crop accuracy", "test_crop_accuracy", ".3f"),
        ("part accuracy", "test_part_accuracy", ".3f"),
    ),
)
"""The crop router, trained before every crop's adapter phases."""


def get(phase: Phase | str) -> Phase:
    """The phase with this number (a `Phase` is returned as it is); `UnknownPhase` otherwise."""
    if isinstance(phase, Phase):
        return phase
    for known in PHASES:
        if known.number == str(phase):
            return known
    raise UnknownPhase(f"phase must be one of {', '.join(NUMBERS)}, got {phase!r}")
