"""Typed errors of the scouting stage, so serving maps each to an HTTP status in one place.

Bad *input* (a corrupt upload) is `aads.inference.InvalidRequest`, as everywhere else in
serving; these are about models and settings.
"""

from __future__ import annotations

from aads.errors import BadInput
from aads.model_sources import ModelKind


class VLMError(BadInput):
    """A scouting model source, checkpoint or setting that cannot be used; the message says
    which and what to do instead."""


class VLMNotAvailable(VLMError):
    """Weights that exist in principle (a Hub id) but cannot be read here: offline, gated or
    not mirrored. The message names the id and how to mirror it into the object store."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


def model_kind(name: str) -> ModelKind:
    """How the shared model-source loader (`aads.model_sources`) names scouting model `name`
    in its messages (``sam2: ...``) and which errors it raises for it."""
    return ModelKind(name=name, error=VLMError, not_available=VLMNotAvailable)
