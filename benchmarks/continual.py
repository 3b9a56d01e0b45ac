"""Continual learning, honestly compared: SD-LoRA vs naive sequential LoRA (class-incremental),
CONEC-LoRA vs sequential fine-tuning (domain-incremental), on the demo's synthetic crops.

Reproduce with ``.venv/bin/python benchmarks/continual.py [--quick] [--seeds N]``. The full run
(about 5 minutes on 2 idle CPU cores, plus a one-off ~5 minutes to pretrain the backbone on
first use) writes ``benchmarks/results/continual.json`` and ``continual.md`` (tables) and prints
the tables; ``--quick`` runs the main setting only, one seed, fewer epochs and images, and
prints without writing unless ``--out`` is given. ``--variants`` picks the settings to run.

Setup (variant ``main``). The demo config (``config/demo.yaml``) with three changes, made in
code: both backbones are ``synthetic:mini`` (a 4-block DINOv3 pretrained in code on synthetic
crops disjoint from the demo's, cached under ``.aads/cache``), the synthetic dataset is larger
(`SYNTH`), and training runs longer (`EPOCHS`, `LR`, early stopping after `PATIENCE` epochs).
Everything else (ranks, LoRA targets, batch size, weight decay, splits) is the demo's. The
data is drawn once; a seed changes the training seeds only (phase 1 included), not the data.

Class-incremental (each crop with phase-2 batches: tomato 2 tasks, pepper 1, corn 1). Phase 1
(product code, DoRA) gives one package per crop and seed; from it:

- ``sd_lora``: `train_phase2`, the product: SD-LoRA (new pair per task, old pairs frozen as
  unit directions, magnitudes trainable) + classifier alignment from class statistics.
- ``seq_lora``: the naive baseline. The phase-1 package merged (`load_adapter(merge=True)`),
  ONE plain PEFT LoRA (``use_dora=False``) on the same q/v projections of every block with
  SD-LoRA's rank and initial scale (``lora_alpha = alpha_init * rank``, so it starts exactly as
  SD-LoRA's open pair), trained through the tasks in order with the same head growth
  (`grow_head`), loss (`incremental_cross_entropy`), epochs, lr, data (task images only) and
  model selection (the new task's validation images); no decoupling, no alignment.
- ``seq_lora+align``: ``seq_lora`` plus the product's classifier alignment after each task
  (`add_class_statistics` + `align_head`, phase-1 class statistics from the phase-1 package):
  it isolates what the SD-LoRA parametrisation adds beyond alignment.
- ``joint`` (variant ``main`` only): reference, not continual: phase 1 trained on every known
  class at once, the accuracy a continual method would ideally approach.

Measured on base-domain test images of the classes seen so far: pooled accuracy over the seen
classes; old (phase-1) classes' mean per-class accuracy before (the phase-1 package) and after,
retention (after / before) and average forgetting (Chaudhry et al.; SD-LoRA's is the one
`train_phase2` records); new classes' accuracy; old-class accuracy with the argmax restricted
to the old classes' logits (the old head rows on drifted features, without the new rows'
bias); the share of old-class images predicted as a new class (classifier bias); the relative
feature drift ||f_after - f_phase1|| / ||f_phase1|| on old-class test images; epochs run and
best validation accuracy per task; SD-LoRA's mean magnitude per pair. Diagnostic only (it reads
old classes' training images, which a rehearsal-free method may not): accuracy after
re-aligning the final head on class statistics recomputed from the final features
(``*_fresh_align``), i.e. what alignment would give if old statistics had not gone stale.

Domain-incremental (each crop with phase-3 domains), from each crop's final SD-LoRA package:

- ``conec``: `train_phase3`, the product (shared LoRAs in blocks 0-1 under distillation,
  per-domain LoRA sets and heads in blocks 2-3, Mahalanobis domain selector); its metrics are
  the ones it records in the package.
- ``seq_ft``: sequential fine-tuning: ONE plain LoRA on q/v of ALL blocks (CONEC's rank and
  alpha) and one shared head, trained on each domain in order with cross-entropy (same epochs,
  lr, model selection), no distillation, no per-domain sets, no selector.

Measured on each domain's test images after the last domain: per-domain accuracy (CONEC as
served, i.e. selector-routed), their mean, protected retention (base accuracy after / before),
forgetting over the domains learned before the last (per-domain accuracy history; CONEC's is
its recorded, oracle-routed one), and for CONEC the selector's routing accuracy and the
oracle-routed (true domain) accuracies.

Diagnostic variants (full mode; `VARIANTS`): ``lr_1e-3`` (all phases at lr 1e-3),
``more_images`` (2x images, class-incremental only), ``long_split`` and ``long_split_lr_1e-3``
(every crop re-split into 2 phase-1 classes + one single-class task per remaining class,
held-out classes included: tomato 4 tasks, pepper 2, corn 2; class-incremental only): the main
split has one crop with a second task, and SD-LoRA's decoupling only acts from the second task
on (for a first task, SD-LoRA's open pair is a plain LoRA with a trainable scale).

Results are mean and (sample) standard deviation over seeds, per crop, and an ``all`` row that
averages the crops within each seed first.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import LoraConfig, get_peft_model
from torch import nn

from aads.adapters.alignment import add_class_statistics, align_head
from aads.adapters.classifier import AdapterClassifier, grow_head
from aads.adapters.loading import LoadedAdapter, load_adapter
from aads.adapters.package import CLASS_STATS_FILE, SD_LORA_FILE, read_meta, read_tensors
from aads.adapters.phases.common import (
    accuracy,
    image_loader,
    incremental_cross_entropy,
    phase_rows,
    predict,
    val_accuracy,
)
from aads.adapters.phases.phase1 import train_phase1
from aads.adapters.phases.phase2 import train_phase2
from aads.adapters.phases.phase3 import train_phase3
from aads.atomic import atomic_write_text
from aads.backbone import Backbone, lora_target_regex
from aads.backbone.synthetic import RECIPE_VERSION, synthetic_cache_dir
from aads.config import BASE_DOMAIN, PlatformConfig, TrainingSettings, parse_config
from aads.data.ingest import ingest
from aads.data.manifest import ManifestRow, select
from aads.data.synth import synthesize
from aads.gaussians import SharedCovarianceGaussians
from aads.metrics import average_forgetting
from aads.training import FitResult, fit

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config" / "demo.yaml"
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / ".aads" / "cache"
BACKBONE = {"source": "synthetic:mini", "seed": 0, "image_size": 64, "pooling": "cls_mean"}
LR = 3e-3
PATIENCE = 4
SYNTH = {
    "full": {"images_per_class": 60, "images_per_domain_class": 30, "image_size": 64, "seed": 0},
    "quick": {"images_per_class": 40, "images_per_domain_class": 20, "image_size": 64, "seed": 0},
}
EPOCHS = {
    "full": {"phase1": 15, "phase2": 10, "phase3": 10},
    "quick": {"phase1": 8, "phase2": 5, "phase3": 5},
}
CI_ARMS = ("sd_lora", "seq_lora", "seq_lora+align", "joint")
DI_ARMS = ("conec", "seq_ft")

Metrics = dict[str, float]


@dataclass(frozen=True)
class Variant:
    """One setting of the benchmark: `main` is the issue's; the others are diagnostics."""

    name: str
    description: str
    lr: float = LR
    image_scale: int = 1
    split: str = "demo"  # "demo" or "long" (see `long_split`)
    domain_incremental: bool = True
    joint: bool = False  # the joint-training reference arm


