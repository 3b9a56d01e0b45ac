"""Uploaded images: checked, then decoded with bounded memory, before any model sees them.

Every server (router, predictor, scouting) and `aads predict`'s in-process path takes bytes
from the network through here, in this order:

1. the bytes: not empty, at most ``max_image_bytes`` (`UploadTooLarge`, 413);
2. the header only (`read_header`): one of the formats we decode (JPEG, PNG, WebP; MPO, the
   multi-picture JPEG phones write, as JPEG; no other PIL decoder is ever tried) and at most
   ``max_pixels`` (a decompression bomb is refused here as "too many pixels", 413, naming its
   size); a request's images together are held to ``max_request_pixels`` from their headers
   alone (`check_request_pixels`), before anything is decoded;
3. the decode (`decode_upload`), one image at a time, straight to a small size when the model
   needs only ``side`` pixels: JPEG's decoder scales by 1/2 to 1/8 while decoding (``draft``),
   other formats are decoded whole and shrunk at once (``Image.reduce``) before any colour
   conversion, keeping at least twice the model's side (PIL's ``thumbnail`` reducing gap, so
   the final antialiased resize sees the same detail as from the full image);
4. EXIF orientation read once, as a number; an EXIF block that cannot be parsed (a corrupt TIFF
   header) counts as no orientation, and nothing downstream reads EXIF again (the image that
   leaves here carries no metadata);
5. RGB (`aads.backbone.to_rgb`: alpha on white, 16-bit scaled).

Memory: the largest buffer is one decoded frame in its own mode (JPEG: at draft size); colour
conversion and reduction work strip by strip. Measured peaks for 40 megapixels shrunk for a 224
px model (``benchmarks/serving.py``): RGBA PNG 174 MiB (the worst, about 4.5 bytes a pixel),
RGB PNG 163, 16-bit PNG 94, palette PNG 63, 1-bit PNG 44, JPEG 3; WebP needs 16 bytes a pixel,
so its limit is a quarter of ``max_pixels``. A server that decodes at most N images at once
(``serving.max_concurrent_decodes``) holds at most N such frames.

Every failure is an `UploadRejected` (400) or `UploadTooLarge` (413) naming the image (`where`);
a decoder's own exception never escapes, whatever the bytes.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from aads.backbone import rgb_tensor, to_rgb
from aads.config import ServingSettings
from aads.errors import BadInput, TooLarge

if TYPE_CHECKING:
    import torch

    from aads.backbone import Backbone

log = logging.getLogger("aads.uploads")

DECODERS = ("JPEG", "PNG", "WEBP")
"""The only PIL plugins an upload may reach (no EPS, no TIFF, no ICO ...); JPEG's also opens
MPO, the multi-picture JPEG phones write (its first picture is used)."""
ACCEPTED = "JPEG, PNG or WebP"
REDUCING_GAP = 2
"""Shrink while decoding to at least this many times the model's side."""
COSTLY = {"WEBP": 4}
"""Formats whose decoder needs several times the memory of a PNG or JPEG frame: libwebp
decodes into its own canvas and PIL copies it twice (measured: 16 bytes a pixel against about
4.5 for an RGBA PNG). Their pixel limit is ``max_pixels`` divided by this."""

# Orientation tag (0x0112) -> the transpose that undoes it (as `ImageOps.exif_transpose`).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_BOMB = re.compile(r"\((\d+) pixels\)")
# PIL warns about large images at open; `read_header`'s limit is the authority here.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UploadRejected(BadInput):
    """An upload that is not an image we accept: empty, not an image, corrupt, truncated."""


class UploadTooLarge(TooLarge):
    """An upload, or a request's uploads together, over a size or pixel limit."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an upload says, before any pixel is decoded."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def read_header(data: bytes, where: str, limits: ServingSettings) -> ImageHeader:
    """Steps 1 and 2: the upload's format and size, checked against the per-image limits."""
    if not data:
        raise UploadRejected(f"{where}: empty image")
    if len(data) > limits.max_image_bytes:
        raise UploadTooLarge(
            f"{where}: image is {len(data)} bytes, over the {limits.max_image_bytes} byte limit"
        )
    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as probe:
            header = ImageHeader(probe.format or "", *probe.size)
    except Image.DecompressionBombError as err:
        found = _BOMB.search(str(err))
        size = megapixels(int(found.group(1))) if found else "too many pixels"
        raise UploadTooLarge(
            f"{where}: image has {size}, over the {megapixels(limits.max_pixels)} limit"
        ) from None
    except Exception:  # noqa: BLE001 - PIL raises many types for garbage; all mean the same
        raise UploadRejected(f"{where}: not an image ({ACCEPTED} expected)") from None
    if header.width < 1 or header.height < 1:
        raise UploadRejected(f"{where}: image has no pixels ({header.width}x{header.height})")
    cost = COSTLY.get(header.format, 1)
    if header.pixels * cost > limits.max_pixels:
        name = "WebP" if header.format == "WEBP" else header.format
        which = f" for {name} (its decoder needs {cost}x the memory)" if cost > 1 else ""
        raise UploadTooLarge(
            f"{where}: image is {header.width}x{header.height} = {megapixels(header.pixels)}, "
            f"over the {megapixels(limits.max_pixels // cost)} limit{which}"
        )
    return header


