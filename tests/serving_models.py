"""A trained router and calibrated tomato and corn adapters (tiny random DINOv3, synthetic
plants), built once per test session and shared by every module that serves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aads.config import SynthSettings, parse_config

TINY = {"source": "random:tiny", "image_size": 32}
SPEC = {
    "crops": [
        {"name": "tomato", "phase1_classes": ["healthy", "early_blight", "leaf_mold"]},
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
    "router": TINY,
    "adapter": {
        "backbone": TINY,
        "dora": {"r": 2, "alpha": 4},
        "ood": {"threshold": {"min_samples": 2}},
    },
    "training": {
        name: {"epochs": 2, "batch_size": 16, "early_stopping_patience": None}
        for name in ("router", "phase1")
    },
    "serving": {
        "max_image_bytes": 200_000,
        "max_request_bytes": 1_000_000,
        "predictor_timeout_s": 3,
        "predictor_retries": 0,
        "max_wait_ms": 2,
    },
}


def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's models folder (``router/``, ``adapters/<crop>/``, ``data/``), trained on
    first use (about a minute on 2 cores)."""
    from aads.adapters.phases.phase1 import train_phase1
    from aads.data.ingest import ingest
    from aads.data.synth import synthesize
    from aads.ood.calibrate import calibrate_package
    from aads.router import train_router

    root = tmp_path_factory.getbasetemp() / "serving-models"
    if (root / "done").is_file():
        return root
    config = parse_config(SPEC)
    synthesize(config, root / "data", settings=SynthSettings(images_per_class=10, image_size=32))
    rows = ingest(root / "data", config=config).rows
    train_router(config, rows, root / "data", root / "router")
    for crop in ("tomato", "corn"):
        pkg = train_phase1(config, crop, rows, root / "data", root / "adapters" / crop)
        calibrate_package(config, pkg, rows, root / "data", loco=False)
    (root / "done").write_text("ok\n")
    return root


def crop_images(models: Path, crop: str, n: int = 3) -> list[Path]:
    return sorted((models / "data" / "base" / crop).rglob("*.jpg"))[:n]
