"""Pooled image features from a `Backbone`: the vectors the router heads, OOD prototypes and
classifier heads are fit on.

Pooling follows DINOv3's own linear probe: ``cls`` is the CLS token after the final LayerNorm
(``pooler_output``); ``cls_mean`` concatenates it with the mean of the patch tokens, skipping
the backbone's prefix tokens: CLS and 4 registers (DINOv3 ViT), CLS alone (DINOv2), or the
pooled token (ConvNeXt). Extraction runs under
`torch.inference_mode` and returns float32 CPU tensors whatever the model's device and dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from itertools import islice
from typing import Any

import torch

from aads.progress import Progress

from .base import Backbone, Pooling
from .errors import BackboneError
from .preprocess import ImageInput, preprocess_batch


def feature_dim(backbone: Backbone) -> int:
    """Length of one feature vector: width for ``cls``, 2 x width for ``cls_mean``."""
    return backbone.feature_dim


def pool_tokens(
    last_hidden_state: torch.Tensor, pooling: Pooling, prefix_tokens: int
) -> torch.Tensor:
    """Pool (N, T, D) tokens to (N, D) or (N, 2D), in float32 so a bf16 mean stays accurate.

    Differentiable: adapter training calls it on a model with LoRA layers.
    """
    tokens = last_hidden_state.float()
    cls = tokens[:, 0]
    if pooling == "cls":
        return cls
    if pooling != "cls_mean":
        raise BackboneError(f"unknown pooling '{pooling}'; use cls or cls_mean")
    return torch.cat([cls, tokens[:, prefix_tokens:].mean(dim=1)], dim=-1)


def forward_features(backbone: Backbone, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pooled features on the backbone's device, with autograd as the caller has it."""
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise BackboneError(f"pixel_values must be (N, 3, H, W), got {tuple(pixel_values.shape)}")
    pixels = pixel_values.to(device=backbone.device, dtype=backbone.dtype, non_blocking=True)
    out = backbone.model(pixel_values=pixels)
    return pool_tokens(out.last_hidden_state, backbone.pooling, backbone.prefix_tokens)


def extract_features(backbone: Backbone, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N, feature_dim) float32 CPU features of a preprocessed batch, without autograd."""
    with torch.inference_mode():
        return forward_features(backbone, pixel_values).float().cpu()


class FeatureExtractor:
    """Features for many images, `batch_size` at a time, with an optional progress callback."""

    def __init__(
        self, backbone: Backbone, batch_size: int = 32, progress: Progress | None = None
    ) -> None:
        if batch_size < 1:
            raise BackboneError(f"batch_size must be >= 1, got {batch_size}")
        self.backbone = backbone
        self.batch_size = batch_size
        self.progress = progress

    def __call__(self, images: Iterable[ImageInput]) -> torch.Tensor:
        return self.extract_images(images)

    def extract_images(self, images: Iterable[ImageInput]) -> torch.Tensor:
        """(N, feature_dim) features of PIL images, paths or bytes, in input order."""
        b = self.backbone
        self._start(len(images) if isinstance(images, Sized) else 0)
        chunks = [
            self._run(preprocess_batch(batch, b.image_size, b.normalization))
            for batch in _batched(images, self.batch_size)
        ]
        return _concat(chunks, b.feature_dim)

    def extract_loader(self, loader: Iterable[torch.Tensor | Sequence[Any]]) -> tuple[Any, ...]:
        """Run over a DataLoader yielding ``pixel_values`` or ``(pixel_values, *extras)``.

        Returns a tuple shaped like one batch with pixel values replaced by features:
        ``(features, labels, ...)``; tensor extras are concatenated, other extras become lists.
        """
        features: list[torch.Tensor] = []
        extras: list[list[Any]] | None = None
        dataset = getattr(loader, "dataset", None)
        self._start(len(dataset) if isinstance(dataset, Sized) else 0)
        for batch in loader:
            pixels, rest = (batch, ()) if isinstance(batch, torch.Tensor) else (batch[0], batch[1:])
            features.append(self._run(pixels))
            if extras is None:
                extras = [[] for _ in rest]
            if len(rest) != len(extras):
                raise BackboneError("loader batches must all have the same number of fields")
            for column, value in zip(extras, rest, strict=True):
                column.append(value)
        merged = tuple(_merge(column) for column in (extras or []))
        return (_concat(features, self.backbone.feature_dim), *merged)

    def _start(self, total: int) -> None:
        self._done, self._total = 0, total

    def _run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = extract_features(self.backbone, pixel_values)
        self._done += len(out)
        if self.progress is not None:
            self.progress(self._done, self._total)
        return out


def _batched(items: Iterable[ImageInput], size: int) -> Iterator[list[ImageInput]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _concat(chunks: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat(chunks) if chunks else torch.empty((0, dim), dtype=torch.float32)


def _merge(column: list[Any]) -> Any:
    """Tensors are concatenated along the batch; sequences (paths, names) are flattened."""
    if all(isinstance(v, torch.Tensor) for v in column):
        return torch.cat([v.reshape(1) if v.ndim == 0 else v for v in column])
    flat: list[Any] = []
    for v in column:
        is_seq = isinstance(v, Sequence) and not isinstance(v, str | bytes)
        flat.extend(v if is_seq else [v])
    return flat
