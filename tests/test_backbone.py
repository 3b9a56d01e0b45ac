"""Loading DINOv3 backbones from every kind of source, and the features they produce."""

from __future__ import annotations

import json
import random
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from aads.backbone import (
    LVD1689M,
    SAT493M,
    BackboneError,
    BackboneNotAvailable,
    FeatureExtractor,
    extract_features,
    feature_dim,
    load_backbone,
    resolve_device,
    resolve_dtype,
    save_backbone,
    source_kind,
)
from aads.config import BackboneSettings


def settings(source: str = "random:tiny", **kw) -> BackboneSettings:
    kw.setdefault("image_size", 64)
    kw.setdefault("device", "cpu")
    return BackboneSettings(source=source, **kw)


def pixels(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.state_dict()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --------------------------------------------------------------------------- random presets


@pytest.mark.parametrize(("pooling", "dim"), [("cls", 64), ("cls_mean", 128)])
def test_tiny_features_have_width_or_twice_width(pooling, dim):
    backbone = load_backbone(settings(pooling=pooling))
    feats = extract_features(backbone, pixels(3))
    assert feats.shape == (3, dim) and feature_dim(backbone) == dim
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"


def test_cls_pooling_is_the_pooler_output():
    backbone = load_backbone(settings(pooling="cls"))
    x = pixels(2)
    with torch.no_grad():
        pooler = backbone.model(pixel_values=x).pooler_output
    torch.testing.assert_close(extract_features(backbone, x), pooler)


def test_cls_mean_skips_cls_and_four_register_tokens():
    backbone = load_backbone(settings(pooling="cls_mean"))
    x = pixels(2)
    with torch.no_grad():
        tokens = backbone.model(pixel_values=x).last_hidden_state
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    torch.testing.assert_close(extract_features(backbone, x), expected)


def test_convnext_cls_mean_skips_the_pooled_token():
    backbone = load_backbone(settings("random:tiny_convnext", pooling="cls_mean"))
    x = pixels(2)
    with torch.no_grad():
        tokens = backbone.model(pixel_values=x).last_hidden_state
    expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
    torch.testing.assert_close(extract_features(backbone, x), expected)
    assert feature_dim(backbone) == 2 * 64


@pytest.mark.slow
def test_vits16_shape_gives_201_tokens_for_224_pixels():
    backbone = load_backbone(settings("random:small", image_size=224))
    with torch.no_grad():
        out = backbone.model(pixel_values=pixels(1, 224))
    assert out.last_hidden_state.shape == (1, 1 + 4 + 196, 384)
    assert backbone.prefix_tokens == 5


def test_tiny_runs_a_batch_of_8_in_milliseconds():
    backbone = load_backbone(settings())
    x = pixels(8)
    extract_features(backbone, x)  # warm-up
    timings = []
    for _ in range(5):
        t0 = time.perf_counter()
        extract_features(backbone, x)
        timings.append(time.perf_counter() - t0)
    assert min(timings) < 0.05  # about 1 ms on a 2-core CPU


def test_same_seed_gives_bit_identical_weights():
    a = state(load_backbone(settings(seed=7)).model)
    b = state(load_backbone(settings(seed=7)).model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_different_seed_gives_different_weights():
    a = state(load_backbone(settings(seed=7)).model)
    b = state(load_backbone(settings(seed=8)).model)
    assert not torch.equal(
        a["model.layer.0.attention.q_proj.weight"], b["model.layer.0.attention.q_proj.weight"]
    )


def test_building_random_weights_leaves_global_rng_untouched():
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    load_backbone(settings(seed=5))
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(BackboneError, match="unknown random preset 'huge'") as err:
        load_backbone(settings("random:huge"))
    assert "tiny" in str(err.value) and "vith16plus" in str(err.value)


@pytest.mark.slow
def test_random_preset_keeps_the_real_shape():
    config = load_backbone(settings("random:vits16plus")).config
    assert (config.hidden_size, config.num_register_tokens, config.use_gated_mlp) == (384, 4, True)


def test_canonical_source_and_no_variant_for_random_weights():
    backbone = load_backbone(settings(seed=3))
    assert backbone.source == "random:tiny@seed=3" and backbone.variant is None
    assert backbone.normalization == LVD1689M


# --------------------------------------------------------------------------- local directories


def test_saved_directory_loads_with_identical_features(tmp_path):
    original = load_backbone(settings(seed=11))
    save_backbone(original, tmp_path / "tiny")
    loaded = load_backbone(settings(str(tmp_path / "tiny")))
    x = pixels(3)
    assert torch.equal(extract_features(loaded, x), extract_features(original, x))
    assert loaded.source == str((tmp_path / "tiny").resolve())


def test_saved_directory_carries_its_normalization(tmp_path):
    original = load_backbone(settings(normalization="sat493m"))
    save_backbone(original, tmp_path / "sat")
    assert load_backbone(settings(str(tmp_path / "sat"))).normalization == SAT493M
    overridden = load_backbone(settings(str(tmp_path / "sat"), normalization="lvd1689m"))
    assert overridden.normalization == LVD1689M


def test_directory_with_only_pickle_weights_is_refused_unread(tmp_path, monkeypatch):
    model = load_backbone(settings()).model
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(BackboneError, match="only pickle weights.*pytorch_model.bin"):
        load_backbone(settings(str(tmp_path)))


def test_directory_missing_a_weight_is_refused_not_randomly_filled(tmp_path):
    from safetensors.torch import load_file, save_file

    save_backbone(load_backbone(settings()), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors[next(k for k in tensors if k.endswith("q_proj.weight"))]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BackboneError, match="do not match.*missing_keys.*q_proj"):
        load_backbone(settings(str(tmp_path)))


def test_corrupt_safetensors_is_a_backbone_error(tmp_path):
    save_backbone(load_backbone(settings()), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BackboneError, match="cannot load weights"):
        load_backbone(settings(str(tmp_path)))


def test_directory_of_another_model_type_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2_with_registers"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    expected = "expected 'dinov3_vit' or 'dinov3_convnext' or 'dinov2'"
    with pytest.raises(BackboneError, match=f"'dinov2_with_registers' model.*{expected}"):
        load_backbone(settings(str(tmp_path)))


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(settings(str(tmp_path / "absent")))


# --------------------------------------------------------------------------- Hugging Face ids


def test_offline_hub_id_raises_not_available_with_mirror_steps(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    hf_id = "facebook/dinov3-vitl16-pretrain-lvd1689m"
    with pytest.raises(BackboneNotAvailable) as err:
        load_backbone(settings(hf_id))
    message = str(err.value)
    assert hf_id in message and "HF_HUB_OFFLINE" in message
    assert f"huggingface-cli download {hf_id} --local-dir DIR" in message
    assert f"s3://<bucket>/backbones/{hf_id}" in message and "source:" in message
    assert err.value.source == hf_id


@pytest.mark.parametrize("size_word", ["base", "giant"])
def test_invented_ids_are_refused_before_any_download(size_word, no_network):
    fake = f"facebook/dinov3-{size_word}"  # the seed plan's invented ids
    with pytest.raises(BackboneError, match="do not exist") as err:
        load_backbone(settings(fake))
    assert not isinstance(err.value, BackboneNotAvailable)
    assert "facebook/dinov3-vith16plus-pretrain-lvd1689m" in str(err.value)


def test_revision_only_applies_to_hub_ids():
    with pytest.raises(BackboneError, match="revision"):
        load_backbone(settings(revision="abc123"))


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("random:tiny", "random"),
        ("s3://aads/backbones/x", "s3"),
        ("/models/dinov3", "local"),
        ("./models/dinov3", "local"),
        ("facebook/dinov3-vits16-pretrain-lvd1689m", "hub"),
    ],
)
def test_source_kind(source, kind):
    assert source_kind(source) == kind


def test_unsupported_scheme_is_rejected():
    with pytest.raises(BackboneError, match="unsupported source scheme"):
        source_kind("gs://bucket/model")


# --------------------------------------------------------------------------- device and dtype


def test_model_is_in_eval_mode_on_the_resolved_device():
    backbone = load_backbone(settings())
    assert not backbone.model.training
    assert next(backbone.model.parameters()).device == backbone.device


def test_gradient_checkpointing_flag_reaches_the_model():
    assert load_backbone(settings(gradient_checkpointing=True)).model.is_activation_checkpointing
    assert not load_backbone(settings()).model.is_activation_checkpointing


def test_gradient_checkpointing_on_convnext_is_refused():
    with pytest.raises(BackboneError, match="gradient_checkpointing is not supported"):
        load_backbone(settings("random:tiny_convnext", gradient_checkpointing=True))


def test_cpu_defaults_to_float32_and_honours_explicit_bfloat16():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    backbone = load_backbone(settings(dtype="bfloat16"))
    assert next(backbone.model.parameters()).dtype == torch.bfloat16
    assert extract_features(backbone, pixels(2)).dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_auto_device_is_cpu_without_cuda_and_explicit_cuda_fails():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BackboneError, match="CUDA is not available"):
        resolve_device("cuda")


