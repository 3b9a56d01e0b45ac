"""Gaussian statistics in numpy or torch: which backend `aads.gaussians` should use.

Reproduce with ``.venv/bin/python benchmarks/gaussians.py [--quick]``; writes
``benchmarks/results/gaussians.json``.

The OOD estimators, classifier alignment and the CONEC domain selector share one
implementation of class-conditional Gaussians with a shared covariance. This times the same
algorithm written once with numpy and once with torch (float64, CPU, each library's own BLAS
and LAPACK: OpenBLAS for numpy, MKL for torch's CPU wheel), stage by stage, on 1 and on 2
threads each, on the shapes they see: widths 384 / 768 / 1024 (DINOv3 ViT-S / B / L), 10 and
38 classes (38 = PlantVillage), 3000 samples to fit:

- ``statistics``: per-class sums, the pooled within-class scatter and the sum of fourth powers
  of the residual norms (the sufficient statistics of Ledoit-Wolf; one pass over the data);
- ``ledoit_wolf``: the shrunk covariance and its shrinkage from those statistics;
- ``precision``: its pseudo-inverse (scipy's ``pinvh``: eigendecomposition, small eigenvalues
  cut off);
- ``factor``: L with P = L L^T (a second eigendecomposition), so scoring is matrix products;
- ``score``: squared Mahalanobis distances of 2048 samples to every class (a calibration or
  evaluation pass); ``score_16`` the same for 16 samples (one serving request's batch).

Both backends are checked against scikit-learn's ``LedoitWolf`` (precision to 1e-6) before
anything is timed. Every ratio (numpy time / torch time) comes from one run, the two backends
interleaved repeat by repeat, so load on this shared machine hits both alike. The production
path (`aads.gaussians` through `MahalanobisEstimator.fit` and ``score_samples``) is timed too.
"""

from __future__ import annotations

import argparse
import json
import statistics as stats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import load_average, machine
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_limits

from aads.atomic import atomic_write_text
from aads.ood import MahalanobisEstimator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = (384, 768, 1024)
CLASS_COUNTS = (10, 38)
THREADS = (1, 2)
STAGES = ("statistics", "ledoit_wolf", "precision", "factor", "score", "score_16")


# --------------------------------------------------------------------------- the two backends


def np_statistics(x: np.ndarray, y: np.ndarray, classes: int):
    counts = np.bincount(y, minlength=classes)
    sums = np.zeros((classes, x.shape[1]))
    np.add.at(sums, y, x)
    r = x - (sums / counts[:, None])[y]
    return counts, sums, r.T @ r, float(np.square(np.square(r).sum(1)).sum())


def np_ledoit_wolf(counts, scatter, fourth):
    n, p = float(counts.sum()), scatter.shape[0]
    emp = scatter / n
    mu = np.trace(emp) / p
    delta_ = np.square(emp).sum()
    beta = min((fourth / n - delta_) / (p * n), (delta_ - 2 * mu * np.trace(emp) + p * mu**2) / p)
    delta = (delta_ - 2 * mu * np.trace(emp) + p * mu**2) / p
    shrinkage = 0.0 if beta == 0 or delta == 0 else beta / delta
    cov = (1 - shrinkage) * emp
    cov[np.diag_indices(p)] += shrinkage * mu
    return cov


def np_pinvh(cov):
    s, u = np.linalg.eigh(cov)
    keep = np.abs(s) > cov.shape[0] * np.finfo(np.float64).eps * np.abs(s).max()
    return (u[:, keep] / s[keep]) @ u[:, keep].T


def np_factor(precision):
    s, u = np.linalg.eigh((precision + precision.T) / 2)
    return u * np.sqrt(np.clip(s, 0, None))


def np_score(x, means, factor):
    z, mz = x @ factor, means @ factor
    return (z * z).sum(1)[:, None] - 2 * (z @ mz.T) + (mz * mz).sum(1)[None]


def t_statistics(x: torch.Tensor, y: torch.Tensor, classes: int):
    counts = torch.bincount(y, minlength=classes)
    sums = torch.zeros(classes, x.shape[1], dtype=x.dtype).index_add_(0, y, x)
    r = x - (sums / counts[:, None])[y]
    return counts, sums, r.T @ r, float(r.square().sum(1).square().sum())


def t_ledoit_wolf(counts, scatter, fourth):
    n, p = float(counts.sum()), scatter.shape[0]
    emp = scatter / n
    mu = torch.trace(emp) / p
    delta_ = emp.square().sum()
    delta = (delta_ - 2 * mu * torch.trace(emp) + p * mu**2) / p
    beta = torch.minimum((fourth / n - delta_) / (p * n), delta)
    shrinkage = 0.0 if beta == 0 or delta == 0 else float(beta / delta)
    cov = (1 - shrinkage) * emp
    cov.diagonal().add_(shrinkage * mu)
    return cov


def t_pinvh(cov):
    s, u = torch.linalg.eigh(cov)
    keep = s.abs() > cov.shape[0] * torch.finfo(torch.float64).eps * s.abs().max()
    return (u[:, keep] / s[keep]) @ u[:, keep].T


def t_factor(precision):
    s, u = torch.linalg.eigh((precision + precision.T) / 2)
    return u * s.clamp(min=0).sqrt()


def t_score(x, means, factor):
    z, mz = x @ factor, means @ factor
    return (z * z).sum(1)[:, None] - 2 * (z @ mz.T) + (mz * mz).sum(1)[None]


