"""The crop router: a frozen DINOv3 backbone and two linear heads, crop and plant part.

The router decides which crop adapter sees an image, so it must be cheap and stable: the
backbone stays frozen and the heads are linear probes on its pooled features, trained on a
feature cache (one backbone pass over the data, then epochs that take milliseconds). Features
are standardised with the training set's statistics, stored with the heads, so the probe does
not depend on a random or pretrained backbone's feature scale.

On disk a router is a folder: ``router.safetensors`` (heads + standardisation) and
``router.json`` (class lists, backbone source and preprocessing, metrics).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from aads.answer import Routing
from aads.atomic import atomic_write, atomic_write_text
from aads.backbone import (
    Backbone,
    FeatureExtractor,
    ImageInput,
    extract_features,
    load_backbone,
)
from aads.config import (
    BackboneSettings,
    PlatformConfig,
    ServingSettings,
    StorageSettings,
    TrainingSettings,
)
from aads.data.manifest import ManifestRow, select
from aads.errors import BadInput
from aads.features import FeatureTable, backbone_signature, extract_manifest_features
from aads.metrics import classification_summary, save_confusion_matrix
from aads.ood.detector import OODDetector, fit_detector, load_detector, save_detector
from aads.progress import Progress
from aads.storage import CHECKSUM_FILE, StorageError, verify_checksums, write_checksums
from aads.uploads import model_input

if TYPE_CHECKING:
    from aads.training import EpochCallback

FORMAT = "aads-router/1"
WEIGHTS_FILE = "router.safetensors"
META_FILE = "router.json"
OOD_DIR = "ood"


class RouterError(BadInput):
    """A router that cannot be trained or loaded as asked."""


class RouterHeads(nn.Module):
    """Standardise features, then two linear heads."""

    def __init__(self, dim: int, n_crops: int, n_parts: int):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.crop = nn.Linear(dim, n_crops)
        self.part = nn.Linear(dim, n_parts)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (features - self.feature_mean) / self.feature_std
        return self.crop(z), self.part(z)


@dataclass(frozen=True)
class RouteDecision:
    crop: str
    crop_confidence: float
    part: str
    part_confidence: float
    is_ood: bool = False  # not a known crop: nothing to send to an adapter
    distance: float | None = None
    threshold: float | None = None

    def routing(self) -> Routing:
        """The ``routing`` entry of an answer (the serving router and the scouting stage)."""
        ood = (
            {
                "is_ood": self.is_ood,
                "distance": round(self.distance, 6),
                "threshold": round(self.threshold or 0.0, 6),
            }
            if self.distance is not None
            else {}
        )
        return Routing(
            source="router",
            crop=self.crop,
            crop_confidence=round(self.crop_confidence, 6),
            part=self.part,
            part_confidence=round(self.part_confidence, 6),
            **ood,
        )


@dataclass
class CropRouter:
    """A loaded router, ready to route images or precomputed features."""

    backbone: Backbone
    heads: RouterHeads
    crops: list[str]
    parts: list[str]
    meta: dict
    ood: OODDetector | None = None  # crop-level Mahalanobis check: "not a known crop"

    def route_features(self, features: torch.Tensor) -> list[RouteDecision]:
        with torch.inference_mode():
            crop_logits, part_logits = self.heads(features.float())
        crop_p, part_p = crop_logits.softmax(-1), part_logits.softmax(-1)
        crop_conf, crop_idx = crop_p.max(-1)
        part_conf, part_idx = part_p.max(-1)
        n = len(features)
        found = self.ood.detect(features.double().numpy()) if self.ood and n else None
        return [
            RouteDecision(
                self.crops[c],
                float(cc),
                self.parts[p],
                float(pc),
                is_ood=bool(found.is_ood[i]) if found else False,
                distance=float(found.score[i]) if found else None,
                threshold=float(found.threshold[i]) if found else None,
            )
            for i, (c, cc, p, pc) in enumerate(
                zip(
                    crop_idx.tolist(),
                    crop_conf.tolist(),
                    part_idx.tolist(),
                    part_conf.tolist(),
                    strict=True,
                )
            )
        ]

    def route(self, images: list[ImageInput], batch_size: int = 32) -> list[RouteDecision]:
        """Decisions for decoded images or trusted files (training's preprocessing)."""
        return self.route_features(
            FeatureExtractor(self.backbone, batch_size).extract_images(images)
        )

    def prepare(self, image: bytes, where: str, limits: ServingSettings) -> torch.Tensor:
        """One upload, checked and decoded (`aads.uploads`), as the router's input tensor."""
        return model_input(image, where, limits, self.backbone)

    def route_pixels(self, pixels: list[torch.Tensor]) -> list[RouteDecision]:
        """Decisions for prepared input tensors (what the serving router batches)."""
        if not pixels:
            return []
        return self.route_features(extract_features(self.backbone, torch.stack(pixels)))


# --------------------------------------------------------------------------- training


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


# --------------------------------------------------------------------------- persistence


def save_router(
    heads: RouterHeads,
    backbone: Backbone,
    settings: BackboneSettings,
    crops: list[str],
    parts: list[str],
    out_dir: Path,
    *,
    metrics: dict | None = None,
) -> Path:
    out_dir = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    atomic_write(out_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    meta = {
        "format": FORMAT,
        "crops": crops,
        "parts": parts,
        "backbone": backbone_signature(backbone),
        # Device and dtype belong to where the router runs, not to the router.
        "backbone_settings": settings.model_dump(mode="json", exclude={"device", "dtype"}),
        "metrics": metrics or {},
    }
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return out_dir


def load_router(
    router_dir: Path,
    storage: StorageSettings | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
) -> CropRouter:
    router_dir = Path(router_dir)
    if (router_dir / CHECKSUM_FILE).is_file():
        try:
            verify_checksums(router_dir)
        except StorageError as err:
            raise RouterError(str(err)) from None
    try:
        meta = json.loads((router_dir / META_FILE).read_text())
        tensors = load_file(str(router_dir / WEIGHTS_FILE))
    except (OSError, ValueError) as err:
        raise RouterError(f"{router_dir}: not a router folder ({err})") from None
    if meta.get("format") != FORMAT:
        raise RouterError(f"{router_dir}: unknown router format {meta.get('format')!r}")
    settings = BackboneSettings(**meta["backbone_settings"], device=device, dtype=dtype)
    backbone = load_backbone(settings, storage)
    if backbone_signature(backbone) != meta["backbone"]:
        raise RouterError(
            f"{router_dir}: backbone {settings.source} no longer matches the one the heads were "
            f"trained on (recorded {meta['backbone']}, loaded {backbone_signature(backbone)})"
        )
    dim = tensors["crop.weight"].shape[1]
    if dim != backbone.feature_dim:
        raise RouterError(
            f"{router_dir}: heads expect {dim}-d features, backbone gives {backbone.feature_dim}"
        )
    heads = RouterHeads(dim, len(meta["crops"]), len(meta["parts"]))
    heads.load_state_dict(tensors)
    heads.eval()
    ood = load_detector(router_dir / OOD_DIR)
    if ood is not None and ood.classes != meta["crops"]:
        raise RouterError(f"{router_dir}: OOD calibration is for crops {ood.classes}")
    return CropRouter(backbone, heads, meta["crops"], meta["parts"], meta, ood)
