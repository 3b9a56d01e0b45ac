"""Checking that a file really is a usable image, without trusting its extension.

Ingest decodes every file fully once: a truncated JPEG passes `Image.verify()` but fails on
`load()`, and we want that found at ingest, not in the middle of an epoch on a GPU node.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from aads.errors import BadInput

ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})


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
        raise ImageRejected("not_an_image", "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected("too_large", str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejected("corrupt", str(err) or type(err).__name__) from None
    return ImageProbe(digest, width, height, fmt)
