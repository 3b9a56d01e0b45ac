"""Region proposals: Grounding DINO's wiring (random weights: shapes and threshold logic, not
accuracy), the shared box post-processing, and the vegetation stage on synthetic fields."""

from __future__ import annotations

import pytest
import torch

from aads.vlm.detection import (
    Detection,
    finalize_detections,
    load_grounding_dino,
    nms,
    phrase_spans,
)
from aads.vlm.errors import VLMError
from aads.vlm.settings import GroundingDinoSettings, VegetationSettings
from aads.vlm.synthetic import field_image, soil_image
from aads.vlm.vegetation import VegetationDetector

CPU = torch.device("cpu")


def grounding_dino(**kw):
    settings = GroundingDinoSettings(source="random:tiny", **kw)
    return load_grounding_dino(settings, None, device=CPU, dtype=torch.float32)


def test_grounding_dino_boxes_name_a_prompt_and_pass_both_thresholds():
    detector = grounding_dino(box_threshold=0.3, text_threshold=0.2)
    image = field_image(3, width=200, height=120).image
    found = detector.detect(image)
    assert found, "random weights still score some queries above 0.3"
    assert len(found) <= detector.model.config.num_queries
    assert {d.part for d in found} <= {"leaf", "fruit", "stem", "lesion"}
    assert all(d.score > 0.3 for d in found)
    assert all(len(d.box) == 4 and d.mask is None for d in found)


@pytest.mark.parametrize("size", [(64, 64), (200, 200), (40, 300), (301, 41)])
def test_square_and_elongated_photos_run(size):
    from PIL import Image

    found = grounding_dino(box_threshold=0.0, text_threshold=0.0).detect(Image.new("RGB", size))
    assert len(found) == 30  # every query, at thresholds 0


def test_a_box_threshold_of_one_keeps_nothing():
    assert grounding_dino(box_threshold=1.0).detect(field_image(2).image) == []


def test_phrases_split_into_word_pieces_keep_their_own_token_span():
    detector = grounding_dino(prompts=["leaf", "tendril bud", "stem"])
    tokens = detector.tokenizer.convert_ids_to_tokens(detector.input_ids[0])
    phrases = [" ".join(tokens[i] for i in span) for span in detector.spans]
    # "tendril" is not in the tiny vocabulary: it is spelled in pieces, still one phrase
    assert phrases == ["leaf", "t ##e ##n ##d ##r ##i ##l bud", "stem"]
    assert phrase_spans([101, 5, 1012, 6, 7, 1012, 102], {101, 102, 1012}, 2) == [[1], [3, 4]]


def test_prompts_longer_than_the_text_encoder_are_refused_naming_the_setting():
    long_prompts = [f"zz{'q' * 8}{chr(97 + i)}" for i in range(6)]  # spelled letter by letter
    with pytest.raises(VLMError, match=r"grounding_dino\.prompts: \d+ tokens, over"):
        grounding_dino(prompts=long_prompts)


def test_an_input_too_small_for_the_queries_says_which_setting_to_raise():
    detector = grounding_dino(shortest_edge=32, longest_edge=32)
    with pytest.raises(VLMError, match="feature cells, fewer than the model's 30 queries.*edge"):
        detector.detect(field_image(2).image)


def test_a_saved_grounding_dino_folder_detects_exactly_like_the_preset(tmp_path):
    preset = grounding_dino(seed=3, box_threshold=0.0, text_threshold=0.0)
    preset.model.save_pretrained(tmp_path / "gd")
    preset.tokenizer.save_pretrained(tmp_path / "gd")
    loaded = load_grounding_dino(
        GroundingDinoSettings(
            source=str(tmp_path / "gd"),
            shortest_edge=64,
            longest_edge=128,
            box_threshold=0.0,
            text_threshold=0.0,
        ),
        None,
        device=CPU,
        dtype=torch.float32,
    )
    image = field_image(3).image
    assert loaded.detect(image) == preset.detect(image)


def test_a_folder_of_another_model_type_is_refused(tmp_path):
    from aads.vlm.presets import build_sam2

    build_sam2("tiny").save_pretrained(tmp_path / "sam")
    with pytest.raises(VLMError, match="'sam2' model, expected 'grounding-dino'"):
        load_grounding_dino(
            GroundingDinoSettings(source=str(tmp_path / "sam")),
            None,
            device=CPU,
            dtype=torch.float32,
        )


def test_nms_drops_a_box_that_overlaps_a_better_one():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float64)
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64), 0.5) == [0, 2]
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64), 0.9) == [0, 1, 2]


def test_boxes_are_clipped_snapped_filtered_and_capped():
    found = [
        Detection((-5.2, 3.7, 40.1, 30.0), "leaf", 0.9),
        Detection((50.0, 50.0, 53.0, 90.0), "stem", 0.95),  # 3 px wide: too small
        Detection((60.0, 10.0, 130.0, 70.0), "leaf", 0.6),  # runs off the right edge
        Detection((61.0, 11.0, 99.0, 69.0), "lesion", 0.5),  # mostly inside the previous one
    ]
    kept = finalize_detections(found, 100, 80, nms_iou=0.5, max_regions=8, min_side=8)
    assert [(d.box, d.part) for d in kept] == [
        ((0, 3, 41, 30), "leaf"),
        ((60, 10, 100, 70), "leaf"),
    ]
    one = finalize_detections(found, 100, 80, nms_iou=0.5, max_regions=1, min_side=8)
    assert [d.score for d in one] == [0.9]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_vegetation_stage_finds_each_leaf_of_a_synthetic_field_exactly(seed):
    field = field_image(5, seed=seed)
    found = VegetationDetector(VegetationSettings()).detect(field.image)
    assert sorted(d.box for d in found) == sorted(field.boxes)
    for d in found:
        x0, y0, x1, y1 = d.box
        truth = next(m for m, b in zip(field.masks, field.boxes, strict=True) if b == d.box)
        # lesions are brown, yet holes are filled: the component is the whole leaf
        assert d.mask is not None and (d.mask == truth[y0:y1, x0:x1]).mean() > 0.97
        assert d.part == "leaf"


def test_bare_soil_gives_no_vegetation_regions():
    assert VegetationDetector(VegetationSettings()).detect(soil_image(seed=4)) == []
