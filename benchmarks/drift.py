"""Drift statistics: how often each fires when it must (power) and when it must not (false
alarms), on the fixtures the tests use, with the settings `aads monitor` ships.

Reproduce with ``.venv/bin/python benchmarks/drift.py [--quick]``; writes
``benchmarks/results/drift.json`` and ``drift.md``.

- unknown rate: a week of traffic of N answers (N = 2000 and 10000), capture keeping every
  unknown and 5 % of the rest (by hash, here by a seeded draw), calibrated rejection rate 5 %;
  the field's true unknown rate 5 % (no drift), 7.5 % (1.5x), 10 % (2x), 15 % (3x). Reported:
  the share of runs with p < alpha, and the share *significant* (p < alpha and the alert
  minimums: 10 unknowns, 1.5x the calibrated rate).
- domain mix: training 50 / 30 / 20 % over three domains, 200 recent images drawn from the
  training mix (no drift) or from mixes 0.1 and 0.2 away in total variation distance.
- feature MMD: 512 reference rows and 200 recent rows of 64-d Gaussians; recent rows shifted
  by delta along every axis (0: no drift), or a new cluster making up a share of them (what
  a new disease does to the features).

Every rate is over `runs` seeded repetitions; alpha 0.01 throughout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import load_average, machine

from aads.atomic import atomic_write_text
from aads.drift.stats import ALPHA, domain_mix_check, mmd_check, unknown_rate_check

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
P0, SAMPLE_RATE = 0.05, 0.05


def unknown_rate_rows(runs: int) -> list[dict[str, Any]]:
    rows = []
    for n in (2000, 10_000):
        for true_rate in (0.05, 0.075, 0.10, 0.15):
            fired = significant = 0
            for seed in range(runs):
                rng = np.random.default_rng(seed)
                unknown = rng.random(n) < true_rate
                sampled = rng.random(n) < SAMPLE_RATE
                counts = {SAMPLE_RATE: (int(unknown.sum()), int((~unknown & sampled).sum()))}
                check = unknown_rate_check(counts, P0)
                fired += check.p_value < ALPHA
                significant += check.significant
            rows.append(
                {
                    "answers": n,
                    "true_rate": true_rate,
                    "ratio": true_rate / P0,
                    "p_below_alpha": fired / runs,
                    "significant": significant / runs,
                }
            )
    return rows


def domain_mix_rows(runs: int) -> list[dict[str, Any]]:
    training = {"base": 0.5, "field": 0.3, "low_light": 0.2}
    mixes = {0.0: [0.5, 0.3, 0.2], 0.1: [0.4, 0.4, 0.2], 0.2: [0.3, 0.5, 0.2]}
    rows = []
    for tvd, mix in mixes.items():
        significant = 0
        for seed in range(runs):
            counts = np.random.default_rng(seed).multinomial(200, mix)
            observed = dict(zip(training, counts.tolist(), strict=True))
            significant += domain_mix_check(observed, training).significant
        rows.append({"images": 200, "tvd": tvd, "mix": mix, "significant": significant / runs})
    return rows


def mmd_rows(runs: int) -> list[dict[str, Any]]:
    rows = []
    width, n_ref, n_recent = 64, 512, 200
    cases = [("shift", d) for d in (0.0, 0.05, 0.1, 0.2)] + [("new cluster", s) for s in (0.1, 0.2)]
    for kind, amount in cases:
        significant, seconds = 0, []
        for seed in range(runs):
            rng = np.random.default_rng(seed)
            reference = rng.normal(size=(n_ref, width))
            recent = rng.normal(size=(n_recent, width))
            if kind == "shift":
                recent += amount
            else:
                k = int(round(amount * n_recent))
                recent[:k] = rng.normal(size=(k, width)) * 0.5 + 2.0 * rng.normal(size=width)
            start = time.perf_counter()
            significant += mmd_check(reference, recent, seed=seed).significant
            seconds.append(time.perf_counter() - start)
        rows.append(
            {
                "case": kind,
                "amount": amount,
                "reference": n_ref,
                "recent": n_recent,
                "significant": significant / runs,
                "seconds_median": round(float(np.median(seconds)), 3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", type=Path, default=RESULTS / "drift.json")
    args = parser.parse_args(argv)
    runs = (
        {"rate": 100, "mix": 100, "mmd": 20}
        if args.quick
        else {"rate": 1000, "mix": 500, "mmd": 100}
    )
    load_before = load_average()
    result = {
        "benchmark": "drift",
        "machine": machine(),
        "load_average_1m_before": load_before,
        "alpha": ALPHA,
        "runs": runs,
        "unknown_rate": unknown_rate_rows(runs["rate"]),
        "domain_mix": domain_mix_rows(runs["mix"]),
        "feature_mmd": mmd_rows(runs["mmd"]),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    lines = [
        "# Drift statistics: power and false alarms",
        "",
        f"alpha {ALPHA}; repetitions {runs}. Command: `.venv/bin/python benchmarks/drift.py`.",
        "",
        f"## Unknown rate (calibrated {P0:.0%}, capture sample rate {SAMPLE_RATE:.0%})",
        "",
        "| answers | true rate | x calibrated | p < alpha | significant (with minimums) |",
        "|---|---|---|---|---|",
        *(
            f"| {r['answers']} | {r['true_rate']:.1%} | {r['ratio']:.1f} | "
            f"{r['p_below_alpha']:.3f} | {r['significant']:.3f} |"
            for r in result["unknown_rate"]
        ),
        "",
        "## Domain mix (training 50/30/20 %, 200 recent images)",
        "",
        "| TVD from training | recent mix | significant |",
        "|---|---|---|",
        *(f"| {r['tvd']} | {r['mix']} | {r['significant']:.3f} |" for r in result["domain_mix"]),
        "",
        "## Feature MMD (64-d, 512 reference vs 200 recent rows, 500 permutations)",
        "",
        "| case | amount | significant | seconds per test |",
        "|---|---|---|---|",
        *(
            f"| {r['case']} | {r['amount']} | {r['significant']:.3f} | {r['seconds_median']} |"
            for r in result["feature_mmd"]
        ),
    ]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
