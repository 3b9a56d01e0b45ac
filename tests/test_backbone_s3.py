"""Loading a backbone mirrored into S3 (a real S3 protocol server, moto, on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aads.backbone import (
    SAT493M,
    BackboneNotAvailable,
    extract_features,
    load_backbone,
    save_backbone,
)
from aads.config import BackboneSettings, StorageSettings

pytest.importorskip("aads.storage", reason="aads.storage not available")


def upload_dir(settings: StorageSettings, local: Path, prefix: str) -> None:
    """Upload a folder file by file, as `aws s3 sync` of a Hub snapshot would."""
    from minio import Minio

    access, secret = settings.credentials()
    client = Minio(
        settings.endpoint,
        access_key=access.get_secret_value(),
        secret_key=secret.get_secret_value(),
        secure=False,
        region=settings.region,
    )
    if not client.bucket_exists(settings.bucket):
        client.make_bucket(settings.bucket)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.fput_object(settings.bucket, f"{prefix}/{path.relative_to(local)}", str(path))


def tiny(source: str = "random:tiny", **kw) -> BackboneSettings:
    return BackboneSettings(source=source, image_size=64, device="cpu", **kw)


@pytest.mark.slow
def test_s3_mirror_loads_with_identical_features(s3_settings, tmp_path):
    original = load_backbone(tiny(seed=4))
    upload_dir(s3_settings, save_backbone(original, tmp_path / "saved"), "backbones/tiny")
    uri = f"s3://{s3_settings.bucket}/backbones/tiny/"
    loaded = load_backbone(tiny(uri), s3_settings)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(extract_features(loaded, x), extract_features(original, x))
    assert loaded.source == uri.rstrip("/")
    assert Path(s3_settings.cache_dir) in (Path(loaded.model.name_or_path).parents)


def test_s3_mirror_keeps_its_normalization(s3_settings, tmp_path):
    original = load_backbone(tiny(normalization="sat493m"))
    upload_dir(s3_settings, save_backbone(original, tmp_path / "saved"), "backbones/sat")
    uri = f"s3://{s3_settings.bucket}/backbones/sat"
    loaded = load_backbone(tiny(uri), s3_settings)
    assert loaded.normalization == SAT493M


def test_empty_s3_prefix_is_not_available(s3_settings, tmp_path):
    upload_dir(s3_settings, save_backbone(load_backbone(tiny()), tmp_path / "s"), "other")
    uri = f"s3://{s3_settings.bucket}/backbones/never-uploaded"
    with pytest.raises(BackboneNotAvailable, match="never-uploaded"):
        load_backbone(tiny(uri), s3_settings)
