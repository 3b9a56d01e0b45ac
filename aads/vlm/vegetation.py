"""The classical region proposer: connected components of an excess-green (ExG) mask.

Why it exists: with no Grounding DINO checkpoint (air-gapped demo, CI) the scouting stage still
has to find the plants in a field photo, deterministically, and a random-weight detector finds
nothing meaningful. Green vegetation on soil separates well on ExG = 2g - r - b computed on
chromatic coordinates (Woebbecke et al. 1995); Otsu's threshold adapts to light; each
connected component is one proposal, with its own mask. It cannot tell a leaf from a fruit, so
every region gets the configured part name (the router's part head still answers per region),
and touching leaves merge into one region. It is the fallback, not a replacement.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from .detection import Detection
from .settings import VegetationSettings

_DARK = 30.0
"""R + G + B below this (of 765) has no reliable chromaticity: counted as not green."""


def excess_green(image: Image.Image) -> np.ndarray:
    """ExG per pixel, float32 in [-1, 2]."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    total = rgb.sum(axis=2)
    chroma = rgb / np.maximum(total, 1.0)[..., None]
    exg = 2 * chroma[..., 1] - chroma[..., 0] - chroma[..., 2]
    return np.where(total < _DARK, 0.0, exg).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises between-class variance of `values` (Otsu 1979)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


class VegetationDetector:
    """One `Detection` per green connected component, with its mask; ranked by greenness."""

    name = "vegetation"

    def __init__(self, settings: VegetationSettings) -> None:
        self.settings = settings

    def vegetation_mask(self, exg: np.ndarray) -> np.ndarray:
        """Green pixels of an ExG map, cleaned: opened, holes (lesions) filled."""
        threshold = max(otsu_threshold(exg), self.settings.min_exg)
        mask = exg > threshold
        if self.settings.opening_px:
            mask = ndimage.binary_opening(mask, iterations=self.settings.opening_px)
        if self.settings.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        return mask

    def detect(self, image: Image.Image) -> list[Detection]:
        exg = excess_green(image)
        mask = self.vegetation_mask(exg)
        labels, count = ndimage.label(mask)
        min_area = self.settings.min_area_fraction * mask.size
        detections = []
        for index, window in enumerate(ndimage.find_objects(labels), start=1):
            if window is None:
                continue
            component = labels[window] == index
            area = int(component.sum())
            if area < min_area:
                continue
            ys, xs = window
            greenness = float(exg[window][component].mean())
            detections.append(
                Detection(
                    box=(xs.start, ys.start, xs.stop, ys.stop),
                    part=self.settings.part,
                    # how green, not a probability: it only ranks regions for max_regions
                    score=float(np.clip(greenness, 0.0, 1.0)),
                    mask=component,
                )
            )
        return sorted(detections, key=lambda d: -d.score)
