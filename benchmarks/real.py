"""Real images: the whole AADS pipeline per crop against a linear probe on the same frozen
backbone, on the PlantVillage sample as published.

Reproduce with ``.venv/bin/python benchmarks/real.py`` (one split seed at 64 and 128 px: under
a minute per size and seed on 2 CPU cores, plus a one-off pretraining of the stand-in backbone
per size on first use: about 1.5 minutes at 64 px, 6 at 128 px). It reads the sample in place
(``../shared/data/plantvillage`` beside the checkout, or ``$AADS_PLANTVILLAGE_DIR``) and writes
``benchmarks/results/real.json`` and ``real.md``. The committed results pool three split seeds
and include the ablation: ``--sizes 64 --seeds 3``, ``--sizes 128 --seeds 3`` (each size on the
stand-in pretrained at that size, recipe v4) and ``--sizes 64 --seeds 3 --variants
random-head``, run one after another (``--threads 1``) and joined with ``--merge``.

Setup. `config/plantvillage.yaml` (tomato, pepper, corn and potato with PlantVillage's folder
names as aliases; phase-1 classes, phase-2 batches and a near-OOD hold-out per crop where the
sample has enough classes) at 64 px and at the demo's 128 px (`--sizes`). For each size:

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

Three comparisons, each pipeline part against the probe that does its job:

- **router** vs a crop probe (LR over the 4 crops on the router backbone's features);
- **adapter** (given the true crop) vs the per-crop probe over that crop's known classes, also
  counted apart on the phase-1 classes and on the classes phase 2 added (``by_phase``: where a
  gap sits);
- **end to end** per crop: each test image routed by the trained router (`CropRouter.route`)
  and answered by the routed crop's adapter (`LoadedAdapter.verdicts`), as served; correct
  when both crop and class are; vs a flat probe over every (crop, class) of the config.
  ``answered`` also counts an image the router or the adapter rejects as unknown as wrong (the
  price of the OOD check on in-distribution images); ``top1`` uses the head's class;
  ``routed_to`` counts where the router sent each crop's test photos.

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
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aads.adapters.loading import load_adapter
from aads.adapters.phases.common import fit_probe
from aads.backbone import load_backbone, preprocess_batch
from aads.config import BASE_DOMAIN, PlatformConfig, load_config
from aads.data.ingest import load_ingest_summary
from aads.data.manifest import ManifestRow, read_manifest, select
from aads.data.samples import plantvillage_sample
from aads.demo import run_demo
from aads.features import FeatureTable, extract_manifest_features
from aads.router import load_router

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "plantvillage.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def sized(config: PlatformConfig, size: int, source: str | None = None) -> PlatformConfig:
    """The config with router and adapter backbones at `size` px (and from `source`)."""
    update: dict[str, Any] = {"image_size": size} | ({"source": source} if source else {})
    router = config.router.model_copy(update=update)
    backbone = config.adapter.backbone.model_copy(update=update)
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


def _fit_probe(x: dict[str, np.ndarray], y: dict[str, np.ndarray]):  # noqa: ANN202
    """The probe phase 1 starts its head from (`fit_probe`): train split, C on val."""
    model, c, _ = fit_probe(x["train"], y["train"], x["val"], y["val"])
    return model, c


def scored(correct: int, n: int, **extra: Any) -> dict[str, Any]:
    accuracy = correct / n if n else math.nan
    return {"accuracy": accuracy, "ci95": wilson(correct, n), "n_test": n, **extra}


def by_phase(phase1: Sequence[str], labels: Sequence[str], hits: Sequence[bool]) -> dict:
    """Correct test images among the phase-1 classes and among the classes phase 2 added.

    Why: phase 2 is rehearsal-free (a task sees only its own classes' images; old and new
    classes meet only through class statistics), where the probe fits every class at once, so
    the two part ways, if anywhere, on the added classes; this says where a gap sits."""
    out = {}
    for group, first in (("phase1_classes", True), ("phase2_classes", False)):
        mine = [
            bool(h) for label, h in zip(labels, hits, strict=True) if (label in phase1) == first
        ]
        out[group] = {"correct": sum(mine), "n": len(mine)}
    return out


def probe(
    table: FeatureTable,
    rows: list[ManifestRow],
    crop: str,
    classes: list[str],
    phase1: Sequence[str] = (),
) -> dict[str, Any]:
    """The per-crop floor: LR over `classes` on the crop's base-domain images (with its
    correct test images split by `phase1` classes and the rest, when `phase1` is given)."""
    parts = {s: _split(rows, crop, classes, s) for s in ("train", "val", "test")}
    x = {s: table.take([r.sha256 for r in p]).numpy() for s, p in parts.items()}
    y = {s: np.array([classes.index(r.label) for r in p]) for s, p in parts.items()}
    model, c = _fit_probe(x, y)
    hits = model.predict(x["test"]) == y["test"]
    extra = {"by_phase": by_phase(phase1, [r.label for r in parts["test"]], hits)} if phase1 else {}
    return scored(int(hits.sum()), len(y["test"]), n_train=len(y["train"]), C=c, **extra)


def adapter_hits(package: Path, test: list[ManifestRow], sample: Path) -> list[bool]:
    """Per test image, whether the crop's final adapter names its class (the head's top-1,
    OOD check aside): the package's test accuracy recounted, image by image."""
    adapter = load_adapter(package)
    bb = adapter.backbone
    pixels = preprocess_batch([sample / r.path for r in test], bb.image_size, bb.normalization)
    verdicts = adapter.verdicts(pixels)
    return [v.predicted_class == r.label for v, r in zip(verdicts, test, strict=True)]


