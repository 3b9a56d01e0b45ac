"""`load_backbone`: one entry point from `BackboneSettings` to a ready `Backbone`.

Four kinds of source share one path after the weights are found: a Hugging Face id, a local
directory written by ``save_pretrained``, an ``s3://`` mirror (fetched into a verified local
cache by `aads.storage`), and ``random:<preset>`` / ``synthetic:<preset>`` built in code. Finding
and reading the weights (safetensors only, complete, the right model type) is
`aads.model_sources`, shared with the scouting models; errors stay `BackboneError` /
`BackboneNotAvailable` (`hub.BACKBONE`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from aads import model_sources
from aads.atomic import atomic_write_text
from aads.config import BackboneSettings, StorageSettings
from aads.model_sources import SourceKind
from aads.progress import Progress

from .base import Backbone
from .device import resolve_device, resolve_dtype
from .errors import BackboneError
from .generations import generation_of
from .hub import BACKBONE, check_hub_id
from .normalization import PREPROCESSOR_CONFIG, normalization_for, preprocessor_config
from .presets import build_random_model
from .synthetic import ensure_synthetic_backbone
from .variants import MODEL_TYPES, VARIANTS, Variant, find_variant

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


def source_kind(source: str) -> SourceKind:
    """Classify a backbone ``source:`` string (`aads.model_sources.source_kind`)."""
    return model_sources.source_kind(source, BACKBONE)


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
    kind = model_sources.source_kind(settings.source, BACKBONE, revision=settings.revision)
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
        check_hub_id(settings.source)
        snapshot = model_sources.source_dir(
            settings.source,
            storage,
            BACKBONE,
            revision=settings.revision,
            model_types=MODEL_TYPES,
        )
        model = load_local_dir(snapshot, dtype)
        variant = find_variant(settings.source)
        canonical = settings.source + (f"@{settings.revision}" if settings.revision else "")
    else:
        model_dir = model_sources.source_dir(settings.source, storage, BACKBONE)
        canonical = settings.source.rstrip("/") if kind == "s3" else str(model_dir)
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
    from transformers import AutoModel

    return model_sources.load_pretrained(
        AutoModel, directory, BACKBONE, model_types=MODEL_TYPES, dtype=dtype
    )


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
