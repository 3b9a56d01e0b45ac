"""Typed errors of the backbone package, so callers (CLI, KFP components, KServe) can map each
to a clear message or HTTP status without parsing strings."""

from __future__ import annotations

from pathlib import Path

from aads.errors import BadInput


class BackboneError(BadInput):
    """A backbone source, setting or request that cannot be honoured; the message says why and
    what to do instead."""


class BackboneNotAvailable(BackboneError):
    """The weights exist in principle (a Hub id) but cannot be read here: offline, gated, or not
    mirrored. The message names the id and how to mirror it into the object store."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


class ImageDecodeError(BadInput):
    """An input that is not a decodable image (corrupt, truncated, not an image, too large).

    Kept apart from `BackboneError`: it is a data problem, and serving maps it to a 4xx."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = path
