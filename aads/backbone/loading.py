"""`load_backbone`: one entry point from `BackboneSettings` to a ready `Backbone`.

Four kinds of source share one path after the weights are found: a Hugging Face id, a local
directory written by ``save_pretrained``, an ``s3://`` mirror (fetched into a verified local
cache by `aads.storage`), and ``random:<preset>``. Weights are read from safetensors only:
a pickle checkpoint can execute code when loaded, so it is refused, never unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from aads.atomic import atomic_write_text
from aads.config import BackboneSettings, StorageSettings
from aads.progress import Progress

from .base import Backbone
from .device import resolve_device, resolve_dtype
from .errors import BackboneError, BackboneNotAvailable
from .generations import generation_of
from .hub import check_hub_id, hub_environment, not_available
from .normalization import PREPROCESSOR_CONFIG, normalization_for, preprocessor_config
from .presets import build_random_model
from .synthetic import ensure_synthetic_backbone
from .variants import MODEL_TYPES, VARIANTS, Variant, find_variant

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

SourceKind = Literal["random", "synthetic", "s3", "local", "hub"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}


def source_kind(source: str) -> SourceKind:
    """Classify a ``source:`` string. An existing directory wins over a same-named Hub id, as
    in transformers; a path-looking string that does not exist is a local source (and fails
    with "no such directory" rather than a confusing Hub lookup)."""
    if source.startswith("random:"):
        return "random"
    if source.startswith("synthetic:"):
        return "synthetic"
    if source.startswith("s3://"):
        return "s3"
    if "://" in source:
        raise BackboneError(
            f"unsupported source scheme in '{source}': use a Hugging Face id, a directory, "
            "s3://bucket/prefix, random:<preset> or synthetic:<preset>"
        )
    if Path(source).expanduser().exists() or source.startswith(("/", ".", "~")):
        return "local"
    if _HUB_ID.fullmatch(source):
        return "hub"
    raise BackboneError(f"'{source}' is neither a Hugging Face id nor an existing directory")


def load_backbone(
    settings: BackboneSettings,
    storage: StorageSettings | None = None,
    *,
    progress: Progress | None = None,
) -> Backbone:
    """Load the backbone `settings` describe, on its device and dtype, in eval mode.

    Raises `BackboneNotAvailable` for Hub weights that cannot be read here (with mirroring
    instructions) and `BackboneError` for every other unusable source.
    """
    kind = source_kind(settings.source)
    if settings.revision is not None and kind != "hub":
        raise BackboneError(
            f"revision '{settings.revision}' applies to Hugging Face ids only, "
            f"not to '{settings.source}'"
        )
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)

    model_dir: Path | None = None
    variant: Variant | None = None
    if kind == "random":
        preset = settings.source.removeprefix("random:")
        model = build_random_model(preset, settings.seed).to(dtype=dtype)
        canonical = f"random:{preset}@seed={settings.seed}"
    elif kind == "synthetic":
        preset = settings.source.removeprefix("synthetic:")
        cache_root = (storage or StorageSettings()).cache_dir
        model_dir = ensure_synthetic_backbone(
            preset, settings.seed, settings.image_size, cache_root, progress=progress
        )
        model = load_local_dir(model_dir, dtype)
        canonical = f"synthetic:{preset}@seed={settings.seed}"
    elif kind == "hub":
        model = _load_hub(settings.source, settings.revision, dtype)
        variant = find_variant(settings.source)
        canonical = settings.source + (f"@{settings.revision}" if settings.revision else "")
    else:
        if kind == "s3":
            canonical = settings.source.rstrip("/")
            model_dir = _fetch_s3(canonical, storage)
        else:
            model_dir = Path(settings.source).expanduser().resolve()
            canonical = str(model_dir)
        model = load_local_dir(model_dir, dtype)
        variant = _variant_named_in(canonical, model.config)

    _check_patch_multiple(settings.image_size, model.config, canonical)
    if settings.gradient_checkpointing:
        _enable_gradient_checkpointing(model, canonical)
    model = model.to(device=device).eval()
    return Backbone(
        model=model,
        config=model.config,
        variant=variant,
        normalization=normalization_for(canonical, settings.normalization, model_dir=model_dir),
        image_size=settings.image_size,
        pooling=settings.pooling,
        device=device,
        dtype=dtype,
        source=canonical,
    )


def load_local_dir(directory: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A DINOv3 or DINOv2 model from a ``save_pretrained`` directory (safetensors only)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # AADS reports its own progress; no per-tensor bars
    _check_model_dir(directory)
    try:
        model_type = json.loads((directory / "config.json").read_text(encoding="utf-8"))[
            "model_type"
        ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BackboneError(f"{directory}/config.json has no readable model_type ({err})") from None
    _check_model_type(str(model_type), str(directory))
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    try:
        model, info = AutoModel.from_pretrained(
            directory,
            config=config,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            output_loading_info=True,
        )
    except Exception as err:  # safetensors, shape and I/O errors all mean "unusable weights"
        raise BackboneError(f"{directory}: cannot load weights ({err})") from err
    _check_complete(info, str(directory))
    return model


def save_backbone(backbone: Backbone, directory: str | Path) -> Path:
    """Write `backbone` as a Hub-style directory: ``config.json``, ``model.safetensors`` and a
    ``preprocessor_config.json`` holding its normalisation, so loading the directory (or its
    ``s3://`` mirror) with ``normalization: auto`` feeds it the same statistics."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    backbone.model.save_pretrained(out)
    processor = backbone.generation.image_processor
    config = preprocessor_config(backbone.normalization, backbone.image_size, processor)
    atomic_write_text(out / PREPROCESSOR_CONFIG, json.dumps(config, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- helpers


def _load_hub(hf_id: str, revision: str | None, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoConfig, AutoModel

    check_hub_id(hf_id)
    env = hub_environment()
    common: dict[str, object] = {"local_files_only": env.offline}
    if env.cache_dir is not None:
        common["cache_dir"] = env.cache_dir
    if revision is not None:
        common["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(hf_id, **common)
    except OSError as err:  # not found, gated, offline: huggingface_hub errors are OSErrors
        raise not_available(hf_id, env, err) from None
    except (ValueError, KeyError) as err:
        raise BackboneError(f"'{hf_id}': unsupported model ({err})") from None
    _check_model_type(config.model_type, hf_id)
    try:
        model, info = AutoModel.from_pretrained(
            hf_id,
            config=config,
            use_safetensors=True,
            dtype=dtype,
            output_loading_info=True,
            **common,
        )
    except OSError as err:
        raise not_available(hf_id, env, err) from None
    _check_complete(info, hf_id)
    return model


def _fetch_s3(uri: str, storage: StorageSettings | None) -> Path:
    if storage is None:
        raise BackboneError(f"source '{uri}' needs storage settings (the `storage:` section)")
    from aads.storage import StorageError, fetch_dir_cached  # lazy: pulls in the S3 client

    try:
        return Path(fetch_dir_cached(uri, storage))
    except StorageError as err:  # unreachable store, nothing under the prefix, bad checksum
        raise BackboneNotAvailable(
            f"backbone mirror '{uri}' cannot be fetched: {err}", source=uri
        ) from err


def _check_model_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise BackboneError(f"backbone directory {directory} does not exist")
    if not (directory / "config.json").is_file():
        raise BackboneError(
            f"{directory} has no config.json: save backbones with save_pretrained / save_backbone"
        )
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = [n for n in names if Path(n).suffix in _PICKLE_SUFFIXES]
    if pickles:
        raise BackboneError(
            f"{directory} holds only pickle weights ({', '.join(pickles)}); refusing to load them "
            "because unpickling can run arbitrary code. On a machine where the file is trusted, "
            "convert it: AutoModel.from_pretrained(DIR).save_pretrained(NEW_DIR) writes "
            "model.safetensors."
        )
    raise BackboneError(f"{directory} has no *.safetensors weights")


def _check_complete(info: dict[str, object], where: str) -> None:
    """transformers fills missing or mis-shaped weights with random values and only warns;
    a backbone with random blocks would silently produce garbage features, so refuse it."""
    problems = {k: info.get(k) for k in ("missing_keys", "mismatched_keys") if info.get(k)}
    if problems:
        details = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise BackboneError(f"'{where}': weights do not match the model config ({details})")


def _check_model_type(model_type: str, where: str) -> None:
    if model_type not in MODEL_TYPES:
        hint = (
            " (DINOv2 with registers is a different architecture; use plain DINOv2)"
            if model_type == "dinov2_with_registers"
            else ""
        )
        raise BackboneError(
            f"'{where}' is a '{model_type}' model{hint}; supported model types: "
            f"{', '.join(MODEL_TYPES)} (DINOv3 ViT and ConvNeXt, DINOv2)"
        )


def _check_patch_multiple(image_size: int, config: PretrainedConfig, source: str) -> None:
    """A side that is not a multiple of the patch makes the patch convolution drop the last
    pixels silently (256 px at patch 14: 18 patches, 4 px lost), so refuse it. The config
    checks this already when the source string names its generation; a directory or a mirror
    is only known once loaded."""
    patch = getattr(config, "patch_size", None)
    if patch and image_size % int(patch):
        title = generation_of(config).title
        fits = (image_size // patch) * patch
        raise BackboneError(
            f"image_size {image_size} is not a multiple of the patch size {patch} of '{source}' "
            f"({title}); use {fits} or {fits + patch}"
        )


def _variant_named_in(source: str, config: PretrainedConfig) -> Variant | None:
    """The released checkpoint a mirror path names (``.../facebook/dinov3-vitl16-...``), if
    the loaded shape agrees with it; None for anything else (fine-tunes, random saves)."""
    for v in VARIANTS:
        if not source.endswith((v.hf_id, v.hf_id.split("/")[1])):
            continue
        width = config.hidden_sizes[-1] if v.family == "convnext" else config.hidden_size
        same_kind = MODEL_TYPES.get(config.model_type) == v.family
        if same_kind and generation_of(config).name == v.generation and width == v.width:
            return v
    return None


def _enable_gradient_checkpointing(model: PreTrainedModel, source: str) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise BackboneError(
            f"gradient_checkpointing is not supported by '{source}' ({type(model).__name__}); "
            "set it to false"
        )
    # Non-reentrant checkpointing works with frozen inputs and PEFT adapters. transformers 5
    # renamed gradient_checkpointing_enable (deprecated, removed in v6) to this.
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
