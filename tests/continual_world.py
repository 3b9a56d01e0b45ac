"""What the continuation tests share: a real registered-able tomato parent (phase 1, calibrated,
trained once per session on the `random:tiny` backbone) and the folders a team would have
next: a batch of a new disease's images only (``<crop>/<class>/<image>`` + nothing else), a
batch of known diseases in a new domain, and an evaluation ("golden") set of images none of
the models trained on, with hold-out diseases and another crop for OOD."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from aads.adapters.phases.phase1 import train_phase1
from aads.config import PlatformConfig, SynthSettings, parse_config
from aads.data.ingest import ingest
from aads.data.synth import synthesize
from aads.ood.calibrate import calibrate_package

TINY = {"source": "random:tiny", "image_size": 32}
OLD = ["healthy", "early_blight", "leaf_mold"]
NEW = "septoria_leaf_spot"
SPEC = {
    "crops": [
        {"name": "tomato", "phase1_classes": OLD, "ood_holdout": ["mosaic_virus"]},
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
    "router": TINY,
    "adapter": {
        "backbone": {**TINY, "device": "cpu"},
        "dora": {"r": 2, "alpha": 4},
        "sd_lora": {"rank": 2},
        "conec": {"rank": 2, "alpha": 4},
        "ood": {"threshold": {"min_samples": 2}},
    },
    "training": {
        "phase1": {"epochs": 3, "batch_size": 16, "early_stopping_patience": None, "lr": 3e-3},
        **{
            name: {"epochs": 4, "batch_size": 4, "early_stopping_patience": None, "lr": 1e-2}
            for name in ("phase2", "phase3")
        },
    },
    # Random-weight backbone: the numbers mean little, so the gate's levels are loose; each
    # test that needs a refusal makes one that no level allows.
    "gate": {
        "min_accuracy": 0.0,
        "min_retention": 0.0,
        "min_near_ood_auroc": 0.0,
        "min_far_ood_auroc": 0.0,
        "continuation": {
            "min_new_task_accuracy": 0.0,
            "max_old_accuracy_drop": 0.2,
            "max_ood_auroc_drop": 0.5,
        },
    },
}
# What the synthesiser draws (every class and the field domain), beyond what the parent knows.
DRAW = {
    **SPEC,
    "crops": [
        {
            "name": "tomato",
            "phase1_classes": OLD,
            "phase2_batches": [[NEW]],
            "phase3_domains": ["field"],
            "ood_holdout": ["mosaic_virus"],
        },
        SPEC["crops"][1],
    ],
}


@dataclass(frozen=True)
class ContinualWorld:
    config: PlatformConfig
    parent: Path  # a calibrated phase-1 package of OLD
    new_class: Path  # batch: tomato/septoria_leaf_spot/*.jpg only
    field: Path  # batch: tomato/<old class>/*.jpg in the field domain
    evaluation: Path  # <domain>/<crop>/<class>/*.jpg never trained on


def _copy(src_root: Path, dst: Path, domain: str, crop: str, classes: list[str]) -> Path:
    for name in classes:
        folder = src_root / domain / crop / "leaf" / name
        target = dst / crop / name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.glob("*.jpg")):
            shutil.copy(image, target / image.name)
    return dst


def build(tmp_path_factory: pytest.TempPathFactory) -> ContinualWorld:
    tmp = tmp_path_factory.mktemp("continual-world")
    config = parse_config(SPEC)
    draw = parse_config(DRAW)
    synthesize(
        draw,
        tmp / "drawn",
        settings=SynthSettings(images_per_class=16, images_per_domain_class=10, image_size=32),
    )
    synthesize(
        draw,
        tmp / "golden",
        settings=SynthSettings(
            images_per_class=8, images_per_domain_class=4, image_size=32, seed=7
        ),
    )
    # The parent's training data: the old classes (and corn) in the base domain only.
    parent_data = tmp / "parent-data"
    for crop, classes in (("tomato", [*OLD, "mosaic_virus"]), ("corn", ["healthy", "common_rust"])):
        _copy(tmp / "drawn", parent_data, "base", crop, classes)
    rows = ingest(parent_data, config=config).rows
    parent = train_phase1(config, "tomato", rows, parent_data, tmp / "parent")
    calibrate_package(config, parent, rows, parent_data, loco=False)
    new_class = _copy(tmp / "drawn", tmp / "batch-new", "base", "tomato", [NEW])
    field = _copy(tmp / "drawn", tmp / "batch-field", "field", "tomato", OLD)
    golden = tmp / "evaluation"
    _copy(tmp / "golden", golden / "base", "base", "tomato", [*OLD, "mosaic_virus"])
    _copy(tmp / "golden", golden / "base", "base", "corn", ["healthy", "common_rust"])
    return ContinualWorld(config, parent, new_class, field, golden)
