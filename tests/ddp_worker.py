"""torchrun worker for tests/test_training_ddp.py: DDP training of a small MLP on gloo (CPU).

Run as ``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT``. Each rank
saves its final parameters, epoch losses and how often it reported to ``OUT/rank<r>.pt``; the
test compares them with a single-process run built from the same pieces below.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from aads.config import TrainingSettings
from aads.training import distributed_session, fit, make_train_loader

PER_RANK_BATCH = 2
ACCUMULATION = 2
SETTINGS = TrainingSettings(
    epochs=2,
    batch_size=PER_RANK_BATCH,
    gradient_accumulation=ACCUMULATION,
    lr=0.1,
    weight_decay=0.0,
    precision="fp32",
    early_stopping_patience=None,
)


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(24, 5, generator=g), torch.randint(0, 3, (24,), generator=g))


def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def main(out: Path) -> None:
    with distributed_session(device="cpu") as ctx:
        model = build_model()
        calls = {"progress": 0, "epoch_end": 0}

        def count(kind: str) -> None:
            calls[kind] += 1

        result = fit(
            model,
            torch.optim.SGD(model.parameters(), lr=SETTINGS.lr),
            make_train_loader(dataset(), SETTINGS, shuffle=False),
            settings=SETTINGS,
            loss_fn=cross_entropy,
            monitor=None,
            checkpoint_dir=out / "checkpoint",
            progress=lambda _done, _total: count("progress"),
            on_epoch_end=lambda _log: count("epoch_end"),
        )
        torch.save(
            {
                "params": model.state_dict(),
                "train_loss": [log.train_loss for log in result.history],
                "world_size": ctx.world_size,
                **calls,
            },
            out / f"rank{ctx.rank}.pt",
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
