"""Real images: the whole AADS pipeline per crop against a linear probe on the same frozen
backbone, on the PlantVillage sample as published.

Reproduce with ``.venv/bin/python benchmarks/real.py`` (a few minutes per image size on 2 CPU
cores, plus a one-off pretraining of the stand-in backbone per size on first use). It reads
the sample in place (``../shared/data/plantvillage`` beside the checkout, or
``$AADS_PLANTVILLAGE_DIR``) and writes ``benchmarks/results/real.json`` and ``real.md``.

Setup. `config/plantvillage.yaml` (tomato, pepper, corn and potato with PlantVillage's folder
names as aliases; phase-1 classes, phase-2 batches and a near-OOD hold-out per crop where the
sample has enough classes) at the demo's 64 px and at 128 px (`--sizes`). For each size:

- **pipeline**: `aads.demo.run_demo` on the sample, the in-process runner of the pipeline's
  steps: ingest (aliases, exclusions, duplicates), router (crop head on frozen features),
  per crop phase 1 DoRA -> phase 2 SD-LoRA (rehearsal-free, one task per class batch) -> OOD
  calibration. Accuracy is the final package's test accuracy over every class it learned
  (``phase2_test_accuracy``, else ``phase1_test_accuracy``); OOD AUROCs are the calibration's:
  near = the crop's held-out disease, far = the other crops' images.
- **probe** (the floor): scikit-learn `LogisticRegression` on standardised pooled features of
  the same frozen backbone the adapters start from, fitted on the crop's train split of the
  same classes at once, regularisation C picked on the validation split, scored on the same
  test split. It sees every class jointly, which the rehearsal-free pipeline never does.

The backbone is the demo's ``synthetic:mini`` stand-in (4 blocks, pretrained in code on
synthetic plants of other crops), not DINOv3: the real weights cannot be downloaded here.
Absolute accuracies are therefore far below what DINOv3 features give on PlantVillage (linear
probes on DINOv2/v3 features reach well above 0.9 there); what the numbers show is whether the
pipeline's training keeps up with a probe on the same features, on real photos.

Test splits are small (24 images per class, 15 % test): each accuracy comes with its n and a
95 % Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from aads.backbone import load_backbone
from aads.config import BASE_DOMAIN, PlatformConfig, load_config
from aads.data.ingest import load_ingest_summary
from aads.data.manifest import ManifestRow, read_manifest, select
from aads.data.samples import plantvillage_sample
from aads.demo import run_demo
from aads.features import FeatureTable, extract_manifest_features

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "plantvillage.yaml"
RESULTS = ROOT / "benchmarks" / "results"
PROBE_C = (0.01, 0.1, 1.0, 10.0)


def sized(config: PlatformConfig, size: int) -> PlatformConfig:
    """The config with router and adapter backbones at `size` px."""
    router = config.router.model_copy(update={"image_size": size})
    backbone = config.adapter.backbone.model_copy(update={"image_size": size})
    adapter = config.adapter.model_copy(update={"backbone": backbone})
    return config.model_copy(update={"router": router, "adapter": adapter})


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _split(rows: list[ManifestRow], crop: str, classes: list[str], split: str):
    return select(rows, crop=crop, split=split, domain=BASE_DOMAIN, labels=classes)


def probe(
    table: FeatureTable, rows: list[ManifestRow], crop: str, classes: list[str]
) -> dict[str, Any]:
    """Logistic regression on frozen features: C by validation accuracy, scored on test."""
    parts = {s: _split(rows, crop, classes, s) for s in ("train", "val", "test")}
    x = {s: table.take([r.sha256 for r in p]).numpy() for s, p in parts.items()}
    y = {s: np.array([classes.index(r.label) for r in p]) for s, p in parts.items()}

    def fitted(c: float):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x["train"], y["train"])

    scores = {c: float((fitted(c).predict(x["val"]) == y["val"]).mean()) for c in PROBE_C}
    best = max(PROBE_C, key=lambda c: (scores[c], -c))
    correct = int((fitted(best).predict(x["test"]) == y["test"]).sum())
    n = len(y["test"])
    return {
        "accuracy": correct / n,
        "ci95": wilson(correct, n),
        "n_test": n,
        "n_train": len(y["train"]),
        "C": best,
    }


def pipeline_accuracy(metrics: dict[str, float]) -> tuple[float, str]:
    for key in ("phase2_test_accuracy", "phase1_test_accuracy"):
        if key in metrics:
            return metrics[key], key
    raise KeyError("no test accuracy in the package metrics")


def run_size(config: PlatformConfig, sample: Path, workdir: Path, size: int) -> dict[str, Any]:
    config = sized(config, size)
    print(f"== {size} px: backbone (pretrained once per size, then cached)", flush=True)
    start = time.perf_counter()
    backbone = load_backbone(config.adapter.backbone, config.storage)
    backbone_seconds = time.perf_counter() - start

    print(f"== {size} px: pipeline (aads.demo.run_demo on {sample})", flush=True)
    start = time.perf_counter()
    summary = run_demo(config, workdir / f"{size}px", data=sample)
    pipeline_seconds = time.perf_counter() - start
    rows = read_manifest(Path(summary["manifest"]))
    ingest = load_ingest_summary(Path(summary["manifest"]).parent)

    print(f"== {size} px: probe features", flush=True)
    start = time.perf_counter()
    table = extract_manifest_features(backbone, rows, sample)
    feature_seconds = time.perf_counter() - start

    steps = summary["steps"]
    router = next(s for s in steps if s["name"] == "train router")
    crops: dict[str, Any] = {}
    for spec in config.crops:
        metrics = summary["metrics"][spec.name]
        acc, key = pipeline_accuracy(metrics)
        classes = spec.known_classes
        n_test = len(_split(rows, spec.name, classes, "test"))
        correct = round(acc * n_test)
        start = time.perf_counter()
        floor = probe(table, rows, spec.name, classes)
        probe_p1 = probe(table, rows, spec.name, list(spec.phase1_classes))
        probe_seconds = time.perf_counter() - start
        crops[spec.name] = {
            "classes": classes,
            "pipeline": {
                "accuracy": acc,
                "metric": key,
                "ci95": wilson(correct, n_test),
                "n_test": n_test,
                "phase1_accuracy": metrics.get("phase1_test_accuracy"),
                "phase2_retention": metrics.get("phase2_retention"),
                "ood_near_auroc": metrics.get("ood_near_auroc"),
                "ood_loco_auroc": metrics.get("ood_loco_auroc"),
                "ood_far_auroc": metrics.get("ood_far_auroc"),
                "ood_id_rejected": metrics.get("ood_id_rejected"),
                "seconds": sum(s["seconds"] for s in steps if s["name"].startswith(spec.name)),
            },
            "probe": {**floor, "seconds": probe_seconds},
            "probe_phase1_classes": probe_p1,
            "pipeline_minus_probe": acc - floor["accuracy"],
        }
        print(
            f"{spec.name:8s} pipeline {acc:.3f} probe {floor['accuracy']:.3f} "
            f"(n={n_test}); phase 1 {metrics.get('phase1_test_accuracy', math.nan):.3f} vs "
            f"probe {probe_p1['accuracy']:.3f}",
            flush=True,
        )
    return {
        "image_size": size,
        "images": len(rows),
        "ingest": {
            k: ingest[k]
            for k in ("images", "rejected", "rejects_by_reason", "unused_images", "phases")
        },
        "router": {k: v for k, v in router.items() if k.startswith("test_")},
        "crops": crops,
        "seconds": {
            "backbone_load": backbone_seconds,
            "pipeline": pipeline_seconds,
            "probe_features": feature_seconds,
        },
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Real images: pipeline vs linear probe (PlantVillage sample)",
        "",
        f"`benchmarks/real.py` on {result['sample']} with `config/plantvillage.yaml`, backbone "
        f"`{result['backbone']}` (a stand-in, not DINOv3), {result['machine']['cpu_count']} "
        f"CPU cores, load {result['machine']['load_average_1m']}.",
        "",
    ]
    for run in result["runs"]:
        s = run["seconds"]
        lines += [
            f"## {run['image_size']} px",
            "",
            f"{run['images']} images kept ({run['ingest']['rejects_by_reason']} rejected). "
            f"Router crop accuracy {_fmt(run['router'].get('test_crop_accuracy'))}. Pipeline "
            f"{s['pipeline']:.0f} s, probe features {s['probe_features']:.0f} s.",
            "",
            "| crop | classes | pipeline acc. [95 % CI] | probe acc. [95 % CI] | n test | "
            "phase 1 / probe (phase-1 classes) | retention | OOD AUROC near / loco / far | "
            "pipeline s |",
            "|---|---:|---|---|---:|---|---:|---|---:|",
        ]
        for crop, c in run["crops"].items():
            p, f, f1 = c["pipeline"], c["probe"], c["probe_phase1_classes"]
            lines.append(
                f"| {crop} | {len(c['classes'])} | {p['accuracy']:.3f} "
                f"[{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}] | {f['accuracy']:.3f} "
                f"[{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] | {p['n_test']} | "
                f"{_fmt(p['phase1_accuracy'])} / {f1['accuracy']:.3f} | "
                f"{_fmt(p['phase2_retention'])} | {_fmt(p['ood_near_auroc'])} / "
                f"{_fmt(p['ood_loco_auroc'])} / {_fmt(p['ood_far_auroc'])} | "
                f"{p['seconds']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".aads" / "bench-real")
    parser.add_argument("--out", type=Path, default=RESULTS / "real.json")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    sample, looked = plantvillage_sample()
    if sample is None:
        raise SystemExit(f"PlantVillage sample not found (looked at {looked})")
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    runs = [run_size(config, sample, args.workdir, size) for size in args.sizes]
    result = {
        "benchmark": "real",
        "sample": str(sample),
        "config": str(
            args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config
        ),
        "backbone": config.adapter.backbone.source,
        "machine": machine(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
