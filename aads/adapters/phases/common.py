"""What every phase needs: its rows, loaders over them, evaluation, errors before training.

All checks on the data a phase will see run before the backbone is loaded or a step is taken:
a class with no images or a domain with no data fails in a second, not after an epoch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from aads.adapters.package import CLASS_STATS_FILE, METRICS_DIR, read_tensors
from aads.backbone import Backbone, preprocess_image
from aads.config import BASE_DOMAIN, TrainingSettings
from aads.data.dataset import ManifestDataset, make_loader
from aads.data.manifest import ManifestRow, select
from aads.errors import BadInput
from aads.gaussians import SharedCovarianceGaussians
from aads.metrics import average_forgetting, classification_summary, save_confusion_matrix
from aads.phases import CONEC_LORA
from aads.training import FitResult, make_train_loader

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from aads.adapters.conec.model import ConecHeads, ConecState
    from aads.adapters.package import AdapterMeta


class AdapterTrainingError(BadInput):
    """A phase that cannot start with this data, config or previous package."""


@dataclass(frozen=True)
class PhaseData:
    train: list[ManifestRow]
    val: list[ManifestRow]
    test: list[ManifestRow]


def phase_rows(
    rows: Sequence[ManifestRow], crop: str, phase: str, task: str | None = None
) -> PhaseData:
    picked = select(rows, crop=crop, phase=phase, task=task)
    return PhaseData(*(select(picked, split=s) for s in ("train", "val", "test")))


def require_images(rows: Sequence[ManifestRow], classes: Sequence[str], what: str) -> None:
    """Every class in `classes` must have at least one image in `rows`."""
    have = {r.label for r in rows}
    empty = [c for c in classes if c not in have]
    if empty:
        raise AdapterTrainingError(
            f"{what}: class(es) {empty} have no training images; add images or remove them "
            "from the config"
        )


def image_loader(
    rows: Sequence[ManifestRow],
    root: Path,
    classes: Sequence[str],
    backbone: Backbone,
    settings: TrainingSettings,
    *,
    train: bool,
) -> torch.utils.data.DataLoader:
    """Training loaders shuffle by seed (sharded across DDP ranks); evaluation ones keep order."""
    transform = partial(
        preprocess_image, image_size=backbone.image_size, normalization=backbone.normalization
    )
    dataset = ManifestDataset(rows, root, transform, classes)
    pin = backbone.device.type == "cuda"
    if train:
        return make_train_loader(dataset, settings, shuffle=True, pin_memory=pin)
    return make_loader(
        dataset, batch_size=settings.batch_size, num_workers=settings.num_workers, pin_memory=pin
    )


@torch.no_grad()
def predict(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[list[int], list[int]]:
    """(true labels, predicted labels) over a loader of (pixels, label, index)."""
    was_training = model.training
    model.eval()
    y_true: list[int] = []
    y_pred: list[int] = []
    try:
        for pixels, labels, _ in loader:
            logits = model(pixels.to(device))
            y_true += labels.tolist()
            y_pred += logits.argmax(-1).cpu().tolist()
    finally:
        model.train(was_training)
    return y_true, y_pred


def val_accuracy(
    loader: torch.utils.data.DataLoader, device: torch.device
) -> Callable[[nn.Module], dict[str, float]]:
    """The loop's `eval_fn` for early stopping: accuracy on `loader`, as ``val_accuracy``."""
    return lambda model: {"val_accuracy": accuracy(*predict(model, loader, device))}


PROBE_C = (0.01, 0.1, 1.0, 10.0)
"""Inverse regularisation strengths tried for the probe a head starts from."""


