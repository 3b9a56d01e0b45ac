"""Re-encode an uploaded image as pixels only, for storage: no EXIF (so no GPS position, no
camera serial, no capture time), no XMP, no ICC profile, no comments.

Metadata is not filtered tag by tag (a blocklist always misses a vendor's maker note); the
image is decoded, its EXIF orientation applied (so it looks as the user saw it), converted to
8-bit RGB as the model reads it, copied into a fresh image that carries nothing but pixels,
and encoded as a baseline JPEG. Large photos are downscaled on the way (JPEG's DCT scaling
decodes them at a fraction of their size, so memory stays bounded by ``max_side``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from aads.backbone.preprocess import to_rgb
from aads.errors import BadInput, TooLarge

log = logging.getLogger(__name__)


class CaptureImageError(BadInput):
    """Bytes that cannot be stored as an image (not decodable)."""


class CaptureImageTooLarge(TooLarge, CaptureImageError):
    """An image with more pixels than capture decodes."""


@dataclass(frozen=True)
class CleanImage:
    jpeg: bytes
    width: int
    height: int
    source_format: str


def pixels_only_jpeg(
    data: bytes, *, max_side: int = 2048, max_pixels: int = 40_000_000, quality: int = 90
) -> CleanImage:
    """`data` as a metadata-free JPEG, orientation applied, longest side at most `max_side`."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            source_format = img.format or ""
            width, height = img.size
            if width * height > max_pixels:
                raise CaptureImageTooLarge(
                    f"{width}x{height} pixels is over capture's {max_pixels} limit"
                )
            if source_format == "JPEG":
                img.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4, 1/8 when larger
            img.load()
            oriented = _oriented(img)
    except CaptureImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as err:
        raise CaptureImageError(f"not a decodable image ({err})") from None
    rgb = to_rgb(oriented)
    if max(rgb.size) > max_side:
        rgb = rgb.copy()
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    clean = Image.new("RGB", rgb.size)
    clean.paste(rgb)
    out = io.BytesIO()
    clean.save(out, format="JPEG", quality=quality)  # optimize=True holds the GIL throughout
    return CleanImage(out.getvalue(), clean.width, clean.height, source_format)


def _oriented(img: Image.Image) -> Image.Image:
    """The image as displayed (EXIF orientation applied); as stored when the EXIF is corrupt,
    which must not cost the capture."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken EXIF
        log.debug("unreadable EXIF orientation, stored as decoded: %s", err)
        return img.copy()