VARIANTS = (
    Variant("main", "demo split, lr 3e-3 (the issue's setting)", joint=True),
    Variant("lr_1e-3", "demo split, lr 1e-3 in every phase", lr=1e-3),
    Variant(
        "more_images",
        "demo split, lr 3e-3, twice the images",
        image_scale=2,
        domain_incremental=False,
    ),
    Variant(
        "long_split",
        "2 phase-1 classes + one task per other class, lr 3e-3",
        split="long",
        domain_incremental=False,
    ),
    Variant(
        "long_split_lr_1e-3",
        "2 phase-1 classes + one task per other class, lr 1e-3",
        lr=1e-3,
        split="long",
        domain_incremental=False,
    ),
)
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


# --------------------------------------------------------------------------- setup


def synth_settings(mode: str, variant: Variant) -> dict[str, int]:
    base = SYNTH[mode]
    return {
        **base,
        "images_per_class": base["images_per_class"] * variant.image_scale,
        "images_per_domain_class": base["images_per_domain_class"] * variant.image_scale,
    }


def long_split(crops: list[dict]) -> list[dict]:
    """Each crop's classes (held-out ones included) as 2 phase-1 classes + 1-class tasks."""
    out = []
    for crop in crops:
        classes = [
            *crop["phase1_classes"],
            *(c for batch in crop.get("phase2_batches", []) for c in batch),
            *crop.get("ood_holdout", []),
        ]
        out.append(
            {
                **crop,
                "phase1_classes": classes[:2],
                "phase2_batches": [[c] for c in classes[2:]],
                "ood_holdout": [],
            }
        )
    return out


def bench_config(mode: str, seed: int, variant: Variant = VARIANTS[0]) -> PlatformConfig:
    """The demo config on `synthetic:mini`, with the benchmark's data, epochs, lr and seed."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["router"] = dict(BACKBONE)
    raw["adapter"]["backbone"] = dict(BACKBONE)
    for phase, epochs in EPOCHS[mode].items():
        raw["training"][phase] = {
            **raw["training"][phase],
            "epochs": epochs,
            "lr": variant.lr,
            "early_stopping_patience": PATIENCE,
            "seed": seed,
        }
    raw["data"]["synth"] = synth_settings(mode, variant)
    raw["storage"] = {**raw.get("storage", {}), "cache_dir": str(CACHE)}
    if variant.split == "long":
        raw["crops"] = long_split(raw["crops"])
    return parse_config(raw, f"{DEMO_CONFIG} (continual benchmark, {variant.name})")


def log(message: str, start: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- evaluation


@dataclass
class Outputs:
    """A network's view of some images: labels (N,), logits (N, C), pooled features (N, D)."""

    labels: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor


