"""What the demo's models reach, over several seeds: the measurements the gate levels in
``config/demo.yaml`` are set from.

Reproduce with ``.venv/bin/python benchmarks/gate_levels.py`` (``--seeds 0,1,2``; about 5
minutes per seed on 2 idle CPU cores once the demo backbone is cached); writes
``benchmarks/results/gate_levels.json`` and ``gate_levels.md``. Seeds may also run as separate
processes (``--seeds 1 --out /tmp/s1.json``), combined afterwards with ``--merge``.

Each seed runs the in-process demo flow (`aads.demo.run_demo`: the same steps the pipeline
runs, without KFP and MLflow) on the demo spec with the seed as the synthetic data's draw, the
split seed and every training seed. The stand-in backbone, the "foundation model", stays the
same, as real DINOv3 weights would. Per crop it records what the gate checks, computed as the
gate and the model card compute it (`aads.headline`): accuracy over every test image of the
last phase with its 95 % Wilson interval, retention of each continual phase, near- and far-OOD
AUROC, the calibrated operating point, and the gate's verdict at the spec's levels; then the
minimum, mean and maximum over seeds.

Beside each AUROC it records the *chance band*: the AUROC a detector that cannot tell the two
sets apart still exceeds with probability 2.5 % on the same counts (the Mann-Whitney null,
normal approximation: 0.5 + 1.96 * sqrt((n_id + n_ood + 1) / (12 n_id n_ood))). A level under
it would pass a useless check on a lucky draw, so no AUROC level is set below it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

import yaml
from machine import load_average, machine

from aads import headline
from aads.adapters.package import read_meta
from aads.atomic import atomic_write_text
from aads.config import PlatformConfig, parse_config
from aads.gate import adapter_gate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEASURES = (
    "accuracy",
    "accuracy_ci95_low",
    "retention_phase2",
    "retention_phase3",
    "near_ood_auroc",
    "far_ood_auroc",
    "id_rejected",
    "near_accepted",
    "far_accepted",
)
CHANCE_QUANTILE = 0.975


def chance_band(n_id: float | None, n_ood: float | None) -> float | None:
    """The AUROC a chance-level detector exceeds with probability 2.5 % on these counts."""
    if not n_id or not n_ood:
        return None
    sd = math.sqrt((n_id + n_ood + 1) / (12 * n_id * n_ood))
    return 0.5 + NormalDist().inv_cdf(CHANCE_QUANTILE) * sd


def seeded(spec: dict[str, Any], seed: int) -> PlatformConfig:
    """The spec with `seed` as data draw, split seed and every training seed."""
    spec = json.loads(json.dumps(spec))
    spec["data"]["split_seed"] = seed
    spec["data"].setdefault("synth", {})["seed"] = seed
    for phase in ("router", "phase1", "phase2", "phase3"):
        spec.setdefault("training", {}).setdefault(phase, {})["seed"] = seed
    return parse_config(spec)


def measure(config: PlatformConfig, workdir: Path) -> dict[str, Any]:
    """One demo run: per crop the gate's numbers and verdict; the router's crop accuracy."""
    from aads.demo import run_demo

    start = time.perf_counter()
    summary = run_demo(config, workdir)
    crops = {}
    for crop, pkg in summary["adapters"].items():
        meta = read_meta(Path(pkg))
        gate = adapter_gate(meta, config)
        top = headline.build(Path(pkg), meta, gate)
        numbers = top.metrics()
        for r in top.retention:
            numbers[f"retention_phase{r.phase}"] = r.retention
        ood = meta.ood or {}
        crops[crop] = {
            "measures": {k: numbers.get(k) for k in MEASURES},
            "test_images": numbers.get("test_images"),
            "chance_band": {
                kind: chance_band(ood.get("n_id"), ood.get(f"{kind}_n_ood"))
                for kind in ("near", "far")
            },
            "gate": gate.summary(),
            "passed": gate.passed,
        }
    router = next(s for s in summary["steps"] if s["name"] == "train router")
    return {
        "seconds": time.perf_counter() - start,
        "router_crop_accuracy": router.get("test_crop_accuracy"),
        "crops": crops,
    }


def spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per crop and measure: min, mean and max over the seeds that measured it."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for crop in runs[0]["crops"]:
        out[crop] = {}
        for key in MEASURES:
            values = [
                r["crops"][crop]["measures"][key]
                for r in runs
                if r["crops"][crop]["measures"].get(key) is not None
            ]
            if values:
                out[crop][key] = {
                    "min": min(values),
                    "mean": statistics.mean(values),
                    "max": max(values),
                }
    return out


def report(result: dict[str, Any]) -> str:
    gate = result["gate"]
    seeds = [r["seed"] for r in result["runs"]]
    lines = [
        "# Gate levels: what the demo's models reach",
        "",
        f"`{result['config']}`, seeds {', '.join(map(str, seeds))} (data draw, split and "
        f"training seeds); {result['machine']['cpu_count']} CPU cores, load after "
        f"{result['load_after']}. Accuracy is over every test image of the last phase; "
        "retention per continual phase; OOD AUROC near (the crop's hold-out diseases) and far "
        "(other crops); the rates are at the calibrated thresholds.",
        "",
        "## Over seeds (min / mean / max)",
        "",
        "| crop | " + " | ".join(MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for crop, measures in result["spread"].items():
        cells = [
            "{min:.3f} / {mean:.3f} / {max:.3f}".format(**measures[k]) if k in measures else "-"
            for k in MEASURES
        ]
        lines.append(f"| {crop} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per seed, and the gate at the spec's levels",
        "",
        "Levels (`gate:` in the spec): " + ", ".join(f"{k} {v}" for k, v in gate.items()) + ".",
        "",
        "Chance band: the AUROC a detector that cannot tell the sets apart exceeds with "
        "probability 2.5 % on that run's counts (n in-distribution test images vs n OOD).",
        "",
        "| seed | seconds | router crop acc. | crop | chance band near / far | gate |",
        "|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for crop, c in run["crops"].items():
            band = " / ".join(
                f"{v:.3f}" if v is not None else "-" for v in c["chance_band"].values()
            )
            lines.append(
                f"| {run['seed']} | {run['seconds']:.0f} | {run['router_crop_accuracy']:.3f} | "
                f"{crop} | {band} | {c['gate']} |"
            )
    return "\n".join(lines) + "\n"


def _finite(value: object) -> object:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "demo.yaml")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".aads" / "bench" / "gate_levels")
    parser.add_argument("--out", type=Path, default=RESULTS / "gate_levels.json")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="measure nothing: combine the runs of these result files (seeds run as separate "
        "processes, e.g. in parallel) into one report",
    )
    args = parser.parse_args(argv)
    spec = yaml.safe_load(args.config.read_text())
    if args.merge:
        merged = [json.loads(path.read_text()) for path in args.merge]
        runs = sorted((run for m in merged for run in m["runs"]), key=lambda run: run["seed"])
        load_after = [m["load_after"] for m in merged]  # each run's, not the merge's
    else:
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            run = {"seed": seed, **measure(seeded(spec, seed), args.workdir / f"seed{seed}")}
            runs.append(run)
            print(f"seed {seed}: {run['seconds']:.0f} s", flush=True)
        load_after = load_average()
    result = {
        "machine": machine(),
        "config": os.path.relpath(args.config.resolve(), ROOT),
        "gate": parse_config(spec).gate.model_dump(),
        "runs": runs,
        "spread": spread(runs),
        "load_after": load_after,
    }
    text = report(result)
    print(text)
    payload = json.loads(json.dumps(result, default=_finite), parse_constant=lambda _: None)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
