"""Which image formats AADS decodes, and how it names a file it cannot decode.

Pillow decodes JPEG, PNG, WebP, BMP, TIFF and AVIF itself. HEIC/HEIF, what iPhones and many
Android phones save by default, decodes through pillow-heif (libheif), registered with Pillow
here, once, on import; an installation without it still recognises a HEIC file by its header
and says so ("a HEIC/HEIF photo ... install pillow-heif or export it as JPEG") instead of "not
an image". Ingest (`aads.data.images`), preprocessing (`aads.backbone.preprocess`) and the
servers' image checks share these names and messages: `why_undecodable` is the one function
to call when Pillow cannot open some bytes.
"""

from __future__ import annotations

DECODED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "HEIF", "AVIF"})
"""Pillow format names AADS accepts (MPO: multi-picture JPEG from phones; HEIF: HEIC too)."""


def _register_heif() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # an installation without the optional decoder: HEIC is named, refused
        return False
    register_heif_opener()
    return True


HEIF_SUPPORTED = _register_heif()
"""Whether this installation decodes HEIC/HEIF (pillow-heif importable)."""

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
HEAD_BYTES = 64
"""How many leading bytes `sniff_format` needs."""


def sniff_format(head: bytes) -> str | None:
    """The container format the first bytes announce (``HEIC``, ``AVIF``, ``JPEG`` ...),
    whether or not this installation can decode it; None when they announce none."""
    if len(head) >= 12 and head[4:8] == b"ftyp":  # ISO base media file: HEIF, AVIF, MP4 ...
        size = int.from_bytes(head[0:4], "big")
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIC"
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def why_undecodable(head: bytes) -> str:
    """Why bytes that Pillow could not open are not a usable image, naming the format their
    header announces: HEIC without a decoder gets what to do about it."""
    announced = sniff_format(head)
    if announced == "HEIC" and not HEIF_SUPPORTED:
        return (
            "a HEIC/HEIF photo (the iPhone camera default), which this installation cannot "
            "decode: install pillow-heif, or export the photo as JPEG"
        )
    if announced is not None:
        return f"a {announced} file that cannot be decoded (corrupt or truncated)"
    return "not a recognised image format (JPEG, PNG, WebP, HEIC, AVIF, BMP or TIFF expected)"
