"""Image -> tensor for the three scouting models, with PIL and numpy (torchvision is unusable
here, so the transformers image processors that need it cannot be used).

Each model resizes differently, as its own processor does: Grounding DINO keeps the aspect
ratio (shortest edge 800, longest at most 1333, the DETR rule), SAM-2 squashes the whole
image to its square input (no padding: its processor disables SAM-1's pad), CLIP resizes the
shortest side and centre-crops (open_clip's default ``resize_mode: shortest``) or squashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def mean_rgb(self) -> tuple[int, int, int]:
        """The mean as an 8-bit colour: a pixel that normalises to zero."""
        r, g, b = (round(255 * m) for m in self.mean)
        return r, g, b


IMAGENET = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
OPENAI_CLIP = Normalisation(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def to_tensor(image: Image.Image, norm: Normalisation) -> torch.Tensor:
    """An RGB image as a normalised float32 (3, H, W) tensor."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def shortest_edge_size(width: int, height: int, shortest: int, longest: int) -> tuple[int, int]:
    """(width, height) after DETR's resize: shortest side to `shortest` unless that would make
    the longest side exceed `longest`, in which case the longest side is `longest`."""
    small, large = min(width, height), max(width, height)
    size = shortest
    if large / small * size > longest:
        size = int(round(longest * small / large))
    if width <= height:
        return size, max(1, int(size * height / width))
    return max(1, int(size * width / height)), size


def resize_keep_aspect(image: Image.Image, shortest: int, longest: int) -> Image.Image:
    size = shortest_edge_size(*image.size, shortest, longest)
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def resize_square(image: Image.Image, side: int, resample: str = "bilinear") -> Image.Image:
    if image.size == (side, side):
        return image
    return image.resize((side, side), _RESAMPLE[resample])


def resize_center_crop(image: Image.Image, side: int, resample: str = "bicubic") -> Image.Image:
    """Shortest side to `side`, then the central `side` x `side` square."""
    w, h = image.size
    scale = side / min(w, h)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    resized = image.resize((nw, nh), _RESAMPLE[resample])
    left, top = (nw - side) // 2, (nh - side) // 2
    return resized.crop((left, top, left + side, top + side))


def batch(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(tensors))
