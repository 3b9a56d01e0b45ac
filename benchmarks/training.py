"""What adapter training costs: step throughput per phase, DoRA vs LoRA, SD-LoRA forward cost,
adapter package size, and (on a GPU) peak memory.

Reproduce with ``.venv/bin/python benchmarks/training.py [--quick]``; results go to
``benchmarks/results/training.json``. Sections (each a function returning a dict; add one by
appending to `SECTIONS`):

- ``environment``: versions, threads, CPU model, 1-minute load average (other processes on a
  shared machine skew CPU timings badly: ``load_average_1m_after`` and each section's
  ``load_average_1m_start`` are recorded too).
- ``train_step_throughput_cpu``: one optimizer step (forward + loss + backward + gradient
  clipping + AdamW, as `aads.training.fit` does it) on random pixel tensors, not decoded
  images: ``random:small`` (ViT-S/16 shape), 224x224, batch 8, float32 on the CPU. Phase 1 is
  DoRA (r=16, q/v of all blocks, the config defaults incl. dropout 0.05) + head with PEFT's
  LoRA+ optimizer; phase 2 merges that DoRA and trains SD-LoRA rank 10 on q/v of all blocks
  with 2 frozen pairs + the new one; phase 3 is CONEC-LoRA (shared LoRAs in the first half,
  per-domain in the second, rank 8), training domain 2 with domain 1 as the distillation
  teacher (its forward is part of the step; a variant without it isolates its cost). The
  phases and an inference-only forward of the plain backbone are timed round-robin, so load
  from other processes hits them alike; medians after warm-up. The router (heads only, on
  cached features) is timed separately.
- ``dora_vs_lora_step_time``: the same step with PEFT LoRA (``use_dora=False``) and DoRA, same
  targets and rank, at the config's dropout 0.05 and at dropout 0 (PEFT's DoRA re-runs the base
  layer on the dropped-out input when dropout is active), timed round-robin.
- ``sd_lora_forward_cost``: `benchmarks/sd_lora_forward.py`'s ``run`` (forward with 1..5 pairs
  and merged, vs the plain backbone).
- ``adapter_package_size``: bytes of the adapter factors for the real ViT-L/16 and ViT-H+/16
  shapes at rank 32, from the shapes and verified by saving them with the project's own
  writers (models built on the ``meta`` device, then given uninitialised CPU storage with only
  the attention projections zeroed: nothing is randomly initialised). The float64 statistics
  files (CONEC's domain selector, phase 1-2's per-class statistics) are counted too.
- ``cuda_train_step_vitl16``: on a GPU, one step per phase on ``random:vitl16`` with bf16
  weights and bf16 autocast at batch 32, with peak memory; skipped without CUDA.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from machine import load_average, machine
from peft import get_peft_model
from peft.optimizers import create_loraplus_optimizer
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from aads.adapters.classifier import AdapterClassifier, ConecClassifier
from aads.adapters.conec.model import (
    ConecHeads,
    ConecLoRA,
    apply_conec,
    conec_logits,
    conec_state_dict,
)
from aads.adapters.conec.selector import unit_features
from aads.adapters.dora.model import apply_dora, dora_config, merge_dora, save_dora
from aads.adapters.sd_lora.model import SDLoRA, apply_sd_lora, sd_lora_state_dict
from aads.atomic import atomic_write_text
from aads.backbone import (
    VARIANTS_BY_KEY,
    Backbone,
    load_backbone,
    preset_config,
    resolve_lora_targets,
)
from aads.config import (
    BackboneSettings,
    CONECSettings,
    DoRASettings,
    SDLoRASettings,
    resolve_blocks,
)
from aads.gaussians import SharedCovarianceGaussians
from aads.router import RouterHeads
from aads.training import MAX_GRAD_NORM, Precision, resolve_precision

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
Section = Callable[[argparse.Namespace], dict[str, Any]]

CLASSES = 10  # phase-1 classes (and phase-3 labels)
TASK_CLASSES = 3  # classes per phase-2 task
PREVIOUS_TASKS = 2  # frozen SD-LoRA pairs before the one being trained
LR, WEIGHT_DECAY = 1e-3, 0.01  # TrainingSettings defaults for phases 1-3
DORA = DoRASettings(r=16, modules=["q_proj", "v_proj"], blocks="all")
SD_LORA = SDLoRASettings(rank=10, modules=["q_proj", "v_proj"])
CONEC = CONECSettings(rank=8, modules=["q_proj", "v_proj"], shared_blocks="first_half")


def environment(_: argparse.Namespace) -> dict[str, Any]:
    return machine()


# --------------------------------------------------------------------------- training steps


@dataclass
class Trial:
    """One timed unit of work (usually a full optimizer step) on one batch."""

    name: str
    batch: int
    step: Callable[[], None]
    trainable_parameters: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    loss_fn: Callable[[], torch.Tensor],
    precision: Precision,
) -> Callable[[], None]:
    """A closure doing what `aads.training.fit` does per batch (no accumulation, no scheduler)."""
    cuda = any(p.is_cuda for p in params)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = loss_fn()
        loss.backward()
        nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    return step


def random_batch(
    backbone: Backbone, batch: int, classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = backbone.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return pixels.to(backbone.device), labels.to(backbone.device)


def count(params: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def phase1_dora(settings: BackboneSettings, batch: int, precision: Precision) -> Trial:
    """DoRA + linear head, LoRA+ optimizer (as `train_phase1`)."""
    backbone = load_backbone(settings)
    peft_model = apply_dora(backbone.model, DORA, backbone.depth)
    head = nn.Linear(backbone.feature_dim, CLASSES).to(backbone.device)
    model = AdapterClassifier(peft_model, head, backbone.pooling, backbone.prefix_tokens).train()
    optimizer = create_loraplus_optimizer(
        peft_model,
        torch.optim.AdamW,
        lr=LR,
        loraplus_lr_ratio=DORA.loraplus_lr_ratio,
        weight_decay=WEIGHT_DECAY,
    )
    optimizer.add_param_group({"params": list(head.parameters()), "lr": LR})
    params = [p for p in model.parameters() if p.requires_grad]
    pixels, labels = random_batch(backbone, batch, CLASSES)

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(pixels), labels)

    return Trial(
        "phase1_dora",
        batch,
        optimizer_step(optimizer, params, loss, precision),
        count(params),
        {"r": DORA.r, "modules": DORA.modules, "blocks": "all", "dropout": DORA.dropout},
    )


def phase2_sd_lora(settings: BackboneSettings, batch: int, precision: Precision) -> Trial:
    """DoRA merged into the weights, SD-LoRA with `PREVIOUS_TASKS` frozen pairs + a new one."""
    backbone = load_backbone(settings)
    model = merge_dora(apply_dora(backbone.model, DORA, backbone.depth))
    apply_sd_lora(model, resolve_lora_targets(model, range(backbone.depth), SD_LORA.modules))
    method = SDLoRA(model, SD_LORA, torch.Generator().manual_seed(0))
    for task in range(PREVIOUS_TASKS + 1):
        method.start_task(task)
    known = CLASSES + PREVIOUS_TASKS * TASK_CLASSES
    head = nn.Linear(backbone.feature_dim, known + TASK_CLASSES).to(backbone.device)
    network = AdapterClassifier(model, head, backbone.pooling, backbone.prefix_tokens).train()
    params = [*method.trainable_parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    pixels, labels = random_batch(backbone, batch, TASK_CLASSES)
    labels = labels + known

    def loss() -> torch.Tensor:
        # Rehearsal-free: old classes' logits enter detached (inlined so the benchmark does not
        # follow the phase-2 module's loss helper around; its cost is negligible either way).
        logits = network(pixels)
        joined = torch.cat([logits[:, :known].detach(), logits[:, known:]], dim=1)
        return nn.functional.cross_entropy(joined, labels)

    return Trial(
        "phase2_sd_lora",
        batch,
        optimizer_step(optimizer, params, loss, precision),
        count(params),
        {"rank": SD_LORA.rank, "pairs": PREVIOUS_TASKS + 1, "modules": SD_LORA.modules},
    )


def phase3_conec(
    settings: BackboneSettings, batch: int, precision: Precision, distill: bool = True
) -> Trial:
    """CONEC-LoRA training domain 2; domain 1's network is the distillation teacher."""
    backbone = load_backbone(settings)
    model = backbone.model
    state = apply_conec(model, CONEC, backbone.pooling)
    heads = ConecHeads(nn.Linear(backbone.feature_dim, CLASSES).to(backbone.device))
    method = ConecLoRA(model, state, heads)
    method.start_task(1)  # domain 1: the previously learned one
    method.finish_task()
    method.start_task(2)  # domain 1's network is the teacher
    network = ConecClassifier(model, state, heads).train()
    params = method.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    pixels, labels = random_batch(backbone, batch, CLASSES)

    def loss() -> torch.Tensor:
        logits = conec_logits(network.backbone, state, heads, pixels)
        value = nn.functional.cross_entropy(logits, labels)
        if distill:
            value = value + CONEC.distill_weight * method.distillation_loss(pixels, logits)
        return value

    return Trial(
        "phase3_conec" if distill else "phase3_conec_no_distillation",
        batch,
        optimizer_step(optimizer, params, loss, precision),
        count(params),
        {
            "rank": CONEC.rank,
            "modules": CONEC.modules,
            "shared_blocks": state.shared_blocks,
            "late_blocks": state.late_blocks,
            "training_domain": state.num_domains - 1,
            "teacher_domain": method.teacher_domain if distill else None,
        },
    )


