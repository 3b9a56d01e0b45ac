"""What SD-LoRA costs at inference: forward time with 1..5 task pairs vs merged vs plain.

SD-LoRA grows by one pair per task; the un-merged forward adds two thin matmuls per wrapped
layer (all pairs stacked) plus r x r norm products, and merging removes even that. This
measures whether serving needs the merge. Shape: ViT-S/16 (``random:small``), 224x224, batch
8, float32 on CPU under `torch.inference_mode`, SD-LoRA on q_proj and v_proj of all 12 blocks
at rank 10. Reproduce with ``.venv/bin/python benchmarks/sd_lora_forward.py [--quick]``;
results go to ``benchmarks/results/sd_lora_forward.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from machine import load_average, machine
from torch import nn

from aads.adapters.sd_lora.model import SDLoRA, apply_sd_lora, merge_sd_lora, sd_lora_layers
from aads.atomic import atomic_write_text
from aads.backbone import load_backbone, resolve_lora_targets
from aads.config import BackboneSettings, SDLoRASettings

RESULTS = Path(__file__).resolve().parent / "results" / "sd_lora_forward.json"
BATCH = 8
MAX_TASKS = 5
SETTINGS = SDLoRASettings(rank=10, modules=["q_proj", "v_proj"])


def environment() -> dict[str, Any]:
    return machine()


def paired_medians(
    plain: nn.Module, adapted: nn.Module, x: torch.Tensor, warmup: int, repeats: int
) -> dict[str, float]:
    """Median forward time of `adapted` and of `plain`, timed alternately so that load from
    other processes on a shared machine hits both alike; and the overhead in percent."""
    times: dict[nn.Module, list[float]] = {plain: [], adapted: []}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for model in (plain, adapted):
                t0 = time.perf_counter()
                model(pixel_values=x)
                if i >= warmup:
                    times[model].append(time.perf_counter() - t0)
    ours, base = statistics.median(times[adapted]), statistics.median(times[plain])
    return {
        "median_s": round(ours, 5),
        "plain_median_s": round(base, 5),
        "overhead_vs_plain_pct": round(100 * (ours / base - 1), 1),
    }


def trained_like(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-zero B for every open pair, as training leaves it, so merging has work to check."""
    with torch.no_grad():
        for layer in sd_lora_layers(model).values():
            if layer.open:
                layer.B[-1].copy_(0.02 * torch.randn(layer.B[-1].shape, generator=generator))


def run(warmup: int, repeats: int) -> dict[str, Any]:
    settings = BackboneSettings(
        source="random:small", image_size=224, device="cpu", dtype="float32"
    )
    plain = load_backbone(settings).model
    model = copy.deepcopy(plain)
    x = torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    targets = resolve_lora_targets(model, list(range(12)), SETTINGS.modules)
    apply_sd_lora(model, targets)
    generator = torch.Generator().manual_seed(0)
    method = SDLoRA(model, SETTINGS, generator)
    unmerged = []
    for task in range(MAX_TASKS):
        method.start_task(task)
        trained_like(model, generator)  # a task's pair opens at B = 0; give it a real direction
        method.finish_task()
        unmerged.append({"pairs": task + 1, **paired_medians(plain, model, x, warmup, repeats)})
    with torch.inference_mode():
        reference = model(pixel_values=x).pooler_output
        merge_sd_lora(model)
        merged_output = model(pixel_values=x).pooler_output
    return {
        "source": "random:small",
        "image_size": 224,
        "batch": BATCH,
        "dtype": "float32",
        "wrapped_layers": len(targets),
        "rank": SETTINGS.rank,
        "warmup": warmup,
        "repeats": repeats,
        "unmerged": unmerged,
        "merged": {"pairs": MAX_TASKS, **paired_medians(plain, model, x, warmup, repeats)},
        "merge_max_abs_diff": float((merged_output - reference).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup, repeats = (1, 3) if args.quick else (2, 9)
    report: dict[str, Any] = {
        "benchmark": "sd_lora_forward",
        "quick": args.quick,
        "environment": environment(),
    }
    t0 = time.perf_counter()
    report["cpu_random_small"] = run(warmup, repeats)
    report["load_average_1m_after"] = load_average()
    print(f"cpu_random_small ({time.perf_counter() - t0:.1f}s):")
    print(json.dumps(report["cpu_random_small"], indent=2))
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
