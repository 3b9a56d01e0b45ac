"""Typed errors of the training loop, so callers (CLI, KFP components) can tell a run that
cannot start from a run that crashed."""

from __future__ import annotations

from collections.abc import Sequence

from aads.errors import BadInput


class TrainingError(BadInput, RuntimeError):
    """A run that cannot start or cannot go on with these settings (the message says why)."""


class CheckpointMismatch(TrainingError):
    """A checkpoint written by another run: other backbone, phase, classes or parameters.

    Raised before any training step, so resuming never mixes weights of two runs. ``keys``
    names what differs (fingerprint keys, or parameter names).
    """

    def __init__(self, message: str, keys: Sequence[str]):
        super().__init__(message)
        self.keys = list(keys)