def reference_forward(settings: BackboneSettings, batch: int, precision: Precision) -> Trial:
    """Inference-only forward of the plain backbone, for scale (not a training step)."""
    backbone = load_backbone(settings)
    pixels, _ = random_batch(backbone, batch, CLASSES)

    def step() -> None:
        with torch.inference_mode(), precision.autocast():
            backbone.model(pixel_values=pixels)

    return Trial("reference_forward_no_grad", batch, step)


def round_robin(trials: list[Trial], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall time of each trial, interleaved so that background load hits all of them alike."""
    times: dict[str, list[float]] = {t.name: [] for t in trials}
    for i in range(warmup + repeats):
        for trial in trials:
            t0 = time.perf_counter()
            trial.step()
            if i >= warmup:
                times[trial.name].append(time.perf_counter() - t0)
    return times


def summary(trial: Trial, times: list[float]) -> dict[str, Any]:
    median = statistics.median(times)
    out: dict[str, Any] = {
        "batch": trial.batch,
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "images_per_s": round(trial.batch / median, 2),
        "repeats": len(times),
    }
    if trial.trainable_parameters:
        out["trainable_parameters"] = trial.trainable_parameters
    return {**out, **trial.details}


def cpu_settings() -> BackboneSettings:
    return BackboneSettings(source="random:small", image_size=224, device="cpu", dtype="float32")


def time_router(warmup: int, repeats: int, batch: int = 64) -> dict[str, Any]:
    """Router heads-only step (standardise, two linear heads, two CEs, AdamW) on cached
    features of ``random:small`` (cls_mean: 2 x 384), batch 64 as the router's settings."""
    dim, crops, parts = 2 * 384, 5, 3
    torch.manual_seed(0)
    heads = RouterHeads(dim, crops, parts).train()
    x = torch.randn(batch, dim)
    y_crop, y_part = torch.randint(0, crops, (batch,)), torch.randint(0, parts, (batch,))
    params = list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=WEIGHT_DECAY)

    def loss() -> torch.Tensor:
        crop_logits, part_logits = heads(x)
        ce = nn.functional.cross_entropy
        return ce(crop_logits, y_crop) + ce(part_logits, y_part)

    trial = Trial(
        "router_heads",
        batch,
        optimizer_step(optimizer, params, loss, resolve_precision("fp32", torch.device("cpu"))),
        count(params),
        {"feature_dim": dim, "crops": crops, "parts": parts},
    )
    times = round_robin([trial], warmup, repeats)[trial.name]
    result = summary(trial, times)
    for key in ("median_s", "min_s", "max_s"):
        result[key] = round(result[key], 7)
    return result


