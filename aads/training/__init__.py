"""The training loop every phase shares: seeding, precision, accumulation, early stopping,
atomic resumable checkpoints, progress and DistributedDataParallel under torchrun."""

from .checkpoint import load_checkpoint, trainable_names, trainable_state
from .distributed import (
    DistContext,
    destroy_distributed,
    distributed_session,
    init_distributed,
    is_main_process,
    make_train_loader,
)
from .errors import CheckpointMismatch, TrainingError
from .loop import (
    CHECKPOINT_NAME,
    MAX_GRAD_NORM,
    EpochCallback,
    EpochLog,
    FitResult,
    batch_size,
    fit,
)
from .precision import Precision, resolve_precision
from .schedule import Schedule, lr_factor
from .seed import seed_everything, seeded_generator

__all__ = [
    "CHECKPOINT_NAME",
    "MAX_GRAD_NORM",
    "CheckpointMismatch",
    "DistContext",
    "EpochCallback",
    "EpochLog",
    "FitResult",
    "Precision",
    "Schedule",
    "TrainingError",
    "batch_size",
    "destroy_distributed",
    "distributed_session",
    "fit",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "lr_factor",
    "make_train_loader",
    "resolve_precision",
    "seed_everything",
    "seeded_generator",
    "trainable_names",
    "trainable_state",
]
