"""SAM-2 box prompts give one mask per box, inside it; masks travel as compact RLE.

A mask is computed only over its box's pixels (the low-resolution logits are upsampled inside
the box window), so it cannot leave the box: the window test below shows that this equals
upsampling the whole image and cropping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aads.vlm.masks import decode_rle, encode_rle, region_image, upsample_window
from aads.vlm.segmentation import load_sam2
from aads.vlm.settings import Sam2Settings
from aads.vlm.synthetic import field_image

CPU = torch.device("cpu")


def sam2(**kw):
    return load_sam2(
        Sam2Settings(source="random:tiny", **kw), None, device=CPU, dtype=torch.float32
    )


def test_sam2_gives_one_mask_per_box_shaped_like_the_box():
    field = field_image(4, width=200, height=150)
    boxes = [*field.boxes, (0, 0, 200, 150)]
    segments = sam2().segment(field.image, boxes)
    assert len(segments) == len(boxes)
    for (x0, y0, x1, y1), seg in zip(boxes, segments, strict=True):
        assert seg.mask.shape == (y1 - y0, x1 - x0) and seg.mask.dtype == bool
        assert np.isfinite(seg.iou_score)


def test_no_boxes_means_no_masks_and_no_model_call():
    assert sam2().segment(field_image(2).image, []) == []


def test_upsampling_inside_a_window_equals_full_upsampling_cropped():
    logits = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(logits[None, None], (97, 131), mode="bilinear", align_corners=False)[0, 0]
    for window in [(0, 0, 131, 97), (3, 5, 120, 97), (130, 96, 131, 97)]:
        x0, y0, x1, y1 = window
        torch.testing.assert_close(
            upsample_window(logits, (131, 97), window), full[y0:y1, x0:x1], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 4), bool),
        np.ones((3, 4), bool),
        np.eye(5, dtype=bool),
        np.random.default_rng(0).random((37, 53)) > 0.5,
        np.pad(np.ones((200, 300), bool), 5),  # runs longer than one 5-bit digit
    ],
)
def test_rle_round_trips(mask):
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)


def test_rle_of_a_solid_leaf_is_a_few_bytes():
    field = field_image(1, width=400, height=300)
    x0, y0, x1, y1 = field.boxes[0]
    rle = encode_rle(field.masks[0][y0:y1, x0:x1])
    assert len(rle["counts"]) < (x1 - x0) * 4  # a few characters per column


def test_a_region_crop_keeps_its_part_and_paints_the_rest():
    image = Image.new("RGB", (100, 80), (200, 10, 10))
    box = (20, 10, 60, 50)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:35] = True
    crop = region_image(image, box, mask, margin=0.25, fill=(1, 2, 3))
    assert crop.size == (60, 60)  # 40 px box + 10 px each side
    pixels = np.asarray(crop)
    inside = pixels[10 + 10 : 10 + 30, 10 + 5 : 10 + 35]
    assert (inside == (200, 10, 10)).all()
    assert (pixels[0, 0] == (1, 2, 3)).all() and (pixels[10 + 5, 10 + 2] == (1, 2, 3)).all()
    kept = region_image(image, box, mask, margin=0.0, fill=None)
    assert kept.size == (40, 40) and (np.asarray(kept) == (200, 10, 10)).all()