def known_rows(config: PlatformConfig, rows: list[ManifestRow], split: str) -> list[ManifestRow]:
    """Base-domain `split` images of every crop's known (trained) classes."""
    return [
        r
        for r in select(rows, split=split, domain=BASE_DOMAIN)
        if r.label in config.crop(r.crop).known_classes
    ]


def flat_probes(
    config: PlatformConfig, table: FeatureTable, rows: list[ManifestRow]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The router's floor (LR over crops) and the end-to-end floor per crop (LR over every
    (crop, class) pair), both on the router backbone's features."""
    parts = {s: known_rows(config, rows, s) for s in ("train", "val", "test")}
    x = {s: table.take([r.sha256 for r in p]).numpy() for s, p in parts.items()}
    crop_y = {s: np.array([r.crop for r in p]) for s, p in parts.items()}
    model, c = _fit_probe(x, crop_y)
    router_floor = scored(int((model.predict(x["test"]) == crop_y["test"]).sum()), len(x["test"]))
    pair_y = {s: np.array([f"{r.crop}/{r.label}" for r in p]) for s, p in parts.items()}
    model, c = _fit_probe(x, pair_y)
    hit = model.predict(x["test"]) == pair_y["test"]
    per_crop = {}
    for spec in config.crops:
        mine = crop_y["test"] == spec.name
        per_crop[spec.name] = scored(int(hit[mine].sum()), int(mine.sum()), C=c)
    return {**router_floor, "C": c}, per_crop


