"""Pretrained models from a source string, read from safetensors only: one loader for the
DINOv3/DINOv2 backbones and the scouting models (Grounding DINO, SAM 2, BioCLIP).

A source is a Hugging Face id (a snapshot of the files we need, honouring ``HF_HUB_OFFLINE``),
a local directory written by ``save_pretrained``, an ``s3://`` mirror (a verified cached copy
through `aads.storage`), or ``random:<preset>`` / ``synthetic:<preset>``, which the caller
builds in code. `source_dir` turns the first three into a local folder and `load_pretrained`
loads a transformers model from it: right model type, safetensors only (a pickle checkpoint
can execute code when unpickled, so it is refused unread), and complete (transformers fills
missing weights with random values and only warns; a model with random blocks answers
confidently and wrongly, so that is refused too).

Each caller describes itself with a `ModelKind`: the name its messages start with and its own
error classes (`BackboneError` / `BackboneNotAvailable`, `VLMError` / `VLMNotAvailable`), so
what it raises stays its own kind. `hub_environment` is the only place in the package that
reads ``HF_*`` variables; huggingface_hub reads its own constants at import time, so
``local_files_only`` and ``cache_dir`` are passed explicitly on every call.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aads.config import StorageSettings
from aads.errors import AADSError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

SourceKind = Literal["random", "synthetic", "s3", "local", "hub"]
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
HF_MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")
"""What a Hub snapshot fetches: configs, weights, tokenizer files; never pickles."""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")
_HUB_ID_MAX = 96  # huggingface_hub's limit on a repo id
_TRUE = {"1", "true", "yes", "on"}
_LISTED = 5


def _no_licence(_hf_id: str) -> str | None:
    return None


@dataclass(frozen=True)
class ModelKind:
    """How one caller's model is named and reported.

    ``name`` starts every message (``backbone``, ``sam2``); ``error`` is raised for sources
    and files that cannot be used, ``not_available`` (a subclass, built with ``source=``) for
    weights that exist but cannot be read here. ``gated_licence`` names the licence of a
    gated Hub id, for the mirroring instructions; ``type_hints`` explains a config
    ``model_type`` that people mistake for an accepted one.
    """

    name: str
    error: type[AADSError]
    not_available: Callable[..., AADSError]
    gated_licence: Callable[[str], str | None] = _no_licence
    type_hints: Mapping[str, str] = field(default_factory=dict)

    def fail(self, message: str) -> AADSError:
        return self.error(f"{self.name}: {message}")

    def unavailable(self, message: str, source: str) -> AADSError:
        return self.not_available(f"{self.name}: {message}", source=source)


# --------------------------------------------------------------------------- Hugging Face Hub


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


def mirror_instructions(hf_id: str, gated_licence: str | None = None) -> str:
    """How to make a Hub checkpoint loadable in the cluster without Hub access."""
    access = (
        f"has been granted access to the gated repo ({gated_licence})"
        if gated_licence
        else "can read it (a token with access, if the repo is gated or private)"
    )
    return (
        f"To use it without Hub access, mirror it once from a machine whose Hugging Face account "
        f"{access}:\n"
        f"  1. huggingface-cli download {hf_id} --local-dir DIR   (or: hf download ...)\n"
        f"  2. upload DIR to the object store, e.g. s3://<bucket>/backbones/{hf_id}/\n"
        f"  3. set `source: s3://<bucket>/backbones/{hf_id}` in the config"
    )


# --------------------------------------------------------------------------- sources


def source_kind(source: str, kind: ModelKind, *, revision: str | None = None) -> SourceKind:
    """Classify a ``source:`` string; a `revision` is refused for anything but a Hub id.

    An existing directory wins over a same-named Hub id, as in transformers; a path-looking
    string that does not exist is a local source (and fails with "does not exist" rather than
    a confusing Hub lookup).
    """
    found = _classify(source, kind)
    if revision is not None and found != "hub":
        raise kind.fail(f"revision '{revision}' applies to Hugging Face ids only, not '{source}'")
    return found


def _classify(source: str, kind: ModelKind) -> SourceKind:
    if source.startswith("random:"):
        return "random"
    if source.startswith("synthetic:"):
        return "synthetic"
    if source.startswith("s3://"):
        return "s3"
    if "://" in source:
        raise kind.fail(
            f"unsupported source scheme in '{source}': use a Hugging Face id, a directory, "
            "s3://bucket/prefix, random:<preset> or synthetic:<preset>"
        )
    if _existing_path(source) or source.startswith(("/", ".", "~")):
        return "local"
    if len(source) <= _HUB_ID_MAX and _HUB_ID.fullmatch(source):
        return "hub"
    raise kind.fail(f"'{source}' is neither a Hugging Face id nor an existing directory")


def random_preset(source: str) -> str | None:
    """The preset name of a ``random:<preset>`` source, else None."""
    return source.removeprefix("random:") if source.startswith("random:") else None


def source_dir(
    source: str,
    storage: StorageSettings | None,
    kind: ModelKind,
    *,
    revision: str | None = None,
    patterns: Sequence[str] = HF_MODEL_FILES,
    model_types: Collection[str] = (),
) -> Path:
    """A local folder holding the files of a Hub, directory or ``s3://`` `source`.

    A Hub id fetches only `patterns`; with `model_types`, its ``config.json`` is fetched and
    checked first, so a model of the wrong kind is refused before its weights download.
    """
    found = source_kind(source, kind, revision=revision)
    if found in ("random", "synthetic"):
        raise kind.fail(f"'{source}' is built in code, not a folder")
    if found == "hub":
        if model_types:
            config = _hub_snapshot(source, revision, ["config.json"], kind) / "config.json"
            check_model_type(read_json(config, kind), model_types, source, kind)
        return _hub_snapshot(source, revision, patterns, kind)
    if found == "s3":
        return _fetch_mirror(source.rstrip("/"), storage, kind)
    try:
        directory = Path(source).expanduser().resolve()
        present = directory.is_dir()
    except (OSError, RuntimeError) as err:  # a name too long, ~user of no such user, a loop
        raise kind.fail(f"'{source}' is not a usable directory ({err})") from None
    if not present:
        raise kind.fail(f"directory {directory} does not exist")
    return directory


def _existing_path(source: str) -> bool:
    """Whether `source` names something on disk; a string no filesystem accepts does not."""
    try:
        return Path(source).expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return False


def _hub_snapshot(
    hf_id: str, revision: str | None, patterns: Sequence[str], kind: ModelKind
) -> Path:
    from huggingface_hub import snapshot_download

    env = hub_environment()
    try:
        folder = snapshot_download(
            hf_id,
            revision=revision,
            allow_patterns=list(patterns),
            local_files_only=env.offline,
            cache_dir=env.cache_dir,
        )
    except Exception as err:  # noqa: BLE001 - offline, gated, 404, network: all "not here"
        if env.offline:
            why = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
        else:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            why = f"the Hub refused or could not be reached ({type(err).__name__}: {first})"
        how = mirror_instructions(hf_id, kind.gated_licence(hf_id))
        raise kind.unavailable(f"'{hf_id}' is not available: {why}.\n{how}", hf_id) from None
    return Path(folder)


def _fetch_mirror(uri: str, storage: StorageSettings | None, kind: ModelKind) -> Path:
    if storage is None:
        raise kind.fail(f"source '{uri}' needs storage settings (the `storage:` section)")
    from aads.storage import StorageError, fetch_dir_cached  # lazy: pulls in the S3 client

    try:
        return Path(fetch_dir_cached(uri, storage))
    except StorageError as err:  # unreachable store, nothing under the prefix, bad checksum
        raise kind.unavailable(f"mirror '{uri}' cannot be fetched: {err}", uri) from err


# --------------------------------------------------------------------------- files


def safetensors_files(directory: Path, kind: ModelKind) -> list[Path]:
    """The folder's ``*.safetensors`` files; a clear refusal when it holds only pickles."""
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise kind.fail(
            f"{directory} holds only pickle weights ({', '.join(pickles)}); refusing to load "
            "them because unpickling can run arbitrary code. On a machine where the file is "
            "trusted, convert it: AutoModel.from_pretrained(DIR).save_pretrained(NEW_DIR) "
            "writes model.safetensors (or use safetensors.torch.save_file)."
        )
    raise kind.fail(f"{directory} has no *.safetensors weights")


