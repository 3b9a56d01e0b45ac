"""Per-pretraining-dataset pixel normalisation, and the rule that picks it for a source.

DINOv3 web models (LVD-1689M) and DINOv2 (LVD-142M) expect ImageNet statistics; the DINOv3
satellite models (SAT-493M) were trained with their own. Feeding a model the wrong statistics
silently shifts every feature, so the choice is made in one place from the model id, the
mirrored directory's own ``preprocessor_config.json``, or an explicit ``normalization:``
setting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import BackboneError

Dataset = Literal["lvd1689m", "sat493m", "lvd142m"]
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class Normalization:
    """Mean and std (RGB, on [0, 1] pixels) and the dataset they come from (``custom`` when a
    directory states values that match neither)."""

    dataset: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def matches(self, mean: tuple[float, ...], std: tuple[float, ...]) -> bool:
        if len(mean) != 3 or len(std) != 3:
            return False
        pairs = zip((*self.mean, *self.std), (*mean, *std), strict=True)
        return all(math.isclose(a, b, abs_tol=1e-4) for a, b in pairs)


LVD1689M = Normalization("lvd1689m", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SAT493M = Normalization("sat493m", (0.430, 0.411, 0.296), (0.213, 0.156, 0.143))
LVD142M = Normalization("lvd142m", LVD1689M.mean, LVD1689M.std)
"""DINOv2's pretraining set; the same ImageNet statistics as LVD-1689M, named for the record."""
NORMALIZATIONS: dict[str, Normalization] = {n.dataset: n for n in (LVD1689M, SAT493M, LVD142M)}


def normalization_for(
    source: str, setting: str = "auto", *, model_dir: Path | None = None
) -> Normalization:
    """The statistics to feed `source` with.

    An explicit ``lvd1689m`` / ``sat493m`` / ``lvd142m`` setting wins. ``auto`` reads, in order: the
    ``preprocessor_config.json`` of a local or mirrored directory (a Hub mirror carries the
    authors' own values), then the source string (``sat493m`` in a Hub id, an ``s3://`` mirror
    path or ``random:vitl16_sat493m``; ``dinov2`` names DINOv2's LVD-142M), and otherwise
    defaults to LVD-1689M, the web-image statistics every other DINOv3 model uses.
    """
    if setting != "auto":
        try:
            return NORMALIZATIONS[setting]
        except KeyError:
            raise BackboneError(
                f"unknown normalization '{setting}'; use auto, {', '.join(NORMALIZATIONS)}"
            ) from None
    named = _named_normalization(source)
    if model_dir is not None:
        stated = _stated_normalization(model_dir)
        if stated is not None:
            # ImageNet's statistics have two names (LVD-1689M, LVD-142M): keep the source's.
            return named if named.matches(stated.mean, stated.std) else stated
    return named


def _named_normalization(source: str) -> Normalization:
    name = source.lower()
    if "sat493m" in name:
        return SAT493M
    if "dinov2" in name:
        return LVD142M
    return LVD1689M


def _stated_normalization(model_dir: Path) -> Normalization | None:
    """The mean/std a saved directory declares, named after the dataset they match."""
    path = model_dir / PREPROCESSOR_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        mean = tuple(float(x) for x in data["image_mean"])
        std = tuple(float(x) for x in data["image_std"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BackboneError(f"{path}: unreadable image_mean/image_std ({err})") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise BackboneError(f"{path}: image_mean/image_std must be 3 values, std > 0")
    for known in NORMALIZATIONS.values():
        if known.matches(mean, std):
            return known
    return Normalization("custom", mean, std)  # type: ignore[arg-type]


def preprocessor_config(
    normalization: Normalization,
    image_size: int,
    processor: str = "DINOv3ViTImageProcessorFast",
) -> dict[str, object]:
    """A ``preprocessor_config.json`` in the Hub's own format, so a directory we save reads
    like a Hub mirror (and other tools pick the same statistics). `processor` is the
    generation's Hub processor class (DINOv2: ``BitImageProcessor``)."""
    return {
        "image_processor_type": processor,
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(normalization.mean),
        "image_std": list(normalization.std),
    }
