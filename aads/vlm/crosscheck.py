"""BioCLIP's second opinion on each region, and whether it agrees with the adapter.

The adapter is the authority (it was trained and calibrated on the crop's diseases); BioCLIP
zero-shot is an explanation and a cross-check: its top (crop, class) among every label the
spec names, how sure it is, how much probability it gives the adapter's own answer, and
whether the two agree on the crop and on the disease. Disagreement is a signal for review,
not an override.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from .bioclip import BioCLIP
from .prompts import ZeroShotLabel, label_prompts
from .response import BioCLIPCheck, RegionDiagnosis
from .settings import BioCLIPSettings


class ZeroShotScorer:
    """Scores region crops against the label set; text embeddings are cached per part."""

    def __init__(
        self,
        bioclip: BioCLIP,
        labels: Sequence[ZeroShotLabel],
        settings: BioCLIPSettings,
        healthy_class: str,
    ) -> None:
        self.bioclip, self.labels, self.settings = bioclip, list(labels), settings
        self.healthy_class = healthy_class
        self.index = {(lab.crop, lab.disease): i for i, lab in enumerate(self.labels)}
        self._text: dict[str, torch.Tensor] = {}

    def text_embeddings(self, part: str) -> torch.Tensor:
        """(labels, D): each label's prompts embedded, averaged and re-normalised."""
        if part not in self._text:
            prompts = [
                label_prompts(lab, part, self.settings, self.healthy_class) for lab in self.labels
            ]
            flat = self.bioclip.embed_texts([p for group in prompts for p in group])
            sizes = [len(group) for group in prompts]
            means = torch.stack([chunk.mean(0) for chunk in flat.split(sizes)])
            self._text[part] = torch.nn.functional.normalize(means, dim=-1)
        return self._text[part]

    def probabilities(self, images: Sequence[Image.Image], parts: Sequence[str]) -> torch.Tensor:
        """(regions, labels) zero-shot probabilities; each region with its own part's texts."""
        embeds = self.bioclip.embed_images(images)
        rows = [
            self.bioclip.probabilities(embeds[i : i + 1], self.text_embeddings(part))[0]
            for i, part in enumerate(parts)
        ]
        return torch.stack(rows) if rows else torch.empty(0, len(self.labels))

    def check(
        self,
        images: Sequence[Image.Image],
        parts: Sequence[str],
        diagnoses: Sequence[RegionDiagnosis],
    ) -> list[BioCLIPCheck]:
        probs = self.probabilities(images, parts)
        return [self._check(p, d) for p, d in zip(probs, diagnoses, strict=True)]

    def _check(self, probs: torch.Tensor, diag: RegionDiagnosis) -> BioCLIPCheck:
        top = self.labels[int(probs.argmax())]
        crop_mass = sum(
            float(probs[i]) for i, lab in enumerate(self.labels) if lab.crop == top.crop
        )
        adapter_index = self.index.get((diag.crop, diag.predicted_class))  # type: ignore[arg-type]
        return BioCLIPCheck(
            crop=top.crop,
            disease=top.disease,
            probability=round(float(probs.max()), 6),
            holdout=top.holdout,
            crop_probability=round(crop_mass, 6),
            adapter_probability=None
            if adapter_index is None
            else round(float(probs[adapter_index]), 6),
            crop_agrees=None if diag.crop is None else top.crop == diag.crop,
            disease_agrees=(top.crop, top.disease) == (diag.crop, diag.label)
            if diag.answered
            else None,
        )
