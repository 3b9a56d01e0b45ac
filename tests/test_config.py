"""The platform spec: valid files load, invalid ones fail naming the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aads.config import (
    ConfigError,
    StorageSettings,
    load_config,
    parse_config,
    resolve_blocks,
)

ROOT = Path(__file__).resolve().parents[1]


def minimal(**overrides) -> dict:
    spec = {
        "crops": [{"name": "tomato", "phase1_classes": ["healthy", "early_blight"]}],
        "router": {"source": "random:tiny"},
        "adapter": {"backbone": {"source": "random:tiny"}},
    }
    spec.update(overrides)
    return spec


def error_of(spec: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(spec, "spec.yaml")
    return str(err.value)


@pytest.mark.parametrize("name", ["demo.yaml", "production.yaml", "plantvillage.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "config" / name)
    assert cfg.crops and cfg.router.source and cfg.adapter.backbone.source


@pytest.mark.parametrize("name", ["demo.yaml", "production.yaml", "plantvillage.yaml"])
def test_the_package_ships_each_config_as_it_is_in_the_repository(name):
    from aads.config import PACKAGED_SPECS

    assert (PACKAGED_SPECS / name).read_bytes() == (ROOT / "config" / name).read_bytes()


def test_a_crop_is_found_by_its_name_or_any_alias_spelling():
    cfg = parse_config(
        minimal(crops=[{"name": "corn", "aliases": ["Corn_(maize)"], "phase1_classes": ["a", "b"]}])
    )
    assert cfg.crop_named("Corn_(maize)").name == "corn"
    assert cfg.crop_named("corn_maize").name == "corn" and cfg.crop_named("CORN").name == "corn"
    assert cfg.crop_named("maize") is None


def test_a_class_is_found_by_its_name_or_its_alias():
    crop = {
        "name": "corn",
        "phase1_classes": ["healthy", "gray_leaf_spot"],
        "class_aliases": {"gray_leaf_spot": ["Cercospora_leaf_spot Gray_leaf_spot"]},
    }
    spec = parse_config(minimal(crops=[crop])).crops[0]
    assert spec.class_named("cercospora_leaf_spot_gray_leaf_spot") == "gray_leaf_spot"
    assert spec.class_named("Healthy") == "healthy"
    assert spec.class_named("rust", "corn_rust") is None


def test_a_class_alias_for_a_class_the_crop_does_not_have_names_the_field():
    crop = {"name": "corn", "phase1_classes": ["a", "b"], "class_aliases": {"c": ["x"]}}
    msg = error_of(minimal(crops=[crop]))
    assert "crops.0" in msg and "class_aliases names 'c'" in msg


def test_a_class_alias_that_is_another_configured_class_is_refused():
    crop = {"name": "corn", "phase1_classes": ["a", "b"], "class_aliases": {"a": ["B"]}}
    assert "'B' is the configured class 'b'" in error_of(minimal(crops=[crop]))


def test_a_crop_alias_that_names_another_crop_is_refused():
    crops = [
        {"name": "pepper", "phase1_classes": ["a", "b"]},
        {"name": "chili", "aliases": ["Pepper"], "phase1_classes": ["a", "b"]},
    ]
    msg = error_of(minimal(crops=crops))
    assert "crops:" in msg and "alias 'Pepper' of crop 'chili' already names crop 'pepper'" in msg


def test_an_exclusion_needs_exactly_one_of_sha256_or_path():
    msg = error_of(minimal(data={"exclude": [{"reason": "why"}]}))
    assert "data.exclude.0" in msg and "exactly one of sha256 or path" in msg
    msg = error_of(minimal(data={"exclude": [{"sha256": "abc", "reason": "why"}]}))
    assert "data.exclude.0.sha256" in msg


def test_production_config_uses_real_dinov3_ids():
    cfg = load_config(ROOT / "config" / "production.yaml")
    assert cfg.router.source == "facebook/dinov3-vitb16-pretrain-lvd1689m"
    assert cfg.adapter.backbone.source == "facebook/dinov3-vitl16-pretrain-lvd1689m"


def test_minimal_spec_fills_defaults():
    cfg = parse_config(minimal())
    assert cfg.crops[0].parts == ["leaf"]
    assert cfg.adapter.sd_lora.alpha_init == 0.8
    assert cfg.adapter.conec.shared_blocks == "first_half"


def test_bad_enum_names_field_and_allowed_values():
    spec = minimal(router={"source": "random:tiny", "pooling": "mean"})
    msg = error_of(spec)
    assert "router.pooling" in msg and "'cls'" in msg and "'cls_mean'" in msg


def test_class_in_two_phases_names_the_batch():
    spec = minimal()
    spec["crops"][0]["phase2_batches"] = [["healthy"]]
    msg = error_of(spec)
    assert "crops.0" in msg and "'healthy' in phase2_batches.0 is already in phase1_classes" in msg


def test_unknown_key_is_rejected_as_a_possible_secret():
    spec = minimal(storage={"bucket": "aads", "secret_key": "hunter2"})
    msg = error_of(spec)
    assert "storage.secret_key" in msg and "environment variables" in msg
    assert "hunter2" not in msg


def test_single_class_crop_is_rejected():
    spec = minimal(crops=[{"name": "tomato", "phase1_classes": ["healthy"]}])
    assert "crops.0.phase1_classes" in error_of(spec)


def test_duplicate_crop_names_are_rejected():
    crop = {"name": "tomato", "phase1_classes": ["a", "b"]}
    assert "repeated: ['tomato']" in error_of(minimal(crops=[crop, crop]))


def test_image_size_must_be_a_multiple_of_the_patch():
    msg = error_of(minimal(router={"source": "random:tiny", "image_size": 225}))
    assert "router.image_size" in msg and "multiple of the patch size 16" in msg


def test_rr_variant_needs_a_rank_schedule():
    spec = minimal()
    spec["adapter"]["sd_lora"] = {"variant": "rr"}
    assert "rank_schedule is required" in error_of(spec)


def test_split_fractions_must_sum_to_one():
    msg = error_of(minimal(data={"split": {"train": 0.5, "val": 0.1, "test": 0.1}}))
    assert "data.split" in msg and "must be 1.0" in msg


def test_every_bad_field_is_reported_at_once():
    spec = minimal(router={"source": "random:tiny", "image_size": 225, "dtype": "int8"})
    msg = error_of(spec)
    assert "2 invalid field(s)" in msg


def test_unreadable_and_non_mapping_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("crops: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_unknown_crop_lookup_lists_configured_crops():
    with pytest.raises(ConfigError, match=r"unknown crop 'wheat'; configured crops: \['tomato'\]"):
        parse_config(minimal()).crop("wheat")


@pytest.mark.parametrize(
    ("selection", "depth", "expected"),
    [
        ("all", 4, [0, 1, 2, 3]),
        ("first_half", 24, list(range(12))),
        ("second_half", 12, list(range(6, 12))),
        ([9, 7, 7], 12, [7, 9]),
    ],
)
def test_block_selection_scales_with_depth(selection, depth, expected):
    assert resolve_blocks(selection, depth) == expected


def test_block_index_past_depth_is_an_error():
    with pytest.raises(ConfigError, match=r"blocks \[12\] out of range .* 12 blocks"):
        resolve_blocks([12], 12)


def test_credentials_come_from_the_environment_only():
    settings = StorageSettings(access_key_env="MY_KEY", secret_key_env="MY_SECRET")
    access, secret = settings.credentials({"MY_KEY": "id", "MY_SECRET": "s3cr3t"})
    assert access.get_secret_value() == "id" and secret.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in settings.model_dump_json()


def test_endpoint_env_overrides_the_file():
    settings = StorageSettings(endpoint="minio:9000")
    assert settings.resolved_endpoint({"AWS_ENDPOINT_URL_S3": "http://other:9000"}) == (
        "http://other:9000"
    )
