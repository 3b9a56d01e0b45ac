"""SAM-2 with box prompts: one mask per detected region, inside its box.

Preprocessing follows `Sam2ImageProcessor` without torchvision: the whole image is squashed to
the model's square input (``vision_config.backbone_config.image_size``, 1024 for the released
checkpoints; no padding, SAM-2 dropped SAM-1's pad), ImageNet-normalised; box prompts are
scaled by the same factors. The image is encoded once and all boxes are decoded in one batch,
single-mask output (SAM's recommendation for box prompts). The low-resolution logits are
upsampled only inside each box (`masks.upsample_window`) and thresholded, so a mask can never
leave its box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from aads.config import StorageSettings
from aads.model_sources import load_pretrained, random_preset, read_json, source_dir

from .errors import VLMError, model_kind
from .masks import upsample_window
from .preprocess import IMAGENET, Normalisation, resize_square, to_tensor
from .settings import Sam2Settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SAM2 = model_kind("sam2")

PixelBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class Segment:
    """A box-relative boolean mask (shape y1 - y0, x1 - x0) and SAM-2's IoU estimate."""

    mask: np.ndarray
    iou_score: float


class Sam2Segmenter:
    name = "sam2"

    def __init__(
        self,
        model: PreTrainedModel,
        settings: Sam2Settings,
        normalisation: Normalisation = IMAGENET,
    ) -> None:
        self.model, self.settings, self.normalisation = model, settings, normalisation
        self.side = int(model.config.vision_config.backbone_config.image_size[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def segment(self, image: Image.Image, boxes: Sequence[PixelBox]) -> list[Segment]:
        """One mask per box (same order), each inside its box."""
        if not boxes:
            return []
        width, height = image.size
        pixels = to_tensor(resize_square(image, self.side), self.normalisation)[None]
        scale = torch.tensor([self.side / width, self.side / height] * 2)
        prompts = torch.tensor(boxes, dtype=torch.float32) * scale
        with torch.inference_mode():
            out = self.model(
                pixel_values=pixels.to(self.device, self.dtype),
                # float32 even in bf16: SAM-2 scales box corners to [0, 1] before casting them,
                # and bf16 cannot hold a 1024-px coordinate to the pixel
                input_boxes=prompts[None].to(self.device),
                multimask_output=False,
            )
        logits = out.pred_masks[0, :, 0].float().cpu()  # (boxes, h, w) over the whole image
        scores = out.iou_scores[0, :, 0].float().cpu()
        segments = []
        for i, box in enumerate(boxes):
            window = upsample_window(logits[i], (width, height), box)
            segments.append(
                Segment(
                    mask=(window > self.settings.mask_threshold).numpy(),
                    iou_score=float(scores[i]),
                )
            )
        return segments


def load_sam2(
    settings: Sam2Settings,
    storage: StorageSettings | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> Sam2Segmenter:
    """The segmenter `settings.source` names, on `device` in `dtype`, in eval mode."""
    from transformers import Sam2Model

    from .presets import build_sam2

    if settings.source is None:
        raise VLMError("sam2.source is not set")
    preset = random_preset(settings.source)
    norm = IMAGENET
    if preset is not None:
        model = build_sam2(preset, settings.seed)
    else:
        folder = source_dir(settings.source, storage, SAM2, revision=settings.revision)
        model = load_pretrained(Sam2Model, folder, SAM2, model_types=["sam2"], dtype=dtype)
        processor = folder / "preprocessor_config.json"
        if processor.is_file():
            cfg = read_json(processor, SAM2)
            if cfg.get("image_mean") and cfg.get("image_std"):
                norm = Normalisation(tuple(cfg["image_mean"]), tuple(cfg["image_std"]))
    return Sam2Segmenter(model.to(device=device, dtype=dtype).eval(), settings, norm)
