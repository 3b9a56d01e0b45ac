"""Shared fixtures: real servers on 127.0.0.1 (moto S3, MLflow), small configs, synthetic images,
and a real tiny adapter package and router trained once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aads.config import PlatformConfig, StorageSettings
from aads.mlflow_server import free_port

# No network at run time: MLflow's usage telemetry off in the test process and every server and
# task process it starts. Read when `mlflow` is imported, so set before any test module imports
# it (`make test` exports it too).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

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


# --------------------------------------------------------------------------- trained models

TINY_BACKBONE = {"source": "random:tiny", "image_size": 32}
TINY_SPEC = {
    "crops": [
        {
            "name": "tomato",
            "phase1_classes": ["healthy", "early_blight", "leaf_mold"],
            "ood_holdout": ["mosaic_virus"],
        },
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
    "router": TINY_BACKBONE,
    "adapter": {
        "backbone": TINY_BACKBONE,
        "dora": {"r": 2, "alpha": 4},
        "ood": {"threshold": {"min_samples": 2}},
    },
    "training": {
        name: {"epochs": 2, "batch_size": 16, "early_stopping_patience": None}
        for name in ("router", "phase1")
    },
}
"""A two-crop spec small enough to train in seconds (random weights: the numbers mean nothing,
the files and the code paths are the real ones)."""


@dataclass(frozen=True)
class Trained:
    config: PlatformConfig
    data: Path
    rows: list
    adapter: Path  # tomato: phase 1 + OOD calibration (near- and far-OOD measured)
    router: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A real calibrated tomato adapter package and a real router, trained once per session.
    Tests that change them work on copies."""
    from aads.adapters.phases.phase1 import train_phase1
    from aads.config import SynthSettings, parse_config
    from aads.data.ingest import ingest
    from aads.data.synth import synthesize
    from aads.ood.calibrate import calibrate_package
    from aads.router import train_router

    tmp = tmp_path_factory.mktemp("trained")
    config = parse_config(TINY_SPEC)
    synthesize(config, tmp / "data", settings=SynthSettings(images_per_class=6, image_size=32))
    rows = ingest(tmp / "data", config=config).rows
    train_router(config, rows, tmp / "data", tmp / "router")
    adapter = train_phase1(config, "tomato", rows, tmp / "data", tmp / "tomato")
    calibrate_package(config, adapter, rows, tmp / "data", loco=False)
    return Trained(config, tmp / "data", rows, adapter, tmp / "router")
