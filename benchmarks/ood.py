"""OOD: scoring throughput, and every method compared on the synthetic benchmark.

Reproduce with ``.venv/bin/python benchmarks/ood.py [--quick] [--skip-methods]``; writes
``benchmarks/results/ood.json`` and ``ood.md``.

1. Throughput (samples/s, float64, CPU): `MahalanobisEstimator.score_samples` (N x C squared
   distances in one pass) at widths 384 / 768 / 1024 (DINOv3 ViT-S / B / L) and 10 or 38
   classes (38 = PlantVillage's class count), against (a) a Python loop over classes with the
   same precision (``(X - m_k) P (X - m_k)^T`` per class) and (b) scikit-learn's
   ``LedoitWolf.mahalanobis`` called once per class (what sklearn offers); ratios = ours / theirs.
   Shared Ledoit-Wolf and per-class covariances are both timed.
2. Methods: `run_demo` on ``config/demo.yaml`` (synthetic crops, ``synthetic:mini``) into
   ``.aads/bench/ood-demo`` (``--reuse`` keeps an earlier run there), then for each crop's
   final adapter package its features once and every covariance x feature space x relative x
   threshold rule (`aads.ood.selection`) on them:
   near-OOD = the crop's hold-out diseases (never trained), loco = leave-one-class-out over the
   crop's known classes, far-OOD = other crops. Rows are averaged over crops; the best by
   `best_method`'s ranking is the default in ``config/*.yaml``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import load_average, machine
from sklearn.covariance import LedoitWolf

from aads.atomic import atomic_write_text
from aads.config import load_config
from aads.ood import MahalanobisEstimator
from aads.ood.report import method_table
from aads.ood.selection import best_method

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = (384, 768, 1024)
CLASS_COUNTS = (10, 38)


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def class_data(width: int, classes: int, n: int, rng: np.random.Generator):
    means = rng.normal(size=(classes, width))
    y = rng.integers(0, classes, n)
    scales = rng.uniform(0.3, 2.0, width)
    return means[y] + rng.normal(size=(n, width)) * scales, y


def class_loop(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The obvious implementation: one (X - m_k) P (X - m_k)^T per class."""
    out = np.empty((len(x), len(means)))
    for k in range(len(means)):
        diff = x - means[k]
        out[:, k] = ((diff @ precision) * diff).sum(1)
    return out


def sklearn_per_class(x: np.ndarray, means: np.ndarray, lw: LedoitWolf) -> np.ndarray:
    return np.stack([lw.mahalanobis(x - means[k]) for k in range(len(means))], 1)


