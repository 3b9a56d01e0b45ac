"""Scouting-stage latency per field photo, split by stage: detect, segment, route + adapters,
BioCLIP.

Reproduce with ``.venv/bin/python benchmarks/vlm.py [--quick]``; writes
``benchmarks/results/vlm.json`` (``--out`` to change; ``--real-shapes`` defaults to
``vlm-real-shapes.json``). Random weights throughout: the cost of a forward pass does not
depend on the values, except how many boxes a detector keeps, which is pinned (below).

1. Setup (temporary folder): a spec with two crops (tomato: healthy / early_blight, corn:
   healthy / common_rust), `synthesize` (6 images per class), the crop router (1 epoch) and
   both phase-1 adapters (1 epoch), OOD-calibrated, loaded into a `LocalDiagnoser`.
2. One synthetic field photo (`aads.vlm.synthetic.field_image`) with ``--leaves`` leaves
   (6) at ``--size`` (640x480), answered by `Scout.scout` ``--repeats`` times (10; quick 3)
   after ``--warmup`` (2) untimed answers. Stage times come from the answer's ``timings_ms``
   (perf_counter around each stage; every stage ends by copying its result to the CPU, so GPU
   work is included). Reported: median per stage, median and p90 total, images/s.
3. Two pipelines: (a) ``grounding_dino``: Grounding DINO + SAM-2 + BioCLIP, box and text
   thresholds 0 and ``max_regions`` = leaves, so it always keeps exactly as many regions as
   (b) ``vegetation``: the ExG proposal stage (one region per leaf) + SAM-2 + BioCLIP.

Small configs (default, CPU): ``random:tiny`` of every model (Grounding DINO: Swin 16-d,
64 px shortest edge; SAM-2: 64 px; CLIP 32 px) and a ``random:tiny`` DINOv3 (32 px) for the
router and adapters. ``--real-shapes``: the published architectures: Grounding DINO tiny
(Swin-T + BERT-base, 800 / 1333 px), SAM-2 hiera small and base+ (1024 px), BioCLIP 2 (CLIP
ViT-L/14, 224 px), and DINOv3 ViT-L/16 at 224 px for the router and adapters; meant for a GPU
(``--device cuda --dtype bf16``), where the peak GPU memory is recorded too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import load_average, machine

from aads.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("decode", "detect", "segment", "diagnose", "bioclip", "total")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SMALL = {
    "backbone": ("random:tiny", 32),
    "grounding_dino": "tiny",
    "sam2": ["tiny"],
    "bioclip": "tiny",
}
REAL = {
    "backbone": ("random:vitl16", 224),
    "grounding_dino": "swin_t",
    "sam2": ["hiera_small", "hiera_base_plus"],
    "bioclip": "vitl14",
}


def spec(backbone: str, image_size: int, device: str, dtype: str) -> dict[str, Any]:
    settings = {"source": backbone, "image_size": image_size, "device": device, "dtype": dtype}
    return {
        "crops": [
            {"name": "tomato", "phase1_classes": ["healthy", "early_blight"]},
            {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
        ],
        "router": settings,
        "adapter": {
            "backbone": settings,
            "dora": {"r": 4, "alpha": 8},
            "ood": {"threshold": {"min_samples": 2}},
        },
        "training": {
            n: {"epochs": 1, "batch_size": 8, "early_stopping_patience": None}
            for n in ("router", "phase1")
        },
    }


def build_diagnoser(config: Any, workdir: Path, device: str, dtype: str) -> Any:
    """Train the router and both adapters for an epoch on synthetic data; load them."""
    from aads.adapters.phases.phase1 import train_phase1
    from aads.config import SynthSettings
    from aads.data.ingest import ingest
    from aads.data.synth import synthesize
    from aads.ood.calibrate import calibrate_package
    from aads.router import train_router
    from aads.vlm.diagnosis import LocalDiagnoser

    size = max(32, config.router.image_size)
    synthesize(
        config, workdir / "data", settings=SynthSettings(images_per_class=6, image_size=size)
    )
    rows = ingest(workdir / "data", config=config).rows
    train_router(config, rows, workdir / "data", workdir / "router")
    for crop in config.crop_names:
        pkg = train_phase1(config, crop, rows, workdir / "data", workdir / "adapters" / crop)
        calibrate_package(config, pkg, rows, workdir / "data", loco=False)
    adapters = {c: workdir / "adapters" / c for c in config.crop_names}
    return LocalDiagnoser.from_dirs(workdir / "router", adapters, device=device, dtype=dtype)


def time_scout(scout: Any, image: Any, repeats: int, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        scout.scout(image)
    answers = [scout.scout(image) for _ in range(repeats)]
    per_stage = {s: [a.timings_ms.get(s, 0.0) for a in answers] for s in STAGES}
    totals = per_stage["total"]
    return {
        "regions": len(answers[-1].regions),
        "mask_sources": sorted({r.mask.source for r in answers[-1].regions}),
        "median_ms": {s: round(statistics.median(v), 2) for s, v in per_stage.items()},
        "p90_total_ms": round(float(np.percentile(totals, 90)), 2),
        "images_per_s": round(1000 / statistics.median(totals), 2),
        "repeats": repeats,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from aads.config import parse_config
    from aads.vlm.scouting import load_scout
    from aads.vlm.synthetic import field_image

    shapes = REAL if args.real_shapes else SMALL
    dtype = DTYPES[args.dtype]
    backbone, image_size = shapes["backbone"]
    base = spec(backbone, image_size, args.device, dtype)
    config = parse_config(base)
    width, height = args.size
    image = field_image(args.leaves, width=width, height=height, seed=0).image
    repeats = min(3, args.repeats) if args.quick else args.repeats
    result: dict[str, Any] = {
        "settings": {
            "real_shapes": args.real_shapes,
            "device": args.device,
            "dtype": dtype,
            "image": [width, height],
            "leaves": args.leaves,
            "warmup": args.warmup,
            "router_and_adapters": f"{backbone} @ {image_size}px, 2 crops x 2 classes",
            "models": {k: v for k, v in shapes.items() if k != "backbone"},
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="aads-bench-vlm-") as tmp:
        t0 = time.perf_counter()
        threads = args.threads or torch.get_num_threads()
        torch.set_num_threads(1)  # setup only: see benchmarks/serving.py on OpenMP stalls
        diagnoser = build_diagnoser(config, Path(tmp), args.device, dtype)
        torch.set_num_threads(threads)
        result["settings"]["torch_threads"] = threads
        result["setup_s"] = round(time.perf_counter() - t0, 1)
        for sam in shapes["sam2"]:
            for detector in ("grounding_dino", "vegetation"):
                scouting = {
                    "detector": detector,
                    "grounding_dino": {
                        "source": f"random:{shapes['grounding_dino']}",
                        "box_threshold": 0.0,
                        "text_threshold": 0.0,
                    },
                    "sam2": {"source": f"random:{sam}"},
                    "bioclip": {"source": f"random:{shapes['bioclip']}"},
                    "max_regions": args.leaves,
                    "device": args.device,
                    "dtype": dtype,
                }
                scout = load_scout(parse_config({**base, "scouting": scouting}), diagnoser)
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                run_result = {
                    "detector": detector,
                    "sam2": sam,
                    **time_scout(scout, image, repeats, args.warmup),
                }
                if args.device == "cuda":
                    peak = torch.cuda.max_memory_allocated() / 2**20
                    run_result["peak_gpu_memory_mib"] = round(peak, 1)
                print(json.dumps(run_result))
                result["runs"].append(run_result)
                del scout
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 timed repeats")
    parser.add_argument("--repeats", type=int, default=10, help="timed answers per pipeline")
    parser.add_argument("--warmup", type=int, default=2, help="untimed answers first")
    parser.add_argument("--real-shapes", action="store_true", help="published model shapes")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--leaves", type=int, default=6)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / ("vlm-real-shapes.json" if args.real_shapes else "vlm.json")
    load_before = load_average()
    runs = run(args)
    result = {"benchmark": "vlm", "machine": machine(), "load_average_1m_before": load_before}
    result |= runs  # machine() after run: it records the thread count the runs used
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
