"""The in-process demo: the pipeline's main job, end to end in one process, no KFP or MLflow.

`aads demo` runs this (`make demo` runs the KFP pipeline itself, locally: `aads pipeline
demo`); the benchmarks use it to measure the training flow without a pipeline around it. Each
step is the same public function a user or a pipeline step calls (adapter phases through the
one phase runner, `aads.runner.run_phase`; the router through `aads.steps.run_router`); the
demo only chains them and times them, and it writes a JSON summary so the run can be checked
by a machine as well as read by a person. Given a folder of real images (``aads demo --data
DIR``) it skips the synthetic data and runs the same steps on them; `benchmarks/real.py`
measures the pipeline that way on PlantVillage.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from aads.adapters.package import read_meta
from aads.atomic import atomic_write_text
from aads.backbone import Backbone, load_backbone
from aads.config import PlatformConfig
from aads.data.ingest import ingest, require_images, write_ingest_outputs
from aads.data.manifest import ManifestRow
from aads.data.synth import synthesize
from aads.features import FeatureTable, extract_manifest_features, save_features
from aads.ood.calibrate import calibrate_package
from aads.phases import PHASES, ROUTER, Phase
from aads.progress import Progress
from aads.runner import ManifestInputs, run_phase
from aads.steps import run_router

T = TypeVar("T")
ProgressFactory = Callable[[str], AbstractContextManager[Progress]]


class _Steps:
    """Times named steps and collects a one-line result for each."""

    def __init__(self, console: Console | None):
        self.steps: list[dict] = []
        self.console = console

    def run(self, name: str, fn: Callable[[], tuple[str, dict, T]]) -> T:
        """Run `fn` -> (one-line result, JSON-able metrics, value handed to later steps)."""
        if self.console:
            self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        result, metrics, value = fn()
        seconds = time.perf_counter() - start
        self.steps.append({"name": name, "result": result, "seconds": seconds, **metrics})
        if self.console:
            self.console.print(f"{result} [dim]({seconds:.1f} s)[/]")
        return value


def _no_progress(_: str) -> AbstractContextManager[Progress]:
    from contextlib import contextmanager

    @contextmanager
    def noop() -> Iterator[Progress]:
        yield lambda done, total: None

    return noop()


def run_demo(
    config: PlatformConfig,
    workdir: Path,
    *,
    data: Path | None = None,
    progress_bar: ProgressFactory = _no_progress,
    console: Console | None = None,
) -> dict:
    """Synthesise data (or take the images in `data`), ingest it, train the router and every
    crop's adapter phases (1 DoRA, 2 SD-LoRA, 3 CONEC-LoRA, as configured) and calibrate their
    OOD checks; return and write a summary (per step, and each crop's final metrics)."""
    workdir = Path(workdir)
    data_dir = Path(data) if data is not None else workdir / "data"
    manifest_dir = workdir / "manifest"
    features_path = workdir / "features" / "router.safetensors"
    models = workdir / "models"
    router_dir = models / ROUTER.name
    steps = _Steps(console)

    def synth() -> tuple[str, dict, None]:
        with progress_bar("synthesising images") as progress:
            report = synthesize(config, data_dir, progress=progress)
        return f"{report.images} images in {data_dir}", {"images": report.images}, None

    def ingest_step() -> tuple[str, dict, list[ManifestRow]]:
        with progress_bar("checking images") as progress:
            result = ingest(data_dir, config=config, progress=progress)
        write_ingest_outputs(result, manifest_dir)
        require_images(result, manifest_dir)
        for warning in result.summary["warnings"]:
            if console:
                console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        splits = result.summary["splits"]
        text = (
            f"{len(result.rows)} accepted, {len(result.rejects)} rejected; "
            f"train/val/test {splits.get('train', 0)}/{splits.get('val', 0)}/"
            f"{splits.get('test', 0)}"
        )
        return text, {"manifest_sha256": result.manifest_sha256}, result.rows

    def features_step(rows: list[ManifestRow]) -> tuple[str, dict, tuple]:
        with progress_bar("backbone") as progress:
            backbone = load_backbone(config.router, config.storage, progress=progress)
        start = time.perf_counter()
        with progress_bar("router features") as progress:
            table = extract_manifest_features(backbone, rows, data_dir, progress=progress)
        rate = len(rows) / max(time.perf_counter() - start, 1e-9)
        save_features(table, features_path)
        dim = table.features.shape[1]
        text = f"{len(rows)} x {dim} features from {backbone.source} ({rate:.0f} images/s)"
        return text, {"feature_dim": dim, "images_per_second": rate}, (backbone, table)

    def router_step(backbone: Backbone, table: FeatureTable) -> tuple[str, dict, None]:
        data = ManifestInputs(rows, data_dir, digest, str(data_dir))
        outcome = run_router(config, data, router_dir, features=table, backbone=backbone)
        return f"{ROUTER.line(outcome.metrics)} (test)", outcome.metrics, None

    def adapter_step(crop: str, phase: Phase, previous: Path | None) -> tuple[str, dict, Path]:
        out = models / crop / phase.name
        with progress_bar(f"{crop}: phase {phase.number}") as progress:
            pkg = run_phase(
                config,
                phase,
                crop,
                rows,
                data_dir,
                previous,
                out,
                manifest_sha256=digest,
                progress=progress,
            )
        metrics = read_meta(pkg).metrics
        return phase.line(metrics), metrics, pkg

    def ood_step(pkg: Path) -> tuple[str, dict, dict]:
        nan = float("nan")
        with progress_bar(f"{read_meta(pkg).crop}: OOD calibration") as progress:
            result = calibrate_package(
                config, pkg, rows, data_dir, manifest_sha256=digest, progress=progress
            )
        m = {f"ood_{k}": v for k, v in result.metrics.items() if math.isfinite(v)}
        line = (
            f"AUROC near {m.get('ood_near_auroc', nan):.3f} / leave-one-out "
            f"{m.get('ood_loco_auroc', nan):.3f} / far {m.get('ood_far_auroc', nan):.3f}; "
            f"in-distribution rejected {m.get('ood_id_rejected', nan):.2f}"
        )
        return line, m, m

    if data is None:
        steps.run("synthesise data", synth)
    rows = steps.run("ingest + split", ingest_step)
    digest = steps.steps[-1]["manifest_sha256"]
    backbone, table = steps.run("router features", lambda: features_step(rows))
    steps.run("train router", lambda: router_step(backbone, table))
    packages: dict[str, str] = {}
    crop_metrics: dict[str, dict[str, float]] = {}
    for spec in config.crops:
        pkg: Path | None = None
        for phase in PHASES:
            if phase.applies(spec):
                pkg = steps.run(
                    f"{spec.name}: phase {phase.number} {phase.method}",
                    lambda c=spec.name, ph=phase, p=pkg: adapter_step(c, ph, p),
                )
        ood = steps.run(f"{spec.name}: OOD calibration", lambda p=pkg: ood_step(p))
        packages[spec.name] = str(pkg)
        crop_metrics[spec.name] = {**read_meta(pkg).metrics, **ood}

    summary = {
        "config": config.name,
        "workdir": str(workdir.resolve()),
        "manifest": str(manifest_dir / "manifest.csv"),
        "features": str(features_path),
        "router": str(router_dir),
        "adapters": packages,
        "metrics": crop_metrics,
        "steps": steps.steps,
    }
    summary_path = workdir / "demo-summary.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    summary["summary_path"] = str(summary_path)
    return summary
