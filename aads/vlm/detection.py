"""Region proposals: what a detector returns, the shared post-processing, and Grounding DINO.

Grounding DINO scores each of its queries against every text token. We read its raw outputs
ourselves (the processor's post-processing decodes token ids back to text, which cannot map a
box to *our* phrase when a prompt word splits into pieces): the prompt list becomes
``"leaf. fruit. stem."``, the tokens between separators are each phrase's span, a query's
phrase score is the maximum token probability inside the span, and its box score the maximum
over all tokens (as the processor computes it). A box is kept when its score is above
``box_threshold`` and its best phrase's above ``text_threshold`` (the processor's strict
comparisons); it is named after that phrase. Boxes of every detector then go through the
same `finalize_detections`: clipped to the image, snapped to whole pixels, too-small ones
dropped, class-agnostic NMS, capped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image

from aads.config import StorageSettings
from aads.model_sources import load_pretrained, random_preset, read_json, source_dir

from .errors import VLMError, model_kind
from .preprocess import IMAGENET, Normalisation, resize_keep_aspect, to_tensor
from .settings import GroundingDinoSettings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GROUNDING_DINO = model_kind("grounding_dino")

Box = tuple[float, float, float, float]
"""Pixel coordinates x0, y0, x1, y1 (x1, y1 exclusive once snapped to whole pixels)."""


@dataclass(frozen=True)
class Detection:
    """One proposed region. `mask`, when the detector has one (vegetation components), is a
    boolean array over the box's whole-pixel window, shape (y1 - y0, x1 - x0)."""

    box: Box
    part: str
    score: float
    mask: np.ndarray | None = None


class RegionDetector(Protocol):
    """Anything that proposes part regions in one RGB image."""

    name: str

    def detect(self, image: Image.Image) -> list[Detection]: ...


# --------------------------------------------------------------------------- post-processing


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best score first (torchvision's rule:
    a box is dropped when its IoU with a kept, better box is above the threshold)."""
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes, boxes)
    keep: list[int] = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return keep


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The whole-pixel window covering `box`, clipped to the image."""
    x0, y0, x1, y1 = box
    return (
        min(max(math.floor(x0), 0), width),
        min(max(math.floor(y0), 0), height),
        min(max(math.ceil(x1), 0), width),
        min(max(math.ceil(y1), 0), height),
    )


def finalize_detections(
    detections: list[Detection],
    width: int,
    height: int,
    *,
    nms_iou: float,
    max_regions: int,
    min_side: int,
) -> list[Detection]:
    """Clip and snap boxes to whole pixels, drop small ones, NMS, keep the best `max_regions`.

    A detector mask that no longer fits its snapped box is dropped (the region falls back to
    SAM-2 or the box), never silently misaligned.
    """
    snapped: list[Detection] = []
    for d in detections:
        x0, y0, x1, y1 = pixel_box(d.box, width, height)
        if x1 - x0 < min_side or y1 - y0 < min_side:
            continue
        mask = d.mask if d.mask is not None and d.mask.shape == (y1 - y0, x1 - x0) else None
        snapped.append(replace(d, box=(x0, y0, x1, y1), mask=mask))
    if not snapped:
        return []
    boxes = torch.tensor([d.box for d in snapped], dtype=torch.float64)
    scores = torch.tensor([d.score for d in snapped], dtype=torch.float64)
    return [snapped[i] for i in nms(boxes, scores, nms_iou)[:max_regions]]


# --------------------------------------------------------------------------- Grounding DINO


def phrase_spans(input_ids: list[int], separators: set[int], n_phrases: int) -> list[list[int]]:
    """Token positions of each phrase: runs of non-separator tokens, in order."""
    spans: list[list[int]] = []
    current: list[int] = []
    for pos, tok in enumerate(input_ids):
        if tok in separators:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(pos)
    if current:
        spans.append(current)
    if len(spans) != n_phrases:
        raise VLMError(
            f"grounding_dino: the tokenizer split {n_phrases} prompts into {len(spans)} phrases; "
            "a prompt may contain a separator token"
        )
    return spans