# --------------------------------------------------------------------------- timing


def class_data(width: int, classes: int, n: int, rng: np.random.Generator):
    means = rng.normal(size=(classes, width))
    y = np.repeat(np.arange(classes), -(-n // classes))[:n]
    scales = rng.uniform(0.3, 2.0, width)
    return means[y] + rng.normal(size=(n, width)) * scales, y


def check_against_sklearn(x: np.ndarray, y: np.ndarray, classes: int) -> dict[str, float]:
    """Both backends' precision against sklearn's LedoitWolf on the same residuals."""
    means = np.stack([x[y == c].mean(0) for c in range(classes)])
    reference = LedoitWolf(assume_centered=True).fit(x - means[y]).precision_
    got_np = np_pinvh(np_ledoit_wolf(*_drop_sums(np_statistics(x, y, classes))))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    got_t = t_pinvh(t_ledoit_wolf(*_drop_sums(t_statistics(xt, yt, classes)))).numpy()
    scale = np.abs(reference).max()
    errors = {
        "numpy": float(np.abs(got_np - reference).max() / scale),
        "torch": float(np.abs(got_t - reference).max() / scale),
    }
    assert max(errors.values()) < 1e-6, errors
    return errors


def _drop_sums(statistics):
    counts, _, scatter, fourth = statistics
    return counts, scatter, fourth


def backend_stages(lib: str, x, y, xs, classes: int) -> dict[str, Callable[[], Any]]:
    """One closure per stage, each fed the previous stage's (precomputed) output."""
    if lib == "numpy":
        st, lw, pinv, fac, score = np_statistics, np_ledoit_wolf, np_pinvh, np_factor, np_score
    else:
        st, lw, pinv, fac, score = t_statistics, t_ledoit_wolf, t_pinvh, t_factor, t_score
    counts, sums, scatter, fourth = st(x, y, classes)
    cov = lw(counts, scatter, fourth)
    precision = pinv(cov)
    factor = fac(precision)
    means = sums / counts[:, None]
    return {
        "statistics": lambda: st(x, y, classes),
        "ledoit_wolf": lambda: lw(counts, scatter, fourth),
        "precision": lambda: pinv(cov),
        "factor": lambda: fac(precision),
        "score": lambda: score(xs, means, factor),
        "score_16": lambda: score(xs[:16], means, factor),
    }


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_setting(width: int, classes: int, n_fit: int, n_score: int, repeats: int) -> dict:
    rng = np.random.default_rng(width * 100 + classes)
    x, y = class_data(width, classes, n_fit, rng)
    xs, _ = class_data(width, classes, n_score, rng)
    errors = check_against_sklearn(x, y, classes)
    runs = {
        "numpy": backend_stages("numpy", x, y, xs, classes),
        "torch": backend_stages(
            "torch", torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xs), classes
        ),
    }
    production = {
        "fit": lambda: MahalanobisEstimator("shared_ledoit_wolf", "raw").fit(x, y),
    }
    fitted = production["fit"]()
    production["score"] = lambda: fitted.score_samples(xs)
    times: dict[str, dict[str, list[float]]] = {lib: {s: [] for s in STAGES} for lib in runs}
    prod_times: dict[str, list[float]] = {k: [] for k in production}
    for fn in [*runs["numpy"].values(), *runs["torch"].values(), *production.values()]:
        fn()  # warm-up: first calls pay for thread pools and allocations
    for _ in range(repeats):
        for stage in STAGES:
            for lib in runs:  # interleaved: the same load hits both backends
                times[lib][stage].append(seconds(runs[lib][stage]))
        for name, fn in production.items():
            prod_times[name].append(seconds(fn))
    median = {lib: {s: stats.median(v) for s, v in st.items()} for lib, st in times.items()}
    for lib in median:
        median[lib]["fit"] = sum(median[lib][s] for s in STAGES if not s.startswith("score"))
    return {
        "width": width,
        "classes": classes,
        "fit_samples": n_fit,
        "score_samples": n_score,
        "relative_error_vs_sklearn_precision": errors,
        "seconds": median,
        "numpy_over_torch": {k: median["numpy"][k] / median["torch"][k] for k in median["numpy"]},
        "production_seconds": {k: stats.median(v) for k, v in prod_times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    args = parser.parse_args(argv)
    n_fit, n_score, repeats = (600, 512, 2) if args.quick else (3000, 2048, 5)
    env = machine()
    env["numpy"] = np.__version__
    rows = []
    torch_threads = torch.get_num_threads()
    for threads in THREADS:
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            for width in WIDTHS:
                for classes in CLASS_COUNTS:
                    row = {
                        "threads": threads,
                        **time_setting(width, classes, n_fit, n_score, repeats),
                    }
                    rows.append(row)
                    ratio = row["numpy_over_torch"]
                    print(
                        f"{threads} thread(s), width {width:4d}, {classes:2d} classes: numpy/torch "
                        f"fit x{ratio['fit']:.2f} (statistics x{ratio['statistics']:.2f}, "
                        f"precision x{ratio['precision']:.2f}, factor x{ratio['factor']:.2f}), "
                        f"score x{ratio['score']:.2f}, score_16 x{ratio['score_16']:.2f}",
                        flush=True,
                    )
    torch.set_num_threads(torch_threads)
    result = {
        "mode": "quick" if args.quick else "full",
        "machine": env,
        "load_average_1m_end": load_average(),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "gaussians.json", json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
