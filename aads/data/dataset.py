"""Torch datasets over the manifest, with worker processes for decoding.

Labels are indices into an explicit class list handed in by the caller (the adapter's head
order, the router's crop order), never inferred from whatever rows happen to be present, so
index 3 means the same class in training, evaluation and serving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from aads.data.manifest import ManifestRow
from aads.errors import BadInput

Transform = Callable[[Image.Image], torch.Tensor]


class DataError(BadInput):
    """An image listed in the manifest cannot be used now (changed or removed since ingest)."""


class ManifestDataset(Dataset):
    """Rows of a manifest as (pixel tensor, label index, row index) triples."""

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        root: Path,
        transform: Transform,
        classes: Sequence[str],
        label_field: str = "label",
    ):
        self.rows = list(rows)
        self.root = Path(root)
        self.transform = transform
        self.classes = list(classes)
        self.label_field = label_field
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({getattr(r, label_field) for r in self.rows} - set(index))
        if unknown:
            raise DataError(
                f"rows carry {label_field} value(s) {unknown} not in the class list {self.classes}"
            )
        self.targets = [index[getattr(r, label_field)] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        row = self.rows[i]
        path = self.root / row.path
        try:
            with Image.open(path) as img:
                img.load()
                pixels = self.transform(img)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(
                f"{path}: cannot load ({err}); it changed since ingest: re-run `aads data ingest`"
            ) from None
        return pixels, self.targets[i], i


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling depends only on `seed` (reproducible epochs)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
