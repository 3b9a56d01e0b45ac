"""Phase 1: DoRA on the base disease classes of one crop.

PEFT's DoRA on the configured blocks/modules, a linear disease head on pooled features, and
LoRA+ (PEFT's optimizer helper: B matrices at ``loraplus_lr_ratio`` x the learning rate). Early
stopping on validation accuracy, checkpoints every epoch, resume from the last one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn

from aads.adapters.alignment import add_class_statistics
from aads.adapters.classifier import AdapterClassifier
from aads.adapters.dora.model import apply_dora
from aads.adapters.package import (
    METRICS_DIR,
    AdapterMeta,
    PackageContents,
    PhaseRecord,
    backbone_settings_record,
    write_package,
)
from aads.adapters.phases.common import (
    best_metric,
    image_loader,
    phase_rows,
    predict,
    require_images,
    start_head_from_probe,
    val_accuracy,
)
from aads.backbone import load_backbone
from aads.config import PlatformConfig
from aads.data.manifest import ManifestRow
from aads.features import backbone_signature
from aads.gaussians import SharedCovarianceGaussians
from aads.metrics import classification_summary, save_confusion_matrix
from aads.phases import DORA
from aads.progress import Progress
from aads.training import EpochCallback, fit


def train_phase1(
    config: PlatformConfig,
    crop: str,
    rows: list[ManifestRow],
    data_root: Path,
    out_dir: Path,
    *,
    checkpoint_dir: Path | None = None,
    manifest_sha256: str = "",
    progress: Progress | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> Path:
    """Train phase 1 for `crop` and write its adapter package to `out_dir`; `on_epoch_end`
    sees each epoch of the training loop as it ends (the pipeline logs it to MLflow)."""
    spec = config.crop(crop)
    classes = list(spec.phase1_classes)
    data = phase_rows(rows, crop, "1")
    require_images(data.train, classes, f"phase 1 of crop '{crop}'")
    settings = config.training.phase1
    torch.manual_seed(settings.seed)

    backbone_settings = config.adapter.backbone.model_copy(
        update={"gradient_checkpointing": settings.gradient_checkpointing}
    )
    backbone = load_backbone(backbone_settings, config.storage)
    peft_model = apply_dora(backbone.model, config.adapter.dora, backbone.depth)
    head = nn.Linear(backbone.feature_dim, len(classes)).to(backbone.device)
    model = AdapterClassifier(peft_model, head, backbone.pooling, backbone.prefix_tokens)

    optimizer = create_loraplus_optimizer(
        peft_model,
        torch.optim.AdamW,
        lr=settings.lr,
        loraplus_lr_ratio=config.adapter.dora.loraplus_lr_ratio,
        weight_decay=settings.weight_decay,
    )
    optimizer.add_param_group({"params": list(head.parameters()), "lr": settings.lr})

    train_loader = image_loader(data.train, data_root, classes, backbone, settings, train=True)
    val_rows = data.val or data.train
    val_loader = image_loader(val_rows, data_root, classes, backbone, settings, train=False)
    train_in_order = image_loader(data.train, data_root, classes, backbone, settings, train=False)
    with torch.no_grad():  # DoRA starts as the identity: these are the frozen backbone's features
        probe_val_accuracy = start_head_from_probe(
            model, head, train_in_order, val_loader, backbone.device
        )

    def loss_fn(m: nn.Module, batch: tuple) -> torch.Tensor:
        pixels, labels, _ = batch
        return nn.functional.cross_entropy(
            m(pixels.to(backbone.device)), labels.to(backbone.device)
        )

    fingerprint = {
        "phase": DORA.number,
        "crop": crop,
        "classes": json.dumps(classes),
        "backbone": json.dumps(backbone_signature(backbone), sort_keys=True),
        "dora": config.adapter.dora.model_dump_json(),
        "training": settings.model_dump_json(),
    }
    start = time.perf_counter()
    result = fit(
        model,
        optimizer,
        train_loader,
        settings=settings,
        loss_fn=loss_fn,
        eval_fn=val_accuracy(val_loader, backbone.device),
        monitor="val_accuracy",
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        progress=progress,
        on_epoch_end=on_epoch_end,
        device=backbone.device,
    )
    seconds = time.perf_counter() - start

    stats = SharedCovarianceGaussians()
    add_class_statistics(
        stats,
        model,
        train_in_order,
        list(range(len(classes))),
        backbone.device,
    )
    test_rows = data.test or val_rows
    y_true, y_pred = predict(
        model,
        image_loader(test_rows, data_root, classes, backbone, settings, train=False),
        backbone.device,
    )
    summary = classification_summary(y_true, y_pred, classes)
    metrics = {
        "phase1_test_accuracy": summary["accuracy"],
        "phase1_val_accuracy": best_metric(result),
        "phase1_probe_val_accuracy": probe_val_accuracy,
    }
    meta = AdapterMeta(
        crop=crop,
        classes=classes,
        backbone_settings=backbone_settings_record(config.adapter.backbone),
        backbone_signature=backbone_signature(backbone),
        adapter_settings=config.adapter.model_dump(mode="json"),
        phases=[
            PhaseRecord(
                phase=DORA.number,
                added=classes,
                epochs=len(result.history),
                history=result.history,
                seconds=seconds,
                metrics=metrics,
            )
        ],
        metrics=metrics,
        manifest_sha256=manifest_sha256,
    )
    return write_package(
        PackageContents(
            meta=meta,
            heads={"head.0.weight": head.weight, "head.0.bias": head.bias},
            dora=peft_model,
            class_stats=stats.state_dict(),
            extra=lambda d: save_confusion_matrix(
                summary, d / METRICS_DIR, "phase1_test", f"{crop}: phase 1 (test)"
            ),
        ),
        out_dir,
    )
