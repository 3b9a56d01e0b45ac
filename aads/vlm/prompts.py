"""The zero-shot label set and its text prompts, built from the crops in the platform spec.

One label per (crop, class): every class an adapter knows, plus (``include_holdout``) each
crop's ``ood_holdout`` diseases, which no adapter was trained on: when the adapter answers
"unknown", BioCLIP naming a held-out disease is a useful hint. A label's prompts are the
configured templates filled with readable names (``early_blight`` -> "early blight") and the
region's plant part; the healthy class uses its own templates ("a photo of a healthy tomato
leaf."). Several templates are averaged in embedding space (prompt ensembling, as CLIP does).
"""

from __future__ import annotations

from dataclasses import dataclass

from aads.config import PlatformConfig

from .settings import BioCLIPSettings


@dataclass(frozen=True)
class ZeroShotLabel:
    crop: str
    disease: str
    holdout: bool = False  # an ood_holdout class: no adapter can answer it

    @property
    def name(self) -> str:
        return f"{self.crop}/{self.disease}"


def readable(slug: str) -> str:
    return slug.replace("_", " ")


def zero_shot_labels(config: PlatformConfig, settings: BioCLIPSettings) -> list[ZeroShotLabel]:
    """Every (crop, class) BioCLIP chooses among, crops in spec order."""
    labels = []
    for crop in config.crops:
        labels += [ZeroShotLabel(crop.name, c) for c in crop.known_classes]
        if settings.include_holdout:
            labels += [ZeroShotLabel(crop.name, c, holdout=True) for c in crop.ood_holdout]
    return labels


def label_prompts(
    label: ZeroShotLabel, part: str, settings: BioCLIPSettings, healthy_class: str
) -> list[str]:
    """The texts of one label for a region showing `part`."""
    healthy = label.disease == healthy_class
    templates = settings.healthy_templates if healthy else settings.templates
    fields = {
        "crop": readable(label.crop),
        "disease": readable(label.disease),
        "part": readable(part),
    }
    return [" ".join(t.format(**fields).split()) for t in templates]
