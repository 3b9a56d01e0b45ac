"""Cached backbone features of manifest images: extract once, train heads and fit OOD fast.

A frozen backbone gives the same vector for the same image, so the router heads, prototypes and
benchmarks read features from a safetensors file keyed by image sha256 instead of re-running
the ViT every epoch. The file records what produced it (backbone source, pooling, input size,
normalisation, manifest hash), and `load_features` refuses a cache made by another backbone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from aads.atomic import atomic_write
from aads.backbone import Backbone, FeatureExtractor, preprocess_image
from aads.data.dataset import ManifestDataset, make_loader
from aads.data.manifest import ManifestRow
from aads.errors import BadInput
from aads.progress import Progress

FORMAT = "aads-features/1"


class FeatureCacheError(BadInput):
    """A feature file that does not match what the caller needs."""


@dataclass(frozen=True)
class FeatureTable:
    """Features in row order, with the image hashes that key them."""

    sha256: list[str]
    features: torch.Tensor  # (N, D) float32
    meta: dict[str, str]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.shape[0] != len(self.sha256):
            raise FeatureCacheError(
                f"{len(self.sha256)} hashes but features of shape {tuple(self.features.shape)}"
            )

    def take(self, hashes: Sequence[str]) -> torch.Tensor:
        """Rows for `hashes`, in that order; a hash not in the table is an error."""
        index = {h: i for i, h in enumerate(self.sha256)}
        missing = [h for h in hashes if h not in index]
        if missing:
            raise FeatureCacheError(
                f"{len(missing)} image(s) have no cached features (first: {missing[0][:16]}); "
                "re-run feature extraction for this manifest"
            )
        return self.features[[index[h] for h in hashes]]


def backbone_signature(backbone: Backbone) -> dict[str, str]:
    """What must match for cached features to be reusable."""
    return {
        "backbone": backbone.source,
        "pooling": backbone.pooling,
        "image_size": str(backbone.image_size),
        "mean": json.dumps(list(backbone.mean)),
        "std": json.dumps(list(backbone.std)),
        "feature_dim": str(backbone.feature_dim),
    }


def extract_manifest_features(
    backbone: Backbone,
    rows: Sequence[ManifestRow],
    root: Path,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: Progress | None = None,
) -> FeatureTable:
    """Features for `rows` (images under `root`), decoded by DataLoader workers."""

    # A partial, not a closure: DataLoader workers may be spawned and must pickle it.
    transform = partial(
        preprocess_image, image_size=backbone.image_size, normalization=backbone.normalization
    )
    dataset = ManifestDataset(rows, root, transform, classes=sorted({r.label for r in rows}))
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    features, _labels, _index = FeatureExtractor(backbone, progress=progress).extract_loader(loader)
    return FeatureTable([r.sha256 for r in rows], features, backbone_signature(backbone))


def save_features(table: FeatureTable, path: Path, **extra_meta: str) -> None:
    meta = {**table.meta, **extra_meta, "format": FORMAT, "sha256": json.dumps(table.sha256)}
    atomic_write(
        Path(path), lambda tmp: save_file({"features": table.features.contiguous()}, tmp, meta)
    )


def load_features(path: Path, expect: Backbone | None = None) -> FeatureTable:
    """Read a feature file; with `expect`, refuse one made by a different backbone setup."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise FeatureCacheError(f"{path}: not a readable feature file ({err})") from None
    if meta.get("format") != FORMAT or "features" not in tensors:
        raise FeatureCacheError(f"{path}: not an AADS feature file (format {meta.get('format')})")
    hashes = json.loads(meta.pop("sha256"))
    meta.pop("format")
    if expect is not None:
        want = backbone_signature(expect)
        diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: cached {a!r} != {b!r}" for k, (a, b) in diff.items())
            raise FeatureCacheError(f"{path}: made with another backbone setup ({detail})")
    return FeatureTable(hashes, tensors["features"], meta)
