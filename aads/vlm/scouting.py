"""The scouting stage end to end: one field photo in, one `ScoutingAnswer` out.

    image -> detect regions -> snap, NMS, cap -> segment each box -> masked crop per region
          -> router + that crop's adapter (one batch) -> BioCLIP cross-check -> verdict

Which detector runs: Grounding DINO when ``scouting.grounding_dino.source`` is set (or
``detector: grounding_dino``), else the vegetation proposal stage (`aads.vlm.vegetation`).
With ``random:<preset>`` weights Grounding DINO's boxes are arbitrary but the code path is the
production one; the vegetation stage is what finds leaves without a trained detector. SAM-2
runs when ``sam2.source`` is set; a region whose SAM-2 mask is (nearly) empty keeps the
detector's mask or its box, and its ``mask.source`` says which. BioCLIP runs when
``bioclip.source`` is set. Diagnosis is whatever `RegionDiagnoser` the caller supplies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from aads.backbone import ImageDecodeError, open_image, resolve_device, resolve_dtype, to_rgb
from aads.config import PlatformConfig, ServingSettings, StorageSettings
from aads.inference import InvalidRequest
from aads.uploads import decode_upload

from .crosscheck import ZeroShotScorer
from .detection import Detection, RegionDetector, finalize_detections
from .diagnosis import RegionDiagnoser
from .errors import VLMError
from .masks import encode_rle, region_image
from .preprocess import IMAGENET
from .response import MaskSummary, Region, RegionDiagnosis, ScoutingAnswer, image_verdict
from .segmentation import Sam2Segmenter
from .settings import ScoutingSettings

ImageLike = Image.Image | bytes
log = logging.getLogger("aads.vlm.scouting")


@dataclass
class RegionMask:
    mask: np.ndarray  # box-relative boolean
    source: str  # sam2 | detector | box
    iou_score: float | None = None


@dataclass
class Scout:
    """Loaded scouting models plus the caller's diagnoser; `scout` answers one image."""

    settings: ScoutingSettings
    detector: RegionDetector
    diagnoser: RegionDiagnoser
    segmenter: Sam2Segmenter | None = None
    scorer: ZeroShotScorer | None = None
    limits: ServingSettings = field(default_factory=ServingSettings)

    @property
    def models(self) -> dict[str, str | None]:
        """Which checkpoint each stage runs (for the answer: what produced it)."""
        s = self.settings
        return {
            "detector": s.grounding_dino.source if self.detector.name == "grounding_dino" else None,
            "sam2": s.sam2.source if self.segmenter else None,
            "bioclip": s.bioclip.source if self.scorer else None,
        }

    def scout(self, image: ImageLike, where: str = "image") -> ScoutingAnswer:
        """Answer one photo. Encoded bytes are checked like every upload (`aads.uploads`:
        `UploadRejected` / `UploadTooLarge` naming `where`)."""
        timings: dict[str, float] = {}
        start = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = round((now - clock) * 1000, 3)
            clock = now

        rgb = self.decode(image, where)
        lap("decode")
        width, height = rgb.size
        detections = finalize_detections(
            self.detector.detect(rgb),
            width,
            height,
            nms_iou=self.settings.nms_iou,
            max_regions=self.settings.max_regions,
            min_side=self.settings.min_region_side,
        )
        lap("detect")
        masks = self.masks(rgb, detections)
        lap("segment")
        fill = IMAGENET.mean_rgb if self.settings.mask_fill == "mean" else None
        boxes = [_pixels(d) for d in detections]
        crops = [
            region_image(rgb, box, m.mask, margin=self.settings.crop_margin, fill=fill)
            for box, m in zip(boxes, masks, strict=True)
        ]
        answers = self.diagnoser(crops) if crops else []
        if len(answers) != len(crops):
            raise VLMError(f"the diagnoser answered {len(answers)} of {len(crops)} regions")
        diagnoses = [RegionDiagnosis.from_answer(a) for a in answers]
        lap("diagnose")
        checks: list = [None] * len(crops)
        if self.scorer is not None and crops:
            parts = [dg.routed_part or d.part for d, dg in zip(detections, diagnoses, strict=True)]
            checks = self.scorer.check(crops, parts, diagnoses)
        lap("bioclip")
        regions = [
            Region(
                index=i,
                box=list(box),
                part=d.part,
                detection_score=round(d.score, 6),
                mask=_summary(m),
                diagnosis=dg,
                bioclip=check,
            )
            for i, (d, box, m, dg, check) in enumerate(
                zip(detections, boxes, masks, diagnoses, checks, strict=True)
            )
        ]
        timings["total"] = round((time.perf_counter() - start) * 1000, 3)
        return ScoutingAnswer(
            width=width,
            height=height,
            detector=self.detector.name,
            segmenter=self.segmenter.name if self.segmenter else "none",
            models=self.models,
            regions=regions,
            verdict=image_verdict(regions, self.settings.healthy_class),
            timings_ms=timings,
        )

    def reconfigured(self, config: PlatformConfig) -> Scout:
        """This scout under a reloaded spec, keeping its loaded models: the crops and diseases
        BioCLIP scores, region and mask settings and the upload limits follow. A different
        model source or Grounding DINO setting needs a restart; until then the loaded models
        and their settings stay (logged)."""
        from .prompts import zero_shot_labels
        from .vegetation import VegetationDetector

        settings = config.scouting
        if settings is None:
            raise VLMError("the reloaded spec has no `scouting:` section")
        old = self.settings
        if (
            settings.detector_kind != old.detector_kind
            or settings.grounding_dino != old.grounding_dino
            or settings.sam2.source != old.sam2.source
            or settings.bioclip.source != old.bioclip.source
        ):
            log.warning("scouting models changed in the spec: restart the service to load them")
            return replace(self, limits=config.serving)
        detector = self.detector
        if isinstance(detector, VegetationDetector):
            detector = VegetationDetector(settings.vegetation)
        scorer = self.scorer
        if scorer is not None:
            labels = zero_shot_labels(config, settings.bioclip)
            scorer = ZeroShotScorer(
                scorer.bioclip, labels, settings.bioclip, settings.healthy_class
            )
        return replace(
            self, settings=settings, detector=detector, scorer=scorer, limits=config.serving
        )

    def scout_many(self, images: Sequence[ImageLike]) -> list[ScoutingAnswer]:
        return [self.scout(im, f"image {i}") for i, im in enumerate(images)]

    def decode(self, image: ImageLike, where: str) -> Image.Image:
        if isinstance(image, bytes):
            return decode_upload(image, where, self.limits)
        if not isinstance(image, Image.Image):
            raise InvalidRequest(f"{where}: expected image bytes or a PIL image")
        try:
            return to_rgb(open_image(image))
        except ImageDecodeError as err:
            raise InvalidRequest(f"{where}: {err}") from None

    def masks(self, image: Image.Image, detections: list[Detection]) -> list[RegionMask]:
        """A box-relative mask per region: SAM-2's when it found the part, else the
        detector's own, else the whole box."""
        sam: list = [None] * len(detections)
        if self.segmenter is not None and detections:
            sam = self.segmenter.segment(image, [_pixels(d) for d in detections])
        out = []
        for d, seg in zip(detections, sam, strict=True):
            x0, y0, x1, y1 = _pixels(d)
            floor = self.settings.sam2.min_mask_fraction * (x1 - x0) * (y1 - y0)
            if seg is not None and seg.mask.sum() > max(floor, 0):
                out.append(RegionMask(seg.mask, "sam2", seg.iou_score))
            elif d.mask is not None and d.mask.any():
                out.append(RegionMask(d.mask, "detector"))
            else:
                out.append(RegionMask(np.ones((y1 - y0, x1 - x0), dtype=bool), "box"))
        return out


