"""The crop router as a model: a frozen DINOv3 backbone and two linear heads, crop and plant
part, and the decision it hands the serving router and the scouting stage.

The router decides which crop adapter sees an image, so it must be cheap and stable: the
backbone stays frozen and the heads are linear probes on its pooled features. Features are
standardised with the training set's statistics, stored with the heads, so the probe does not
depend on a random or pretrained backbone's feature scale. Training is in
`aads.router.training`, the folder on disk in `aads.router.package`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aads.answer import Routing
from aads.backbone import Backbone, FeatureExtractor, ImageInput, extract_features
from aads.config import ServingSettings
from aads.errors import BadInput
from aads.ood.detector import OODDetector
from aads.uploads import model_input


class RouterError(BadInput):
    """A router that cannot be trained or loaded as asked."""


class RouterHeads(nn.Module):
    """Standardise features, then two linear heads."""

    def __init__(self, dim: int, n_crops: int, n_parts: int):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.crop = nn.Linear(dim, n_crops)
        self.part = nn.Linear(dim, n_parts)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (features - self.feature_mean) / self.feature_std
        return self.crop(z), self.part(z)


@dataclass(frozen=True)
class RouteDecision:
    crop: str
    crop_confidence: float
    part: str
    part_confidence: float
    is_ood: bool = False  # not a known crop: nothing to send to an adapter
    distance: float | None = None
    threshold: float | None = None

    def routing(self) -> Routing:
        """The ``routing`` entry of an answer (the serving router and the scouting stage)."""
        ood = (
            {
                "is_ood": self.is_ood,
                "distance": round(self.distance, 6),
                "threshold": round(self.threshold or 0.0, 6),
            }
            if self.distance is not None
            else {}
        )
        return Routing(
            source="router",
            crop=self.crop,
            crop_confidence=round(self.crop_confidence, 6),
            part=self.part,
            part_confidence=round(self.part_confidence, 6),
            **ood,
        )


@dataclass
class CropRouter:
    """A loaded router, ready to route images or precomputed features."""

    backbone: Backbone
    heads: RouterHeads
    crops: list[str]
    parts: list[str]
    meta: dict
    ood: OODDetector | None = None  # crop-level Mahalanobis check: "not a known crop"

    def route_features(self, features: torch.Tensor) -> list[RouteDecision]:
        with torch.inference_mode():
            crop_logits, part_logits = self.heads(features.float())
        crop_p, part_p = crop_logits.softmax(-1), part_logits.softmax(-1)
        crop_conf, crop_idx = crop_p.max(-1)
        part_conf, part_idx = part_p.max(-1)
        n = len(features)
        found = self.ood.detect(features.double().numpy()) if self.ood and n else None
        return [
            RouteDecision(
                self.crops[c],
                float(cc),
                self.parts[p],
                float(pc),
                is_ood=bool(found.is_ood[i]) if found else False,
                distance=float(found.score[i]) if found else None,
                threshold=float(found.threshold[i]) if found else None,
            )
            for i, (c, cc, p, pc) in enumerate(
                zip(
                    crop_idx.tolist(),
                    crop_conf.tolist(),
                    part_idx.tolist(),
                    part_conf.tolist(),
                    strict=True,
                )
            )
        ]

    def route(self, images: list[ImageInput], batch_size: int = 32) -> list[RouteDecision]:
        """Decisions for decoded images or trusted files (training's preprocessing)."""
        return self.route_features(
            FeatureExtractor(self.backbone, batch_size).extract_images(images)
        )

    def prepare(self, image: bytes, where: str, limits: ServingSettings) -> torch.Tensor:
        """One upload, checked and decoded (`aads.uploads`), as the router's input tensor."""
        return model_input(image, where, limits, self.backbone)

    def route_pixels(self, pixels: list[torch.Tensor]) -> list[RouteDecision]:
        """Decisions for prepared input tensors (what the serving router batches)."""
        if not pixels:
            return []
        return self.route_features(extract_features(self.backbone, torch.stack(pixels)))
