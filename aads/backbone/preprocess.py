"""Image -> normalised tensor, as DINOv3's evaluation transform does it, with PIL and numpy.

The stock `DINOv3ViTImageProcessor` needs torchvision, which is unusable here. The transform:
apply the EXIF orientation, convert to RGB, resize the whole image to a square (bilinear,
antialiased; no crop), scale to [0, 1], normalise with the model's pretraining statistics,
and return float32 CHW. Anything that is not a decodable image raises `ImageDecodeError`
naming the file, so one bad upload is reported instead of crashing a batch. HEIC/HEIF photos
decode like any other format (`aads.image_formats` registers pillow-heif); a file Pillow
cannot open is named by what its header announces (a HEIC without a decoder says so).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from aads.image_formats import HEAD_BYTES, why_undecodable

from .errors import ImageDecodeError
from .normalization import Normalization

ImageInput = Image.Image | str | os.PathLike[str] | bytes
"""A decoded PIL image, a file path, or the encoded bytes of an image file."""

_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white: their stored RGB is often arbitrary."""
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Modes PIL decodes 16-bit grayscale PNG/TIFF into (``I`` holds them in 32-bit ints)."""


def open_image(source: ImageInput) -> Image.Image:
    """Decode `source` fully (so truncation is caught here) and apply its EXIF orientation."""
    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source)
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: no such file", path=name) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: {why_undecodable(_head(source))}", path=name) from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated/corrupt data as OSError (sometimes SyntaxError for bad headers);
        # pillow-heif raises ValueError for a HEIC cut short ("iloc box references data
        # outside of file bounds"), found by the fuzz test.
        raise ImageDecodeError(f"{name}: not a decodable image ({err})", path=name) from None


def _head(source: bytes | str | os.PathLike[str]) -> bytes:
    """The first bytes of an encoded image, for naming what it claims to be."""
    if isinstance(source, bytes):
        return source[:HEAD_BYTES]
    try:
        with open(source, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError:
        return b""


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Alpha (RGBA, LA, PA, P with a transparent index) is composited on white; 16/32-bit
    grayscale is scaled from its 16-bit range instead of being clipped at 255 (which PIL's own
    ``convert`` does, turning most 16-bit images white); CMYK, YCbCr, 1-bit and L use PIL.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def preprocess_image(
    image: ImageInput, image_size: int, normalization: Normalization
) -> torch.Tensor:
    """One image as a normalised float32 tensor of shape (3, image_size, image_size)."""
    return rgb_tensor(to_rgb(open_image(image)), image_size, normalization)


def rgb_tensor(rgb: Image.Image, image_size: int, normalization: Normalization) -> torch.Tensor:
    """The transform's last steps on an RGB image: square resize, scale, normalise, CHW.

    Training (`preprocess_image`) and serving (`aads.uploads` decodes, then this) share it, so
    a served image meets exactly the arithmetic the model was trained with."""
    if rgb.size != (image_size, image_size):
        # PIL's bilinear filter widens its support when downscaling: antialiased, like
        # torchvision's Resize(antialias=True) in the official transform.
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    mean = np.asarray(normalization.mean, dtype=np.float32)
    std = np.asarray(normalization.std, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def preprocess_batch(
    images: Sequence[ImageInput] | Iterable[ImageInput],
    image_size: int,
    normalization: Normalization,
) -> torch.Tensor:
    """A batch (N, 3, S, S) from PIL images, paths or bytes; N may be 0."""
    tensors = [preprocess_image(im, image_size, normalization) for im in images]
    if not tensors:
        return torch.empty((0, 3, image_size, image_size), dtype=torch.float32)
    return torch.stack(tensors)
