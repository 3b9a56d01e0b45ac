"""DistributedDataParallel through `fit`: two CPU ranks on gloo, started by torchrun.

Why the runs must match: with a `DistributedSampler` (shuffle off) rank r takes samples r, r+2,
r+4, ... Each rank accumulates k=2 micro-batches of b=2 per optimizer step (gradient sync
skipped on the first, `no_sync`), so step j sees samples 8j..8j+7: {8j, 8j+2}, {8j+4, 8j+6} on
rank 0 and the odd ones on rank 1. Accumulation averages a rank's micro-batch gradients and DDP
averages the ranks', which is the mean gradient over those 8 equal-weight samples: the gradient
of one single-process batch of 2kb = 8 samples in plain order. With plain SGD the weights agree
up to float summation order (1e-6).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from aads.training import fit
from tests.conftest import ROOT, free_port
from tests.ddp_worker import (
    ACCUMULATION,
    PER_RANK_BATCH,
    SETTINGS,
    build_model,
    cross_entropy,
    dataset,
)

pytestmark = pytest.mark.slow  # torchrun starts worker processes

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run the worker on two ranks once; each rank's saved results."""
    out = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(ROOT / "tests" / "ddp_worker.py"),
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def single_process_large_batch() -> tuple[dict[str, torch.Tensor], list[float]]:
    model = build_model()
    combined = WORLD * ACCUMULATION * PER_RANK_BATCH
    settings = SETTINGS.model_copy(update={"batch_size": combined, "gradient_accumulation": 1})
    result = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=settings.lr),
        DataLoader(dataset(), batch_size=settings.batch_size),
        settings=settings,
        loss_fn=cross_entropy,
        monitor=None,
    )
    return model.state_dict(), [log.train_loss for log in result.history]


def test_ranks_end_with_equal_parameters(ranks: list[dict]) -> None:
    assert ranks[0]["world_size"] == WORLD
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=0, atol=0, msg=name)


def test_ddp_matches_one_process_with_the_combined_batch(ranks: list[dict]) -> None:
    params, losses = single_process_large_batch()
    for name, value in params.items():
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=0, atol=1e-6, msg=name)
    assert ranks[0]["train_loss"] == pytest.approx(losses, abs=1e-6)


def test_only_rank_zero_reports(ranks: list[dict]) -> None:
    batches = len(dataset()) // (WORLD * PER_RANK_BATCH) * SETTINGS.epochs  # per rank
    assert (ranks[0]["progress"], ranks[0]["epoch_end"]) == (batches, SETTINGS.epochs)
    assert (ranks[1]["progress"], ranks[1]["epoch_end"]) == (0, 0)