@torch.no_grad()
def run_network(
    network: AdapterClassifier,
    rows: list[ManifestRow],
    root: Path,
    classes: list[str],
    backbone: Backbone,
    settings: TrainingSettings,
) -> Outputs:
    was_training = network.training
    network.eval()
    labels, logits, features = [], [], []
    for pixels, target, _ in image_loader(rows, root, classes, backbone, settings, train=False):
        feats = network.features(pixels.to(backbone.device))
        features.append(feats.float().cpu())
        logits.append(network.head(feats).float().cpu())
        labels.append(target)
    network.train(was_training)
    return Outputs(torch.cat(labels), torch.cat(logits), torch.cat(features))


def per_class(labels: torch.Tensor, predicted: torch.Tensor, classes: Sequence[str]) -> Metrics:
    """Accuracy of each class (by index into `classes`) that has images."""
    out = {}
    for i, name in enumerate(classes):
        mask = labels == i
        if mask.any():
            out[name] = float((predicted[mask] == i).float().mean())
    return out


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def accuracy_of(
    network: nn.Module,
    rows: list[ManifestRow],
    root: Path,
    classes: list[str],
    backbone: Backbone,
    settings: TrainingSettings,
) -> float:
    if not rows:
        return float("nan")
    loader = image_loader(rows, root, classes, backbone, settings, train=False)
    return accuracy(*predict(network, loader, backbone.device))


def seen_test_rows(rows: list[ManifestRow], crop: str, classes: list[str]) -> list[ManifestRow]:
    return select(rows, crop=crop, split="test", domain=BASE_DOMAIN, labels=classes)


def class_incremental_metrics(
    before: Outputs, after: Outputs, classes: list[str], n_old: int, forgetting: float
) -> Metrics:
    """Every class-incremental number of one arm, from the phase-1 and final networks' outputs
    on the same test images (all seen classes; the phase-1 logits cover the old ones only)."""
    old, new = classes[:n_old], classes[n_old:]
    is_old = after.labels < n_old
    old_before = per_class(before.labels, before.logits.argmax(-1), old)
    now = per_class(after.labels, after.logits.argmax(-1), classes)
    restricted = per_class(after.labels, after.logits[:, :n_old].argmax(-1), old)
    f_before, f_after = before.features[is_old], after.features[is_old]
    drift = (f_after - f_before).norm(dim=1) / f_before.norm(dim=1).clamp_min(1e-12)
    before_acc = mean([old_before[c] for c in old])
    after_acc = mean([now[c] for c in old])
    return {
        "seen_accuracy": float((after.logits.argmax(-1) == after.labels).float().mean()),
        "old_accuracy_before": before_acc,
        "old_accuracy_after": after_acc,
        "retention": after_acc / before_acc if before_acc > 0 else float("nan"),
        "forgetting": forgetting,
        "new_accuracy": mean([now[c] for c in new if c in now]),
        "old_accuracy_old_logits": mean([restricted[c] for c in old]),
        "old_predicted_as_new": float((after.logits[is_old].argmax(-1) >= n_old).float().mean()),
        "old_feature_drift": float(drift.mean()),
    }


# --------------------------------------------------------------------------- class-incremental


@dataclass
class CropRun:
    """What every arm of one crop and seed shares."""

    config: PlatformConfig
    crop: str
    rows: list[ManifestRow]
    root: Path
    phase1: Path

    @property
    def settings(self) -> TrainingSettings:
        return self.config.training.phase2

    @property
    def known(self) -> list[str]:
        return self.config.crop(self.crop).known_classes

    @property
    def n_old(self) -> int:
        return len(self.config.crop(self.crop).phase1_classes)

    def load(self, pkg: Path, *, merge: bool = True) -> LoadedAdapter:
        return load_adapter(pkg, self.config.storage, merge=merge)

    def outputs(
        self, backbone: Backbone, network: AdapterClassifier, classes: list[str]
    ) -> Outputs:
        """`network` on the base-domain test images of every known class of the crop."""
        rows = seen_test_rows(self.rows, self.crop, self.known)
        return run_network(network, rows, self.root, classes, backbone, self.settings)


def fresh_alignment(
    run: CropRun, network: AdapterClassifier, backbone: Backbone, after: Outputs
) -> Metrics:
    """Diagnostic (reads old classes' train images): re-align a copy of the final head on
    class statistics recomputed from the final features, and score it on `after`."""
    classes = run.known
    train = select(run.rows, crop=run.crop, split="train", domain=BASE_DOMAIN, labels=classes)
    loader = image_loader(train, run.root, classes, backbone, run.settings, train=False)
    stats = SharedCovarianceGaussians()
    add_class_statistics(stats, network, loader, list(range(len(classes))), backbone.device)
    head = copy.deepcopy(network.head)
    align_head(head, stats, seed=run.settings.seed)
    with torch.no_grad():
        logits = head(after.features.to(head.weight.device, head.weight.dtype)).float().cpu()
    now = per_class(after.labels, logits.argmax(-1), classes)
    return {
        "seen_accuracy_fresh_align": float((logits.argmax(-1) == after.labels).float().mean()),
        "old_accuracy_fresh_align": mean([now[c] for c in classes[: run.n_old]]),
    }


