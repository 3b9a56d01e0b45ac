"""The scouting answer: one JSON object per image, with a row per region and a verdict.

Kept small on purpose (it travels through KServe as JSON): boxes are whole pixels, masks are
box-relative compressed RLE strings, probabilities are rounded to 6 digits. `RegionDiagnosis`
is the compact per-region view of an `aads.answer.Answer` (what the serving router answers per
image), so a diagnoser that calls the deployed router over HTTP and one that runs it in process
are interchangeable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from aads.answer import Answer


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaskSummary(_Answer):
    source: Literal["sam2", "detector", "box"] = Field(
        description="sam2; the detector's own mask (vegetation); or the whole box when neither"
    )
    area: int = Field(description="mask pixels")
    box_fraction: float = Field(description="area / box area")
    rle: dict = Field(
        description="COCO compressed RLE {'size': [h, w], 'counts': str} of the box window "
        "(rows y0..y1, columns x0..x1)"
    )
    iou_score: float | None = Field(None, description="SAM-2's own IoU estimate")


class RegionDiagnosis(_Answer):
    crop: str | None = Field(None, description="routed crop; None when the router rejects it")
    crop_confidence: float | None = None
    routed_part: str | None = Field(None, description="the router's part head")
    label: str | None = Field(None, description="the adapter's class, 'unknown' when OOD")
    predicted_class: str | None = Field(None, description="the class before the OOD check")
    is_ood: bool = True
    confidence: float = 0.0
    ood_distance: float | None = None
    ood_threshold: float | None = None
    reason: str | None = Field(None, description="why there is no disease answer")
    error: str | None = Field(None, description="the adapter could not be asked")
    model: dict | None = Field(None, description="the adapter that answered: name, version")

    @classmethod
    def from_answer(cls, answer: Answer) -> RegionDiagnosis:
        """The region's view of one answer of the router (served or in process)."""
        route, ood, error = answer.routing, answer.ood, answer.error
        return cls(
            crop=answer.crop,
            crop_confidence=route.crop_confidence if route else None,
            routed_part=route.part if route else None,
            label=None if error else answer.label,
            predicted_class=answer.predicted_class,
            is_ood=True if error or answer.is_ood is None else answer.is_ood,
            confidence=answer.confidence or 0.0,
            ood_distance=ood.distance if ood else None,
            ood_threshold=ood.threshold if ood else None,
            reason=answer.reason,
            error=error.message if error else None,
            model=answer.model.model_dump() if answer.model else None,
        )

    @property
    def answered(self) -> bool:
        """A known crop, a known class, no error: the region counts towards the verdict."""
        return self.error is None and not self.is_ood and self.label is not None


class BioCLIPCheck(_Answer):
    crop: str = Field(description="BioCLIP's top label: crop")
    disease: str = Field(description="BioCLIP's top label: class")
    probability: float
    holdout: bool = Field(description="the top class is one no adapter was trained on")
    crop_probability: float = Field(description="BioCLIP's total probability of its top crop")
    adapter_probability: float | None = Field(
        None, description="BioCLIP's probability of the adapter's (crop, predicted class)"
    )
    crop_agrees: bool | None = Field(None, description="None when the router gave no crop")
    disease_agrees: bool | None = Field(None, description="None when the adapter said unknown")


class Region(_Answer):
    index: int
    box: list[int] = Field(description="pixel x0, y0, x1, y1 (x1, y1 exclusive)")
    part: str = Field(description="the detector's part phrase")
    detection_score: float
    mask: MaskSummary
    diagnosis: RegionDiagnosis
    bioclip: BioCLIPCheck | None = None


class Verdict(_Answer):
    status: Literal["diseased", "healthy", "unknown", "no_regions"]
    crop: str | None = None
    disease: str | None = None
    confidence: float | None = None
    region: int | None = Field(None, description="index of the region the verdict is from")
    regions: int = 0
    diseased: int = 0
    healthy: int = 0
    unknown: int = Field(0, description="out of distribution, not a known crop, or failed")


class ScoutingAnswer(_Answer):
    width: int
    height: int
    detector: str = Field(description="grounding_dino or vegetation")
    segmenter: str = Field(description="sam2 or none")
    models: dict[str, str | None] = Field(
        default_factory=dict, description="source of each scouting model (None: not used)"
    )
    regions: list[Region]
    verdict: Verdict
    timings_ms: dict[str, float] = Field(default_factory=dict)


def image_verdict(regions: list[Region], healthy_class: str) -> Verdict:
    """The image's answer from its regions.

    ``no_regions`` when nothing was detected; ``unknown`` when no region got a disease answer
    (all out of distribution, not a known crop, or failed); otherwise ``diseased`` if any region
    carries a disease, naming the most confident such region (one diseased leaf makes a
    diseased plant), else ``healthy`` with the most confident healthy region.
    """
    diags = [r.diagnosis for r in regions]
    answered = [(r, d) for r, d in zip(regions, diags, strict=True) if d.answered]
    sick = [(r, d) for r, d in answered if d.label != healthy_class]
    counts = {
        "regions": len(regions),
        "diseased": len(sick),
        "healthy": len(answered) - len(sick),
        "unknown": len(regions) - len(answered),
    }
    if not regions:
        return Verdict(status="no_regions", **counts)
    if not answered:
        return Verdict(status="unknown", **counts)
    pool, status = (sick, "diseased") if sick else (answered, "healthy")
    region, diag = max(pool, key=lambda rd: rd[1].confidence)
    return Verdict(
        status=status,
        crop=diag.crop,
        disease=diag.label,
        confidence=diag.confidence,
        region=region.index,
        **counts,
    )
