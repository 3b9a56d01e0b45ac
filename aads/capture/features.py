"""The adapter's own features of captured images: what drift compares with the calibration
images and what review clusters.

Images go through the serving transform (`preprocess_image` at the backbone's size and
normalisation) and the adapter's network (`LoadedAdapter.features_and_logits`), so the vectors
are exactly those the OOD check scored when the image was answered; for a CONEC adapter the
domain its selector picked for each image comes along.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aads.adapters.loading import LoadedAdapter, load_adapter
from aads.adapters.package import PackageError
from aads.backbone import ImageDecodeError, open_image, preprocess_image
from aads.config import PlatformConfig
from aads.progress import Progress


@dataclass(frozen=True)
class AnsweringAdapter:
    """The adapter package that answered a crop's captures, loaded, and where it came from."""

    adapter: LoadedAdapter
    path: Path
    source: str  # as given, with the registry version for models:/ sources


def answering_adapter(
    config: PlatformConfig, crop: str, source: str | Path | None, tracking_uri: str | None = None
) -> AnsweringAdapter:
    """Load `source` (a folder, ``s3://`` or ``models:/``; default: the registry's champion of
    `crop`) and check it is a calibrated adapter of `crop`."""
    from aads.inference import resolve_model

    config.crop(crop)  # an unknown crop is a clear error naming the configured ones
    text = str(source or f"models:/{config.registry.adapter_model_prefix}{crop}@champion")
    resolved = resolve_model(text, config.storage, config.registry, tracking_uri=tracking_uri)
    adapter = load_adapter(
        resolved.path,
        config.storage,
        device=config.adapter.backbone.device,
        dtype=config.adapter.backbone.dtype,
    )
    if adapter.meta.crop != crop:
        raise PackageError(f"{text} is the '{adapter.meta.crop}' adapter, not '{crop}'")
    if adapter.ood is None:
        raise PackageError(f"{text}: no OOD calibration; run `aads ood calibrate` first")
    label = text + (f" (version {resolved.version})" if resolved.version else "")
    return AnsweringAdapter(adapter, resolved.path, label)


@dataclass(frozen=True)
class ImageFeatures:
    """Rows for the decodable images only; ``decoded[i]`` says whether image i has a row."""

    features: np.ndarray  # (n_decoded, F) float32
    domains: list[str | None]  # per row: the CONEC selector's domain, None without CONEC
    decoded: np.ndarray  # (N,) bool


def image_features(
    adapter: LoadedAdapter,
    images: Sequence[bytes | Path],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> ImageFeatures:
    """Pooled features (and CONEC domain picks) of `images` (encoded bytes or files), in
    order, one batch in memory at a time."""
    bb = adapter.backbone
    decoded = np.zeros(len(images), dtype=bool)
    rows: list[np.ndarray] = []
    domains: list[str | None] = []
    done = 0
    for start in range(0, len(images), batch_size):
        batch = []
        for i in range(start, min(start + batch_size, len(images))):
            try:
                batch.append(
                    preprocess_image(open_image(images[i]), bb.image_size, bb.normalization)
                )
                decoded[i] = True
            except ImageDecodeError:
                continue
        if batch:
            features, _ = adapter.features_and_logits(torch.stack(batch))
            rows.append(features.numpy().astype(np.float32))
            domains += adapter.domain_picks(len(batch))
        done = min(start + batch_size, len(images))
        if progress:
            progress(done, len(images))
    width = bb.feature_dim
    stacked = np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)
    return ImageFeatures(stacked, domains, decoded)


def training_domain_mix(adapter: LoadedAdapter) -> dict[str, float]:
    """Training images per domain, as CONEC's selector counted them (its sufficient statistics
    hold one count per domain); one domain for adapters without CONEC."""
    if adapter.conec is None:
        return {adapter.meta.domains[0]: 1.0}
    stats = getattr(adapter.conec.selector, "stats", None)
    counts = getattr(stats, "counts", None)
    if counts is None or len(counts) != len(adapter.meta.domains):
        return {d: 1.0 for d in adapter.meta.domains}
    return {d: float(c) for d, c in zip(adapter.meta.domains, counts.tolist(), strict=True)}