def _pixels(d: Detection) -> tuple[int, int, int, int]:
    """A finalized detection's box as ints (`finalize_detections` snapped it already)."""
    x0, y0, x1, y1 = d.box
    return int(x0), int(y0), int(x1), int(y1)


def _summary(m: RegionMask) -> MaskSummary:
    area = int(m.mask.sum())
    return MaskSummary(
        source=m.source,  # type: ignore[arg-type]
        area=area,
        box_fraction=round(area / max(m.mask.size, 1), 6),
        rle=encode_rle(m.mask),
        iou_score=None if m.iou_score is None else round(m.iou_score, 6),
    )


def load_scout(
    config: PlatformConfig,
    diagnoser: RegionDiagnoser,
    *,
    settings: ScoutingSettings | None = None,
    storage: StorageSettings | None = None,
) -> Scout:
    """Load the models ``config.scouting`` (or `settings`) names and wire them to `diagnoser`."""
    from .bioclip import load_bioclip
    from .detection import load_grounding_dino
    from .prompts import zero_shot_labels
    from .segmentation import load_sam2
    from .vegetation import VegetationDetector

    settings = settings or config.scouting
    if settings is None:
        raise VLMError("the platform spec has no `scouting:` section")
    storage = storage or config.storage
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    detector: RegionDetector
    if settings.detector_kind == "grounding_dino":
        detector = load_grounding_dino(settings.grounding_dino, storage, device=device, dtype=dtype)
    else:
        detector = VegetationDetector(settings.vegetation)
    segmenter = (
        load_sam2(settings.sam2, storage, device=device, dtype=dtype)
        if settings.sam2.source
        else None
    )
    scorer = None
    if settings.bioclip.source:
        bioclip = load_bioclip(settings.bioclip, storage, device=device, dtype=dtype)
        labels = zero_shot_labels(config, settings.bioclip)
        scorer = ZeroShotScorer(bioclip, labels, settings.bioclip, settings.healthy_class)
    return Scout(settings, detector, diagnoser, segmenter, scorer, config.serving)