def task_trace(epochs: list[int], val_accuracies: list[float]) -> Metrics:
    return {"task_epochs": mean(epochs), "task_val_accuracy": mean(val_accuracies)}


def sd_lora_arm(run: CropRun, before: Outputs, work: Path) -> tuple[Metrics, Path]:
    """The product's phase 2; returns its metrics and package (phase 3 starts from it)."""
    pkg = train_phase2(run.config, run.crop, run.rows, run.root, run.phase1, work / "sd_lora")
    loaded = run.load(pkg)
    classes = loaded.meta.classes
    after = run.outputs(loaded.backbone, loaded.network, classes)
    recorded = loaded.meta.metrics
    forgetting = recorded.get("phase2_forgetting", math.nan)
    metrics = class_incremental_metrics(before, after, classes, run.n_old, forgetting)
    metrics |= fresh_alignment(run, loaded.network, loaded.backbone, after)
    tasks = [p for p in loaded.meta.phases if p.phase == "2"]
    metrics |= task_trace(
        [p.epochs for p in tasks], [p.metrics.get("val_accuracy", math.nan) for p in tasks]
    )
    metrics |= pair_magnitudes(pkg)
    # Consistency with what train_phase2 recorded (its network unmerged, this one merged).
    metrics["recorded_old_accuracy_after"] = recorded["phase2_old_accuracy_after"]
    metrics["recorded_seen_accuracy"] = recorded["phase2_test_accuracy"]
    return metrics, pkg


def pair_magnitudes(pkg: Path) -> Metrics:
    """SD-LoRA's magnitude alpha_i per pair i, averaged over the wrapped layers."""
    tensors = read_tensors(pkg, SD_LORA_FILE) or {}
    alphas = torch.stack([t for k, t in tensors.items() if k.endswith(".alphas")])
    return {f"alpha_pair{i}": float(a) for i, a in enumerate(alphas.float().mean(0))}


def plain_lora(
    model: nn.Module, depth: int, modules: Sequence[str], rank: int, alpha: float
) -> nn.Module:
    """One plain PEFT LoRA (no DoRA, no dropout) on `modules` of every block of `model`."""
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=lora_target_regex(list(range(depth)), list(modules)),
        use_dora=False,
        bias="none",
    )
    return get_peft_model(model, config)


def seq_lora_arm(run: CropRun, before: Outputs, *, align: bool) -> Metrics:
    """Naive sequential LoRA through the phase-2 tasks (optionally + classifier alignment)."""
    spec, sd, settings = run.config.crop(run.crop), run.config.adapter.sd_lora, run.settings
    loaded = run.load(run.phase1)
    backbone, head = loaded.backbone, loaded.network.head
    classes = list(loaded.meta.classes)
    torch.manual_seed(settings.seed)  # the LoRA's A matrices are drawn here
    model = plain_lora(backbone.model, backbone.depth, sd.modules, sd.rank, sd.alpha_init * sd.rank)
    lora_params = [p for p in model.parameters() if p.requires_grad]
    stats = (
        SharedCovarianceGaussians.from_state_dict(read_tensors(run.phase1, CLASS_STATS_FILE))
        if align
        else None
    )
    history = [per_class(before.labels, before.logits.argmax(-1), classes)]
    results: list[FitResult] = []
    for task, batch in enumerate(spec.phase2_batches):
        torch.manual_seed(settings.seed + task)
        head = grow_head(head, len(batch)).requires_grad_(True)
        task_old = len(classes)
        classes = [*classes, *batch]
        network = AdapterClassifier(model, head, backbone.pooling, backbone.prefix_tokens)
        params = [*lora_params, *head.parameters()]
        results.append(train_task(run, network, backbone, classes, task_old, str(task), params))
        if stats is not None:
            data = phase_rows(run.rows, run.crop, "2", str(task))
            loader = image_loader(data.train, run.root, classes, backbone, settings, train=False)
            indices = list(range(task_old, len(classes)))
            add_class_statistics(stats, network, loader, indices, backbone.device)
            align_head(head, stats, seed=settings.seed + task)
        after = run.outputs(backbone, network, run.known)
        history.append(per_class(after.labels, after.logits.argmax(-1), classes))
    forgetting = average_forgetting(history, classes[: run.n_old])
    metrics = class_incremental_metrics(before, after, classes, run.n_old, forgetting)
    metrics |= fresh_alignment(run, network, backbone, after)
    return metrics | task_trace(
        [len(r.history) for r in results],
        [math.nan if r.best_metric is None else r.best_metric for r in results],
    )


def train_task(
    run: CropRun,
    network: AdapterClassifier,
    backbone: Backbone,
    classes: list[str],
    n_old: int,
    task: str,
    params: list[nn.Parameter],
) -> FitResult:
    """One phase-2 task exactly as `train_phase2` trains it (loss, loaders, model selection)."""
    settings = run.settings
    data = phase_rows(run.rows, run.crop, "2", task)
    train_loader = image_loader(data.train, run.root, classes, backbone, settings, train=True)
    val_rows = data.val or data.train
    val_loader = image_loader(val_rows, run.root, classes, backbone, settings, train=False)

    def loss_fn(m: nn.Module, b: tuple) -> torch.Tensor:
        pixels, labels, _ = b
        return incremental_cross_entropy(m(pixels), labels, n_old)

    return fit(
        network,
        params,
        train_loader,
        settings=settings,
        loss_fn=loss_fn,
        eval_fn=val_accuracy(val_loader, backbone.device),
        device=backbone.device,
    )