def train_step_throughput_cpu(args: argparse.Namespace) -> dict[str, Any]:
    settings = cpu_settings()
    precision = resolve_precision("fp32", torch.device("cpu"))
    batch = 8
    torch.manual_seed(0)
    trials = [
        reference_forward(settings, batch, precision),
        phase1_dora(settings, batch, precision),
        phase2_sd_lora(settings, batch, precision),
        phase3_conec(settings, batch, precision, distill=True),
        phase3_conec(settings, batch, precision, distill=False),
    ]
    warmup, repeats = (1, 3) if args.quick else (2, 7)
    times = round_robin(trials, warmup, repeats)
    phases = {t.name: summary(t, times[t.name]) for t in trials}
    base = phases["reference_forward_no_grad"]["median_s"]
    for result in phases.values():
        result["x_reference_forward"] = round(result["median_s"] / base, 2)
    with_kd = phases["phase3_conec"]["median_s"]
    without = phases["phase3_conec_no_distillation"]["median_s"]
    router_warmup, router_repeats = (10, 50) if args.quick else (20, 300)
    return {
        "source": "random:small",
        "image_size": 224,
        "dtype": "float32",
        "warmup": warmup,
        "repeats": repeats,
        "phases": phases,
        "distillation_teacher_share_of_phase3_step_pct": round(100 * (1 - without / with_kd), 1),
        "router": time_router(router_warmup, router_repeats),
    }


