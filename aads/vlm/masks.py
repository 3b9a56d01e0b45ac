"""Region masks: upsampling inside a box, compact JSON encoding, and the masked region crop.

Masks are kept box-relative (an array over the box's whole-pixel window) end to end: a full
image mask per region costs width x height bytes each, and by construction a region's mask
lies inside its box. On the wire a mask is COCO's compressed RLE string of that window
(column-major run lengths, pycocotools' ``rleToString`` encoding), so a leaf costs tens of
bytes, not a pixel list.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def upsample_window(
    logits: torch.Tensor, image_size: tuple[int, int], window: tuple[int, int, int, int]
) -> torch.Tensor:
    """Bilinear upsampling of low-resolution `logits` (h, w), spanning the whole image, to
    full resolution, evaluated only on the pixels of `window` (x0, y0, x1, y1).

    Equal to ``F.interpolate(logits, (H, W), mode="bilinear", align_corners=False)`` cropped to
    the window, without allocating H x W per region (a 12 MP photo with 16 regions would
    otherwise need 750 MB).
    """
    width, height = image_size
    x0, y0, x1, y1 = window
    h, w = logits.shape[-2:]
    # align_corners=False: output pixel centre p maps to source coordinate (p + .5) * s - .5,
    # clamped at the borders, which grid_sample reproduces with padding_mode="border".
    xs = (torch.arange(x0, x1, dtype=torch.float32) + 0.5) * (w / width) - 0.5
    ys = (torch.arange(y0, y1, dtype=torch.float32) + 0.5) * (h / height) - 0.5
    gx = (xs + 0.5) / w * 2 - 1
    gy = (ys + 0.5) / h * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    src = logits.float().reshape(1, 1, h, w)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0]


# --------------------------------------------------------------------------- COCO RLE


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def encode_rle(mask: np.ndarray) -> dict:
    """``{"size": [h, w], "counts": str}``, COCO's compressed RLE (readable by pycocotools)."""
    counts = rle_counts(mask)
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": "".join(chars)}


def decode_rle(rle: dict) -> np.ndarray:
    """The boolean mask of an `encode_rle` answer."""
    h, w = rle["size"]
    text = rle["counts"]
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for count in counts:
        flat[pos : pos + count] = value
        pos += count
        value = not value
    return flat.reshape((w, h)).T


# --------------------------------------------------------------------------- region crops


def region_image(
    image: Image.Image,
    box: tuple[int, int, int, int],
    mask: np.ndarray,
    *,
    margin: float,
    fill: tuple[int, int, int] | None,
) -> Image.Image:
    """The crop a region is diagnosed on: its box plus `margin` of context, with the pixels
    outside its mask painted `fill` (None keeps them). Painting isolates the part as in a lab
    photo, so a neighbouring leaf's lesions are not diagnosed twice."""
    width, height = image.size
    x0, y0, x1, y1 = box
    mx, my = round((x1 - x0) * margin), round((y1 - y0) * margin)
    wx0, wy0 = max(0, x0 - mx), max(0, y0 - my)
    wx1, wy1 = min(width, x1 + mx), min(height, y1 + my)
    crop = image.crop((wx0, wy0, wx1, wy1))
    if fill is None:
        return crop
    keep = np.zeros((wy1 - wy0, wx1 - wx0), dtype=bool)
    keep[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] = mask
    pixels = np.array(crop)
    pixels[~keep] = fill
    return Image.fromarray(pixels)