def joint_arm(run: CropRun, work: Path) -> Metrics:
    """Reference: phase 1 (DoRA, same settings) on every known class at once."""
    spec = run.config.crop(run.crop)
    known = run.known
    joint = spec.model_copy(update={"phase1_classes": known, "phase2_batches": []})
    crops = [joint if c.name == run.crop else c for c in run.config.crops]
    config = run.config.model_copy(update={"crops": crops})
    rows = [
        dataclasses.replace(r, phase="1", task="")
        if r.crop == run.crop and r.domain == BASE_DOMAIN and r.label in known
        else r
        for r in run.rows
    ]
    pkg = train_phase1(config, run.crop, rows, run.root, work / "joint")
    loaded = run.load(pkg)
    out = run.outputs(loaded.backbone, loaded.network, known)
    now = per_class(out.labels, out.logits.argmax(-1), known)
    return {
        "seen_accuracy": float((out.logits.argmax(-1) == out.labels).float().mean()),
        "old_accuracy_after": mean([now[c] for c in known[: run.n_old]]),
        "new_accuracy": mean([now[c] for c in known[run.n_old :]]),
    }


def class_incremental(run: CropRun, work: Path, *, joint: bool) -> tuple[dict[str, Metrics], Path]:
    loaded = run.load(run.phase1)
    before = run.outputs(loaded.backbone, loaded.network, run.known)
    results: dict[str, Metrics] = {}
    results["sd_lora"], sd_pkg = sd_lora_arm(run, before, work)
    results["seq_lora"] = seq_lora_arm(run, before, align=False)
    results["seq_lora+align"] = seq_lora_arm(run, before, align=True)
    if joint:
        results["joint"] = joint_arm(run, work)
    return results, sd_pkg


# --------------------------------------------------------------------------- domain-incremental


def domain_test_rows(run: CropRun, classes: list[str]) -> dict[str, list[ManifestRow]]:
    """Test images per domain, base first: base-domain images of the known classes, then each
    phase-3 domain's images (as `train_phase3` evaluates them)."""
    spec = run.config.crop(run.crop)
    tests = {BASE_DOMAIN: seen_test_rows(run.rows, run.crop, classes)}
    for domain in spec.phase3_domains:
        tests[domain] = select(run.rows, crop=run.crop, split="test", phase="3", task=domain)
    return tests


def conec_arm(run: CropRun, sd_pkg: Path, work: Path) -> Metrics:
    pkg = train_phase3(run.config, run.crop, run.rows, run.root, sd_pkg, work / "conec")
    recorded = read_meta(pkg).metrics
    domains = [BASE_DOMAIN, *run.config.crop(run.crop).phase3_domains]
    metrics: Metrics = {}
    for d in domains:
        for suffix in ("accuracy", "accuracy_before", "oracle_accuracy", "selector_accuracy"):
            metrics[f"{d}_{suffix}"] = recorded.get(f"phase3_{d}_{suffix}", math.nan)
    for name in ("mean_accuracy", "mean_oracle_accuracy", "selector_accuracy"):
        metrics[name] = recorded.get(f"phase3_{name}", math.nan)
    metrics["protected_retention"] = recorded.get("phase3_protected_retention", math.nan)
    metrics["forgetting"] = recorded.get("phase3_forgetting", math.nan)
    return metrics


def seq_ft_arm(run: CropRun, sd_pkg: Path) -> Metrics:
    """One plain LoRA on q/v of all blocks + one shared head, fine-tuned domain after domain."""
    settings, conec = run.config.training.phase3, run.config.adapter.conec
    loaded = run.load(sd_pkg)
    backbone, classes = loaded.backbone, loaded.meta.classes
    tests = domain_test_rows(run, classes)

    def evaluate(network: nn.Module, domains: Sequence[str]) -> Metrics:
        return {
            d: accuracy_of(network, tests[d], run.root, classes, backbone, settings)
            for d in domains
        }

    domains = list(tests)
    before = evaluate(loaded.network, domains)
    torch.manual_seed(settings.seed)
    model = plain_lora(backbone.model, backbone.depth, conec.modules, conec.rank, conec.alpha)
    head = loaded.network.head.requires_grad_(True)
    network = AdapterClassifier(model, head, backbone.pooling, backbone.prefix_tokens)
    params = [p for p in network.parameters() if p.requires_grad]
    history = [{BASE_DOMAIN: before[BASE_DOMAIN]}]
    for i, domain in enumerate(domains[1:], 1):
        torch.manual_seed(settings.seed + i)
        train_domain(run, network, backbone, classes, domain, params)
        history.append(evaluate(network, domains[: i + 1]))
    final = history[-1]
    base_before = before[BASE_DOMAIN]
    metrics = {f"{d}_accuracy": final[d] for d in domains}
    metrics |= {f"{d}_accuracy_before": before[d] for d in domains}
    return metrics | {
        "mean_accuracy": mean(list(final.values())),
        "protected_retention": final[BASE_DOMAIN] / base_before if base_before > 0 else math.nan,
        "forgetting": average_forgetting(history, domains[:-1]),
    }


