"""What the capture, drift and feedback tests share: small real calibrated tomato adapters
(phase 1, and phase 3 with a CONEC "field" domain) trained once per test session on the
`random:tiny` backbone, fresh in-distribution images they never saw, out-of-distribution
pictures, and `capture`, which answers images with the real `Diagnoser` and offers them to
the real `CaptureWriter` as the router will."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from aads.adapters.phases.phase1 import train_phase1
from aads.adapters.phases.phase3 import train_phase3
from aads.answer import Answer, Routing
from aads.backbone import open_image
from aads.capture.settings import CaptureSettings
from aads.capture.writer import CaptureWriter
from aads.config import PlatformConfig, StorageSettings, SynthSettings, parse_config
from aads.data.ingest import ingest
from aads.data.synth import synthesize
from aads.inference import Diagnoser
from aads.ood.calibrate import calibrate_package
from aads.storage import S3Store

TINY = {"source": "random:tiny", "image_size": 32}
SPEC = {
    "crops": [
        {
            "name": "tomato",
            "phase1_classes": ["healthy", "early_blight", "leaf_mold"],
            "phase3_domains": ["field"],
            "ood_holdout": ["mosaic_virus"],
        },
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
    "router": TINY,
    "adapter": {
        "backbone": {**TINY, "device": "cpu"},
        "dora": {"r": 2, "alpha": 4},
        "conec": {"rank": 2, "alpha": 4},
        "ood": {"threshold": {"min_samples": 2}},
    },
    # A large validation split: it is the drift reference (the feature test needs >= 20 rows).
    "data": {"split": {"train": 0.5, "val": 0.35, "test": 0.15}},
    "training": {
        "phase1": {"epochs": 2, "batch_size": 16, "early_stopping_patience": None},
        "phase3": {"epochs": 1, "batch_size": 16, "early_stopping_patience": None},
    },
}


@dataclass
class World:
    config: PlatformConfig
    phase1: Path
    phase3: Path
    fresh: Path  # in-distribution images the adapters never saw (another synth seed)


_WORLD: dict[int, World] = {}


def build_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The packages and images, built once per test session."""
    key = id(tmp_path_factory)
    if key in _WORLD:
        return _WORLD[key]
    tmp = tmp_path_factory.mktemp("loop-world")
    config = parse_config(SPEC)
    synth = SynthSettings(images_per_class=24, images_per_domain_class=10, image_size=32)
    synthesize(config, tmp / "data", settings=synth)
    rows = ingest(tmp / "data", config=config).rows
    p1 = train_phase1(config, "tomato", rows, tmp / "data", tmp / "p1")
    p3 = train_phase3(config, "tomato", rows, tmp / "data", p1, tmp / "p3")
    for pkg in (p1, p3):
        calibrate_package(config, pkg, rows, tmp / "data", loco=False)
    synthesize(config, tmp / "fresh", settings=synth.model_copy(update={"seed": 7}))
    _WORLD[key] = World(config, p1, p3, tmp / "fresh")
    return _WORLD[key]


def new_bucket(s3_settings: StorageSettings) -> StorageSettings:
    """Settings for a fresh bucket on the session's moto server."""
    fresh = s3_settings.model_copy(
        update={"bucket": f"loop-{uuid.uuid4().hex[:12]}", "timeout_s": 30.0, "retries": 3}
    )
    S3Store(fresh.bucket, fresh).ensure_bucket()
    return fresh


def fresh_images(world: World, domain: str, limit: int) -> list[bytes]:
    paths = sorted((world.fresh / domain / "tomato").rglob("*.jpg"))
    known = {"healthy", "early_blight", "leaf_mold"}
    return [p.read_bytes() for p in paths if p.parent.name in known][:limit]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def noise_images(n: int, seed: int = 11) -> list[bytes]:
    """Pictures that are no tomato leaf at all (random pixels): what a new field problem looks
    like to the adapter in the extreme."""
    rng = np.random.default_rng(seed)
    return [_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def flat_images(
    n: int, seed: int = 12, colour: tuple[int, int, int] = (150, 90, 40)
) -> list[bytes]:
    """Another kind of stranger, one coherent group: nearly uniform brownish pictures (a
    lens cap, bare soil), each a slightly different shade, with a little sensor noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shade = np.asarray(colour) + rng.integers(-15, 16, 3)
        noise = rng.integers(-6, 7, (32, 32, 3))
        out.append(_png(np.clip(shade + noise, 0, 255).astype(np.uint8)))
    return out


def capture(
    package: Path, storage: StorageSettings, images: list[bytes], rate: float
) -> list[Answer]:
    """Serve `images` with the real Diagnoser and offer each answer to the real writer, as the
    router will, spread over the last three days; returns the answers."""
    diagnoser = Diagnoser.from_dir(package, model_version="1")
    routing = Routing(source="crop_hint", crop="tomato")
    answers = [a.routed(routing) for a in diagnoser.diagnose([open_image(d) for d in images])]
    now = datetime.now(UTC)
    when = [now]
    # Patient with the store: these tests are about what is kept, not about a slow moto.
    settings = CaptureSettings(
        enabled=True, sample_rate=rate, store_timeout_s=30, store_retries=3, retry_after_s=0
    )
    with CaptureWriter.from_settings(settings, storage, clock=lambda: when[0]) as writer:
        for i, (data, answer) in enumerate(zip(images, answers, strict=True)):
            when[0] = now - timedelta(hours=1 + 24 * (i % 3))
            writer.offer(data, answer)
    stats = writer.stats()
    assert stats.written + stats.skipped.get("not_sampled", 0) == len(images), stats
    return answers


def spec_file(folder: Path, storage: StorageSettings) -> Path:
    """The tests' spec as a YAML file whose storage block points at `storage` (for commands)."""
    spec = {
        **SPEC,
        "storage": {
            "endpoint": storage.endpoint,
            "secure": False,
            "region": storage.region,
            "bucket": storage.bucket,
            "retries": 3,  # generous: moto shares two busy cores with everything else
            "timeout_s": 30,
            "cache_dir": str(folder / "cache"),
        },
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
