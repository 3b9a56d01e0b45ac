"""Settings of image capture: the ``serving.capture`` section of the platform spec.

Pure pydantic, no I/O: `aads.config` embeds `CaptureSettings` in `ServingSettings`, so this
module must not import `aads.config` (that would be circular) and must stay cheap to import.
Capture is off by default: storing users' photos is a decision an operator makes on purpose.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*")


class CaptureSettings(BaseModel):
    """What the router keeps of the images it answers, and how it writes them.

    Kept always: every image answered ``unknown`` (disease-level, and crop-level "not one of
    the known crops"). Kept by sample: ``sample_rate`` of the images answered by name, chosen
    by a hash of the image bytes, so the choice is the same on every replica and every retry
    and the sample is an unbiased share of the traffic (what drift monitoring compares).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    enabled: bool = Field(False, description="capture images at all (off: nothing is kept)")
    store: str = Field(
        "",
        description="s3://bucket[/base] or a folder; empty: the spec's storage bucket",
    )
    prefix: str = Field("capture", description="key prefix under the store: <prefix>/<crop>/...")
    sample_rate: float = Field(
        0.05, ge=0, le=1, description="share of images answered by name that are kept too"
    )
    queue_size: int = Field(256, ge=1, le=100_000, description="images waiting to be written")
    writers: int = Field(2, ge=1, le=16, description="threads writing to the store")
    queue_bytes: int = Field(
        64 * 2**20, ge=2**20, description="encoded bytes waiting to be written, at most"
    )
    max_side: int = Field(
        2048, ge=64, le=16384, description="longer stored images are downscaled to this side"
    )
    max_pixels: int = Field(
        40_000_000, ge=4096, description="images with more pixels are dropped, not decoded"
    )
    jpeg_quality: int = Field(90, ge=50, le=100)
    dedupe_memory: int = Field(
        20_000, ge=0, le=10_000_000, description="recent image hashes remembered to skip repeats"
    )
    store_timeout_s: float = Field(5.0, gt=0, le=120, description="per store request")
    store_retries: int = Field(1, ge=1, le=5, description="attempts per store request")
    retry_after_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="after the store fails, drop images for this long before trying it again",
    )
    record_client: bool = Field(
        False, description="store the client's address with each image (off: never stored)"
    )

    @field_validator("prefix")
    @classmethod
    def _safe_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not _PREFIX.fullmatch(v) or ".." in v.split("/"):
            raise ValueError(f"{v!r} is not a key prefix like 'capture' or 'field/capture'")
        return v

    @field_validator("store")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError(f"{v!r}: use s3://bucket[/base], a folder, or leave it empty")
        return v
