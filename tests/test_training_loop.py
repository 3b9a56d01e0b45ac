"""Specifications of the shared training loop, on small CPU models (fast, deterministic)."""

from __future__ import annotations

import math
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from aads.config import TrainingSettings
from aads.training import (
    CHECKPOINT_NAME,
    CheckpointMismatch,
    TrainingError,
    fit,
    lr_factor,
    resolve_precision,
    seeded_generator,
)


def dataset(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


class Net(nn.Module):
    """A frozen 'backbone' and a trained head, like an adapter on DINOv3."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(6, 8).requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def settings(**changes: object) -> TrainingSettings:
    base = {
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.05,
        "weight_decay": 0.0,
        "precision": "fp32",
        "early_stopping_patience": None,
    }
    return TrainingSettings(**{**base, **changes})


def shuffled(data: TensorDataset, batch: int = 4) -> DataLoader:
    return DataLoader(data, batch_size=batch, shuffle=True, generator=seeded_generator(0))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


class Interrupted(Exception):
    pass


def test_runs_with_the_same_seed_are_bit_identical() -> None:
    def run() -> dict[str, torch.Tensor]:
        model = Net(dropout=0.3)
        fit(
            model,
            trainable(model),
            shuffled(dataset()),
            settings=settings(epochs=3),
            loss_fn=cross_entropy,
            monitor=None,
        )
        return weights(model)

    assert_same(run(), run())


def test_k_micro_batches_of_b_step_like_one_batch_of_k_times_b() -> None:
    # 36 samples: 4 full groups of 4 micro-batches of 2, then a short group of 2 micro-batches,
    # which must step like the large run's last batch of 4.
    data = dataset(36)

    def run(batch: int, accumulation: int) -> dict[str, torch.Tensor]:
        model = Net()
        fit(
            model,
            torch.optim.SGD(trainable(model), lr=0.1),
            DataLoader(data, batch_size=batch),
            settings=settings(epochs=1, gradient_accumulation=accumulation),
            loss_fn=cross_entropy,
            monitor=None,
            schedule="constant",
        )
        return weights(model)

    assert_same(run(batch=2, accumulation=4), run(batch=8, accumulation=1), atol=1e-6)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights() -> None:
    scores = iter([0.5, 0.9, 0.7, 0.8, 0.6, 0.95])
    snapshots: list[dict[str, torch.Tensor]] = []

    def evaluate(model: nn.Module) -> dict[str, float]:
        snapshots.append(weights(model))
        return {"val_accuracy": next(scores)}

    model = Net()
    result = fit(
        model,
        trainable(model),
        shuffled(dataset()),
        settings=settings(epochs=6, early_stopping_patience=2),
        loss_fn=cross_entropy,
        eval_fn=evaluate,
    )

    assert result.stopped_early
    assert [log.epoch for log in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.best_metric) == (2, 0.9)
    assert_same(weights(model), snapshots[1])


def test_resuming_after_an_interruption_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    def run(directory: Path, stop_after: int | None = None, fresh_head: bool = False):
        model = Net(dropout=0.3)
        if fresh_head:  # a restarted process: the adapter knows nothing yet
            for p in trainable(model):
                nn.init.zeros_(p)

        def interrupt(log) -> None:
            if log.epoch == stop_after:
                raise Interrupted

        result = fit(
            model,
            trainable(model),
            shuffled(dataset()),
            settings=settings(epochs=4),
            loss_fn=cross_entropy,
            monitor="train_loss",
            mode="min",
            checkpoint_dir=directory,
            on_epoch_end=interrupt,
        )
        return model, result

    straight, _ = run(tmp_path / "straight")
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", stop_after=2)
    resumed, result = run(tmp_path / "resumed", fresh_head=True)

    assert result.resumed_from == 2
    assert [log.epoch for log in result.history] == [1, 2, 3, 4]
    assert_same(weights(resumed), weights(straight))


def test_a_checkpoint_from_another_run_is_refused_naming_the_key(tmp_path: Path) -> None:
    model = Net()
    common = {"settings": settings(epochs=2), "monitor": None, "checkpoint_dir": tmp_path}
    fit(
        model,
        trainable(model),
        shuffled(dataset()),
        loss_fn=cross_entropy,
        fingerprint={"backbone": "dinov3-vits16", "phase": "1"},
        **common,
    )
    steps = 0

    def counting_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        nonlocal steps
        steps += 1
        return cross_entropy(model, batch)

    with pytest.raises(CheckpointMismatch, match="backbone") as err:
        fit(
            model,
            trainable(model),
            shuffled(dataset()),
            loss_fn=counting_loss,
            fingerprint={"backbone": "dinov3-vitb16", "phase": "1"},
            **common,
        )
    assert err.value.keys == ["backbone"]
    assert steps == 0


def test_checkpoints_hold_only_tensors_and_plain_data(tmp_path: Path) -> None:
    model = Net()
    fit(
        model,
        trainable(model),
        shuffled(dataset()),
        settings=settings(),
        loss_fn=cross_entropy,
        monitor="train_loss",
        mode="min",
        checkpoint_dir=tmp_path,
        fingerprint={"phase": "1"},
    )
    path = tmp_path / CHECKPOINT_NAME

    with zipfile.ZipFile(path) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    imported = {arg for op, arg, _ in pickletools.genops(pickled) if op.name == "GLOBAL"}
    assert "torch._utils _rebuild_tensor_v2" in imported  # the scan does see what is imported
    assert all(name.startswith("torch") or name == "collections OrderedDict" for name in imported)

    def leaves(value: object) -> list[object]:
        if isinstance(value, dict):
            return [leaf for k, v in value.items() for leaf in leaves(k) + leaves(v)]
        if isinstance(value, list | tuple):
            return [leaf for v in value for leaf in leaves(v)]
        return [value]

    payload = torch.load(path, weights_only=True)
    plain = (torch.Tensor, int, float, str, bool, type(None))
    assert all(isinstance(leaf, plain) for leaf in leaves(payload))


def test_checkpoints_save_only_trainable_parameters_and_their_modules_buffers(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    frozen = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).requires_grad_(False)
    model = nn.Sequential(
        OrderedDict(backbone=frozen, norm=nn.BatchNorm1d(8), head=nn.Linear(8, 3))
    )
    fit(
        model,
        trainable(model),
        shuffled(dataset()),
        settings=settings(epochs=1),
        loss_fn=cross_entropy,
        monitor="train_loss",
        mode="min",
        checkpoint_dir=tmp_path,
    )

    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    norm = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = {"head.weight", "head.bias", *(f"norm.{n}" for n in norm)}
    assert set(payload["model"]) == expected
    assert set(payload["best"]["state"]) == expected


def test_progress_counts_every_micro_batch_up_to_the_total() -> None:
    calls: list[tuple[int, int]] = []
    model = Net()
    fit(
        model,
        trainable(model),
        shuffled(dataset(36)),  # 9 batches of 4
        settings=settings(epochs=3, gradient_accumulation=2),
        loss_fn=cross_entropy,
        monitor=None,
        progress=lambda done, total: calls.append((done, total)),
    )

    assert calls == [(done, 27) for done in range(1, 28)]


def test_early_stopping_still_ends_progress_at_the_total() -> None:
    calls: list[tuple[int, int]] = []
    model = Net()
    result = fit(
        model,
        trainable(model),
        shuffled(dataset()),  # 8 batches of 4
        settings=settings(epochs=5, early_stopping_patience=1),
        loss_fn=cross_entropy,
        eval_fn=lambda _model: {"val_accuracy": 0.5},
        progress=lambda done, total: calls.append((done, total)),
    )

    assert result.stopped_early
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert calls[-1] == (40, 40)


def test_bf16_autocast_runs_on_cpu_when_asked() -> None:
    seen: list[tuple[bool, torch.dtype]] = []

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        logits = model(batch[0])
        seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
        return F.cross_entropy(logits, batch[1])

    model = Net()
    result = fit(
        model,
        trainable(model),
        shuffled(dataset()),
        settings=settings(precision="bf16"),
        loss_fn=loss,
        monitor=None,
    )

    assert set(seen) == {(True, torch.bfloat16)}
    assert all(math.isfinite(log.train_loss) for log in result.history)


def test_auto_precision_on_cpu_is_fp32_and_fp16_is_refused() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    with pytest.raises(TrainingError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)


def test_cosine_schedule_warms_up_then_decays_towards_zero() -> None:
    factors = [lr_factor(step, 100) for step in range(100)]
    assert factors[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert 0 < factors[-1] < 0.001
