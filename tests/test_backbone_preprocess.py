"""Preprocessing: any PIL mode in, DINOv3's eval transform out (square resize, no crop)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from aads.backbone import (
    LVD1689M,
    SAT493M,
    ImageDecodeError,
    open_image,
    preprocess_batch,
    preprocess_image,
)

SIZE = 16


def solid(mode: str, color, size=(40, 24)) -> Image.Image:
    return Image.new(mode, size, color)


def expected_pixel(rgb, norm=LVD1689M) -> torch.Tensor:
    return torch.tensor(
        [(c / 255.0 - m) / s for c, m, s in zip(rgb, norm.mean, norm.std, strict=True)]
    )


def palette_with_transparency() -> Image.Image:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.paste(1, (0, 0, 10, 20))
    img.info["transparency"] = 0  # index 0 (black) is transparent
    return img


def sixteen_bit_gray(value: int) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20), value, dtype=np.uint16)).save(buf, "PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize(
    "image",
    [
        solid("RGBA", (10, 200, 30, 255)),
        solid("L", 77),
        solid("LA", (77, 255)),
        solid("CMYK", (0, 128, 255, 0)),
        palette_with_transparency(),
        sixteen_bit_gray(40000),
        solid("1", 1),
    ],
    ids=["RGBA", "L", "LA", "CMYK", "P+transparency", "I;16", "1"],
)
def test_any_mode_becomes_normalised_float32_3xSxS(image):
    out = preprocess_image(image, SIZE, LVD1689M)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32


@pytest.mark.parametrize("norm", [LVD1689M, SAT493M], ids=["lvd", "sat"])
def test_one_pixel_is_scaled_and_normalised_by_hand(norm):
    out = preprocess_image(solid("RGB", (200, 100, 50)), SIZE, norm)
    torch.testing.assert_close(out[:, 3, 5], expected_pixel((200, 100, 50), norm))


def test_gray_is_replicated_to_three_equal_channels_before_normalising():
    out = preprocess_image(solid("L", 77), SIZE, LVD1689M)
    torch.testing.assert_close(out[:, 0, 0], expected_pixel((77, 77, 77)))


def test_transparent_pixels_are_composited_on_white():
    out = preprocess_image(solid("RGBA", (0, 0, 0, 0)), SIZE, LVD1689M)
    torch.testing.assert_close(out[:, 8, 8], expected_pixel((255, 255, 255)))


def test_palette_transparency_is_white_and_opaque_colour_kept():
    out = preprocess_image(palette_with_transparency(), 20, LVD1689M)
    torch.testing.assert_close(out[:, 10, 2], expected_pixel((10, 200, 30)))  # left half
    torch.testing.assert_close(out[:, 10, 17], expected_pixel((255, 255, 255)))  # right half


def test_sixteen_bit_gray_is_scaled_not_clipped_to_white():
    out = preprocess_image(sixteen_bit_gray(128 * 257), SIZE, LVD1689M)
    torch.testing.assert_close(out[:, 0, 0], expected_pixel((128, 128, 128)))


def test_resize_is_square_without_crop():
    # A tall image whose top quarter is red: a centre crop would cut the red off.
    img = Image.new("RGB", (32, 64), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 16))
    out = preprocess_image(img, SIZE, LVD1689M)
    torch.testing.assert_close(out[:, 0, 8], expected_pixel((255, 0, 0)))
    torch.testing.assert_close(out[:, 15, 8], expected_pixel((0, 0, 255)))


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20)).save(buf, "JPEG", exif=exif)
    assert open_image(buf.getvalue()).size == (20, 40)


def test_batch_stacks_paths_bytes_and_images(tmp_path):
    path = tmp_path / "leaf.png"
    solid("RGB", (1, 2, 3)).save(path)
    batch = preprocess_batch([path, str(path), path.read_bytes(), solid("L", 5)], SIZE, LVD1689M)
    assert batch.shape == (4, 3, SIZE, SIZE)
    torch.testing.assert_close(batch[0], batch[2])


def test_corrupt_file_raises_image_decode_error_naming_it(tmp_path):
    bad = tmp_path / "leaf_0042.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageDecodeError, match="leaf_0042.jpg") as err:
        preprocess_image(bad, SIZE, LVD1689M)
    assert isinstance(err.value, ValueError) and err.value.path == str(bad)


def test_truncated_image_raises_image_decode_error(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        preprocess_image(cut, SIZE, LVD1689M)


def test_missing_file_raises_image_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="nope.png"):
        preprocess_image(tmp_path / "nope.png", SIZE, LVD1689M)
