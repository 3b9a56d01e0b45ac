"""The scouting stage end to end on synthetic field photos, with the real crop router and real
crop adapters (tiny random DINOv3 backbones trained on synthetic plants, `tests.serving_models`).

Which path finds the regions: Grounding DINO with random weights proposes arbitrary boxes, so
"one region per leaf" is checked with the vegetation proposal stage (the configured fallback
when no detector checkpoint exists); Grounding DINO and SAM-2 random presets are checked end to
end for shapes, masks inside boxes and one diagnosis per region.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from aads.answer import Answer, ErrorEntry, Routing
from aads.config import PlatformConfig, parse_config
from aads.uploads import UploadRejected
from aads.vlm.diagnosis import LocalDiagnoser
from aads.vlm.errors import VLMError
from aads.vlm.masks import decode_rle
from aads.vlm.response import Region, RegionDiagnosis, image_verdict
from aads.vlm.scouting import Scout, load_scout
from aads.vlm.synthetic import field_image, soil_image
from tests.serving_models import SPEC as SERVING_SPEC
from tests.serving_models import trained_models

SPEC = {  # the served models' spec, with leaf_mold as a hold-out BioCLIP is asked about
    **SERVING_SPEC,
    "crops": [
        {
            "name": "tomato",
            "phase1_classes": ["healthy", "early_blight"],
            "ood_holdout": ["leaf_mold"],
        },
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
}
MODELS = {"sam2": {"source": "random:tiny"}, "bioclip": {"source": "random:tiny"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Iterator[dict]:
    """The session's trained router and calibrated tomato and corn adapters, loaded."""
    models = trained_models(tmp_path_factory)
    diagnoser = LocalDiagnoser.from_dirs(
        models / "router", {c: models / "adapters" / c for c in ("tomato", "corn")}, device="cpu"
    )
    yield {"diagnoser": diagnoser, "data": models / "data"}


def scout(trained: dict, **scouting) -> Scout:
    config: PlatformConfig = parse_config({**SPEC, "scouting": {"device": "cpu", **scouting}})
    return load_scout(config, trained["diagnoser"])


def assert_masks_inside_boxes(answer) -> None:
    for region in answer.regions:
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= answer.width and 0 <= y0 < y1 <= answer.height
        mask = decode_rle(region.mask.rle)
        assert mask.shape == (y1 - y0, x1 - x0)  # the mask is the box window, nothing outside
        assert int(mask.sum()) == region.mask.area > 0


@pytest.mark.slow
def test_a_field_photo_gives_one_region_per_leaf_each_diagnosed(trained):
    field = field_image(4, seed=7)
    answer = scout(trained, **MODELS).scout(field.image)
    assert answer.detector == "vegetation" and answer.segmenter == "sam2"
    assert answer.models == {"detector": None, "sam2": "random:tiny", "bioclip": "random:tiny"}
    assert sorted(tuple(r.box) for r in answer.regions) == sorted(field.boxes)
    assert [r.index for r in answer.regions] == [0, 1, 2, 3]
    assert_masks_inside_boxes(answer)
    for region in answer.regions:
        diag = region.diagnosis
        assert diag.routed_part == "leaf" and diag.crop_confidence is not None
        assert diag.label is not None and (diag.crop is not None or diag.reason)
        check = region.bioclip
        assert check is not None and 0 < check.probability <= check.crop_probability <= 1
        assert (check.crop, check.disease) in {
            ("tomato", "healthy"),
            ("tomato", "early_blight"),
            ("tomato", "leaf_mold"),
            ("corn", "healthy"),
            ("corn", "common_rust"),
        }
    assert answer.verdict.regions == 4
    assert answer.verdict.diseased + answer.verdict.healthy + answer.verdict.unknown == 4
    assert set(answer.timings_ms) == {"decode", "detect", "segment", "diagnose", "bioclip", "total"}
    assert len(answer.model_dump_json()) < 1500 * len(answer.regions)


@pytest.mark.slow
def test_grounding_dino_and_sam2_presets_run_end_to_end(trained):
    scouting = scout(
        trained,
        grounding_dino={"source": "random:tiny", "box_threshold": 0.05, "text_threshold": 0.05},
        max_regions=5,
        **MODELS,
    )
    answer = scouting.scout(field_image(3, seed=1).image)
    assert answer.detector == "grounding_dino"
    assert answer.models == {
        "detector": "random:tiny",
        "sam2": "random:tiny",
        "bioclip": "random:tiny",
    }
    assert 1 <= len(answer.regions) <= 5
    assert {r.part for r in answer.regions} <= {"leaf", "fruit", "stem", "lesion"}
    scores = [r.detection_score for r in answer.regions]
    assert scores == sorted(scores, reverse=True)
    assert_masks_inside_boxes(answer)
    assert all(r.mask.source in ("sam2", "box") for r in answer.regions)
    assert all(r.diagnosis.label is not None and r.bioclip for r in answer.regions)


@pytest.mark.slow
def test_without_sam2_each_region_keeps_the_vegetation_mask(trained):
    field = field_image(3, seed=2)
    answer = scout(trained).scout(field.image)
    assert answer.segmenter == "none" and all(r.bioclip is None for r in answer.regions)
    for region in answer.regions:
        x0, y0, x1, y1 = region.box
        truth = next(
            m for m, b in zip(field.masks, field.boxes, strict=True) if b == (x0, y0, x1, y1)
        )
        assert region.mask.source == "detector"
        assert (decode_rle(region.mask.rle) == truth[y0:y1, x0:x1]).mean() > 0.97


