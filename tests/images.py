"""Images for serving tests: real PlantVillage photos, and the hostile files a public endpoint
meets, built in code from them (never stored in the repository).

The sample lives outside the repository (``../shared/data/plantvillage``, or
``$AADS_PLANTVILLAGE_DIR``); tests that need it skip with the reason when it is absent.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image

from aads.data.samples import plantvillage_sample

ROOT = Path(__file__).resolve().parents[1]


def plantvillage_dir() -> Path:
    """The PlantVillage sample, where `aads.data.samples` finds it (``$AADS_PLANTVILLAGE_DIR``,
    else ``shared/data/plantvillage`` above the checkout); skips when it is absent."""
    folder, looked = plantvillage_sample()
    if folder is None:
        pytest.skip(
            f"the PlantVillage sample is not at {looked} (set AADS_PLANTVILLAGE_DIR)",
            allow_module_level=True,
        )
    return folder


@cache
def plantvillage_jpegs() -> tuple[Path, ...]:
    folder = plantvillage_dir()
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not found:
        pytest.skip(f"no JPEG under {folder}", allow_module_level=True)
    return tuple(found)


def real_jpeg(index: int = 0) -> bytes:
    """A real PlantVillage leaf photo (256 x 256 JPEG), unmodified."""
    photos = plantvillage_jpegs()
    return photos[index % len(photos)].read_bytes()


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def with_exif_orientation(jpeg: bytes, orientation: int, *, big_endian: bool = True) -> bytes:
    """The photo re-encoded with an EXIF block carrying `orientation` (0x0112)."""
    exif = Image.Exif()
    exif.endian = ">" if big_endian else "<"
    exif[0x0112] = orientation
    return encode(Image.open(io.BytesIO(jpeg)), "JPEG", exif=exif.tobytes(), quality=90)


def corrupt_exif_jpeg(jpeg: bytes | None = None, *, side: int = 16) -> bytes:
    """The issue's poisoned photo: a real JPEG, shrunk, with a big-endian EXIF block whose TIFF
    magic ``MM\\0*`` is changed to ``MM^*``: PIL decodes it, and reads that EXIF as empty on
    first open, but ``ImageOps.exif_transpose`` raises on the image afterwards (a few hundred
    bytes, as in the issue's 808-byte case)."""
    photo = Image.open(io.BytesIO(jpeg or real_jpeg())).resize((side, side))
    exif = Image.Exif()
    exif.endian = ">"
    exif[0x0112] = 6
    data = encode(photo, "JPEG", exif=exif.tobytes(), quality=50)
    assert data.count(b"MM\x00*") == 1
    return data.replace(b"MM\x00*", b"MM^*", 1)


def one_bit_png(side: int) -> bytes:
    """A 1-bit PNG of `side` x `side` pixels: kilobytes on the wire, `side`² pixels decoded."""
    return encode(Image.new("1", (side, side), 0), "PNG", optimize=True)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` and whose data is one empty IDAT: a
    decompression bomb's signature without its payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def noise_png(side: int, seed: int = 0) -> bytes:
    """Incompressible: `side`² x 3 bytes on the wire."""
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)), "PNG")


def not_a_plant() -> bytes:
    """A saturated magenta checkerboard, far from every synthetic leaf."""
    board = (np.indices((64, 64)).sum(0) // 8 % 2).astype(np.uint8) * 255
    return encode(Image.fromarray(np.stack([board, np.zeros_like(board), board], axis=-1)), "PNG")


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """Real image bytes, mutated: a PlantVillage JPEG, a PNG made from one, or the corrupt-EXIF
    JPEG, with 1 to 8 bit flips, insertions, cuts or duplicated runs (a fuzzer's moves)."""
    photo = real_jpeg(draw(st.integers(0, 400)))
    kind = draw(st.sampled_from(["jpeg", "png", "exif"]))
    if kind == "png":
        photo = encode(Image.open(io.BytesIO(photo)).resize((48, 48)))
    elif kind == "exif":
        photo = corrupt_exif_jpeg(photo)
    raw = bytearray(photo)
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(raw) - 1))
        move = draw(st.sampled_from(["flip", "insert", "cut", "repeat"]))
        if move == "flip":
            raw[where] ^= 1 << draw(st.integers(0, 7))
        elif move == "insert":
            raw[where:where] = draw(st.binary(min_size=1, max_size=32))
        elif move == "cut":
            del raw[where : where + draw(st.integers(1, 256))]
        else:
            raw[where:where] = raw[where : where + draw(st.integers(1, 256))]
    return bytes(raw)
