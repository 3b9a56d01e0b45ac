"""Synthetic field photos with a known answer: N leaves on soil, and where each one is.

Tests and the demo need images with several plant parts whose boxes are known exactly, and
real field photos cannot be downloaded here. Each leaf is a rotated ellipse in a random green
with a darker midrib and, optionally, brown lesions inside it; leaves never touch, so one
region per leaf is the right answer. A seed reproduces the same image byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class FieldImage:
    image: Image.Image
    boxes: list[tuple[int, int, int, int]]  # pixel xyxy of each leaf, x1/y1 exclusive
    masks: list[np.ndarray]  # full-image boolean mask of each leaf


def _soil(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = np.array([112, 84, 60], np.float32) * rng.uniform(0.85, 1.1)
    coarse = rng.normal(0, 10, (height // 8 + 1, width // 8 + 1, 1)).astype(np.float32)
    coarse = np.kron(coarse, np.ones((8, 8, 1), np.float32))[:height, :width]
    fine = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return np.clip(base + coarse + fine, 0, 255)


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float, n: int = 48) -> list:
    ca, sa = math.cos(angle), math.sin(angle)
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = a * math.cos(t), b * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


def field_image(
    n_leaves: int = 4,
    *,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
    lesions: bool = True,
    gap: int = 6,
) -> FieldImage:
    """Draw `n_leaves` separated leaves on soil; `ValueError` if they cannot all fit."""
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray(_soil(rng, width, height).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    boxes: list[tuple[int, int, int, int]] = []
    masks: list[np.ndarray] = []
    side = min(width, height)
    for _ in range(n_leaves):
        for _attempt in range(200):
            a = rng.uniform(0.12, 0.2) * side
            b = a * rng.uniform(0.4, 0.6)
            angle = rng.uniform(0, math.pi)
            cx, cy = rng.uniform(a + gap, width - a - gap), rng.uniform(a + gap, height - a - gap)
            outline = _ellipse(cx, cy, a, b, angle)
            layer = Image.new("L", (width, height), 0)
            ImageDraw.Draw(layer).polygon(outline, fill=255)
            mask = np.asarray(layer) > 0
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if all(_apart(box, other, gap) for other in boxes):
                break
        else:
            raise ValueError(f"cannot place {n_leaves} separate leaves on {width}x{height}")
        green = (int(rng.integers(40, 80)), int(rng.integers(120, 175)), int(rng.integers(30, 70)))
        draw.polygon(outline, fill=green)
        rib = tuple(int(c * 0.75) for c in green)
        ca, sa = math.cos(angle), math.sin(angle)
        draw.line(
            [(cx - 0.8 * a * ca, cy - 0.8 * a * sa), (cx + 0.8 * a * ca, cy + 0.8 * a * sa)],
            fill=rib,
            width=max(1, int(side / 120)),
        )
        if lesions:
            for _spot in range(int(rng.integers(1, 4))):
                t, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.45)
                x, y = a * r * math.cos(t), b * r * math.sin(t)
                px, py = cx + x * ca - y * sa, cy + x * sa + y * ca
                s = b * rng.uniform(0.12, 0.22)
                draw.ellipse([px - s, py - s, px + s, py + s], fill=(118, 82, 40))
        boxes.append(box)
        masks.append(mask)
    return FieldImage(canvas, boxes, masks)


def soil_image(*, width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """Bare soil: a field photo with no plant in it."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(_soil(rng, width, height).astype(np.uint8))


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