@pytest.mark.slow
def test_bare_soil_is_answered_no_regions(trained):
    answer = scout(trained, **MODELS).scout(soil_image(seed=5))
    assert answer.regions == []
    assert answer.verdict.status == "no_regions" and answer.verdict.regions == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image"),
        (b"GIF89a", "not an image"),
    ],
)
@pytest.mark.slow
def test_a_corrupt_upload_is_refused_naming_the_image(trained, data, message):
    with pytest.raises(UploadRejected, match=f"image 2: .*{message}"):
        scout(trained).scout(data, "image 2")


@pytest.mark.slow
def test_encoded_bytes_and_a_decoded_image_get_the_same_regions(trained):
    field = field_image(3, seed=4)
    buf = io.BytesIO()
    field.image.save(buf, format="PNG")
    scouting = scout(trained, **MODELS)
    from_bytes, from_image = scouting.scout_many([buf.getvalue(), field.image])
    strip = {"timings_ms"}
    assert from_bytes.model_dump(exclude=strip) == from_image.model_dump(exclude=strip)


@pytest.mark.slow
def test_a_reloaded_spec_reconfigures_the_scout_and_keeps_its_loaded_models(trained, caplog):
    scouting = scout(trained, **MODELS)
    more_crops = {
        **SPEC,
        "crops": [
            *SPEC["crops"],
            {"name": "pepper", "phase1_classes": ["healthy", "bacterial_spot"]},
        ],
        "scouting": {"device": "cpu", "max_regions": 3, **MODELS},
    }
    again = scouting.reconfigured(parse_config(more_crops))
    assert again.settings.max_regions == 3 and again.scorer is not None
    assert again.scorer.bioclip is scouting.scorer.bioclip  # the same loaded model
    assert ("pepper", "bacterial_spot") in {(lab.crop, lab.disease) for lab in again.scorer.labels}
    assert len(again.scout(field_image(4, seed=7).image).regions) <= 3
    new_model = {**more_crops, "scouting": {"device": "cpu", "sam2": {"source": "random:tiny"}}}
    with caplog.at_level("WARNING", logger="aads.vlm.scouting"):
        kept = scouting.reconfigured(parse_config(new_model))
    assert kept.scorer is scouting.scorer and "restart" in caplog.text


@pytest.mark.slow
def test_a_spec_without_scouting_cannot_load_a_scout(trained):
    with pytest.raises(VLMError, match="no `scouting:` section"):
        load_scout(parse_config(SPEC), trained["diagnoser"])


@pytest.mark.slow
def test_the_local_diagnoser_sends_known_crops_to_their_adapter_in_input_order(trained):
    paths = [
        *sorted((trained["data"] / "base" / "tomato").rglob("*.jpg"))[:3],
        *sorted((trained["data"] / "base" / "corn").rglob("*.jpg"))[:3],
    ]
    images = [Image.open(p).convert("RGB") for p in paths]
    answers = trained["diagnoser"](images)
    assert len(answers) == len(images)
    for answer in answers:
        route = answer.routing
        assert route is not None and route.source == "router"
        if route.rejected:
            assert answer.crop is None and answer.label == "unknown"
        else:
            assert answer.crop == route.crop
            assert answer.model is not None and answer.model.name == f"aads-adapter-{route.crop}"
    assert any(not a.routing.rejected for a in answers if a.routing)
    assert trained["diagnoser"]([]) == []


def region(index: int, **diagnosis) -> Region:
    return Region(
        index=index,
        box=[0, 0, 10, 10],
        part="leaf",
        detection_score=0.9,
        mask={
            "source": "box",
            "area": 100,
            "box_fraction": 1.0,
            "rle": {"size": [10, 10], "counts": "0R3"},
        },
        diagnosis=RegionDiagnosis(**diagnosis),
    )


def test_the_verdict_is_the_most_confident_disease_else_healthy_else_unknown():
    sick = {"crop": "tomato", "is_ood": False}
    regions = [
        region(0, **sick, label="healthy", confidence=0.99),
        region(1, **sick, label="early_blight", confidence=0.7),
        region(2, **sick, label="septoria", confidence=0.8),
        region(3, crop=None, label="unknown", is_ood=True, confidence=0.0),
    ]
    verdict = image_verdict(regions, "healthy")
    assert (verdict.status, verdict.disease, verdict.region) == ("diseased", "septoria", 2)
    assert (verdict.diseased, verdict.healthy, verdict.unknown) == (2, 1, 1)
    healthy = image_verdict([regions[0], regions[3]], "healthy")
    assert (healthy.status, healthy.crop, healthy.confidence) == ("healthy", "tomato", 0.99)
    failed = region(4, crop="corn", label=None, error="the corn predictor failed")
    unknown = image_verdict([regions[3], failed], "healthy")
    assert (unknown.status, unknown.unknown, unknown.disease) == ("unknown", 2, None)
    assert image_verdict([], "healthy").status == "no_regions"


def test_an_error_answer_is_parsed_as_not_answered():
    diag = RegionDiagnosis.from_answer(
        Answer.failed(
            ErrorEntry(code=503, message="down"),
            crop="corn",
            routing=Routing(source="router", crop="corn", part="leaf"),
        )
    )
    assert (diag.crop, diag.label, diag.error, diag.answered) == ("corn", None, "down", False)
    assert np.isclose(diag.confidence, 0.0)