class GroundingDinoDetector:
    """Open-vocabulary part detector; the prompt tokens are computed once."""

    name = "grounding_dino"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        settings: GroundingDinoSettings,
        *,
        shortest_edge: int,
        longest_edge: int,
        normalisation: Normalisation = IMAGENET,
    ) -> None:
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.shortest_edge, self.longest_edge = shortest_edge, longest_edge
        self.normalisation = normalisation
        self.prompts = list(settings.prompts)
        text = ". ".join(self.prompts) + "."
        ids = tokenizer(text)["input_ids"]
        max_len = model.config.max_text_len
        if len(ids) > max_len:
            raise VLMError(
                f"grounding_dino.prompts: {len(ids)} tokens, over the model's max_text_len "
                f"{max_len}; use fewer or shorter prompts"
            )
        separators = {
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
            tokenizer.pad_token_id,
            *tokenizer.convert_tokens_to_ids([".", "?"]),
        }
        self.spans = phrase_spans(ids, separators, len(self.prompts))
        self.input_ids = torch.tensor([ids])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _check_size(self, resized: Image.Image) -> None:
        """Two-stage Grounding DINO picks its queries among the cells of its feature maps
        (strides 8, 16, 32, then 64, ...): an input with fewer cells than queries cannot run."""
        w, h = resized.size
        levels = self.model.config.num_feature_levels
        cells = sum(math.ceil(w / 2**s) * math.ceil(h / 2**s) for s in range(3, 3 + levels))
        queries = self.model.config.num_queries
        if cells < queries:
            raise VLMError(
                f"grounding_dino: a {w}x{h} input has {cells} feature cells, fewer than the "
                f"model's {queries} queries; raise grounding_dino.shortest_edge"
            )

    def detect(self, image: Image.Image) -> list[Detection]:
        width, height = image.size
        resized = resize_keep_aspect(image, self.shortest_edge, self.longest_edge)
        pixels = to_tensor(resized, self.normalisation)[None].to(self.device, self.dtype)
        ids = self.input_ids.to(self.device)
        self._check_size(resized)
        mask = torch.ones(1, *pixels.shape[2:], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(
                pixel_values=pixels,
                pixel_mask=mask,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                token_type_ids=torch.zeros_like(ids),
            )
        n_tokens = ids.shape[1]
        probs = out.logits[0, :, :n_tokens].float().sigmoid().cpu()  # (queries, tokens)
        boxes = out.pred_boxes[0].float().cpu()  # (queries, 4) cx, cy, w, h in [0, 1]
        box_scores = probs.max(dim=1).values
        phrase_scores = torch.stack([probs[:, span].max(dim=1).values for span in self.spans], 1)
        best_score, best_phrase = phrase_scores.max(dim=1)
        keep = (box_scores > self.settings.box_threshold) & (
            best_score > self.settings.text_threshold
        )
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack(
            [
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            ],
            -1,
        )
        return [
            Detection(
                box=tuple(float(v) for v in xyxy[q]),  # type: ignore[arg-type]
                part=self.prompts[int(best_phrase[q])],
                score=float(box_scores[q]),
            )
            for q in torch.nonzero(keep).flatten().tolist()
        ]


def load_grounding_dino(
    settings: GroundingDinoSettings,
    storage: StorageSettings | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> GroundingDinoDetector:
    """The detector `settings.source` names, on `device` in `dtype`, in eval mode."""
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection

    from .presets import build_grounding_dino

    if settings.source is None:
        raise VLMError("grounding_dino.source is not set")
    preset = random_preset(settings.source)
    if preset is not None:
        model, tokenizer, spec = build_grounding_dino(preset, settings.seed)
        shortest, longest, norm = spec.shortest_edge, spec.longest_edge, IMAGENET
    else:
        folder = source_dir(settings.source, storage, GROUNDING_DINO, revision=settings.revision)
        model = load_pretrained(
            GroundingDinoForObjectDetection,
            folder,
            GROUNDING_DINO,
            model_types=["grounding-dino"],
            dtype=dtype,
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - missing or malformed tokenizer files
            raise GROUNDING_DINO.fail(f"{folder} has no usable tokenizer ({err})") from err
        shortest, longest, norm = _checkpoint_preprocessing(folder)
    return GroundingDinoDetector(
        model.to(device=device, dtype=dtype).eval(),
        tokenizer,
        settings,
        shortest_edge=settings.shortest_edge or shortest,
        longest_edge=settings.longest_edge or longest,
        normalisation=norm,
    )


def _checkpoint_preprocessing(folder) -> tuple[int, int, Normalisation]:
    """Resize and normalisation from the checkpoint's ``preprocessor_config.json``, else the
    Grounding DINO defaults (800 / 1333, ImageNet statistics)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return 800, 1333, IMAGENET
    cfg = read_json(path, GROUNDING_DINO)
    size = cfg.get("size") or {}
    norm = IMAGENET
    if cfg.get("image_mean") and cfg.get("image_std"):
        norm = Normalisation(tuple(cfg["image_mean"]), tuple(cfg["image_std"]))
    return int(size.get("shortest_edge", 800)), int(size.get("longest_edge", 1333)), norm