def train_domain(
    run: CropRun,
    network: AdapterClassifier,
    backbone: Backbone,
    classes: list[str],
    domain: str,
    params: list[nn.Parameter],
) -> FitResult:
    """One domain: cross-entropy on its images, selection on its validation images."""
    settings = run.config.training.phase3
    data = phase_rows(run.rows, run.crop, "3", domain)
    train_loader = image_loader(data.train, run.root, classes, backbone, settings, train=True)
    val_rows = data.val or data.train
    val_loader = image_loader(val_rows, run.root, classes, backbone, settings, train=False)

    def loss_fn(m: nn.Module, b: tuple) -> torch.Tensor:
        pixels, labels, _ = b
        return nn.functional.cross_entropy(m(pixels), labels)

    return fit(
        network,
        params,
        train_loader,
        settings=settings,
        loss_fn=loss_fn,
        eval_fn=val_accuracy(val_loader, backbone.device),
        device=backbone.device,
    )


def domain_incremental(run: CropRun, sd_pkg: Path, work: Path) -> dict[str, Metrics]:
    return {"conec": conec_arm(run, sd_pkg, work), "seq_ft": seq_ft_arm(run, sd_pkg)}


# --------------------------------------------------------------------------- one seed


def run_seed(
    config: PlatformConfig, variant: Variant, root: Path, rows: list[ManifestRow], work: Path
) -> dict:
    """Every crop, both settings, one training seed: {"class_incremental": {crop: {arm: m}},
    "domain_incremental": {crop: {arm: m}}}."""
    out: dict[str, dict] = {"class_incremental": {}, "domain_incremental": {}}
    for spec in config.crops:
        if not spec.phase2_batches:
            continue
        crop_work = work / spec.name
        phase1 = train_phase1(config, spec.name, rows, root, crop_work / "phase1")
        run = CropRun(config, spec.name, rows, root, phase1)
        out["class_incremental"][spec.name], sd_pkg = class_incremental(
            run, crop_work, joint=variant.joint
        )
        if variant.domain_incremental and spec.phase3_domains:
            out["domain_incremental"][spec.name] = domain_incremental(run, sd_pkg, crop_work)
    return out


# --------------------------------------------------------------------------- summary


def mean_std(values: list[float]) -> dict[str, float]:
    finite_values = [v for v in values if math.isfinite(v)]
    if not finite_values:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(finite_values) if len(finite_values) > 1 else 0.0
    return {"mean": statistics.fmean(finite_values), "std": std, "n": len(finite_values)}


def summarise(per_seed: list[dict], setting: str, arms: Sequence[str]) -> dict:
    """{crop or "all": {arm: {metric: mean/std over seeds}}}; "all" averages the crops of a
    seed first (metrics every crop has), then takes mean/std over seeds."""
    crops = list(per_seed[0][setting])
    if not crops:
        return {}
    arms = [a for a in arms if a in per_seed[0][setting][crops[0]]]
    out: dict[str, dict] = {}
    for crop in crops:
        out[crop] = {}
        for arm in arms:
            names = per_seed[0][setting][crop][arm]
            out[crop][arm] = {
                k: mean_std([s[setting][crop][arm][k] for s in per_seed]) for k in names
            }
    out["all"] = {}
    for arm in arms:
        common = set.intersection(*(set(per_seed[0][setting][c][arm]) for c in crops))
        out["all"][arm] = {
            k: mean_std([mean([s[setting][c][arm][k] for c in crops]) for s in per_seed])
            for k in sorted(common)
        }
    return out


PAIRS = {
    "class_incremental": (
        ("sd_lora", "seq_lora"),
        ("sd_lora", "seq_lora+align"),
        ("seq_lora+align", "seq_lora"),
    ),
    "domain_incremental": (("conec", "seq_ft"),),
}
PAIRED_METRICS = {
    "class_incremental": (
        "seen_accuracy",
        "old_accuracy_after",
        "retention",
        "new_accuracy",
        "old_accuracy_old_logits",
        "old_feature_drift",
    ),
    "domain_incremental": ("base_accuracy", "protected_retention", "mean_accuracy", "forgetting"),
}


def paired(per_seed: list[dict], setting: str) -> dict:
    """{"a - b": {metric: mean/std over seeds}} of arm differences; within a seed the arms
    share data and phase-1 package, so differences are less noisy than the arms' spreads."""
    crops = list(per_seed[0][setting])
    out: dict[str, dict] = {}
    for a, b in PAIRS[setting]:
        out[f"{a} - {b}"] = {
            k: mean_std(
                [mean([s[setting][c][a][k] - s[setting][c][b][k] for c in crops]) for s in per_seed]
            )
            for k in PAIRED_METRICS[setting]
        }
    return out if crops else {}