# --------------------------------------------------------------------------- batched extraction


def test_feature_extractor_batches_images_in_order_and_reports_progress(tmp_path):
    backbone = load_backbone(settings())
    images = [Image.new("RGB", (48, 40), (i * 40, 100, 200 - i * 30)) for i in range(5)]
    images[4].save(tmp_path / "leaf.png")
    calls: list[tuple[int, int]] = []
    extractor = FeatureExtractor(backbone, batch_size=2, progress=lambda *a: calls.append(a))
    feats = extractor.extract_images([*images[:4], tmp_path / "leaf.png"])
    assert feats.shape == (5, 128) and calls == [(2, 5), (4, 5), (5, 5)]
    one = FeatureExtractor(backbone, batch_size=8).extract_images([images[3]])
    torch.testing.assert_close(feats[3:4], one, rtol=1e-4, atol=1e-5)


def test_feature_extractor_over_a_dataloader_keeps_labels_aligned():
    backbone = load_backbone(settings())
    x, y = pixels(5), torch.arange(5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    feats, labels = FeatureExtractor(backbone).extract_loader(loader)
    assert torch.equal(labels, y)
    torch.testing.assert_close(feats, extract_features(backbone, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_mirror_named_after_a_release_is_recognised_when_the_shape_agrees(tmp_path):
    mirror = tmp_path / "facebook" / "dinov3-vits16-pretrain-lvd1689m"
    save_backbone(load_backbone(settings("random:small")), mirror)
    assert load_backbone(settings(str(mirror))).variant.key == "vits16"
    tiny = tmp_path / "x" / "dinov3-vits16-pretrain-lvd1689m"
    save_backbone(load_backbone(settings()), tiny)
    assert load_backbone(settings(str(tiny))).variant is None  # width 64 is not ViT-S
