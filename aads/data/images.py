"""Checking that a file really is a usable image, without trusting its extension.

Ingest decodes every file fully once: a truncated JPEG passes `Image.verify()` but fails on
`load()`, and we want that found at ingest, not in the middle of an epoch on a GPU node. The
formats are `aads.image_formats.DECODED_FORMATS` (HEIC photos included when pillow-heif is
installed); a HEIC file without the decoder is an ``unsupported_format`` that says so, not
``not_an_image``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from aads import image_formats
from aads.errors import BadInput
from aads.image_formats import DECODED_FORMATS, HEAD_BYTES, sniff_format, why_undecodable

ACCEPTED_FORMATS = DECODED_FORMATS


class ImageRejected(BadInput):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ImageProbe:
    sha256: str
    width: int
    height: int
    format: str


def probe_image(path: Path, *, min_side: int, max_pixels: int) -> ImageProbe:
    """Hash and fully decode `path`; raise `ImageRejected` with a reason code otherwise."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise ImageRejected("empty_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt = img.format or "?"
                width, height = img.size
                if fmt not in ACCEPTED_FORMATS:
                    raise ImageRejected(
                        "unsupported_format", f"{fmt} is not one of {sorted(ACCEPTED_FORMATS)}"
                    )
                if width * height > max_pixels:
                    raise ImageRejected("too_large", f"{width}x{height} > {max_pixels} pixels")
                if min(width, height) < min_side:
                    raise ImageRejected("too_small", f"{width}x{height}, min side {min_side}")
                img.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        head = data[:HEAD_BYTES]
        announced = sniff_format(head)
        if announced is None:
            reason = "not_an_image"
        elif announced == "HEIC" and not image_formats.HEIF_SUPPORTED:
            reason = "unsupported_format"
        else:
            reason = "corrupt"
        raise ImageRejected(reason, why_undecodable(head)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected("too_large", str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejected("corrupt", str(err) or type(err).__name__) from None
    return ImageProbe(digest, width, height, fmt)
