"""Feature-extraction throughput of DINOv3 backbones (random weights of the real shapes).

Reproduce with ``.venv/bin/python benchmarks/backbone.py [--quick]``; results go to
``benchmarks/results/backbone.json``. Inputs are already-preprocessed tensors, so the numbers
are the model's forward pass + pooling + copy to CPU (`extract_features`), not decoding.
The report is a list of sections, each a function returning a dict: add a section by appending
to `SECTIONS`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from machine import load_average, machine

from aads.atomic import atomic_write_text
from aads.backbone import Backbone, extract_features, load_backbone, preprocess_image
from aads.config import BackboneSettings

RESULTS = Path(__file__).resolve().parent / "results" / "backbone.json"
Section = Callable[[argparse.Namespace], dict[str, Any]]


def environment(_: argparse.Namespace) -> dict[str, Any]:
    return machine()


def time_extraction(backbone: Backbone, batch: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Median wall time of `extract_features` on one batch (CUDA synchronised)."""
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size)
    cuda = backbone.device.type == "cuda"

    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        extract_features(backbone, x)  # returns CPU float32: includes the device sync
        return time.perf_counter() - t0

    for _ in range(warmup):
        once()
    times = [once() for _ in range(repeats)]
    median = statistics.median(times)
    return {
        "batch": batch,
        "median_s": round(median, 5),
        "min_s": round(min(times), 5),
        "images_per_s": round(batch / median, 2),
        "repeats": repeats,
    }


def cpu_random_small(args: argparse.Namespace) -> dict[str, Any]:
    """ViT-S/16 shape (random:small) at 224x224, float32 on CPU."""
    settings = BackboneSettings(
        source="random:small", image_size=224, device="cpu", dtype="float32"
    )
    backbone = load_backbone(settings)
    warmup, repeats = (1, 3) if args.quick else (2, 7)
    runs = [time_extraction(backbone, b, warmup, repeats) for b in (1, 8, 32)]
    return {"source": backbone.source, "image_size": 224, "dtype": "float32", "runs": runs}


def cuda_large_bf16(args: argparse.Namespace) -> dict[str, Any]:
    """ViT-L/16 and ViT-H+/16 shapes in bfloat16 at batch 64 on the GPU, with peak memory."""
    if not torch.cuda.is_available():
        return {"skipped": "CUDA not available"}
    warmup, repeats = (1, 3) if args.quick else (3, 10)
    runs = []
    for preset in ("vitl16", "vith16plus"):
        settings = BackboneSettings(
            source=f"random:{preset}", image_size=224, device="cuda", dtype="bfloat16"
        )
        backbone = load_backbone(settings)
        torch.cuda.reset_peak_memory_stats()
        run = time_extraction(backbone, 64, warmup, repeats)
        run["source"] = backbone.source
        run["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        runs.append(run)
        del backbone
        torch.cuda.empty_cache()
    return {"image_size": 224, "dtype": "bfloat16", "runs": runs}


def dataloader_from_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """Decode + preprocess throughput of the manifest DataLoader (256 px JPEGs -> 224 tensors).

    The images are the demo config's synthetic dataset drawn at PlantVillage's 256x256, so the
    work per image (JPEG decode, RGB, bilinear resize, normalise) matches real data.
    """
    import tempfile

    from aads.config import SynthSettings, load_config
    from aads.data.dataset import ManifestDataset, make_loader
    from aads.data.ingest import ingest
    from aads.data.synth import synthesize

    config = load_config(Path(__file__).resolve().parents[1] / "config" / "demo.yaml")
    per_class = 6 if args.quick else 16
    settings = SynthSettings(images_per_class=per_class, images_per_domain_class=0, image_size=256)
    backbone = load_backbone(BackboneSettings(source="random:small", image_size=224))
    transform = partial(preprocess_image, image_size=224, normalization=backbone.normalization)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(config, Path(tmp), settings=settings)
        rows = ingest(Path(tmp), config=config).rows
        dataset = ManifestDataset(rows, Path(tmp), transform, sorted({r.label for r in rows}))
        for workers in (0, 2):
            loader = make_loader(dataset, batch_size=32, num_workers=workers)
            epochs = []
            for _ in range(2 if args.quick else 3):  # epoch 1 includes worker start-up
                t0 = time.perf_counter()
                n = sum(len(batch[0]) for batch in loader)
                epochs.append(n / (time.perf_counter() - t0))
            runs.append(
                {
                    "num_workers": workers,
                    "batch": 32,
                    "first_epoch_images_per_s": round(epochs[0], 1),
                    "steady_images_per_s": round(statistics.median(epochs[1:]), 1),
                }
            )
    return {"images": len(rows), "source_size": 256, "image_size": 224, "runs": runs}


SECTIONS: list[tuple[str, Section]] = [
    ("environment", environment),
    ("cpu_random_small", cpu_random_small),
    ("cuda_large_bf16", cuda_large_bf16),
    ("dataloader_from_manifest", dataloader_from_manifest),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "backbone", "quick": args.quick}
    for name, section in SECTIONS:
        t0 = time.perf_counter()
        report[name] = section(args)
        print(f"{name} ({time.perf_counter() - t0:.1f}s): {json.dumps(report[name])}")
    report["load_average_1m_after"] = load_average()
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
