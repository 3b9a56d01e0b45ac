"""Wall time of the local demo pipeline (what `make demo` runs), per step.

Reproduce with ``.venv/bin/python benchmarks/pipeline.py``; writes
``benchmarks/results/pipeline.json`` and ``pipeline.md``. Synthesises the demo data
(``config/demo.yaml``), then runs the KFP pipeline with `kfp.local` (SubprocessRunner) and a
local MLflow server, exactly as `aads pipeline demo`. Step times come from kfp.local's log
(start to finish of each task, including the ~5 s each task spends starting Python and
importing torch); ParallelFor runs crops concurrently, so step times add up to more than the
wall time. The demo backbone must be cached already (the first run pretrains it) or the
router step includes that one-off minute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from machine import load_average, machine

from aads.atomic import atomic_write_text
from aads.config import load_config
from aads.data.synth import synthesize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run(workdir: Path, config_path: Path) -> dict[str, Any]:
    from pipelines.local import run_local

    config = load_config(config_path)
    start = time.perf_counter()
    synthesize(config, workdir / "data", settings=config.data.synth)
    synth_seconds = time.perf_counter() - start
    result = run_local(config_path.read_text(), str(workdir / "data"), workdir)
    steps: dict[str, list[float]] = defaultdict(list)
    for task, seconds, _status in result.tasks:
        steps[task].append(seconds)
    return {
        "synthesise_seconds": synth_seconds,
        "pipeline_seconds": result.seconds,
        "total_seconds": synth_seconds + result.seconds,
        "steps": {
            task: {
                "count": len(times),
                "mean_seconds": statistics.mean(times),
                "max_seconds": max(times),
                "total_seconds": sum(times),
            }
            for task, times in steps.items()
        },
        "crops": {
            c.crop: {"passed": c.passed, "version": c.version, "metrics": c.metrics}
            for c in result.crops.values()
        },
        "router": {"passed": result.router.passed, "version": result.router.version},
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        "# Local demo pipeline (kfp.local)",
        "",
        f"Synthesise {result['synthesise_seconds']:.0f} s + pipeline "
        f"{result['pipeline_seconds']:.0f} s = {result['total_seconds']:.0f} s on "
        f"{result['machine']['cpu_count']} CPU cores (load after: {result['load_after']}).",
        "",
        "| step | runs | mean s | max s | total s |",
        "|---|---|---|---|---|",
    ]
    for task, s in result["steps"].items():
        lines.append(
            f"| {task} | {s['count']} | {s['mean_seconds']:.1f} | {s['max_seconds']:.1f} | "
            f"{s['total_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "demo.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".aads" / "bench" / "pipeline")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = parser.parse_args(argv)
    result = {"machine": machine(), **run(args.workdir, args.config)}
    result["load_after"] = load_average()
    text = report(result)
    print(text)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