@torch.no_grad()
def _frozen_features(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    x, y = [], []
    try:
        for pixels, labels, _ in loader:
            x.append(model.features(pixels.to(device)).double().cpu())
            y.append(labels)
    finally:
        model.train(was_training)
    return torch.cat(x).numpy(), torch.cat(y).numpy()


def fit_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> tuple[Pipeline, float, float]:
    """A linear probe: scikit-learn's LogisticRegression on standardised features, C in
    `PROBE_C` picked by validation accuracy (ties: the stronger regularisation). Returns the
    fitted pipeline, its C and its validation accuracy. Phase 1 starts its head from it, and
    `benchmarks/real.py` measures the pipeline against it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def probe(c: float) -> Pipeline:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x_train, y_train)

    fitted = {c: probe(c) for c in PROBE_C}
    scores = {c: float((m.predict(x_val) == y_val).mean()) for c, m in fitted.items()}
    best = max(PROBE_C, key=lambda c: (scores[c], -c))
    return fitted[best], best, scores[best]


def start_head_from_probe(
    model: nn.Module,
    head: nn.Linear,
    train: torch.utils.data.DataLoader,
    val: torch.utils.data.DataLoader,
    device: torch.device,
) -> float:
    """Linear probing, then fine-tuning (LP-FT, Kumar et al., ICLR 2022): set `head` to the
    `fit_probe` probe on the not-yet-adapted features before the adapter trains.

    Why: from a random head, the first adapter steps chase the head's errors and distort the
    pretrained features, and on a few dozen images per class the loop's epochs do not bring a
    linear head on raw pooled features to convergence (measured on PlantVillage at 64 px: corn's
    4 classes 0.50 test accuracy after DoRA, 0.69 for a probe on the frozen features). The
    probe's standardisation is folded into the head's weights. Returns the probe's validation
    accuracy.
    """
    x_train, y_train = _frozen_features(model, train, device)
    x_val, y_val = _frozen_features(model, val, device)
    if len(np.unique(y_train)) != head.out_features:
        raise AdapterTrainingError(
            f"a probe needs images of all {head.out_features} classes in the training split"
        )
    probe, _, val_accuracy = fit_probe(x_train, y_train, x_val, y_val)
    scaler, regression = probe[0], probe[-1]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weight = regression.coef_ / scale  # logits = W (x - mean) / scale + b
    bias = regression.intercept_ - weight @ scaler.mean_
    if head.out_features == 2 and weight.shape[0] == 1:  # binary: one row, logit of class 1
        weight = np.vstack([-weight / 2, weight / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
    head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return val_accuracy


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    if not y_true:
        return float("nan")
    return sum(int(a == b) for a, b in zip(y_true, y_pred, strict=True)) / len(y_true)


def incremental_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, n_old: int
) -> torch.Tensor:
    """Cross-entropy over every seen class, with the `n_old` old classes' logits detached.

    Rehearsal-free class-incremental training sees images of the new classes only. A plain
    loss over all classes would learn "push every old logit down" from them (forgetting); the
    paper-style task-local loss ignores old classes entirely and is undefined for a task that
    adds one class. Detaching old logits keeps the comparison with old classes (new logits
    must beat them on new images) while sending no gradient through them: old head rows and
    the features they read are not trained to say "not old".
    """
    if n_old <= 0:
        return nn.functional.cross_entropy(logits, targets)
    joined = torch.cat([logits[:, :n_old].detach(), logits[:, n_old:]], dim=1)
    return nn.functional.cross_entropy(joined, targets)


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def best_metric(result: FitResult) -> float:
    """The monitored value at the best epoch (NaN when nothing was monitored)."""
    return float("nan") if result.best_metric is None else float(result.best_metric)


def domain_rows(
    rows: Sequence[ManifestRow], crop: str, domain: str, classes: Sequence[str], split: str
) -> list[ManifestRow]:
    """`split` images of `domain`: base-domain images of the given classes (phases 1 and 2),
    or a phase-3 domain's images."""
    if domain == BASE_DOMAIN:
        return select(rows, crop=crop, split=split, domain=BASE_DOMAIN, labels=classes)
    return select(rows, crop=crop, split=split, phase=CONEC_LORA.number, task=domain)


def write_phase_metrics(
    from_pkg: Path, pkg_dir: Path, summary: dict, name: str, title: str
) -> None:
    """Carry the earlier phases' figures into the new package and add this phase's."""
    src = Path(from_pkg) / METRICS_DIR
    if src.is_dir():
        shutil.copytree(src, pkg_dir / METRICS_DIR, dirs_exist_ok=True)
    save_confusion_matrix(summary, pkg_dir / METRICS_DIR, name, title)


def class_statistics(pkg: Path, classes: int) -> SharedCovarianceGaussians:
    """The package's per-class feature statistics (classifier alignment needs them)."""
    tensors = read_tensors(pkg, CLASS_STATS_FILE)
    if tensors is None:
        raise AdapterTrainingError(
            f"{pkg} has no {CLASS_STATS_FILE}: it predates classifier alignment; retrain phase 1"
        )
    stats = SharedCovarianceGaussians.from_state_dict(tensors)
    if stats.num_groups != classes:
        raise AdapterTrainingError(
            f"{pkg}: statistics for {stats.num_groups} classes but {classes} classes in the head"
        )
    return stats


def per_class_accuracy(
    network: nn.Module,
    rows: list[ManifestRow],
    root: Path,
    classes: list[str],
    backbone: Backbone,
    settings: TrainingSettings,
) -> dict[str, float]:
    """Per-class test accuracy with predictions over every class the network knows."""
    if not rows:
        return {}
    loader = image_loader(rows, root, classes, backbone, settings, train=False)
    y_true, y_pred = predict(network, loader, backbone.device)
    return classification_summary(y_true, y_pred, classes)["per_class_accuracy"]


def class_task_metrics(
    summary: dict, history: list[dict[str, float]], old_classes: list[str]
) -> dict[str, float]:
    """A classes phase's package metrics: pooled test accuracy, old classes' accuracy before
    and after (per-class `history`, first entry before the first task), retention, forgetting."""
    before, after = history[0], history[-1]
    old_before = mean([before[c] for c in old_classes if c in before])
    old_after = mean([after[c] for c in old_classes if c in after])
    return {
        "phase2_test_accuracy": summary["accuracy"],
        "phase2_old_accuracy_before": old_before,
        "phase2_old_accuracy_after": old_after,
        "phase2_retention": old_after / old_before if old_before > 0 else float("nan"),
        "phase2_forgetting": average_forgetting(history, old_classes),
    }


def write_conec_package(
    meta: AdapterMeta,
    state: ConecState,
    heads: ConecHeads,
    from_pkg: Path,
    out_dir: Path,
    *,
    class_stats: dict[str, torch.Tensor] | None,
    extra: Callable[[Path], None],
) -> Path:
    """The package of a CONEC-routed network (phase 3, and classes learned in its heads): head 0
    also as ``head.0`` in the heads file (what a non-CONEC loader reads), every head, late set
    and the selector in the CONEC tensors, the parent's DoRA and SD-LoRA as they were."""
    from aads.adapters.conec.model import conec_state_dict
    from aads.adapters.package import SD_LORA_FILE, PackageContents, write_package

    base_head = heads.heads[0]
    return write_package(
        PackageContents(
            meta=meta,
            heads={"head.0.weight": base_head.weight, "head.0.bias": base_head.bias},
            dora_from=from_pkg,
            sd_lora=read_tensors(from_pkg, SD_LORA_FILE),
            conec=conec_state_dict(state, heads),
            class_stats=class_stats,
            extra=extra,
        ),
        out_dir,
    )
