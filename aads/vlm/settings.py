"""Settings of the scouting stage: the ``scouting:`` section of the platform spec.

Pure pydantic, no torch: `aads.config` embeds `ScoutingSettings` in `PlatformConfig`, so this
module must not import `aads.config` (that would be circular) and must stay cheap to import.
Every model source is a string as for the backbone: a Hugging Face id, a local directory, an
``s3://bucket/prefix`` mirror, or ``random:<preset>`` (weights built in code from ``seed``).
A source left empty switches that stage to its classical fallback (see `ScoutingSettings`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_PRESET = re.compile(r"random:[a-z0-9_+]+")
_S3 = re.compile(r"s3://[a-z0-9.\-]{3,63}/.+")
_PLACEHOLDERS = re.compile(r"\{([^{}]*)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _check_source(v: str | None) -> str | None:
    if v is None:
        return v
    if not v.strip():
        raise ValueError("source is empty: leave it out (null) to use the fallback instead")
    if v.startswith("synthetic:"):
        raise ValueError(f"'{v}': synthetic:<preset> is for DINOv3 backbones only; use random:")
    if v.startswith("random:") and not _PRESET.fullmatch(v):
        raise ValueError(f"'{v}' is not random:<preset>")
    if v.startswith("s3://") and not _S3.fullmatch(v):
        raise ValueError(f"'{v}' is not s3://<bucket>/<prefix>")
    return v


class _Source(_Model):
    source: str | None = Field(None, description="HF id, directory, s3://..., random:<preset>")
    revision: str | None = Field(None, description="Hub revision; Hugging Face ids only")
    seed: int = Field(0, description="weight seed for random:<preset> sources")

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str | None) -> str | None:
        return _check_source(v)

    @model_validator(mode="after")
    def _revision_needs_hub(self) -> _Source:
        if self.revision is not None and (
            self.source is None or self.source.startswith(("random:", "s3://", "/", ".", "~"))
        ):
            raise ValueError(
                f"revision '{self.revision}' applies to Hugging Face ids only, not to "
                f"{self.source!r}"
            )
        return self


class GroundingDinoSettings(_Source):
    """Open-vocabulary detection: one box per plant part the prompts name.

    e.g. ``IDEA-Research/grounding-dino-tiny`` (Swin-T + BERT-base) or its ``s3://`` mirror.
    """

    prompts: list[str] = Field(
        default_factory=lambda: ["leaf", "fruit", "stem", "lesion"],
        min_length=1,
        max_length=32,
        description="part phrases; joined as 'leaf. fruit. stem.' for the model",
    )
    box_threshold: float = Field(0.35, ge=0, le=1, description="keep boxes scoring above this")
    text_threshold: float = Field(
        0.25, ge=0, le=1, description="...whose best phrase scores above this (it names them)"
    )
    shortest_edge: int | None = Field(
        None, ge=32, le=2048, description="resize; None: the checkpoint's (800) or the preset's"
    )
    longest_edge: int | None = Field(None, ge=32, le=4096, description="None: 1333 or preset's")

    @field_validator("prompts")
    @classmethod
    def _phrases(cls, prompts: list[str]) -> list[str]:
        clean = [" ".join(p.lower().split()) for p in prompts]
        for i, p in enumerate(clean):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if "." in p or "?" in p:
                raise ValueError(
                    f"prompt {i} '{p}' contains '.' or '?', which separate phrases for "
                    "Grounding DINO: give one phrase per list item"
                )
        dupes = sorted({p for p in clean if clean.count(p) > 1})
        if dupes:
            raise ValueError(f"prompts repeat {dupes}")
        return clean


class VegetationSettings(_Model):
    """The classical proposal stage: connected components of an excess-green mask.

    ExG = 2g - r - b on chromatic coordinates (r = R / (R + G + B), ...), thresholded with
    Otsu's method but never below ``min_exg``, so a photo with no plant gives no regions
    instead of splitting soil into two classes.
    """

    part: str = Field("leaf", min_length=1, description="the part every component is called")
    min_exg: float = Field(0.05, ge=-1, le=2, description="floor of the Otsu threshold")
    min_area_fraction: float = Field(
        0.002, gt=0, lt=1, description="smaller components (share of the image) are noise"
    )
    opening_px: int = Field(1, ge=0, le=16, description="binary opening: cuts thin bridges")
    fill_holes: bool = Field(True, description="lesions inside a leaf stay part of the leaf")


class Sam2Settings(_Source):
    """SAM-2 with box prompts: one mask per detected box.

    e.g. ``facebook/sam2.1-hiera-small``. No source: each region keeps the detector's own mask
    (vegetation components) or the whole box (Grounding DINO).
    """

    mask_threshold: float = Field(0.0, description="logit threshold of the upsampled mask")
    min_mask_fraction: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="a mask covering less of its box is a miss: the region falls back to the "
        "detector's mask or the box",
    )


class BioCLIPSettings(_Source):
    """BioCLIP 2 zero-shot cross-check of each region (an open_clip ViT-L/14 checkpoint,
    converted to transformers' CLIPModel on load; e.g. ``imageomics/bioclip-2``)."""

    tokenizer: str | None = Field(
        None,
        description="where vocab.json + merges.txt are when the checkpoint lacks them (open_clip "
        "repos rely on open_clip's bundled BPE): HF id, directory or s3://",
    )
    activation: Literal["auto", "gelu", "quick_gelu"] = Field(
        "auto", description="auto: open_clip_config.json's quick_gelu flag, else gelu"
    )
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {crop} {part} with {disease}."],
        min_length=1,
        description="diseased-class prompts; {crop}, {disease}, optional {part}; averaged",
    )
    healthy_templates: list[str] = Field(
        default_factory=lambda: ["a photo of a healthy {crop} {part}."],
        min_length=1,
        description="prompts for the healthy class; {crop}, optional {part}",
    )
    include_holdout: bool = Field(
        True, description="also score each crop's ood_holdout diseases (never trained)"
    )

    @field_validator("templates")
    @classmethod
    def _disease_templates(cls, v: list[str]) -> list[str]:
        return _check_templates(v, required={"crop", "disease"})

    @field_validator("healthy_templates")
    @classmethod
    def _healthy_templates(cls, v: list[str]) -> list[str]:
        return _check_templates(v, required={"crop"})

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_form(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("random:"):
            raise ValueError("tokenizer cannot be random:; random presets bring their own")
        return _check_source(v)


def _check_templates(templates: list[str], required: set[str]) -> list[str]:
    allowed = {"crop", "disease", "part"}
    for i, t in enumerate(templates):
        names = set(_PLACEHOLDERS.findall(t))
        if names - allowed:
            raise ValueError(
                f"template {i} '{t}': unknown placeholder(s) {sorted(names - allowed)}"
            )
        if required - names:
            raise ValueError(f"template {i} '{t}' lacks {sorted('{' + n + '}' for n in required)}")
    return templates


class ScoutingSettings(_Model):
    """The scouting stage: detect -> segment -> diagnose each region -> BioCLIP cross-check.

    ``detector: auto`` runs Grounding DINO when ``grounding_dino.source`` is set and the
    vegetation proposal stage otherwise; naming a detector whose source is missing is an error.
    """

    detector: Literal["auto", "grounding_dino", "vegetation"] = "auto"
    grounding_dino: GroundingDinoSettings = GroundingDinoSettings()
    vegetation: VegetationSettings = VegetationSettings()
    sam2: Sam2Settings = Sam2Settings()
    bioclip: BioCLIPSettings = BioCLIPSettings()
    max_regions: int = Field(16, ge=1, le=256, description="most-confident regions kept")
    nms_iou: float = Field(0.5, gt=0, le=1, description="class-agnostic NMS overlap")
    min_region_side: int = Field(8, ge=1, le=4096, description="px; smaller boxes are dropped")
    crop_margin: float = Field(
        0.05, ge=0, le=1, description="context around a box, as a share of its side"
    )
    mask_fill: Literal["mean", "none"] = Field(
        "mean",
        description="pixels of a region crop outside its mask: 'mean' paints them the ImageNet "
        "mean colour (zero after normalisation), 'none' keeps the surroundings",
    )
    healthy_class: str = Field(
        "healthy", min_length=1, description="the class name that means 'no disease'"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @model_validator(mode="after")
    def _detector_has_source(self) -> ScoutingSettings:
        if self.detector == "grounding_dino" and self.grounding_dino.source is None:
            raise ValueError(
                "grounding_dino.source is required when detector is 'grounding_dino' "
                "(or set detector: vegetation / auto)"
            )
        return self

    @property
    def detector_kind(self) -> Literal["grounding_dino", "vegetation"]:
        """The detector that runs: ``auto`` resolved by whether a checkpoint is configured."""
        if self.detector == "auto":
            return "grounding_dino" if self.grounding_dino.source else "vegetation"
        return self.detector
