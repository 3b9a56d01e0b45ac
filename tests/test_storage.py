"""Object storage: checksummed, atomic, retried; against a real S3 protocol server (moto)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aads.config import StorageSettings
from aads.storage import (
    CHECKSUM_FILE,
    ChecksumMismatch,
    LocalStore,
    S3Store,
    StorageError,
    StoreUnavailable,
    fetch_dir_cached,
    get_dir,
    open_store,
    put_dir,
    sha256_file,
)
from tests.conftest import free_port


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.safetensors").write_bytes(bytes(range(256)) * 64)
    return root


def test_put_dir_then_get_dir_roundtrips_with_checksums(s3_settings, tmp_path):
    store, prefix = open_store(f"s3://{s3_settings.bucket}/pkg/v1", s3_settings)
    sums = put_dir(store, make_tree(tmp_path / "src"), prefix)
    got = get_dir(store, prefix, tmp_path / "dst")
    assert got == sums
    assert (tmp_path / "dst" / "sub" / "weights.safetensors").read_bytes() == (
        tmp_path / "src" / "sub" / "weights.safetensors"
    ).read_bytes()
    assert sha256_file(tmp_path / "dst" / "config.json") == sums["config.json"]


def test_put_dir_leaves_no_staging_objects(s3_settings, tmp_path):
    store, prefix = open_store(f"s3://{s3_settings.bucket}/clean", s3_settings)
    put_dir(store, make_tree(tmp_path / "src"), prefix)
    keys = sorted(o.key for o in store.list("clean/"))
    assert keys == ["clean/SHA256SUMS", "clean/config.json", "clean/sub/weights.safetensors"]


def test_get_dir_refuses_a_folder_without_checksum_file(s3_settings, tmp_path):
    store, prefix = open_store(f"s3://{s3_settings.bucket}/half", s3_settings)
    put_dir(store, make_tree(tmp_path / "src"), prefix)
    store.delete([f"{prefix}/{CHECKSUM_FILE}"])  # as if the upload died before the last step
    with pytest.raises(StorageError, match="not published"):
        get_dir(store, prefix, tmp_path / "dst")
    assert not (tmp_path / "dst" / "config.json").exists()


def test_download_with_wrong_checksum_is_rejected_and_not_written(s3_settings, tmp_path):
    store, _ = open_store(f"s3://{s3_settings.bucket}/x", s3_settings)
    store.ensure_bucket()
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    store.put_file(src, "x/f.bin")
    with pytest.raises(ChecksumMismatch):
        store.get_file("x/f.bin", tmp_path / "out.bin", expected_sha256="0" * 64)
    assert not (tmp_path / "out.bin").exists()
    assert not list(tmp_path.glob(".out.bin*"))


def test_fetch_dir_cached_reuses_cache_and_refetches_corruption(s3_settings, tmp_path):
    store, prefix = open_store(f"s3://{s3_settings.bucket}/mirror", s3_settings)
    put_dir(store, make_tree(tmp_path / "src"), prefix)
    uri = f"s3://{s3_settings.bucket}/mirror"
    first = fetch_dir_cached(uri, s3_settings)
    weights = first / "sub" / "weights.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert fetch_dir_cached(uri, s3_settings) == first
    assert weights.stat().st_mtime_ns == mtime  # cache hit: not downloaded again
    weights.write_bytes(b"corrupted")
    again = fetch_dir_cached(uri, s3_settings)
    assert (again / "sub" / "weights.safetensors").read_bytes() == (
        tmp_path / "src" / "sub" / "weights.safetensors"
    ).read_bytes()


def test_fetch_dir_cached_accepts_plain_mirror_without_checksum_file(s3_settings, tmp_path):
    store = S3Store(s3_settings.bucket, s3_settings)
    store.ensure_bucket()
    src = make_tree(tmp_path / "src")
    for rel in ("config.json", "sub/weights.safetensors"):
        store.put_file(src / rel, f"plain/{rel}")
    local = fetch_dir_cached(f"s3://{s3_settings.bucket}/plain", s3_settings)
    assert (local / "config.json").read_text() == '{"a": 1}'


def test_unreachable_store_fails_fast_with_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    dead = StorageSettings(
        endpoint=f"127.0.0.1:{free_port()}",
        secure=False,
        retries=3,
        timeout_s=1.0,
        cache_dir=tmp_path / "cache",
    )
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"unreachable.*after 3 attempts"):
        fetch_dir_cached("s3://aads/anything", dead)
    assert time.monotonic() - start < 15


def test_unreachable_store_falls_back_to_verified_cache(s3_settings, tmp_path):
    store, prefix = open_store(f"s3://{s3_settings.bucket}/offline", s3_settings)
    put_dir(store, make_tree(tmp_path / "src"), prefix)
    uri = f"s3://{s3_settings.bucket}/offline"
    cached = fetch_dir_cached(uri, s3_settings)
    dead = s3_settings.model_copy(update={"endpoint": f"127.0.0.1:{free_port()}", "retries": 1})
    assert fetch_dir_cached(uri, dead) == cached


def test_secret_values_never_appear_in_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-visible-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    dead = StorageSettings(
        endpoint=f"127.0.0.1:{free_port()}",
        secure=False,
        retries=1,
        timeout_s=1.0,
        cache_dir=tmp_path,
    )
    with pytest.raises(StoreUnavailable) as err:
        fetch_dir_cached("s3://aads/x", dead)
    assert "very-secret-value" not in str(err.value)


def test_local_store_publishes_and_reads_the_same_way(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    sums = put_dir(store, make_tree(tmp_path / "src"), "pkg")
    assert get_dir(store, "pkg", tmp_path / "dst") == sums


def test_object_keys_cannot_escape_the_destination(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    with pytest.raises(StorageError, match="unsafe"):
        store.get_file("../../etc/passwd", tmp_path / "x")


def test_ensure_bucket_command_creates_the_specs_bucket_once(s3_settings, tmp_path):
    """What the chart's post-install Job runs against its MinIO."""
    import yaml
    from typer.testing import CliRunner

    from aads.cli import app
    from aads.storage import S3Store

    settings = s3_settings.model_copy(update={"bucket": "fresh-bucket"})
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "crops": [{"name": "tomato", "phase1_classes": ["healthy", "early_blight"]}],
                "router": {"source": "random:tiny"},
                "adapter": {"backbone": {"source": "random:tiny"}},
                "storage": settings.model_dump(mode="json", exclude={"cache_dir"}),
            }
        )
    )
    for _ in range(2):  # a rerun of the hook finds the bucket and is content
        result = CliRunner().invoke(app, ["storage", "ensure-bucket", "--spec", str(spec)])
        assert result.exit_code == 0, result.output
        assert "s3://fresh-bucket" in result.output
    store = S3Store("fresh-bucket", settings)
    assert store.client.bucket_exists("fresh-bucket")