def time_setting(width: int, classes: int, n_fit: int, n_score: int, repeats: int) -> dict:
    rng = np.random.default_rng(width * 100 + classes)
    x_fit, y_fit = class_data(width, classes, max(n_fit, 3 * classes), rng)
    x, _ = class_data(width, classes, n_score, rng)
    shared = MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x_fit, y_fit)
    means, precision = shared.means_, shared.precision_
    lw = LedoitWolf(assume_centered=True).fit(x_fit - means[y_fit])
    assert np.allclose(class_loop(x, means, precision), shared.score_samples(x), rtol=1e-6)
    per_class = MahalanobisEstimator("per_class", "raw").fit(x_fit, y_fit)
    t_ours = timed(lambda: shared.score_samples(x), repeats)
    t_loop = timed(lambda: class_loop(x, means, precision), repeats)
    t_sk = timed(lambda: sklearn_per_class(x, means, lw), max(1, repeats // 2))
    t_pc = timed(lambda: per_class.score_samples(x), max(1, repeats // 2))
    return {
        "width": width,
        "classes": classes,
        "samples": n_score,
        "shared_samples_per_s": n_score / t_ours,
        "class_loop_samples_per_s": n_score / t_loop,
        "sklearn_samples_per_s": n_score / t_sk,
        "speedup_vs_class_loop": t_loop / t_ours,
        "speedup_vs_sklearn": t_sk / t_ours,
        "per_class_samples_per_s": n_score / t_pc,
    }


def throughput(quick: bool) -> list[dict[str, Any]]:
    n_fit, n_score = (400, 512) if quick else (2000, 2048)
    repeats = 2 if quick else 5
    rows = []
    for width in WIDTHS:
        for classes in CLASS_COUNTS:
            row = time_setting(width, classes, n_fit, n_score, repeats)
            rows.append(row)
            print(
                f"width {width:4d} classes {classes:2d}: shared {row['shared_samples_per_s']:9.0f}"
                f"/s, x{row['speedup_vs_class_loop']:.1f} vs class loop, "
                f"x{row['speedup_vs_sklearn']:.0f} vs sklearn; per-class "
                f"{row['per_class_samples_per_s']:8.0f}/s",
                flush=True,
            )
    return rows


def methods(workdir: Path, reuse: bool) -> dict[str, Any]:
    from aads.demo import run_demo
    from aads.ood.calibrate import package_features
    from aads.ood.selection import compare_methods

    config = load_config(ROOT / "config" / "demo.yaml")
    start = time.perf_counter()
    summary_path = workdir / "demo-summary.json"
    if reuse and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        summary = run_demo(config, workdir)
    demo_seconds = time.perf_counter() - start
    from aads.data.manifest import read_manifest

    rows = read_manifest(Path(summary["manifest"]))
    per_crop: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for crop, pkg in summary["adapters"].items():
        meta, parts = package_features(config, Path(pkg), rows, workdir / "data")
        counts[crop] = {k: int(len(v.labels)) for k, v in parts.items()}
        per_crop[crop] = compare_methods(parts, meta.classes, config.adapter.ood.threshold)
        print(f"{crop}: {len(per_crop[crop])} methods scored on {counts[crop]}", flush=True)
    averaged = []
    for i, first in enumerate(next(iter(per_crop.values()))):
        row = {k: first[k] for k in ("covariance", "feature_space", "relative", "threshold")}
        numeric = [k for k, v in first.items() if isinstance(v, float)]
        for k in numeric:
            values = [r[i][k] for r in per_crop.values() if k in r[i]]
            row[k] = float(np.nanmean(values)) if values else float("nan")
        averaged.append(row)
    best = best_method(averaged)
    averaged.sort(key=lambda r: (r is not best, -r["mean_auroc"]))
    return {
        "demo_seconds": demo_seconds,
        "counts": counts,
        "best": best,
        "averaged": averaged,
        "per_crop": per_crop,
    }


def finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def report(result: dict[str, Any]) -> str:
    lines = [f"# OOD benchmark ({result['mode']})", "", "## Scoring throughput", ""]
    lines += [
        "| width | classes | shared LW samples/s | x class loop | x sklearn "
        "| per-class cov samples/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["throughput"]:
        lines.append(
            f"| {r['width']} | {r['classes']} | {r['shared_samples_per_s']:.0f} | "
            f"{r['speedup_vs_class_loop']:.1f} | {r['speedup_vs_sklearn']:.0f} | "
            f"{r['per_class_samples_per_s']:.0f} |"
        )
    if "methods" in result:
        m = result["methods"]
        b = m["best"]
        lines += [
            "",
            "## Methods on the synthetic benchmark (mean over crops)",
            "",
            f"Best: {b['covariance']} / {b['feature_space']} / relative={b['relative']} / "
            f"threshold {b['threshold']}. Test images per crop: {m['counts']}.",
            "",
            method_table(m["averaged"]),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, prints only")
    parser.add_argument("--skip-methods", action="store_true", help="throughput only")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".aads" / "bench" / "ood-demo")
    parser.add_argument("--reuse", action="store_true", help="reuse the workdir's demo run")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    result: dict[str, Any] = {"mode": mode, "machine": machine()}
    result["throughput"] = throughput(args.quick)
    if not args.skip_methods:
        result["methods"] = methods(args.workdir, args.reuse)
    result["load_average_after"] = load_average()
    text = report(result)
    print(text)
    out = args.out or (None if args.quick else RESULTS / "ood.json")
    if out is not None:
        atomic_write_text(out, json.dumps(finite(result), indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), text)
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
