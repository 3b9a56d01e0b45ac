"""Shared fixtures: real servers on 127.0.0.1 (moto S3), small configs, synthetic images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aads.config import StorageSettings
from aads.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["free_port"]  # tests import it from here


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """Tests check behaviour, not speed: one intra-op thread avoids OpenMP stalls when the 2
    cores are shared with DataLoader workers and server subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto) on loopback, shared by the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageSettings:
    """Settings for the moto server; credentials only through the environment, as in a pod."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return StorageSettings(
        endpoint=moto_endpoint,
        secure=False,
        region="us-east-1",
        bucket="aads-test",
        retries=2,
        timeout_s=2.0,
        cache_dir=tmp_path / "cache",
    )


@pytest.fixture
def demo_config_path() -> Path:
    return ROOT / "config" / "demo.yaml"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on loopback (sqlite + proxied artifacts), per session.

    ``--serve-artifacts`` makes run artifact URIs ``mlflow-artifacts:/...``: clients upload
    and download through the server over HTTP, as pods do in the cluster.
    """
    from aads.mlflow_server import local_mlflow_server

    with local_mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def plantvillage() -> Path:
    """The real PlantVillage sample beside the repository (read in place, never copied in);
    ``AADS_PLANTVILLAGE_DIR`` overrides where it is."""
    from tests.images import plantvillage_dir

    return plantvillage_dir()


@pytest.fixture(scope="module")
def loop_world(tmp_path_factory: pytest.TempPathFactory):
    """Small calibrated tomato adapters and images for the capture, drift and feedback tests
    (`tests.loop_world`), trained once per session."""
    from tests.loop_world import build_world

    return build_world(tmp_path_factory)


@pytest.fixture
def fresh_bucket(s3_settings: StorageSettings) -> StorageSettings:
    """`s3_settings` pointing at a new, empty bucket on the session's moto server."""
    from tests.loop_world import new_bucket

    return new_bucket(s3_settings)
