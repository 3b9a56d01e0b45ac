"""Phase 3 (CONEC-LoRA) specifications: the package reloads to the same network, earlier domain
sets stay frozen, a phase-3 package continues with its pending domains, metrics are recorded,
and every bad input is refused before a backbone is loaded.

Real synthetic images, real phase-1 and phase-2 packages, the `random:tiny` backbone at 32 px.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aads.adapters import loading, method
from aads.adapters.loading import load_adapter
from aads.adapters.package import (
    CONEC_FILE,
    META_FILE,
    METRICS_DIR,
    SD_LORA_FILE,
    read_meta,
)
from aads.adapters.phases import phase3
from aads.adapters.phases.common import AdapterTrainingError, image_loader
from aads.adapters.phases.phase1 import train_phase1
from aads.adapters.phases.phase2 import train_phase2
from aads.adapters.phases.phase3 import check_phase3_inputs, train_phase3
from aads.config import PlatformConfig, SynthSettings
from aads.data.ingest import ingest
from aads.data.manifest import ManifestRow, select
from aads.data.synth import synthesize
from aads.training import CHECKPOINT_NAME

pytestmark = pytest.mark.slow  # a real server or a training run in every test

TRAINING = {"epochs": 1, "batch_size": 8, "lr": 0.01}
CONEC_TRAINING = {"epochs": 2, "batch_size": 8, "lr": 0.01, "early_stopping_patience": None}
TOMATO = {
    "name": "tomato",
    "phase1_classes": ["healthy", "early_blight"],
    "phase2_batches": [["leaf_mold"]],
    "phase3_domains": ["field", "low_light"],
}
CONFIG = {
    "name": "phase3_test",
    "crops": [TOMATO, {"name": "pepper", "phase1_classes": ["healthy", "bacterial_spot"]}],
    "router": {"source": "random:tiny", "image_size": 32},
    "adapter": {
        "backbone": {"source": "random:tiny", "seed": 1, "image_size": 32, "device": "cpu"},
        "dora": {"r": 2, "alpha": 4, "dropout": 0.0},
        "sd_lora": {"rank": 2},
        "conec": {"rank": 2, "alpha": 4},
    },
    "training": {"phase1": TRAINING, "phase2": TRAINING, "phase3": CONEC_TRAINING},
}


def config_with(*, domains: list[str] | None = None, conec: dict | None = None) -> PlatformConfig:
    """The test config, optionally with other tomato phase-3 domains or CONEC settings."""
    raw = json.loads(json.dumps(CONFIG))
    if domains is not None:
        raw["crops"][0]["phase3_domains"] = domains
    if conec is not None:
        raw["adapter"]["conec"] = conec
    return PlatformConfig.model_validate(raw)


@dataclass
class Trained:
    config: PlatformConfig
    rows: list[ManifestRow]
    root: Path
    phase1: Path
    phase2: Path
    field: Path  # phase 3 from phase2, learning "field" only
    both: Path  # phase 3 continued from `field`, learning "low_light"
    field_network: torch.nn.Module  # the in-memory networks those runs wrote
    both_network: torch.nn.Module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    tmp = tmp_path_factory.mktemp("phase3")
    config = config_with()
    root = tmp / "data"
    synthesize(
        config,
        root,
        settings=SynthSettings(images_per_class=4, images_per_domain_class=4, image_size=32),
    )
    rows = ingest(root, config=config).rows
    # Phases 1 and 2 record default CONEC settings; phase 3 must record the ones it used.
    earlier = config_with(conec={})
    p1 = train_phase1(earlier, "tomato", rows, root, tmp / "p1")
    p2 = train_phase2(earlier, "tomato", rows, root, p1, tmp / "p2")
    networks = []
    with pytest.MonkeyPatch.context() as mp:
        real_fit = method.fit  # the shared task driver's training loop

        def recording_fit(model: torch.nn.Module, *args: object, **kwargs: object) -> object:
            networks.append(model)
            return real_fit(model, *args, **kwargs)

        mp.setattr(method, "fit", recording_fit)
        field = train_phase3(
            config_with(domains=["field"]), "tomato", rows, root, p2, tmp / "p3-field"
        )
        both = train_phase3(
            config, "tomato", rows, root, field, tmp / "p3-both", checkpoint_dir=tmp / "ckpt"
        )
    return Trained(config, rows, root, p1, p2, field, both, networks[0], networks[-1])


def test_phase3_package_reloads_to_the_in_memory_networks_logits(trained: Trained) -> None:
    for pkg, network in (
        (trained.field, trained.field_network),
        (trained.both, trained.both_network),
    ):
        loaded = load_adapter(pkg, device="cpu")
        pixels = _test_pixels(trained, loaded)
        network.eval()
        network.state.use_selector()
        with torch.no_grad():
            expected = network(pixels)
        routed_in_memory = network.state.routing.domain_ids.clone()
        assert torch.equal(loaded.logits(pixels), expected)
        assert torch.equal(loaded.conec.routing.domain_ids, routed_in_memory)
        assert routed_in_memory.unique().numel() > 1  # a mixed-domain batch, really routed


def test_later_domain_leaves_earlier_domain_sets_heads_and_statistics_unchanged(
    trained: Trained,
) -> None:
    before, after = load_file(trained.field / CONEC_FILE), load_file(trained.both / CONEC_FILE)
    frozen = [k for k in before if k.startswith(("late.1.", "heads.0.", "heads.1."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(k.startswith("late.2.") for k in after)
    assert not any(k.startswith("late.2.") for k in before)
    shared = [k for k in before if k.startswith("shared.") and k.endswith(".B")]
    assert any(not torch.equal(before[k], after[k]) for k in shared)  # shared keeps training
    sums = "selector.mahalanobis.sums"
    assert torch.equal(after[sums][:2], before[sums])  # base and field statistics kept
    assert after[sums].shape[0] == 3


def test_continued_package_learns_only_the_pending_domain(trained: Trained) -> None:
    meta = read_meta(trained.both)
    assert meta.domains == ["base", "field", "low_light"]
    assert [(p.phase, p.task) for p in meta.phases] == [
        ("1", ""),
        ("2", "0"),
        ("3", "field"),
        ("3", "low_light"),
    ]
    assert meta.phases[-1].added == ["low_light"]
    assert meta.phases[-1].metrics.keys() >= {"val_accuracy", "base_accuracy", "field_accuracy"}
    assert meta.adapter_settings["conec"]["rank"] == 2


def test_phase3_keeps_earlier_adapters_and_records_its_metrics(trained: Trained) -> None:
    meta = read_meta(trained.both)
    for domain in ("base", "field", "low_light"):
        for kind in ("accuracy", "oracle_accuracy", "selector_accuracy", "accuracy_before"):
            assert 0.0 <= meta.metrics[f"phase3_{domain}_{kind}"] <= 1.0
    for key in ("selector_accuracy", "mean_accuracy", "mean_oracle_accuracy", "test_accuracy"):
        assert 0.0 <= meta.metrics[f"phase3_{key}"] <= 1.0
    assert meta.metrics["phase3_protected_retention"] == pytest.approx(
        meta.metrics["phase3_base_accuracy"] / meta.metrics["phase3_base_accuracy_before"]
    )
    assert (
        meta.metrics["phase2_test_accuracy"]
        == read_meta(trained.phase2).metrics["phase2_test_accuracy"]
    )
    metrics = trained.both / METRICS_DIR
    assert {"phase1_test.json", "phase2_test.json", "phase3_test.json"} <= {
        p.name for p in metrics.iterdir()
    }
    matrix = json.loads((metrics / "phase3_test.json").read_text())
    test_rows = [
        r
        for r in select(trained.rows, crop="tomato", split="test", labels=meta.classes)
        if r.domain in meta.domains
    ]
    assert matrix["labels"] == meta.classes and matrix["n"] == len(test_rows)
    sd_before = load_file(trained.phase2 / SD_LORA_FILE)
    sd_after = load_file(trained.both / SD_LORA_FILE)
    assert sd_before.keys() == sd_after.keys()
    assert all(torch.equal(sd_before[k], sd_after[k]) for k in sd_before)


def test_rerun_with_the_checkpoint_dir_resumes_to_the_same_package(
    trained: Trained, tmp_path: Path
) -> None:
    ckpt = trained.both.parent / "ckpt"
    assert (ckpt / "domain-low_light" / CHECKPOINT_NAME).is_file()
    again = train_phase3(
        trained.config,
        "tomato",
        trained.rows,
        trained.root,
        trained.field,
        tmp_path / "again",
        checkpoint_dir=ckpt,
    )
    first, second = load_file(trained.both / CONEC_FILE), load_file(again / CONEC_FILE)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert read_meta(again).phases[-1].epochs == read_meta(trained.both).phases[-1].epochs


def test_same_inputs_give_the_same_package(trained: Trained, tmp_path: Path) -> None:
    torch.manual_seed(12345)  # whatever the global RNG holds, the seed in the config decides
    again = train_phase3(
        config_with(domains=["field"]),
        "tomato",
        trained.rows,
        trained.root,
        trained.phase2,
        tmp_path / "again",
    )
    first, second = load_file(trained.field / CONEC_FILE), load_file(again / CONEC_FILE)
    assert [k for k in first if not torch.equal(first[k], second[k])] == []


@pytest.fixture
def no_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if phase 3 gets as far as loading a package's backbone."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("phase 3 loaded a backbone before refusing its inputs")

    monkeypatch.setattr(phase3, "load_adapter", refuse)
    monkeypatch.setattr(loading, "package_backbone", refuse)


def _refused(
    trained: Trained,
    tmp_path: Path,
    match: str,
    *,
    pkg: Path,
    config: PlatformConfig | None = None,
    crop: str = "tomato",
    rows: list[ManifestRow] | None = None,
) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(AdapterTrainingError, match=match):
        train_phase3(
            config or trained.config,
            crop,
            trained.rows if rows is None else rows,
            trained.root,
            pkg,
            out,
            checkpoint_dir=ckpt,
        )
    assert not out.exists() and not ckpt.exists()
    assert not list(out.parent.glob(".out.*"))  # no staging directory either


@pytest.mark.usefixtures("no_backbone")
def test_package_of_another_crop_is_refused(trained: Trained, tmp_path: Path) -> None:
    _refused(
        trained, tmp_path, "adapter for 'tomato', not 'pepper'", pkg=trained.phase2, crop="pepper"
    )


@pytest.mark.usefixtures("no_backbone")
def test_package_of_an_unknown_phase_is_refused(trained: Trained, tmp_path: Path) -> None:
    pkg = tmp_path / "no-phases"
    shutil.copytree(trained.phase2, pkg)
    meta = read_meta(pkg).model_copy(update={"phases": []})
    (pkg / META_FILE).write_text(meta.model_dump_json())
    _refused(trained, tmp_path, "finished phase 0", pkg=pkg)


@pytest.mark.usefixtures("no_backbone")
def test_phase3_before_phase2_is_finished_is_refused(trained: Trained, tmp_path: Path) -> None:
    _refused(trained, tmp_path, r"\['leaf_mold'\].*finish phase 2", pkg=trained.phase1)


@pytest.mark.usefixtures("no_backbone")
def test_classes_other_than_the_configs_are_refused(trained: Trained, tmp_path: Path) -> None:
    pkg = tmp_path / "renamed"
    shutil.copytree(trained.phase2, pkg)
    meta = read_meta(pkg)
    meta.classes = ["healthy", "early_blight", "gray_mold"]
    (pkg / META_FILE).write_text(meta.model_dump_json())
    _refused(trained, tmp_path, "gray_mold", pkg=pkg)


@pytest.mark.usefixtures("no_backbone")
def test_domain_without_training_images_is_refused(trained: Trained, tmp_path: Path) -> None:
    rows = [r for r in trained.rows if not (r.domain == "low_light" and r.split == "train")]
    _refused(
        trained,
        tmp_path,
        "domain 'low_light' of 'tomato' has no training images",
        pkg=trained.phase2,
        rows=rows,
    )


@pytest.mark.usefixtures("no_backbone")
def test_domain_images_of_an_unknown_class_are_refused(trained: Trained, tmp_path: Path) -> None:
    rows = [
        r if r.domain != "field" or r.label != "leaf_mold" else replace(r, label="gray_mold")
        for r in trained.rows
    ]
    _refused(trained, tmp_path, r"'field'.*\['gray_mold'\]", pkg=trained.phase2, rows=rows)


@pytest.mark.usefixtures("no_backbone")
def test_domain_missing_a_known_class_is_accepted(trained: Trained) -> None:
    rows = [r for r in trained.rows if not (r.domain == "field" and r.label == "leaf_mold")]
    assert check_phase3_inputs(trained.config, "tomato", rows, trained.phase2) == [
        "field",
        "low_light",
    ]


@pytest.mark.usefixtures("no_backbone")
def test_no_base_images_for_the_selector_is_refused(trained: Trained, tmp_path: Path) -> None:
    rows = [r for r in trained.rows if r.domain != "base"]
    _refused(trained, tmp_path, "base-domain train images", pkg=trained.phase2, rows=rows)


@pytest.mark.usefixtures("no_backbone")
def test_package_with_every_domain_learned_is_refused(trained: Trained, tmp_path: Path) -> None:
    _refused(trained, tmp_path, "no phase-3 domain left to learn", pkg=trained.both)


@pytest.mark.usefixtures("no_backbone")
def test_package_domain_the_config_dropped_is_refused(trained: Trained, tmp_path: Path) -> None:
    config = config_with(domains=["low_light"])
    _refused(trained, tmp_path, r"domain\(s\) \['field'\]", pkg=trained.field, config=config)


@pytest.mark.usefixtures("no_backbone")
def test_continuing_with_other_conec_settings_is_refused(trained: Trained, tmp_path: Path) -> None:
    config = config_with(conec={"rank": 4, "alpha": 4})
    _refused(trained, tmp_path, "rank: package 2, config 4", pkg=trained.field, config=config)


def _test_pixels(trained: Trained, loaded: loading.LoadedAdapter) -> torch.Tensor:
    """A batch of test images from every domain the package knows."""
    rows = [
        r
        for d in loaded.meta.domains
        for r in select(trained.rows, crop="tomato", split="test", domain=d, labels=loaded.classes)[
            :3
        ]
    ]
    settings = trained.config.training.phase3.model_copy(update={"batch_size": len(rows)})
    loader = image_loader(
        rows, trained.root, loaded.classes, loaded.backbone, settings, train=False
    )
    return next(iter(loader))[0]
