"""From a source string to a local folder of safetensors, for the three scouting models.

The same four kinds as the backbone (`aads.backbone.loading.source_kind`): a Hugging Face id
(a snapshot of the files we need, honouring ``HF_HUB_OFFLINE``), a local directory, an
``s3://`` mirror (a verified cached copy through `aads.storage`), and ``random:<preset>``
(built in code by `aads.vlm.presets`, never a folder). Weights are read from safetensors
only: a pickle checkpoint can execute code when unpickled, so it is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from aads.backbone import BackboneError, hub_environment, mirror_instructions, source_kind
from aads.config import StorageSettings

from .errors import VLMError, VLMNotAvailable

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
HF_MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")
"""What a Hub snapshot fetches: configs, weights, tokenizer files; never pickles."""


def resolve_source_dir(
    source: str,
    storage: StorageSettings | None,
    *,
    what: str,
    revision: str | None = None,
    patterns: Sequence[str] = HF_MODEL_FILES,
) -> Path:
    """A local folder holding the files of a non-random `source` (`what` names the model in
    errors, e.g. "grounding_dino")."""
    try:
        kind = source_kind(source)
    except BackboneError as err:
        raise VLMError(f"{what}: {err}") from None
    if kind in ("random", "synthetic"):
        raise VLMError(f"{what}: '{source}' is built in code, not a folder")
    if revision is not None and kind != "hub":
        raise VLMError(f"{what}: revision applies to Hugging Face ids only, not '{source}'")
    if kind == "hub":
        return _hub_snapshot(source, revision, patterns, what)
    if kind == "s3":
        if storage is None:
            raise VLMError(f"{what}: source '{source}' needs storage settings (`storage:`)")
        from aads.storage import StorageError, fetch_dir_cached  # lazy: the S3 client

        try:
            return Path(fetch_dir_cached(source.rstrip("/"), storage))
        except StorageError as err:
            raise VLMNotAvailable(
                f"{what}: mirror '{source}' cannot be fetched: {err}", source=source
            ) from err
    directory = Path(source).expanduser().resolve()
    if not directory.is_dir():
        raise VLMError(f"{what}: directory {directory} does not exist")
    return directory


def _hub_snapshot(hf_id: str, revision: str | None, patterns: Sequence[str], what: str) -> Path:
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
        why = (
            "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
            if env.offline
            else f"the Hub refused or could not be reached ({type(err).__name__}: {err})"
        )
        raise VLMNotAvailable(
            f"{what}: '{hf_id}' is not available: {why}.\n{mirror_instructions(hf_id)}",
            source=hf_id,
        ) from None
    return Path(folder)


def safetensors_files(directory: Path, what: str) -> list[Path]:
    """The folder's ``*.safetensors`` files; a clear refusal when it holds only pickles."""
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise VLMError(
            f"{what}: {directory} holds only pickle weights ({', '.join(pickles)}); refusing to "
            "load them because unpickling can run arbitrary code. Convert them to safetensors "
            "on a machine where the file is trusted (safetensors.torch.save_file)."
        )
    raise VLMError(f"{what}: {directory} has no *.safetensors weights")


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise VLMError(f"{what}: cannot read {path} ({err})") from None
    if not isinstance(data, dict):
        raise VLMError(f"{what}: {path} is not a JSON object")
    return data


def load_hf_model(
    model_class: type[PreTrainedModel],
    directory: Path,
    *,
    model_type: str,
    dtype: torch.dtype,
    what: str,
) -> PreTrainedModel:
    """A transformers model saved with ``save_pretrained``: right type, safetensors, complete.

    transformers fills missing or mis-shaped weights with random values and only warns; a
    detector with random heads answers confidently and wrongly, so that is refused here.
    """
    safetensors_files(directory, what)
    config = read_json(directory / "config.json", what)
    if config.get("model_type") != model_type:
        raise VLMError(
            f"{what}: {directory} holds a '{config.get('model_type')}' model, expected "
            f"'{model_type}'"
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(
            directory,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            output_loading_info=True,
        )
    except Exception as err:  # safetensors, shape and I/O errors all mean "unusable weights"
        raise VLMError(f"{what}: cannot load {directory} ({err})") from err
    problems = {k: info.get(k) for k in ("missing_keys", "mismatched_keys") if info.get(k)}
    if problems:
        details = "; ".join(f"{k}: {sorted(map(str, v))[:8]}" for k, v in problems.items())
        raise VLMError(f"{what}: weights in {directory} do not match its config ({details})")
    return model


def random_preset(source: str) -> str | None:
    """The preset name of a ``random:<preset>`` source, else None."""
    return source.removeprefix("random:") if source.startswith("random:") else None