def check_request_pixels(headers: list[ImageHeader], limits: ServingSettings) -> None:
    """The per-request pixel budget, from the headers alone (`UploadTooLarge`)."""
    total = sum(h.pixels for h in headers)
    if total > limits.max_request_pixels:
        raise UploadTooLarge(
            f"the request's {len(headers)} images have {megapixels(total)} in all, over the "
            f"{megapixels(limits.max_request_pixels)} per-request limit: send fewer or smaller "
            "images per request"
        )


def decode_upload(
    data: bytes, where: str, limits: ServingSettings, side: int | None = None
) -> Image.Image:
    """Steps 1 to 5: an RGB image without metadata, shrunk to at least `REDUCING_GAP` x
    `side` per axis when `side` is given (the model's input side), else full size."""
    read_header(data, where, limits)
    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as img:
            if side and img.format in ("JPEG", "MPO"):
                img.draft(img.mode, (REDUCING_GAP * side, REDUCING_GAP * side))
            img.load()
            orientation = _orientation(img, where)
            small = _shrink(img, side)
    except (UploadRejected, UploadTooLarge):
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is this upload's problem
        log.debug("%s: decode failed: %s: %s", where, type(err).__name__, err)
        raise UploadRejected(
            f"{where}: not a decodable image (corrupt or truncated {ACCEPTED})"
        ) from None
    if orientation in _ORIENTATION:
        small = small.transpose(_ORIENTATION[orientation])
    rgb = to_rgb(small)
    rgb.info = {}
    return rgb


def model_input(
    data: bytes, where: str, limits: ServingSettings, backbone: Backbone
) -> torch.Tensor:
    """An upload as `backbone`'s input tensor: checked and shrunk while decoding, then the
    training transform's last steps (`aads.backbone.rgb_tensor`)."""
    side = backbone.image_size
    return rgb_tensor(decode_upload(data, where, limits, side), side, backbone.normalization)


def _orientation(img: Image.Image, where: str) -> int:
    """The EXIF orientation, read once; unreadable EXIF counts as none."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception as err:  # noqa: BLE001 - a corrupt EXIF block must not cost the image
        log.debug("%s: EXIF ignored (%s: %s)", where, type(err).__name__, err)
        return 1


STRIP_ROWS = 32
"""Output rows shrunk at a time: conversions and ``reduce`` work on a strip, never on a second
full-size copy of the frame."""


def _averageable(img: Image.Image) -> Image.Image:
    """The image in a mode `Image.reduce` can average: 1-bit as L, palette as RGB(A), 16-bit
    as 32-bit integers (as `aads.backbone.to_rgb` reads them)."""
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode.startswith("I;16"):
        return img.convert("I")
    return img


def _shrink(img: Image.Image, side: int | None) -> Image.Image:
    """Reduce by whole factors per axis so that each stays >= REDUCING_GAP x side, strip by
    strip: the full-size frame decoded is the only full-size buffer."""
    width, height = img.size
    fx = max(1, width // (REDUCING_GAP * side)) if side else 1
    fy = max(1, height // (REDUCING_GAP * side)) if side else 1
    if fx == 1 and fy == 1:
        return _averageable(img)
    rows = fy * STRIP_ROWS  # strips aligned to fy: no block straddles two strips
    strips = [
        _averageable(img.crop((0, top, width, min(top + rows, height)))).reduce((fx, fy))
        for top in range(0, height, rows)
    ]
    out = Image.new(strips[0].mode, (strips[0].width, sum(s.height for s in strips)))
    top = 0
    for strip in strips:
        out.paste(strip, (0, top))
        top += strip.height
    return out