# --------------------------------------------------------------------------- DoRA vs LoRA


def peft_variant(
    settings: BackboneSettings, batch: int, dora: bool, dropout: float, precision: Precision
) -> Trial:
    backbone = load_backbone(settings)
    config = dora_config(DORA.model_copy(update={"dropout": dropout}), backbone.depth)
    config.use_dora = dora
    peft_model = get_peft_model(backbone.model, config)
    head = nn.Linear(backbone.feature_dim, CLASSES).to(backbone.device)
    model = AdapterClassifier(peft_model, head, backbone.pooling, backbone.prefix_tokens).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    pixels, labels = random_batch(backbone, batch, CLASSES)

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(pixels), labels)

    name = f"{'dora' if dora else 'lora'}_dropout_{dropout:g}"
    return Trial(
        name,
        batch,
        optimizer_step(optimizer, params, loss, precision),
        count(params),
        {"use_dora": dora, "dropout": dropout},
    )


def dora_vs_lora_step_time(args: argparse.Namespace) -> dict[str, Any]:
    settings = cpu_settings()
    precision = resolve_precision("fp32", torch.device("cpu"))
    batch = 8
    torch.manual_seed(0)
    trials = [
        peft_variant(settings, batch, dora, dropout, precision)
        for dropout in (DORA.dropout, 0.0)
        for dora in (False, True)
    ]
    warmup, repeats = (1, 3) if args.quick else (2, 7)
    times = round_robin(trials, warmup, repeats)
    runs = {t.name: summary(t, times[t.name]) for t in trials}
    ratios = {
        f"dora_over_lora_dropout_{d:g}": round(
            runs[f"dora_dropout_{d:g}"]["median_s"] / runs[f"lora_dropout_{d:g}"]["median_s"], 3
        )
        for d in (DORA.dropout, 0.0)
    }
    return {
        "source": "random:small",
        "image_size": 224,
        "dtype": "float32",
        "r": DORA.r,
        "alpha": DORA.alpha,
        "modules": DORA.modules,
        "blocks": "all",
        "optimizer": "AdamW (adapters + head)",
        "warmup": warmup,
        "repeats": repeats,
        "runs": runs,
        "step_time_ratio": ratios,
    }


# --------------------------------------------------------------------------- SD-LoRA forward


def sd_lora_forward_cost(args: argparse.Namespace) -> dict[str, Any]:
    """`benchmarks/sd_lora_forward.py`'s measurement, imported (its module has no side effects)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    module = importlib.import_module("sd_lora_forward")
    warmup, repeats = (1, 3) if args.quick else (2, 9)
    return {"from": "benchmarks/sd_lora_forward.py:run", **module.run(warmup, repeats)}


# --------------------------------------------------------------------------- package size

PACKAGE_RANK = 32
PACKAGE_SD_PAIRS = 3
PACKAGE_CONEC_DOMAINS = 2  # late LoRA sets besides the base domain 0
DORA_PACKAGE = DoRASettings(
    r=PACKAGE_RANK, modules=["q_proj", "k_proj", "v_proj", "o_proj"], blocks="all"
)
SD_PACKAGE = SDLoRASettings(rank=PACKAGE_RANK, modules=["q_proj", "v_proj"])
CONEC_PACKAGE = CONECSettings(rank=PACKAGE_RANK, modules=["q_proj", "v_proj"])


def empty_vit(key: str) -> nn.Module:
    """A float32 DINOv3 ViT of `key`'s shape with no initialisation: built on ``meta``, given
    uninitialised CPU storage, and only the attention projections zeroed (what the adapters
    read). Untouched pages of the other weights are never faulted in, so even ViT-H+ is cheap.
    """
    from transformers import DINOv3ViTModel

    with torch.device("meta"):
        model = DINOv3ViTModel(preset_config(key))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")):
                for p in module.parameters():
                    p.zero_()
    return model


def safetensors_data_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (the file adds a JSON header)."""
    with safe_open(str(path), "pt") as f:
        slices = [f.get_slice(k) for k in f.keys()]
        return sum(math.prod(s.get_shape()) * _itemsize(s.get_dtype()) for s in slices)


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "I64": 8, "F32": 4, "BF16": 2, "F16": 2}[dtype]


