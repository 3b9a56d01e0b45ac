"""Phone photos decode like any other image: HEIC/HEIF (the iPhone default) is accepted by
ingest and preprocessing, and where no HEIC decoder is installed it is refused by name, never
as "not an image"; no bytes at all make the checks raise anything but their own error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from aads import image_formats
from aads.backbone import LVD1689M, ImageDecodeError, open_image, preprocess_image
from aads.data.images import ImageRejected, probe_image
from aads.data.ingest import ingest
from aads.image_formats import sniff_format

pytestmark = pytest.mark.skipif(
    not image_formats.HEIF_SUPPORTED, reason="pillow-heif is not installed (make setup installs it)"
)


def leaf(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A green image with a brown spot: enough structure to compare decodes."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 1] = 160
    arr[20:40, 30:60] = (120, 70, 20)
    return Image.fromarray(arr)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=95)
    return buf.getvalue()


@pytest.fixture
def heic() -> bytes:
    return encoded(leaf(), "HEIF")


@pytest.fixture
def without_heif_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """This installation as if pillow-heif were missing: Pillow no longer knows HEIF."""
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    monkeypatch.setattr(image_formats, "HEIF_SUPPORTED", False)


def test_a_heic_photo_is_named_heic_by_its_header(heic):
    assert sniff_format(heic[:64]) == "HEIC"
    assert sniff_format(encoded(leaf(), "AVIF")[:64]) == "AVIF"
    assert sniff_format(encoded(leaf(), "JPEG")[:64]) == "JPEG"
    assert sniff_format(b"hello world, not an image") is None


def test_a_heic_photo_preprocesses_like_the_same_picture_as_png(heic):
    from_heic = preprocess_image(heic, 64, LVD1689M)
    from_png = preprocess_image(encoded(leaf(), "PNG"), 64, LVD1689M)
    assert from_heic.shape == (3, 64, 64)
    assert (from_heic - from_png).abs().mean() < 0.1  # lossy HEVC, same picture


def test_ingest_accepts_heic_photos(tmp_path, heic):
    for i in range(3):
        (tmp_path / "tomato" / "healthy").mkdir(parents=True, exist_ok=True)
        (tmp_path / "tomato" / "healthy" / f"IMG_{i}.HEIC").write_bytes(
            encoded(leaf((96 + i, 64)), "HEIF")
        )
    result = ingest(tmp_path)
    assert len(result.rows) == 3 and result.rejects == []
    probe = probe_image(
        tmp_path / "tomato" / "healthy" / "IMG_0.HEIC", min_side=32, max_pixels=10**6
    )
    assert (probe.format, probe.width, probe.height) == ("HEIF", 96, 64)


def test_without_a_heic_decoder_ingest_refuses_heic_by_name(tmp_path, heic, without_heif_decoder):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(heic)
    with pytest.raises(ImageRejected) as err:
        probe_image(path, min_side=1, max_pixels=10**6)
    assert err.value.reason == "unsupported_format"
    assert "HEIC" in err.value.detail and "pillow-heif" in err.value.detail


def test_without_a_heic_decoder_preprocessing_says_heic_not_garbage(heic, without_heif_decoder):
    with pytest.raises(ImageDecodeError, match="HEIC/HEIF photo .* install pillow-heif"):
        open_image(heic)


@pytest.mark.parametrize("keep", [40, 0.5])
def test_a_truncated_heic_is_corrupt_not_unsupported(tmp_path, heic, keep):
    path = tmp_path / "cut.heic"
    path.write_bytes(heic[: keep if isinstance(keep, int) else int(len(heic) * keep)])
    with pytest.raises(ImageRejected) as err:
        probe_image(path, min_side=1, max_pixels=10**6)
    assert err.value.reason == "corrupt"
    assert err.value.detail == "a HEIC file that cannot be decoded (corrupt or truncated)"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_no_bytes_make_the_decoders_raise_anything_but_their_own_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "x.jpg"
    path.write_bytes(data)
    try:
        probe_image(path, min_side=1, max_pixels=10**6)
    except ImageRejected:
        pass
    try:
        open_image(data)
    except ImageDecodeError:
        pass
    sniff_format(data[:64])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["JPEG", "PNG", "HEIF", "WEBP"]), st.data())
def test_cut_or_flipped_real_images_are_rejected_never_crash(fmt, data):
    good = encoded(leaf(), fmt)
    cut = data.draw(st.integers(0, len(good)))
    flip = data.draw(st.integers(0, len(good) - 1))
    broken = bytearray(good[:cut])
    if broken and flip < len(broken):
        broken[flip] ^= 0xFF
    try:
        open_image(bytes(broken))
    except ImageDecodeError:
        pass