def read_json(path: Path, kind: ModelKind) -> dict:
    """A JSON object from `path`, or the caller's error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise kind.fail(f"cannot read {path} ({err})") from None
    if not isinstance(data, dict):
        raise kind.fail(f"{path} is not a JSON object")
    return data


def check_model_type(
    config: Mapping[str, object], model_types: Collection[str], where: str, kind: ModelKind
) -> None:
    """Refuse a ``config.json`` whose ``model_type`` is not one of `model_types`."""
    found = str(config.get("model_type"))
    if found in model_types:
        return
    hint = f" ({kind.type_hints[found]})" if found in kind.type_hints else ""
    expected = " or ".join(f"'{t}'" for t in model_types)
    raise kind.fail(f"'{where}' holds a '{found}' model{hint}, expected {expected}")


def load_pretrained(
    model_class: type[PreTrainedModel],
    directory: Path,
    kind: ModelKind,
    *,
    model_types: Collection[str],
    dtype: torch.dtype,
) -> PreTrainedModel:
    """A transformers model saved with ``save_pretrained`` in `directory`: one of
    `model_types`, safetensors only, every weight present with the config's shape."""
    directory = Path(directory)
    try:
        present = directory.is_dir()
    except OSError as err:
        raise kind.fail(f"{directory} is not a usable directory ({err})") from None
    if not present:
        raise kind.fail(f"directory {directory} does not exist")
    if not (directory / "config.json").is_file():
        raise kind.fail(f"{directory} has no config.json: save models with save_pretrained")
    safetensors_files(directory, kind)
    check_model_type(read_json(directory / "config.json", kind), model_types, str(directory), kind)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # AADS reports its own progress; no per-tensor bars
    try:
        model, info = model_class.from_pretrained(
            directory,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            output_loading_info=True,
        )
    except Exception as err:  # safetensors, shape and I/O errors all mean "unusable weights"
        raise kind.fail(f"cannot load weights from {directory} ({err})") from err
    problems = {k: info.get(k) for k in ("missing_keys", "mismatched_keys") if info.get(k)}
    if problems:
        details = "; ".join(f"{k}: {sorted(map(str, v))[:_LISTED]}" for k, v in problems.items())
        raise kind.fail(f"weights in {directory} do not match its config ({details})")
    return model
