"""The ``scouting:`` section of the platform spec: defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from aads.config import ConfigError, parse_config

BASE = {
    "crops": [{"name": "tomato", "phase1_classes": ["healthy", "early_blight"]}],
    "router": {"source": "random:tiny", "image_size": 32},
    "adapter": {"backbone": {"source": "random:tiny", "image_size": 32}},
}


def spec(scouting: dict | None) -> dict:
    return BASE if scouting is None else {**BASE, "scouting": scouting}


def test_a_spec_without_scouting_has_the_stage_switched_off():
    assert parse_config(spec(None)).scouting is None


def test_without_a_detector_checkpoint_the_vegetation_stage_runs():
    scouting = parse_config(spec({})).scouting
    assert scouting is not None and scouting.detector_kind == "vegetation"
    with_gd = parse_config(spec({"grounding_dino": {"source": "random:tiny"}})).scouting
    assert with_gd is not None and with_gd.detector_kind == "grounding_dino"


def test_prompts_are_normalised_to_lower_case_single_spaced_phrases():
    scouting = parse_config(spec({"grounding_dino": {"prompts": ["Leaf", " fruit  stalk "]}}))
    assert scouting.scouting.grounding_dino.prompts == ["leaf", "fruit stalk"]


@pytest.mark.parametrize(
    ("scouting", "field", "message"),
    [
        ({"grounding_dino": {"prompts": []}}, "scouting.grounding_dino.prompts", "at least 1"),
        ({"grounding_dino": {"prompts": ["leaf. fruit"]}}, "scouting.grounding_dino.prompts",
         "separate phrases"),
        ({"grounding_dino": {"prompts": ["leaf", "Leaf"]}}, "scouting.grounding_dino.prompts",
         "repeat"),
        ({"grounding_dino": {"box_threshold": 1.5}}, "scouting.grounding_dino.box_threshold",
         "less than or equal to 1"),
        ({"detector": "grounding_dino"}, "scouting", "grounding_dino.source is required"),
        ({"sam2": {"source": "random:Tiny!"}}, "scouting.sam2.source", "random:<preset>"),
        ({"sam2": {"source": "s3://x/y"}}, "scouting.sam2.source", "s3://<bucket>/<prefix>"),
        ({"bioclip": {"source": "random:tiny", "revision": "main"}}, "scouting.bioclip",
         "Hugging Face ids only"),
        ({"bioclip": {"templates": ["a {crop} leaf"]}}, "scouting.bioclip.templates",
         "lacks"),
        ({"bioclip": {"templates": ["a {crop} with {disease} on {colour}"]}},
         "scouting.bioclip.templates", "unknown placeholder"),
        ({"max_regions": 0}, "scouting.max_regions", "greater than or equal to 1"),
        ({"detecter": "vegetation"}, "scouting.detecter", "unknown field"),
    ],
)  # fmt: skip
def test_bad_scouting_settings_are_errors_naming_the_field(scouting, field, message):
    with pytest.raises(ConfigError) as err:
        parse_config(spec(scouting), "spec.yaml")
    line = next(ln for ln in str(err.value).splitlines() if ln.strip().startswith(f"{field}:"))
    assert message in line