def to_bf16(tensors: dict[str, torch.Tensor], keep: Callable[[str], bool]) -> dict[str, Any]:
    """Floating tensors in bf16, except keys `keep` selects (left as they are)."""
    return {
        k: v if keep(k) or not v.is_floating_point() else v.to(torch.bfloat16)
        for k, v in tensors.items()
    }


def saved(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, int]:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    return {"file_bytes": path.stat().st_size, "tensor_bytes": safetensors_data_bytes(path)}


def load_all(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def analytic_parameters(key: str) -> dict[str, Any]:
    """Adapter parameter (and selector) counts from the variant table's shapes alone."""
    v = VARIANTS_BY_KEY[key]
    d, depth, r = v.width, v.depth, PACKAGE_RANK
    pair = 2 * r * d  # A (r x d) + B (d x r): every q/k/v/o projection is d -> d
    shared = len(resolve_blocks(CONEC_PACKAGE.shared_blocks, depth))
    late = depth - shared
    q_v = len(CONEC_PACKAGE.modules)
    feature = 2 * d  # cls_mean pooling
    domains = 1 + PACKAGE_CONEC_DOMAINS
    return {
        "width": d,
        "depth": depth,
        # PEFT DoRA: lora_A, lora_B and a magnitude vector (d_out) per wrapped layer.
        "dora": depth * len(DORA_PACKAGE.modules) * (pair + d),
        # SD-LoRA: per layer, every pair's A and B plus one magnitude per pair.
        "sd_lora": depth * len(SD_PACKAGE.modules) * PACKAGE_SD_PAIRS * (pair + 1),
        # CONEC: shared pair per early layer, one pair per new domain per late layer; each pair
        # also stores its scalar `scaling` buffer.
        "conec_lora": (shared + late * PACKAGE_CONEC_DOMAINS) * q_v * (pair + 1),
        # Mahalanobis selector statistics, float64 (counts int64): per domain count and sum,
        # pooled scatter (F x F) and the scalar fourth-power sum.
        "conec_selector_elements": domains + domains * feature + feature * feature + 1,
        "head": feature * CLASSES + CLASSES,
        # Per-class statistics for classifier alignment (class_stats.safetensors), float64 as
        # the selector's: count and sum per class, pooled scatter, fourth-power sum.
        "class_stats_elements": CLASSES + CLASSES * feature + feature * feature + 1,
        "backbone": v.num_parameters,
    }


def package_for(key: str, directory: Path) -> dict[str, Any]:
    """Analytic and saved sizes of every adapter file for `key` at rank 32."""
    n = analytic_parameters(key)
    depth, feature = n["depth"], 2 * n["width"]
    domains = 1 + PACKAGE_CONEC_DOMAINS
    parts: dict[str, dict[str, Any]] = {}

    # DoRA: the project's own writer (PEFT's save_pretrained).
    model = empty_vit(key)
    peft_model = apply_dora(model, DORA_PACKAGE, depth)
    save_dora(peft_model, directory)
    dora_file = directory / "dora" / "adapter_model.safetensors"
    dora_fp32 = {"file_bytes": dora_file.stat().st_size}
    dora_fp32["tensor_bytes"] = safetensors_data_bytes(dora_file)
    dora_bf16 = saved(to_bf16(load_all(dora_file), lambda _: False), directory / "dora_bf16")
    parts["dora"] = _part(n["dora"] * 4, n["dora"] * 2, dora_fp32, dora_bf16)
    del model, peft_model
    gc.collect()

    # SD-LoRA: 3 pairs on q/v of every block.
    model = empty_vit(key)
    apply_sd_lora(model, resolve_lora_targets(model, range(depth), SD_PACKAGE.modules))
    method = SDLoRA(model, SD_PACKAGE, torch.Generator().manual_seed(0))
    for task in range(PACKAGE_SD_PAIRS):
        method.start_task(task)
    method.finish_task()  # a package holds closed pairs only
    state = sd_lora_state_dict(model)
    parts["sd_lora"] = _part(
        n["sd_lora"] * 4,
        n["sd_lora"] * 2,
        saved(state, directory / "sd_lora.safetensors"),
        saved(to_bf16(state, lambda _: False), directory / "sd_lora_bf16.safetensors"),
    )
    del model, state
    gc.collect()

    # CONEC: shared + 2 domain sets on q/v, and a 3-domain Mahalanobis selector. Its statistics
    # are added directly (the file stores only them; skipping `_refresh` avoids 3 pinv's).
    model = empty_vit(key)
    conec = apply_conec(model, CONEC_PACKAGE)
    method = ConecLoRA(model, conec, ConecHeads(nn.Linear(feature, CLASSES)))
    for domain in range(1, PACKAGE_CONEC_DOMAINS + 1):
        method.start_task(domain)
    generator = torch.Generator().manual_seed(0)
    for _ in range(domains):
        conec.selector.stats.add(unit_features(torch.randn(16, feature, generator=generator)))
    state = conec_state_dict(conec)
    selector_bytes = n["conec_selector_elements"] * 8
    lora_bytes = n["conec_lora"]
    parts["conec"] = _part(
        lora_bytes * 4 + selector_bytes,
        lora_bytes * 2 + selector_bytes,
        saved(state, directory / "conec.safetensors"),
        saved(
            to_bf16(state, lambda k: k.startswith("selector.")),
            directory / "conec_bf16.safetensors",
        ),
    )
    parts["conec"]["selector_analytic_bytes"] = selector_bytes
    parts["conec"]["selector_share_of_fp32_pct"] = round(
        100 * selector_bytes / (lora_bytes * 4 + selector_bytes), 1
    )
    del model, conec, state
    gc.collect()

    # Heads: one head after phases 1-2; one per domain (base + 2) after phase 3.
    generator = torch.Generator().manual_seed(0)
    heads = {}
    for d in range(domains):
        heads[f"head.{d}.weight"] = torch.randn(CLASSES, feature, generator=generator)
        heads[f"head.{d}.bias"] = torch.zeros(CLASSES)
    one = {k: v for k, v in heads.items() if k.startswith("head.0.")}
    parts["heads_1"] = _part(
        n["head"] * 4,
        n["head"] * 2,
        saved(one, directory / "heads1.safetensors"),
        saved(to_bf16(one, lambda _: False), directory / "heads1_bf16.safetensors"),
    )
    parts["heads_3"] = _part(
        domains * n["head"] * 4,
        domains * n["head"] * 2,
        saved(heads, directory / "heads3.safetensors"),
        saved(to_bf16(heads, lambda _: False), directory / "heads3_bf16.safetensors"),
    )

    # Class statistics (written from phase 1 on, for classifier alignment): float64, like the
    # selector, in both variants.
    stats = SharedCovarianceGaussians()
    for _ in range(CLASSES):
        stats.add(torch.randn(16, feature, generator=generator, dtype=torch.float64))
    class_state = stats.state_dict()
    class_bytes = n["class_stats_elements"] * 8
    parts["class_stats"] = _part(
        class_bytes,
        class_bytes,
        saved(class_state, directory / "class_stats.safetensors"),
        saved(to_bf16(class_state, lambda _: True), directory / "class_stats_kept.safetensors"),
    )

    in_package = ("dora", "sd_lora", "conec", "heads_3", "class_stats")
    total = {
        precision: sum(parts[p][f"saved_file_bytes_{precision}"] for p in in_package)
        for precision in ("fp32", "bf16")
    }
    backbone_fp32, backbone_bf16 = n["backbone"] * 4, n["backbone"] * 2
    return {
        "variant": key,
        "hf_id": VARIANTS_BY_KEY[key].hf_id,
        "width": n["width"],
        "depth": depth,
        "backbone_parameters": n["backbone"],
        "backbone_mb_fp32": _mb(backbone_fp32),
        "backbone_mb_bf16": _mb(backbone_bf16),
        "parts": parts,
        "phase3_package_parts": list(in_package),
        "phase3_package_tensor_files_mb_fp32": _mb(total["fp32"]),
        "phase3_package_tensor_files_mb_bf16": _mb(total["bf16"]),
        "phase3_package_pct_of_backbone_fp32": round(100 * total["fp32"] / backbone_fp32, 2),
        "phase3_package_pct_of_backbone_bf16": round(100 * total["bf16"] / backbone_bf16, 2),
    }


def _mb(n: int) -> float:
    return round(n / 1e6, 3)


def _part(
    analytic_fp32: int, analytic_bf16: int, fp32: dict[str, int], bf16: dict[str, int]
) -> dict[str, Any]:
    return {
        "analytic_bytes_fp32": analytic_fp32,
        "analytic_bytes_bf16": analytic_bf16,
        "saved_tensor_bytes_fp32": fp32["tensor_bytes"],
        "saved_tensor_bytes_bf16": bf16["tensor_bytes"],
        "analytic_matches_saved": analytic_fp32 == fp32["tensor_bytes"]
        and analytic_bf16 == bf16["tensor_bytes"],
        "saved_file_bytes_fp32": fp32["file_bytes"],
        "saved_file_bytes_bf16": bf16["file_bytes"],
        "mb_fp32": _mb(fp32["file_bytes"]),
        "mb_bf16": _mb(bf16["file_bytes"]),
    }


def adapter_package_size(_: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        variants = []
        for key in ("vitl16", "vith16plus"):
            directory = Path(tmp) / key
            directory.mkdir()
            variants.append(package_for(key, directory))
    return {
        "method": (
            "analytic counts from the variant table; verified by building each adapter on a "
            "meta-device model given uninitialised CPU storage (attention projections zeroed) "
            "and saving with the project's writers (PEFT save_pretrained for DoRA, "
            "safetensors for SD-LoRA / CONEC / heads); bf16 = floating adapter tensors cast "
            "to bf16, the CONEC selector and class statistics kept float64; MB = 1e6 bytes"
        ),
        "rank": PACKAGE_RANK,
        "dora_modules": DORA_PACKAGE.modules,
        "sd_lora": {"pairs": PACKAGE_SD_PAIRS, "modules": SD_PACKAGE.modules},
        "conec": {
            "domains_besides_base": PACKAGE_CONEC_DOMAINS,
            "modules": CONEC_PACKAGE.modules,
            "selector": CONEC_PACKAGE.selector,
        },
        "head_classes": CLASSES,
        "pooling": "cls_mean",
        "variants": variants,
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3),
    }


# --------------------------------------------------------------------------- CUDA


def cuda_train_step_vitl16(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "CUDA not available"}
    settings = BackboneSettings(
        source="random:vitl16", image_size=224, device="cuda", dtype="bfloat16"
    )
    precision = resolve_precision("bf16", torch.device("cuda"))
    batch = 32
    warmup, repeats = (1, 3) if args.quick else (3, 10)
    builders: list[Callable[[], Trial]] = [
        lambda: phase1_dora(settings, batch, precision),
        lambda: phase2_sd_lora(settings, batch, precision),
        lambda: phase3_conec(settings, batch, precision, distill=True),
    ]
    runs = {}
    for build in builders:
        torch.manual_seed(0)
        trial = build()
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = round_robin([trial], warmup, repeats)[trial.name]
        runs[trial.name] = {
            **summary(trial, times),
            "allocated_before_steps_mib": round(resident / 2**20, 1),
            "max_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        }
        del trial, build
        gc.collect()
        torch.cuda.empty_cache()
    return {
        "source": "random:vitl16",
        "image_size": 224,
        "weights": "bfloat16",
        "autocast": "bf16",
        "gpu": torch.cuda.get_device_name(0),
        "runs": runs,
    }


SECTIONS: list[tuple[str, Section]] = [
    ("environment", environment),
    ("train_step_throughput_cpu", train_step_throughput_cpu),
    ("dora_vs_lora_step_time", dora_vs_lora_step_time),
    ("sd_lora_forward_cost", sd_lora_forward_cost),
    ("adapter_package_size", adapter_package_size),
    ("cuda_train_step_vitl16", cuda_train_step_vitl16),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--only", nargs="+", default=None, help="run these sections (environment always runs)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "training", "quick": args.quick}
    seconds: dict[str, float] = {}
    loads: dict[str, float] = {}
    for name, section in SECTIONS:
        if args.only and name != "environment" and name not in args.only:
            continue
        loads[name] = load_average()
        t0 = time.perf_counter()
        report[name] = section(args)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name} ({seconds[name]}s): {json.dumps(report[name])}", flush=True)
    report["section_seconds"] = seconds
    report["section_load_average_1m_start"] = loads
    report["load_average_1m_after"] = load_average()
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