def end_to_end(
    config: PlatformConfig, summary: dict, rows: list[ManifestRow], sample: Path
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Route every known-class test image with the trained router, answer it with the routed
    crop's adapter: router accuracy, and per true crop top-1 and answered accuracy."""
    test = known_rows(config, rows, "test")
    router = load_router(Path(summary["router"]))
    routes = router.route([sample / r.path for r in test])
    adapters = {c: load_adapter(Path(p)) for c, p in summary["adapters"].items()}
    answers: list[tuple[str, str, bool]] = [("", "", True)] * len(test)  # (crop, class, ood)
    for crop, adapter in adapters.items():
        idx = [i for i, d in enumerate(routes) if d.crop == crop]
        if not idx:
            continue
        bb = adapter.backbone
        paths = [sample / test[i].path for i in idx]
        pixels = preprocess_batch(paths, bb.image_size, bb.normalization)
        for i, v in zip(idx, adapter.verdicts(pixels), strict=True):
            answers[i] = (crop, v.predicted_class, routes[i].is_ood or v.is_ood)
    routed = sum(d.crop == r.crop for d, r in zip(routes, test, strict=True))
    per_crop = {}
    for spec in config.crops:
        mine = [i for i, r in enumerate(test) if r.crop == spec.name]
        top1 = sum(answers[i][:2] == (test[i].crop, test[i].label) for i in mine)
        answered = sum(
            answers[i][:2] == (test[i].crop, test[i].label) and not answers[i][2] for i in mine
        )
        per_crop[spec.name] = {
            "top1": scored(top1, len(mine)),
            "answered": scored(answered, len(mine)),
            "rejected_as_unknown": sum(answers[i][2] for i in mine),
            "routed_to": dict(sorted(Counter(routes[i].crop for i in mine).items())),
        }
    return scored(routed, len(test)), per_crop


def pipeline_accuracy(metrics: dict[str, float]) -> tuple[float, str]:
    for key in ("phase2_test_accuracy", "phase1_test_accuracy"):
        if key in metrics:
            return metrics[key], key
    raise KeyError("no test accuracy in the package metrics")


def pretrained_at(config: PlatformConfig, size: int) -> str:
    """The local folder of the ``synthetic:`` backbone pretrained at `size` px (pretrained now
    if missing), to load at another input size as a plain local-directory source."""
    from aads.backbone.synthetic import ensure_synthetic_backbone

    bb = config.adapter.backbone
    preset = bb.source.removeprefix("synthetic:")
    return str(ensure_synthetic_backbone(preset, bb.seed, size, config.storage.cache_dir))


VARIANTS = ("lp-ft", "random-head")
"""``lp-ft``: the product (phase 1's head starts as a probe on the frozen features);
``random-head``: the ablation, phase 1's head starts random (the code before LP-FT)."""


@contextmanager
def variant(name: str) -> Iterator[None]:
    """Run the pipeline as the product does, or with the `random-head` ablation."""
    if name == "lp-ft":
        yield
        return
    import aads.adapters.phases.phase1 as phase1

    saved = phase1.start_head_from_probe
    phase1.start_head_from_probe = lambda *args, **kwargs: math.nan  # head keeps its random init
    try:
        yield
    finally:
        phase1.start_head_from_probe = saved


def run_size(
    config: PlatformConfig,
    sample: Path,
    workdir: Path,
    size: int,
    *,
    seed: int = 0,
    variant_name: str = "lp-ft",
    reuse: bool = False,
    weights_from: int | None = None,
) -> dict[str, Any]:
    source = pretrained_at(config, weights_from) if weights_from not in (None, size) else None
    config = sized(config, size, source)
    config = config.model_copy(update={"data": config.data.model_copy(update={"split_seed": seed})})
    workdir = workdir / f"{size}px-seed{seed}-{variant_name}"
    print(f"== {size} px, split seed {seed}, {variant_name}: backbone", flush=True)
    start = time.perf_counter()
    backbone = load_backbone(config.adapter.backbone, config.storage)
    backbone_seconds = time.perf_counter() - start

    done = workdir / "demo-summary.json"
    if reuse and done.is_file():
        print(f"== {size} px: pipeline already run, reusing {done}", flush=True)
        summary = json.loads(done.read_text())
        pipeline_seconds = sum(step["seconds"] for step in summary["steps"])
    else:
        print(f"== {size} px: pipeline (aads.demo.run_demo on {sample})", flush=True)
        start = time.perf_counter()
        with variant(variant_name):
            summary = run_demo(config, workdir, data=sample)
        pipeline_seconds = time.perf_counter() - start
    rows = read_manifest(Path(summary["manifest"]))
    ingest = load_ingest_summary(Path(summary["manifest"]).parent)

    print(f"== {size} px: probe features", flush=True)
    start = time.perf_counter()
    table = extract_manifest_features(backbone, rows, sample)
    feature_seconds = time.perf_counter() - start

    steps = summary["steps"]
    router = next(s for s in steps if s["name"] == "train router")
    router_floor, flat_floor = flat_probes(config, table, rows)
    router_e2e, e2e = end_to_end(config, summary, rows, sample)
    crops: dict[str, Any] = {}
    for spec in config.crops:
        metrics = summary["metrics"][spec.name]
        acc, key = pipeline_accuracy(metrics)
        classes, phase1 = spec.known_classes, list(spec.phase1_classes)
        test = _split(rows, spec.name, classes, "test")
        n_test = len(test)
        correct = round(acc * n_test)
        hits = adapter_hits(Path(summary["adapters"][spec.name]), test, sample)
        start = time.perf_counter()
        floor = probe(table, rows, spec.name, classes, phase1)
        probe_p1 = probe(table, rows, spec.name, phase1)
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
                "correct_recounted": sum(hits),
                "by_phase": by_phase(phase1, [r.label for r in test], hits),
            },
            "probe": {**floor, "seconds": probe_seconds},
            "probe_phase1_classes": probe_p1,
            "pipeline_minus_probe": acc - floor["accuracy"],
            "end_to_end": e2e[spec.name],
            "flat_probe": flat_floor[spec.name],
        }
        print(
            f"{spec.name:8s} pipeline {acc:.3f} probe {floor['accuracy']:.3f} "
            f"(n={n_test}); phase 1 {metrics.get('phase1_test_accuracy', math.nan):.3f} vs "
            f"probe {probe_p1['accuracy']:.3f}",
            flush=True,
        )
    return {
        "image_size": size,
        "split_seed": seed,
        "variant": variant_name,
        "backbone_source": config.adapter.backbone.source,
        "images": len(rows),
        "ingest": {
            k: ingest[k]
            for k in ("images", "rejected", "rejects_by_reason", "unused_images", "phases")
        },
        "router": {
            **{k: v for k, v in router.items() if k.startswith("test_")},
            "routed_correctly": router_e2e,
            "probe": router_floor,
        },
        "crops": crops,
        "seconds": {
            "backbone_load": backbone_seconds,
            "pipeline": pipeline_seconds,
            "probe_features": feature_seconds,
        },
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _acc(result: dict[str, Any]) -> str:
    lo, hi = result["ci95"]
    return f"{_fmt(result['accuracy'])} [{lo:.2f}, {hi:.2f}]"


def _pool(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracies of several test splits as one: correct and n summed."""
    correct = sum(round(p["accuracy"] * p["n_test"]) for p in parts)
    return scored(correct, sum(p["n_test"] for p in parts), splits=len(parts))


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def _pool_by_phase(parts: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {
        group: {k: sum(p["by_phase"][group][k] for p in parts) for k in ("correct", "n")}
        for group in parts[0]["by_phase"]
    }


def pooled(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per image size and variant, every split seed's test images pooled (n x seeds), and the
    seeds on which the pipeline part was at or above its probe."""
    out = []
    for size, name in dict.fromkeys((r["image_size"], r["variant"]) for r in runs):
        group = [r for r in runs if (r["image_size"], r["variant"]) == (size, name)]
        crops = {}
        for crop in group[0]["crops"]:
            cs = [r["crops"][crop] for r in group]
            crops[crop] = {
                "adapter": _pool([c["pipeline"] for c in cs]),
                "probe": _pool([c["probe"] for c in cs]),
                "adapter_at_or_above_probe": sum(
                    c["pipeline"]["accuracy"] >= c["probe"]["accuracy"] for c in cs
                ),
                "end_to_end_top1": _pool([c["end_to_end"]["top1"] for c in cs]),
                "end_to_end_answered": _pool([c["end_to_end"]["answered"] for c in cs]),
                "flat_probe": _pool([c["flat_probe"] for c in cs]),
                "by_phase": {
                    "adapter": _pool_by_phase([c["pipeline"] for c in cs]),
                    "probe": _pool_by_phase([c["probe"] for c in cs]),
                },
                "routed_to": dict(
                    sorted(
                        sum((Counter(c["end_to_end"]["routed_to"]) for c in cs), Counter()).items()
                    )
                ),
                "phase1": _mean([c["pipeline"]["phase1_accuracy"] for c in cs]),
                "phase1_probe": _mean([c["probe_phase1_classes"]["accuracy"] for c in cs]),
                "retention": _mean([c["pipeline"]["phase2_retention"] for c in cs]),
                **{
                    k: _mean([c["pipeline"][k] for c in cs])
                    for k in ("ood_near_auroc", "ood_loco_auroc", "ood_far_auroc")
                },
                "seconds": _mean([c["pipeline"]["seconds"] for c in cs]),
            }
        out.append(
            {
                "image_size": size,
                "variant": name,
                "seeds": [r["split_seed"] for r in group],
                "router": _pool([r["router"]["routed_correctly"] for r in group]),
                "router_probe": _pool([r["router"]["probe"] for r in group]),
                "pipeline_seconds": _mean([r["seconds"]["pipeline"] for r in group]),
                "crops": crops,
            }
        )
    return out


def _by_phase(c: dict[str, Any]) -> str:
    """`adapter vs probe (of n)` on the phase-1 classes, then on those phase 2 added."""
    a, p = c["by_phase"]["adapter"], c["by_phase"]["probe"]
    return " / ".join(
        f"{a[g]['correct']} vs {p[g]['correct']} (of {a[g]['n']})" if a[g]["n"] else "-"
        for g in ("phase1_classes", "phase2_classes")
    )


def _routes(crops: dict[str, Any]) -> str:
    return "; ".join(
        f"{crop} {c['routed_to'].get(crop, 0)} of {sum(c['routed_to'].values())} ("
        + ", ".join(f"{k} {v}" for k, v in c["routed_to"].items() if k != crop)
        + ")"
        for crop, c in crops.items()
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Real images: pipeline vs linear probe (PlantVillage sample)",
        "",
        f"`benchmarks/real.py` on {result['sample']} with `{result['config']}`, backbone "
        f"`{result['backbone']}` (a stand-in, not DINOv3), {result['machine']['cpu_count']} "
        f"CPU cores, load {result['machine']['load_average_1m']} at the end. Each accuracy pools "
        "the test images of every split seed (n = test images x seeds), with its 95 % Wilson "
        "interval; OOD AUROCs and retention are means over seeds. `lp-ft` is the product, "
        "`random-head` the ablation (phase 1's head starts random, as before LP-FT).",
        "",
    ]
    for g in result["pooled"]:
        lines += [
            f"## {g['image_size']} px, {g['variant']} (split seeds {g['seeds']})",
            "",
            f"Pipeline {g['pipeline_seconds']:.0f} s per run (router, every crop's phases, OOD "
            f"calibration). Router: crop accuracy {_acc(g['router'])} vs crop probe "
            f"{_acc(g['router_probe'])} (n {g['router']['n_test']}). Test photos the router "
            f"sends to their own crop (elsewhere): {_routes(g['crops'])}.",
            "",
            "| crop | adapter (true crop) | probe | seeds adapter >= probe | phase 1 / its probe |"
            " final adapter vs probe, correct on phase-1 / phase-2 classes |"
            " retention | end to end top-1 | answered (OOD on) | flat probe | "
            "OOD AUROC near / loco / far | s |",
            "|---|---|---|---:|---|---|---:|---|---|---|---|---:|",
        ]
        for crop, c in g["crops"].items():
            lines.append(
                f"| {crop} | {_acc(c['adapter'])} (n {c['adapter']['n_test']}) | "
                f"{_acc(c['probe'])} | {c['adapter_at_or_above_probe']}/{len(g['seeds'])} | "
                f"{_fmt(c['phase1'])} / {_fmt(c['phase1_probe'])} | {_by_phase(c)} | "
                f"{_fmt(c['retention'])} | "
                f"{_acc(c['end_to_end_top1'])} | {_acc(c['end_to_end_answered'])} | "
                f"{_acc(c['flat_probe'])} | {_fmt(c['ood_near_auroc'])} / "
                f"{_fmt(c['ood_loco_auroc'])} / {_fmt(c['ood_far_auroc'])} | "
                f"{c['seconds']:.0f} |"
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
    parser.add_argument(
        "--reuse", action="store_true", help="re-score a finished pipeline run in --workdir"
    )
    parser.add_argument("--seeds", type=int, default=1, help="split seeds 0..N-1 per size")
    parser.add_argument("--variants", nargs="+", default=["lp-ft"], choices=VARIANTS)
    parser.add_argument(
        "--weights-from",
        type=int,
        default=None,
        metavar="PX",
        help="use the synthetic backbone pretrained at PX px for every size (default: "
        "pretrain one per size, as a config with that image_size does)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="write --out from the runs of earlier result files (e.g. sizes run in parallel)",
    )
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        result = {**parts[0], "runs": [run for part in parts for run in part["runs"]]}
        result["pooled"] = pooled(result["runs"])
        write(result, args.out)
        return
    sample, looked = plantvillage_sample()
    if sample is None:
        raise SystemExit(f"PlantVillage sample not found (looked at {looked})")
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    runs = [
        run_size(
            config,
            sample,
            args.workdir,
            size,
            seed=seed,
            variant_name=name,
            reuse=args.reuse,
            weights_from=args.weights_from,
        )
        for size in args.sizes
        for name in args.variants
        for seed in range(args.seeds)
    ]
    result = {
        "benchmark": "real",
        "weights_from": args.weights_from,
        "sample": str(sample),
        "config": str(
            args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config
        ),
        "backbone": config.adapter.backbone.source,
        "machine": machine(),
        "pooled": pooled(runs),
        "runs": runs,
    }
    write(result, args.out)


def write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
