"""One safetensors-only loader for every pretrained model (backbones and scouting models): Hub
ids resolve through a real Hugging Face cache offline, each caller keeps its own error kind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from aads.backbone import (
    BackboneError,
    BackboneNotAvailable,
    build_random_model,
    load_backbone,
    save_backbone,
)
from aads.backbone.hub import BACKBONE
from aads.config import BackboneSettings
from aads.model_sources import hub_offline, load_pretrained, source_dir, source_kind
from aads.vlm.errors import VLMError, VLMNotAvailable, model_kind
from aads.vlm.presets import build_sam2
from aads.vlm.segmentation import load_sam2
from aads.vlm.settings import Sam2Settings

CPU = torch.device("cpu")


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path, files: list[str] | None = None):
    """Lay `folder`'s files out as huggingface_hub's cache does: content-addressed blobs,
    a snapshot per commit made of links to them, and ``refs/main`` naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in sorted(folder.iterdir()):
        if files is not None and path.name not in files:
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_offline_flag_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()


def test_a_hub_backbone_loads_offline_from_the_hugging_face_cache(tmp_path, offline_cache):
    saved = load_backbone(BackboneSettings(source="random:tiny", image_size=32))
    save_backbone(saved, tmp_path / "tiny")
    put_in_hub_cache(offline_cache, "aads-test/dinov3-tiny", tmp_path / "tiny")

    loaded = load_backbone(BackboneSettings(source="aads-test/dinov3-tiny", image_size=32))

    assert loaded.source == "aads-test/dinov3-tiny"
    want = saved.model.state_dict()
    assert all(torch.equal(t, want[k]) for k, t in loaded.model.state_dict().items())


def test_a_hub_snapshot_of_pickles_only_is_refused_unread(tmp_path, offline_cache, monkeypatch):
    model = build_random_model("tiny", 0)
    model.config.save_pretrained(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    put_in_hub_cache(offline_cache, "aads-test/pickled", tmp_path / "pickled")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))

    with pytest.raises(BackboneError, match="only pickle weights \\(pytorch_model.bin\\)"):
        load_backbone(BackboneSettings(source="aads-test/pickled", image_size=32))


def test_a_hub_model_of_another_type_is_refused_from_its_config_alone(tmp_path, offline_cache):
    (tmp_path / "sam").mkdir()
    build_sam2("tiny").config.save_pretrained(tmp_path / "sam")
    put_in_hub_cache(offline_cache, "aads-test/sam2", tmp_path / "sam", files=["config.json"])

    with pytest.raises(BackboneError, match="holds a 'sam2' model, expected 'dinov3_vit'") as err:
        load_backbone(BackboneSettings(source="aads-test/sam2", image_size=32))
    assert not isinstance(err.value, BackboneNotAvailable)


def test_a_dinov2_with_registers_config_gets_the_architecture_hint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2_with_registers"}))
    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(BackboneError, match="different architecture; use plain DINOv2"):
        load_backbone(BackboneSettings(source=str(tmp_path)))


@pytest.mark.slow
def test_a_hub_scouting_model_loads_offline_from_the_hugging_face_cache(tmp_path, offline_cache):
    preset = build_sam2("tiny")
    preset.save_pretrained(tmp_path / "sam2")
    put_in_hub_cache(offline_cache, "aads-test/sam2-tiny", tmp_path / "sam2")

    loaded = load_sam2(
        Sam2Settings(source="aads-test/sam2-tiny"), None, device=CPU, dtype=torch.float32
    )

    saved = load_file(tmp_path / "sam2" / "model.safetensors")
    state = loaded.model.state_dict()
    assert saved and all(torch.equal(state[k], t) for k, t in saved.items() if k in state)


@pytest.mark.parametrize(
    ("kind", "error", "unavailable", "prefix"),
    [
        (BACKBONE, BackboneError, BackboneNotAvailable, "backbone: "),
        (model_kind("sam2"), VLMError, VLMNotAvailable, "sam2: "),
    ],
)
def test_each_caller_keeps_its_own_error_kind(
    kind, error, unavailable, prefix, tmp_path, offline_cache
):
    with pytest.raises(unavailable) as missing:
        source_dir("aads-test/never-cached", None, kind)
    message = str(missing.value)
    assert message.startswith(prefix) and missing.value.source == "aads-test/never-cached"
    assert "HF_HUB_OFFLINE" in message and "huggingface-cli download" in message
    with pytest.raises(error, match=f"^{prefix}source 's3://b/p' needs storage settings"):
        source_dir("s3://b/p", None, kind)
    with pytest.raises(error, match=f"^{prefix}revision 'v1' applies to Hugging Face ids only"):
        source_dir(str(tmp_path), None, kind, revision="v1")


def test_a_gated_dinov3_id_names_its_licence_in_the_mirroring_steps(offline_cache):
    hf_id = "facebook/dinov3-vitl16-pretrain-lvd1689m"
    with pytest.raises(BackboneNotAvailable, match="granted access to the gated repo \\(DINOv3"):
        load_backbone(BackboneSettings(source=hf_id))


# --------------------------------------------------------------------------- hostile sources

KINDS = {"random", "synthetic", "s3", "local", "hub"}
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ODD_SOURCES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["a" * 300, "~no-such-user-aads/x", "x/" + "a" * 5000, "a\x00b", "..", "/"]),
    st.builds(lambda s: f"s3://{s}", st.text(max_size=80)),
)


@settings(FUZZ, max_examples=300)
@given(source=ODD_SOURCES)
def test_any_source_string_is_classified_or_refused_as_a_backbone_error(source):
    try:
        assert source_kind(source, BACKBONE) in KINDS
    except BackboneError:
        pass


@settings(FUZZ, max_examples=150)
@given(source=ODD_SOURCES)
def test_any_source_string_gives_a_folder_or_the_callers_error(source, offline_cache):
    kind = model_kind("sam2")
    try:
        folder = source_dir(source, None, kind)
    except VLMError:  # VLMNotAvailable included
        return
    assert folder.is_dir()


@settings(FUZZ, max_examples=100)
@given(config=st.binary(max_size=300))
def test_any_config_file_bytes_are_refused_as_a_backbone_error(config, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(config)
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(BackboneError):
        load_pretrained(
            AutoModel, folder, BACKBONE, model_types=["dinov3_vit"], dtype=torch.float32
        )


@settings(FUZZ, max_examples=25)
@given(weights=st.binary(max_size=200))
def test_any_weights_file_bytes_are_refused_as_a_backbone_error(weights, tmp_path):
    folder = tmp_path / "model"
    if not folder.exists():
        build_random_model("tiny", 0).config.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(weights)
    with pytest.raises(BackboneError, match="cannot load weights|do not match"):
        load_pretrained(
            AutoModel, folder, BACKBONE, model_types=["dinov3_vit"], dtype=torch.float32
        )