def paired_table(diffs: dict, setting: str) -> str:
    head = ["difference (crops averaged)", *PAIRED_METRICS[setting]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, stats in diffs.items():
        cells = [
            f"{stats[k]['mean']:+.3f} ± {stats[k]['std']:.3f}" for k in PAIRED_METRICS[setting]
        ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


CI_COLUMNS = (
    ("seen_accuracy", "seen acc"),
    ("old_accuracy_before", "old before"),
    ("old_accuracy_after", "old after"),
    ("retention", "retention"),
    ("forgetting", "forgetting"),
    ("new_accuracy", "new acc"),
    ("old_accuracy_old_logits", "old (old logits)"),
    ("old_predicted_as_new", "old->new"),
    ("old_feature_drift", "feat drift"),
    ("old_accuracy_fresh_align", "old (fresh align)*"),
)
CI_TRACE_COLUMNS = (
    ("task_epochs", "epochs/task"),
    ("task_val_accuracy", "best val acc/task"),
    ("alpha_pair0", "alpha pair 0"),
    ("alpha_pair1", "alpha pair 1"),
    ("seen_accuracy_fresh_align", "seen (fresh align)*"),
)
DI_COLUMNS = (
    ("base_accuracy_before", "base before"),
    ("base_accuracy", "base after"),
    ("protected_retention", "retention"),
    ("mean_accuracy", "mean acc"),
    ("forgetting", "forgetting"),
    ("selector_accuracy", "selector"),
    ("mean_oracle_accuracy", "mean acc (oracle)"),
)
DIAGNOSTIC_COLUMNS = (
    ("seen_accuracy", "seen acc"),
    ("old_accuracy_before", "old before"),
    ("old_accuracy_after", "old after"),
    ("retention", "retention"),
    ("new_accuracy", "new acc"),
    ("old_accuracy_old_logits", "old (old logits)"),
    ("old_predicted_as_new", "old->new"),
    ("old_feature_drift", "feat drift"),
    ("old_accuracy_fresh_align", "old (fresh align)*"),
)


def cell(stats: dict[str, float] | None) -> str:
    if stats is None or not math.isfinite(stats["mean"]):
        return "-"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def table(summary: dict, arms: Sequence[str], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table: one row per (crop, arm), mean ± std over seeds."""
    head = ["crop", "arm", *(title for _, title in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for crop, arms_stats in summary.items():
        for arm in (a for a in arms if a in arms_stats):
            cells = [cell(arms_stats[arm].get(key)) for key, _ in columns]
            lines.append("| " + " | ".join([crop, arm, *cells]) + " |")
    return "\n".join(lines)


def domain_table(summary: dict) -> str:
    """Per-domain accuracy after the last domain (CONEC selector-routed and oracle-routed)."""
    lines = [
        "| crop | domain | before | conec | conec (oracle) | conec selector | seq_ft |",
        "|---|---|---|---|---|---|---|",
    ]
    for crop, arms_stats in summary.items():
        if crop == "all":
            continue
        conec, seq = arms_stats["conec"], arms_stats["seq_ft"]
        for key in conec:
            if not key.endswith("_accuracy_before"):
                continue
            d = key.removesuffix("_accuracy_before")
            lines.append(
                f"| {crop} | {d} | {cell(conec[key])} | {cell(conec[f'{d}_accuracy'])} | "
                f"{cell(conec[f'{d}_oracle_accuracy'])} | "
                f"{cell(conec[f'{d}_selector_accuracy'])} | {cell(seq[f'{d}_accuracy'])} |"
            )
    return "\n".join(lines)


def variant_report(result: dict, *, main: bool) -> list[str]:
    ci = result["class_incremental"]["summary"]
    di = result["domain_incremental"]["summary"]
    ci_pairs = paired_table(result["class_incremental"]["paired"], "class_incremental")
    if not main:
        parts = [
            f"### {result['variant']}: {result['description']} ({result['runtime_s']:.0f} s)",
            table(ci, CI_ARMS, DIAGNOSTIC_COLUMNS),
            ci_pairs,
        ]
        if di:
            parts.append(table(di, DI_ARMS, DI_COLUMNS))
            parts.append(paired_table(result["domain_incremental"]["paired"], "domain_incremental"))
        return parts
    return [
        "## Class-incremental: SD-LoRA vs sequential LoRA",
        table(ci, CI_ARMS, CI_COLUMNS),
        "Paired differences (per seed, crops averaged):",
        ci_pairs,
        "Training trace and diagnostics:",
        table(ci, CI_ARMS, CI_TRACE_COLUMNS),
        "## Domain-incremental: CONEC-LoRA vs sequential fine-tuning",
        table(di, DI_ARMS, DI_COLUMNS),
        "Paired differences (per seed, crops averaged):",
        paired_table(result["domain_incremental"]["paired"], "domain_incremental"),
        "### Per-domain accuracy after the last domain",
        domain_table(di),
    ]


def report(result: dict) -> str:
    main = result["variants"]["main"]
    parts = [
        f"# Continual-learning benchmark ({result['mode']}, seeds {result['seeds']}, "
        f"{result['runtime_s']:.0f} s)",
        "Generated by `benchmarks/continual.py` (see its docstring for every definition); "
        "mean ± std over seeds. Class-incremental numbers are on base-domain test images. "
        "`*` = diagnostic that reads old classes' training images (not rehearsal-free). "
        "`joint` = phase 1 on all known classes at once (reference, not continual).",
        *variant_report(main, main=True),
    ]
    others = [v for name, v in result["variants"].items() if name != "main"]
    if others:
        parts.append("## Diagnostic variants")
        for other in others:
            parts += variant_report(other, main=False)
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- main


def environment() -> dict[str, Any]:
    """Versions, threads, load, and which code and pretrained backbone produced the numbers."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "aads", "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    backbone = synthetic_cache_dir(CACHE, "mini", BACKBONE["seed"], BACKBONE["image_size"])
    record = backbone / "pretraining.json"
    pretraining = json.loads(record.read_text()) if record.is_file() else {}
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "git_commit": commit,
        "product_code_modified": bool(dirty),
        "backbone_recipe_version": RECIPE_VERSION,
        "backbone_pretraining_val_accuracy": pretraining.get("val_accuracy"),
    }


@dataclass
class DataCache:
    """Synthesised images per synth setting, in one temporary folder (variants share them)."""

    tmp: Path
    roots: dict[str, Path] = field(default_factory=dict)

    def rows(self, config: PlatformConfig) -> tuple[Path, list[ManifestRow]]:
        key = config.data.synth.model_dump_json()
        if key not in self.roots:
            self.roots[key] = self.tmp / f"data{len(self.roots)}"
            synthesize(config, self.roots[key])
        root = self.roots[key]
        return root, ingest(root, config=config).rows


def run_variant(
    mode: str, seeds: list[int], variant: Variant, data: DataCache, progress: Callable[[str], None]
) -> dict:
    start = time.perf_counter()
    config = bench_config(mode, seeds[0], variant)
    root, rows = data.rows(config)
    per_seed = []
    for seed in seeds:
        work = Path(tempfile.mkdtemp(dir=data.tmp, prefix=f"{variant.name}-s{seed}-"))
        per_seed.append(run_seed(bench_config(mode, seed, variant), variant, root, rows, work))
        progress(f"{variant.name}: seed {seed} done")
    return {
        "variant": variant.name,
        "description": variant.description,
        "runtime_s": time.perf_counter() - start,
        "setup": {
            "synth": config.data.synth.model_dump(),
            "images": len(rows),
            "test_images_per_class": _test_counts(rows),
            "crops": [c.model_dump() for c in config.crops],
            "training": {k: v.model_dump() for k, v in config.training if k != "router"},
        },
        "class_incremental": {
            "summary": summarise(per_seed, "class_incremental", CI_ARMS),
            "paired": paired(per_seed, "class_incremental"),
            "per_seed": [s["class_incremental"] for s in per_seed],
        },
        "domain_incremental": {
            "summary": summarise(per_seed, "domain_incremental", DI_ARMS),
            "paired": paired(per_seed, "domain_incremental"),
            "per_seed": [s["domain_incremental"] for s in per_seed],
        },
    }


def run(
    mode: str,
    seeds: list[int],
    variants: Sequence[Variant] = VARIANTS[:1],
    progress: Callable[[str], None] = log,
) -> dict:
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    config = bench_config(mode, seeds[0])
    results = {}
    with tempfile.TemporaryDirectory(prefix="aads-continual-") as tmp:
        data = DataCache(Path(tmp))
        for variant in variants:
            results[variant.name] = run_variant(mode, seeds, variant, data, progress)
    return {
        "benchmark": "continual",
        "mode": mode,
        "seeds": seeds,
        "runtime_s": time.perf_counter() - start,
        "environment": {**environment(), "load_average_1m_start": load_start},
        "setup": {
            "backbone": BACKBONE,
            "split": config.data.split.model_dump(),
            "sd_lora": config.adapter.sd_lora.model_dump(),
            "dora": config.adapter.dora.model_dump(),
            "conec": config.adapter.conec.model_dump(mode="json"),
        },
        "variants": results,
    }


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _test_counts(rows: list[ManifestRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in select(rows, split="test"):
        if r.phase in ("1", "2", "3"):
            key = f"{r.crop}/{r.domain}/{r.label}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="main only, one seed, fewer epochs")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, from {', '.join(VARIANTS_BY_NAME)} (full default: all)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    # One thread: the models are tiny (batches of 32 at 64 px), so a second thread gains ~25%
    # on an idle machine, while on a shared one OpenMP's spinning barriers made the same run
    # 15x slower (6 min instead of 25 s for --quick).
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    mode = "quick" if args.quick else "full"
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    names = args.variants.split(",") if args.variants else (["main"] if args.quick else None)
    variants = [VARIANTS_BY_NAME[n] for n in names] if names else list(VARIANTS)
    if "main" not in {v.name for v in variants}:
        variants.insert(0, VARIANTS_BY_NAME["main"])
    result = run(mode, seeds, variants)
    text = report(result)
    print(text)
    out = args.out or (None if args.quick else RESULTS / "continual.json")
    if out is not None:
        atomic_write_text(out, json.dumps(finite(result), indent=2, allow_nan=False) + "\n")
        atomic_write_text(out.with_suffix(".md"), text + "\n")
        print(f"\nwrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
