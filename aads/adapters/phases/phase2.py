"""Phase 2: SD-LoRA class-incremental learning, one task per phase-2 class batch.

Starts from a phase-1 package: its DoRA adapter is merged into the base weights, SD-LoRA
layers wrap ``sd_lora.modules`` of every block, and each batch of new classes is one task: a
new low-rank pair (earlier pairs frozen as unit directions, all magnitudes trainable) and new
head rows. Rehearsal-free: a task reads only its own classes' images, and old classes' logits
enter its loss detached (`incremental_cross_entropy`), so data that cannot show the old classes
does not train the network to suppress them. Old classes are measured before and after on
held-out test images (evaluation only) to report retention and forgetting.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from torch import nn

from aads.adapters.alignment import add_class_statistics, align_head
from aads.adapters.classifier import AdapterClassifier, grow_head
from aads.adapters.loading import load_adapter
from aads.adapters.method import TaskSetup, train_task
from aads.adapters.package import (
    CLASS_STATS_FILE,
    PackageContents,
    PhaseRecord,
    read_meta,
    read_tensors,
    write_package,
)
from aads.adapters.phases.common import (
    AdapterTrainingError,
    PhaseData,
    best_metric,
    class_statistics,
    class_task_metrics,
    domain_rows,
    image_loader,
    incremental_cross_entropy,
    mean,
    per_class_accuracy,
    phase_rows,
    predict,
    require_images,
    val_accuracy,
    write_phase_metrics,
)
from aads.adapters.phases.heads import learn_classes_in_heads
from aads.adapters.sd_lora.model import SDLoRA, apply_sd_lora, sd_lora_layers, sd_lora_state_dict
from aads.backbone import Backbone, resolve_lora_targets
from aads.config import BASE_DOMAIN, CropSpec, PlatformConfig, TrainingSettings
from aads.data.manifest import ManifestRow
from aads.features import backbone_signature
from aads.metrics import classification_summary
from aads.phases import NUMBERS, SD_LORA
from aads.progress import Progress
from aads.training import EpochCallback


def pending_tasks(spec: CropSpec, known: list[str], done_tasks: set[str]) -> list[int]:
    """Phase-2 batches still to learn; a batch repeating a known class is an error."""
    pending = []
    for i, batch in enumerate(spec.phase2_batches):
        if str(i) in done_tasks:
            continue
        repeated = [c for c in batch if c in known]
        if repeated:
            raise AdapterTrainingError(
                f"phase-2 batch {i} of crop '{spec.name}' repeats known class(es) {repeated}; "
                "a batch must add new classes only"
            )
        pending.append(i)
    return pending


def check_phase2_inputs(
    config: PlatformConfig, crop: str, rows: list[ManifestRow], from_pkg: Path
) -> tuple[list[int], list[str]]:
    """Everything phase 2 can check without a backbone: package, config and data agree."""
    spec = config.crop(crop)
    meta = read_meta(from_pkg)
    if meta.crop != crop:
        raise AdapterTrainingError(f"{from_pkg} is an adapter for '{meta.crop}', not '{crop}'")
    if meta.last_phase not in NUMBERS:
        raise AdapterTrainingError(
            f"{from_pkg} has finished phase {meta.last_phase}; phase 2 continues a phase-1, "
            "phase-2 or phase-3 package"
        )
    if meta.has_domains and read_tensors(from_pkg, CLASS_STATS_FILE) is None:
        raise AdapterTrainingError(
            f"{from_pkg} has learned domains {meta.domains[1:]} but carries no "
            f"{CLASS_STATS_FILE} (made before phase 3 carried them): new classes after a "
            "domain are learned in the heads from those statistics; retrain it with the pipeline"
        )
    if meta.classes[: len(spec.phase1_classes)] != list(spec.phase1_classes):
        raise AdapterTrainingError(
            f"{from_pkg} was trained on {meta.classes}, but the config's phase-1 classes are "
            f"{spec.phase1_classes}"
        )
    done = {p.task for p in meta.phases if p.phase == "2"}
    tasks = pending_tasks(spec, meta.classes, done)
    if not tasks:
        raise AdapterTrainingError(f"crop '{crop}' has no phase-2 batch left to learn")
    for i in tasks:
        data = phase_rows(rows, crop, "2", str(i))
        require_images(data.train, spec.phase2_batches[i], f"phase-2 batch {i} of '{crop}'")
    return tasks, meta.classes


def train_phase2(
    config: PlatformConfig,
    crop: str,
    rows: list[ManifestRow],
    data_root: Path,
    from_pkg: Path,
    out_dir: Path,
    *,
    checkpoint_dir: Path | None = None,
    manifest_sha256: str = "",
    progress: Progress | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> Path:
    """Learn every pending phase-2 batch of `crop` and write the new package to `out_dir`;
    `on_epoch_end` sees every epoch of every task as it ends."""
    tasks, classes = check_phase2_inputs(config, crop, rows, from_pkg)
    if read_meta(from_pkg).has_domains:  # CONEC wraps the projections: the heads learn it
        return learn_classes_in_heads(
            config,
            crop,
            rows,
            data_root,
            from_pkg,
            out_dir,
            tasks,
            classes,
            manifest_sha256=manifest_sha256,
        )
    spec, sd_settings = config.crop(crop), config.adapter.sd_lora
    settings = config.training.phase2
    prev = load_adapter(
        from_pkg,
        config.storage,
        device=config.adapter.backbone.device,
        dtype=config.adapter.backbone.dtype,
        merge=False,
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    backbone, meta = prev.backbone, prev.meta.model_copy(deep=True)
    model, head = prev.backbone.model, prev.network.head
    if not sd_lora_layers(model):
        apply_sd_lora(
            model, resolve_lora_targets(model, list(range(backbone.depth)), sd_settings.modules)
        )
    stats = class_statistics(from_pkg, len(classes))
    old_classes = list(spec.phase1_classes)
    test_rows = domain_rows(rows, crop, BASE_DOMAIN, classes, "test")
    before = per_class_accuracy(prev.network, test_rows, data_root, classes, backbone, settings)
    history = [before]
    method = SDLoRA(model, sd_settings)

    for task in tasks:
        batch = spec.phase2_batches[task]
        n_old = len(classes)
        classes = [*classes, *batch]
        data = phase_rows(rows, crop, "2", str(task))

        outcome = train_task(
            method,
            task,
            partial(_batch_setup, model, head, data, classes, n_old, backbone, settings, data_root),
            settings=settings,
            checkpoint_dir=checkpoint_dir / f"task{task}" if checkpoint_dir else None,
            fingerprint={
                "phase": SD_LORA.number,
                "task": str(task),
                "crop": crop,
                "classes": json.dumps(classes),
                "backbone": json.dumps(backbone_signature(backbone), sort_keys=True),
                "sd_lora": sd_settings.model_dump_json(),
                "training": settings.model_dump_json(),
            },
            progress=progress,
            on_epoch_end=on_epoch_end,
            device=backbone.device,
        )
        network = outcome.setup.network
        head = network.head
        add_class_statistics(
            stats,
            network,
            image_loader(data.train, data_root, classes, backbone, settings, train=False),
            list(range(n_old, len(classes))),
            backbone.device,
        )
        align_head(head, stats, seed=settings.seed + task)
        test_rows = domain_rows(rows, crop, BASE_DOMAIN, classes, "test")
        after = per_class_accuracy(network, test_rows, data_root, classes, backbone, settings)
        history.append(after)
        task_metrics = {
            **outcome.report,  # rank, folded_layers
            "new_classes_accuracy": mean([after[c] for c in batch if c in after]),
            "old_classes_accuracy": mean([after[c] for c in old_classes if c in after]),
            "seen_classes_accuracy": mean(list(after.values())),
            "val_accuracy": best_metric(outcome.fit),
        }
        meta.phases.append(
            PhaseRecord(
                phase=SD_LORA.number,
                task=str(task),
                added=batch,
                epochs=len(outcome.fit.history),
                seconds=outcome.seconds,
                history=outcome.fit.history,
                metrics=task_metrics,
            )
        )

    network.eval()
    y_true, y_pred = predict(
        network,
        image_loader(test_rows, data_root, classes, backbone, settings, train=False),
        backbone.device,
    )
    summary = classification_summary(y_true, y_pred, classes)
    meta.classes = classes
    meta.metrics = {**meta.metrics, **class_task_metrics(summary, history, old_classes)}
    meta.manifest_sha256 = manifest_sha256 or meta.manifest_sha256
    return write_package(
        PackageContents(
            meta=meta,
            heads={"head.0.weight": head.weight, "head.0.bias": head.bias},
            dora_from=from_pkg,
            sd_lora=sd_lora_state_dict(model),
            class_stats=stats.state_dict(),
            extra=lambda d: write_phase_metrics(
                from_pkg, d, summary, "phase2_test", f"{crop}: phase 2 (test)"
            ),
        ),
        out_dir,
    )


def _batch_setup(
    model: nn.Module,
    head: nn.Linear,
    data: PhaseData,
    classes: list[str],
    n_old: int,
    backbone: Backbone,
    settings: TrainingSettings,
    root: Path,
) -> TaskSetup:
    """One batch's part of a task, built once its pairs are added (they draw from the seeded
    generator first): head rows for the new classes, loaders over the batch's images only
    (rehearsal-free: model selection sees the new task's validation images only), and the
    loss with the old classes' logits detached."""
    grown = grow_head(head, len(classes) - n_old).requires_grad_(True)

    def loss_fn(m: nn.Module, batch: tuple) -> torch.Tensor:
        pixels, labels, _ = batch
        return incremental_cross_entropy(m(pixels), labels, n_old)

    network = AdapterClassifier(model, grown, backbone.pooling, backbone.prefix_tokens)
    train_loader = image_loader(data.train, root, classes, backbone, settings, train=True)
    val_rows = data.val or data.train
    val_loader = image_loader(val_rows, root, classes, backbone, settings, train=False)
    return TaskSetup(
        network=network,
        train_loader=train_loader,
        loss_fn=loss_fn,
        eval_fn=val_accuracy(val_loader, backbone.device),
        extra_parameters=list(grown.parameters()),
    )
