"""Training the crop router: linear probes on a feature cache of the manifest's images.

One backbone pass over the data fills the cache, then epochs take milliseconds. Every image of
a configured crop counts, whatever its disease or domain; a crop-level Mahalanobis check
(the adapters' OOD settings) is fitted on the same features so that a picture of no known
crop is answered at the router.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import TensorDataset

from aads.backbone import Backbone, load_backbone
from aads.config import PlatformConfig, TrainingSettings
from aads.data.manifest import ManifestRow, select
from aads.features import FeatureTable, extract_manifest_features
from aads.metrics import classification_summary, save_confusion_matrix
from aads.ood.detector import OODDetector, fit_detector, save_detector
from aads.progress import Progress
from aads.router.model import RouterError, RouterHeads
from aads.router.package import OOD_DIR, save_router
from aads.storage import write_checksums

if TYPE_CHECKING:
    from aads.training import EpochCallback


@dataclass
class RouterTrainingResult:
    out_dir: Path
    metrics: dict
    history: list[dict]


def _labelled(rows: list[ManifestRow], crops: list[str], parts: list[str]) -> list[ManifestRow]:
    return [r for r in rows if r.crop in crops and r.part in parts]


def _tensors(
    table: FeatureTable, rows: list[ManifestRow], crops: list[str], parts: list[str]
) -> TensorDataset:
    x = table.take([r.sha256 for r in rows])
    y_crop = torch.tensor([crops.index(r.crop) for r in rows])
    y_part = torch.tensor([parts.index(r.part) for r in rows])
    return TensorDataset(x, y_crop, y_part)


def _predict(heads: RouterHeads, data: TensorDataset) -> tuple[list[int], list[int]]:
    heads.eval()
    with torch.no_grad():
        crop_logits, part_logits = heads(data.tensors[0])
    return crop_logits.argmax(-1).tolist(), part_logits.argmax(-1).tolist()


def train_router(
    config: PlatformConfig,
    rows: list[ManifestRow],
    data_root: Path,
    out_dir: Path,
    *,
    features: FeatureTable | None = None,
    backbone: Backbone | None = None,
    progress: Progress | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> RouterTrainingResult:
    """Fit the crop and part heads on cached features of `rows`' train split; save the router.

    Every image of a configured crop counts, whatever its disease or domain: the router must
    recognise a tomato in the field as well as in the lab, healthy or not.
    """
    from aads.training import fit, make_train_loader

    crops, parts = config.crop_names, config.parts
    rows = _labelled(rows, crops, parts)
    splits = {s: select(rows, split=s) for s in ("train", "val", "test")}
    if not splits["train"]:
        raise RouterError("no training images for the configured crops and parts")
    missing = sorted(set(crops) - {r.crop for r in splits["train"]})
    if missing:
        raise RouterError(f"crop(s) {missing} have no training images; ingest data for them")
    backbone = backbone or load_backbone(config.router, config.storage)
    if features is None:
        features = extract_manifest_features(backbone, rows, data_root, progress=progress)
    data = {s: _tensors(features, r, crops, parts) for s, r in splits.items()}

    settings: TrainingSettings = config.training.router
    torch.manual_seed(settings.seed)
    heads = RouterHeads(backbone.feature_dim, len(crops), len(parts))
    x_train = data["train"].tensors[0]
    heads.feature_mean.copy_(x_train.mean(0))
    heads.feature_std.copy_(x_train.std(0).clamp_min(1e-6))
    loader = make_train_loader(data["train"], settings, shuffle=True)
    eval_split = "val" if len(data["val"]) else "train"

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y_crop, y_part = batch
        crop_logits, part_logits = model(x)
        return nn.functional.cross_entropy(crop_logits, y_crop) + nn.functional.cross_entropy(
            part_logits, y_part
        )

    def eval_fn(model: nn.Module) -> dict[str, float]:
        c_pred, p_pred = _predict(model, data[eval_split])
        _, y_crop, y_part = data[eval_split].tensors
        crop_acc = float((torch.tensor(c_pred) == y_crop).float().mean())
        part_acc = float((torch.tensor(p_pred) == y_part).float().mean())
        return {
            "val_crop_accuracy": crop_acc,
            "val_part_accuracy": part_acc,
            "val_accuracy": (crop_acc + part_acc) / 2,
        }

    result = fit(
        heads,
        list(heads.parameters()),
        loader,
        settings=settings,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        monitor="val_accuracy",
        progress=None,
        on_epoch_end=on_epoch_end,
    )
    metrics = _evaluate(heads, data, crops, parts, Path(out_dir) / "metrics")
    if len(data["val"]):
        detector = _fit_crop_ood(data, crops, config)
        save_detector(detector, Path(out_dir) / OOD_DIR)
        metrics["ood_val_rejected"] = float(
            detector.detect(data["val"].tensors[0].double().numpy()).is_ood.mean()
        )
    save_router(heads, backbone, config.router, crops, parts, out_dir, metrics=metrics)
    write_checksums(Path(out_dir))  # last: registry and serving verify against it
    return RouterTrainingResult(Path(out_dir), metrics, [asdict(e) for e in result.history])


def _fit_crop_ood(
    data: dict[str, TensorDataset], crops: list[str], config: PlatformConfig
) -> OODDetector:
    """Crop-level OOD: one Gaussian per crop on router features (the adapter's OOD settings),
    thresholds on the validation split, so a picture of no known crop is answered at the
    router instead of being forced onto some crop's adapter."""
    x_train, y_train, _ = data["train"].tensors
    x_val, y_val, _ = data["val"].tensors
    return fit_detector(
        x_train.double().numpy(),
        y_train.numpy(),
        x_val.double().numpy(),
        y_val.numpy(),
        list(crops),
        config.adapter.ood,
    )


def _evaluate(
    heads: RouterHeads,
    data: dict[str, TensorDataset],
    crops: list[str],
    parts: list[str],
    figures: Path,
) -> dict:
    metrics: dict = {}
    for split in ("val", "test"):
        if not len(data[split]):
            continue
        c_pred, p_pred = _predict(heads, data[split])
        _, y_crop, y_part = data[split].tensors
        crop = classification_summary(y_crop.tolist(), c_pred, crops)
        part = classification_summary(y_part.tolist(), p_pred, parts)
        metrics[f"{split}_crop_accuracy"] = crop["accuracy"]
        metrics[f"{split}_part_accuracy"] = part["accuracy"]
        save_confusion_matrix(crop, figures, f"router_crop_{split}", f"router: crop ({split})")
        save_confusion_matrix(part, figures, f"router_part_{split}", f"router: part ({split})")
    return metrics
