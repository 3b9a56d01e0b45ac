"""Uploaded images (`aads.uploads`): every refusal names the image and says why, hostile files
built from real PlantVillage photos decode safely, and a served image meets the training
transform's arithmetic."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from PIL import Image, ImageOps

from aads.backbone import LVD1689M, preprocess_image
from aads.config import ServingSettings
from aads.uploads import (
    ImageHeader,
    UploadRejected,
    UploadTooLarge,
    check_request_pixels,
    decode_upload,
    read_header,
)
from tests.images import (
    ROOT,
    corrupt_exif_jpeg,
    encode,
    mutated_images,
    png_header_only,
    real_jpeg,
    with_exif_orientation,
)

LIMITS = ServingSettings()


def tensor(data: bytes, side: int = 32) -> torch.Tensor:
    from aads.backbone import rgb_tensor

    return rgb_tensor(decode_upload(data, "image 0", LIMITS, side), side, LVD1689M)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "image 3: empty image"),
        (b"GIF89a" + b"\0" * 64, "image 3: not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "image 3: not an image"),  # EPS: no Ghostscript, ever
        (encode(Image.new("RGB", (8, 8)), "TIFF"), "image 3: not an image"),
        (encode(Image.new("RGB", (8, 8)), "PNG")[:40], "image 3: not an image"),
        (encode(Image.new("RGB", (64, 64)), "PNG")[:-30], "image 3: not a decodable image"),
    ],
    ids=["empty", "gif", "eps", "tiff", "cut-in-header", "cut-in-data"],
)
def test_bad_uploads_are_refused_naming_the_image(data, message):
    with pytest.raises(UploadRejected, match=message):
        decode_upload(data, "image 3", LIMITS)


def test_a_truncated_real_photo_is_refused_as_not_decodable():
    photo = real_jpeg()
    with pytest.raises(UploadRejected, match="image 0: not a decodable image"):
        decode_upload(photo[: len(photo) // 2], "image 0", LIMITS, 224)


def test_an_image_over_the_byte_limit_is_too_large():
    limits = ServingSettings(max_image_bytes=2048)
    with pytest.raises(UploadTooLarge, match="image 0: image is .* bytes, over the 2048 byte"):
        read_header(real_jpeg(), "image 0", limits)


def test_a_decompression_bomb_is_too_many_pixels_not_not_an_image():
    with pytest.raises(UploadTooLarge, match=r"image 1: image has 400.0 MP, over the 40.0 MP"):
        read_header(png_header_only(20_000, 20_000), "image 1", LIMITS)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_with_its_size():
    bomb = png_header_only(8_000, 6_000)  # under PIL's own bomb check, over ours
    with pytest.raises(UploadTooLarge, match=r"image 0: image is 8000x6000 = 48.0 MP, over"):
        decode_upload(bomb, "image 0", LIMITS)


def test_webp_has_a_quarter_of_the_pixel_limit_because_its_decoder_needs_four_times_the_memory():
    limits = ServingSettings(max_pixels=4_000_000)
    big = encode(Image.new("RGB", (1200, 1000), (10, 200, 30)), "WEBP", lossless=True)
    with pytest.raises(UploadTooLarge, match=r"1200x1000 = 1.2 MP, over the 1.0 MP limit for WebP"):
        read_header(big, "image 0", limits)
    small = encode(Image.new("RGB", (1000, 1000), (10, 200, 30)), "WEBP", lossless=True)
    assert read_header(small, "image 0", limits).pixels == 1_000_000


def test_the_request_pixel_budget_counts_every_image_before_any_decodes():
    headers = [ImageHeader("PNG", 6300, 6300)] * 64  # the 0.4 MB request
    with pytest.raises(UploadTooLarge, match=r"64 images have 2540.2 MP in all, over the 256.0"):
        check_request_pixels(headers, LIMITS)
    check_request_pixels(headers[:6], LIMITS)  # 238 MP: within


def test_the_corrupt_exif_jpeg_decodes_once_with_no_metadata_left_to_trip_on():
    poisoned = corrupt_exif_jpeg()
    assert len(poisoned) < 1000
    with pytest.raises(SyntaxError):  # what broke the shared batch function before
        ImageOps.exif_transpose(Image.open(io.BytesIO(poisoned)).copy())
    image = decode_upload(poisoned, "image 0", LIMITS, 224)
    assert image.mode == "RGB" and image.size == (16, 16) and image.info == {}
    assert ImageOps.exif_transpose(image).size == (16, 16)  # nothing left to read


@pytest.mark.parametrize("big_endian", [True, False])
def test_exif_orientation_is_applied(big_endian):
    photo = Image.open(io.BytesIO(real_jpeg())).crop((0, 0, 256, 128))
    rotated = with_exif_orientation(encode(photo, "JPEG"), 6, big_endian=big_endian)
    assert decode_upload(rotated, "image 0", LIMITS).size == (128, 256)


def solid(mode: str, size: tuple[int, int], color: object) -> Image.Image:
    return Image.new(mode, size, color)


def palette_with_transparency(size: tuple[int, int]) -> Image.Image:
    img = Image.new("P", size, 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.info["transparency"] = 0
    return img


SMALL_CASES = {
    "rgb jpeg": lambda: real_jpeg(),
    "one-bit png": lambda: encode(solid("1", (40, 30), 1)),
    "palette png with transparency": lambda: encode(palette_with_transparency((40, 30))),
    "sixteen-bit png": lambda: encode(solid("I;16", (40, 30), 40_000)),
    "rgba png": lambda: encode(solid("RGBA", (40, 30), (10, 200, 30, 128))),
    "la png": lambda: encode(solid("LA", (40, 30), (90, 128))),
    "cmyk jpeg": lambda: encode(solid("CMYK", (40, 30), (0, 100, 200, 10)), "JPEG"),
    "webp": lambda: encode(Image.open(io.BytesIO(real_jpeg())), "WEBP"),
}


@pytest.mark.parametrize("case", sorted(SMALL_CASES))
def test_a_small_upload_meets_exactly_the_training_transform(case):
    data = SMALL_CASES[case]()
    assert torch.equal(tensor(data, 224), preprocess_image(data, 224, LVD1689M))


@pytest.mark.parametrize(
    "image",
    [
        Image.open(io.BytesIO(real_jpeg())).resize((3000, 2000), Image.Resampling.BICUBIC),
        palette_with_transparency((2600, 1900)),
        solid("I;16", (2500, 2100), 30_000),
    ],
    ids=["jpeg", "palette", "sixteen-bit"],
)
def test_a_large_upload_shrunk_while_decoding_stays_close_to_the_full_decode(image):
    fmt = "JPEG" if image.mode == "RGB" else "PNG"
    data = encode(image, fmt)
    served, trained = tensor(data, 224), preprocess_image(data, 224, LVD1689M)
    # normalised units (1 / 0.225 per 8-bit level): the mean error is a small fraction of one
    assert float((served - trained).abs().mean()) < 0.05


@pytest.mark.slow
def test_decoding_a_large_one_bit_png_never_holds_it_in_rgb():
    """Peak memory of one 6300 x 6300 1-bit PNG decoded for a 224 px model, in a fresh
    process: the 40 MP frame once as bytes (L), never as 120 MB of RGB."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.images import one_bit_png
from aads.config import ServingSettings
from aads.uploads import decode_upload
data = one_bit_png(6300)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = decode_upload(data, "image 0", ServingSettings(), 224)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(image.size, (after - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    size, grown_mib = out.stdout.rsplit(" ", 1)
    assert size.strip() == "(450, 450)" and int(grown_mib) < 100, out.stdout


@settings(
    max_examples=300,
    deadline=2000,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated_images())
@pytest.mark.slow
def test_mutated_real_images_are_decoded_or_refused_never_anything_else(data):
    """Flip, insert, cut and repeat bytes of real JPEG and PNG files: every outcome is an
    image or one of the two upload errors, never a decoder's own exception."""
    try:
        image = decode_upload(data, "image 0", LIMITS, 224)
    except (UploadRejected, UploadTooLarge) as err:
        assert str(err).startswith("image 0: ")
    else:
        assert image.mode == "RGB" and image.info == {}
        assert np.asarray(image).shape[2] == 3
