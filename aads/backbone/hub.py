"""Hugging Face Hub specifics: the environment switches we honour, the ids we refuse up front,
and the message that explains how to mirror gated weights into the object store.

`hub_environment` is the only place in the package that reads ``HF_*`` variables (tests set
them with monkeypatch). huggingface_hub reads its own constants at import time, so we pass
``local_files_only`` and ``cache_dir`` explicitly on every call instead of relying on them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import BackboneError, BackboneNotAvailable
from .variants import find_variant, looks_like_fake_dinov3_id, unknown_id_message

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubEnvironment:
    offline: bool
    cache_dir: Path | None


def hub_environment(environ: Mapping[str, str] | None = None) -> HubEnvironment:
    """Read ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), ``HF_HUB_CACHE`` and ``HF_HOME``
    at the moment of use."""
    env = os.environ if environ is None else environ
    flags = (env.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    offline = any(f in _TRUE for f in flags)
    cache: Path | None = None
    if env.get("HF_HUB_CACHE"):
        cache = Path(env["HF_HUB_CACHE"])
    elif env.get("HF_HOME"):
        cache = Path(env["HF_HOME"]) / "hub"
    return HubEnvironment(offline=offline, cache_dir=cache)


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    """True when the Hub must not be contacted (``HF_HUB_OFFLINE=1``)."""
    return hub_environment(environ).offline


def mirror_instructions(hf_id: str) -> str:
    """How to make a gated checkpoint loadable in the cluster without Hub access."""
    variant = find_variant(hf_id)
    access = (
        f"has been granted access to the gated repo ({variant.licence})"
        if variant is not None and variant.gated
        else "can read it (a token with access, if the repo is gated or private)"
    )
    return (
        f"To use it without Hub access, mirror it once from a machine whose Hugging Face account "
        f"{access}:\n"
        f"  1. huggingface-cli download {hf_id} --local-dir DIR   (or: hf download ...)\n"
        f"  2. upload DIR to the object store, e.g. s3://<bucket>/backbones/{hf_id}/\n"
        f"  3. set `source: s3://<bucket>/backbones/{hf_id}` in the config"
    )


def check_hub_id(hf_id: str) -> None:
    """Refuse invented official-looking ids (a size word instead of the architecture name)
    before any download."""
    if looks_like_fake_dinov3_id(hf_id):
        raise BackboneError(unknown_id_message(hf_id))


def not_available(hf_id: str, env: HubEnvironment, err: BaseException) -> BackboneNotAvailable:
    """A `BackboneNotAvailable` for a Hub load that failed with `err`."""
    if env.offline:
        why = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        why = f"the Hub refused or could not be reached ({first})"
    return BackboneNotAvailable(
        f"backbone '{hf_id}' is not available: {why}.\n{mirror_instructions(hf_id)}",
        source=hf_id,
    )
