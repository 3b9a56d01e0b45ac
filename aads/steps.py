"""The training pipeline's steps as plain functions: folders in, folders and numbers out.

Each KFP component in ``components/`` parses its parameters, calls one function here and
writes what it returns into KFP artifacts; the same functions run under `kfp.local`, in the
component image on a cluster, and in tests. Outputs are whole folders written to a temporary
sibling and renamed (the adapter package writer does this), so a retried or killed task never
leaves half an artifact that the next task would read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aads.adapters.package import AdapterMeta, read_meta, verify_package
from aads.config import PlatformConfig
from aads.data.ingest import ingest, load_ingest_summary, write_ingest_outputs
from aads.data.manifest import ManifestRow, read_manifest
from aads.errors import BadInput
from aads.gate import GateResult, adapter_gate, router_gate
from aads.progress import Progress
from aads.storage import fetch_dir_cached

T = TypeVar("T")
MANIFEST_FILE = "manifest.csv"
DATA_URI_KEY = "data_uri"


class StepError(BadInput):
    """A step that cannot run with these inputs; the message says which input and why."""


# --------------------------------------------------------------------------- data


def preprocess(
    config: PlatformConfig, data_uri: str, out_dir: Path, *, progress: Progress | None = None
) -> dict[str, float]:
    """Ingest the images at `data_uri` (a folder or ``s3://bucket/prefix``) into a manifest."""
    root = fetch_dir_cached(data_uri, config.storage)
    result = ingest(root, config=config, progress=progress)
    if not result.rows:
        raise StepError(f"{data_uri}: no usable images (see rejects.csv for why)")
    result.summary[DATA_URI_KEY] = data_uri
    write_ingest_outputs(result, Path(out_dir))
    return {
        "images": float(len(result.rows)),
        "rejected": float(len(result.rejects)),
        **{f"split_{k}": float(v) for k, v in result.summary.get("splits", {}).items()},
    }


@dataclass(frozen=True)
class ManifestInputs:
    rows: list[ManifestRow]
    data_root: Path
    manifest_sha256: str


def manifest_inputs(config: PlatformConfig, manifest_dir: Path) -> ManifestInputs:
    """Rows, a local copy of the images (fetched and cached when remote) and the hash."""
    manifest_dir = Path(manifest_dir)
    summary = load_ingest_summary(manifest_dir)
    root = fetch_dir_cached(summary.get(DATA_URI_KEY) or summary["root"], config.storage)
    return ManifestInputs(
        read_manifest(manifest_dir / MANIFEST_FILE), root, summary.get("manifest_sha256", "")
    )


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RouterOutcome:
    metrics: dict[str, float]
    gate: GateResult


def train_router_step(
    config: PlatformConfig,
    manifest_dir: Path,
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> RouterOutcome:
    from aads.router import train_router

    data = manifest_inputs(config, manifest_dir)
    result = _staged(
        Path(out_dir),
        lambda tmp: train_router(config, data.rows, data.data_root, tmp, progress=progress),
    )
    return RouterOutcome(result.metrics, router_gate(result.metrics, config.gate))


def phase_applies(config: PlatformConfig, crop: str, phase: str) -> bool:
    """Phase 1 always; phase 2 when the crop has class batches; phase 3 when it has domains."""
    spec = config.crop(crop)
    return {"1": True, "2": bool(spec.phase2_batches), "3": bool(spec.phase3_domains)}[phase]


def train_phase_step(
    config: PlatformConfig,
    manifest_dir: Path,
    crop: str,
    phase: str,
    previous: Path | None,
    out_dir: Path,
    *,
    phases: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Train `phase` of `crop` from `previous`; a phase not asked for or not configured for
    the crop passes the previous package through unchanged (metrics then say ``skipped``)."""
    if phase not in ("1", "2", "3"):
        raise StepError(f"phase must be 1, 2 or 3, got {phase!r}")
    config.crop(crop)  # unknown crop: ConfigError naming the configured ones
    wanted = phases is None or phase in phases
    if not (wanted and phase_applies(config, crop, phase)):
        if previous is None:
            raise StepError(f"phase 1 of {crop} is needed before phase {phase}: nothing to pass")
        verify_package(previous)
        _staged(Path(out_dir), lambda tmp: shutil.copytree(previous, tmp, dirs_exist_ok=True))
        return {"skipped": 1.0}
    if phase != "1" and previous is None:
        raise StepError(f"phase {phase} of {crop} needs the previous phase's package")
    from aads.adapters.phases.phase1 import train_phase1
    from aads.adapters.phases.phase2 import train_phase2
    from aads.adapters.phases.phase3 import train_phase3

    data = manifest_inputs(config, manifest_dir)
    common = {"manifest_sha256": data.manifest_sha256, "progress": progress}
    if phase == "1":
        pkg = train_phase1(config, crop, data.rows, data.data_root, Path(out_dir), **common)
    else:
        train = train_phase2 if phase == "2" else train_phase3
        pkg = train(config, crop, data.rows, data.data_root, previous, Path(out_dir), **common)
    return {k: v for k, v in read_meta(pkg).metrics.items() if k.startswith(f"phase{phase}_")}


def train_phase_trainjob_step(
    config: PlatformConfig,
    config_text: str,
    manifest_dir: Path,
    crop: str,
    phase: str,
    previous: Path | None,
    out_dir: Path,
    *,
    run_id: str,
    image: str,
    namespace: str,
    nodes: int,
    gpus_per_node: int,
) -> dict[str, float]:
    """`train_phase_step` as a Kubeflow Trainer TrainJob (torchrun DDP on `nodes` x
    `gpus_per_node` GPUs): inputs published to a scratch prefix of the object store, the job
    created and awaited, its package fetched back into `out_dir`."""
    from aads.storage import get_dir, open_store, put_dir
    from aads.trainjob import TrainJobSpec, job_name, render_trainjob, run_trainjob, scratch_uris

    name = job_name(run_id, crop, phase)
    prefix = "/".join(p for p in (config.storage.prefix.strip("/"), "trainjobs", name) if p)
    scratch = f"s3://{config.storage.bucket}/{prefix}"
    uris = scratch_uris(scratch)
    for key, local in (("manifest", manifest_dir), ("previous", previous)):
        if local is not None:
            store, key_prefix = open_store(uris[key], config.storage)
            put_dir(store, Path(local), key_prefix)
    spec = TrainJobSpec(
        name=name,
        namespace=namespace,
        image=image,
        crop=crop,
        phase=phase,
        scratch=scratch,
        has_previous=previous is not None,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
    )
    run_trainjob(render_trainjob(spec, config_text))
    store, out_prefix = open_store(uris["output"], config.storage)
    _staged(Path(out_dir), lambda tmp: get_dir(store, out_prefix, tmp))
    verify_package(out_dir)
    return {k: v for k, v in read_meta(out_dir).metrics.items() if k.startswith(f"phase{phase}_")}


def calibrate_step(
    config: PlatformConfig,
    manifest_dir: Path,
    package: Path,
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> dict[str, float]:
    """A copy of `package` with its OOD calibration (the input artifact stays immutable)."""
    from aads.ood.calibrate import calibrate_package

    verify_package(package)
    data = manifest_inputs(config, manifest_dir)
    out_dir = Path(out_dir)
    _staged(out_dir, lambda tmp: shutil.copytree(package, tmp, dirs_exist_ok=True))
    result = calibrate_package(
        config,
        out_dir,
        data.rows,
        data.data_root,
        manifest_sha256=data.manifest_sha256,
        progress=progress,
    )
    return result.metrics


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    meta: AdapterMeta
    gate: GateResult
    metrics: dict[str, float]
    model_card: str
    html: str


def evaluate_step(
    config: PlatformConfig, package: Path, *, kfp_run_id: str = "", git_sha: str = ""
) -> Evaluation:
    """Gate, model card and HTML report of a calibrated package."""
    from aads.modelcard import backbone_licence, model_card
    from aads.reporting import finite_metrics, html_report

    verify_package(package)
    meta = read_meta(package)
    gate = adapter_gate(meta, config.gate)
    card = model_card(
        meta,
        kfp_run_id=kfp_run_id,
        git_sha=git_sha,
        gate=gate.model_dump(),
        backbone_licence=backbone_licence(str(meta.backbone_settings.get("source", ""))),
    )
    return Evaluation(meta, gate, finite_metrics(meta), card, html_report(package, meta, gate))


def _staged(out_dir: Path, write: Callable[[Path], T]) -> T:
    """Run `write(tmp)` into a temporary sibling of `out_dir`, then rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        result = write(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- registration


def version_tags(
    meta: AdapterMeta, gate: GateResult, metrics: dict[str, float], *, git_sha: str
) -> dict[str, str]:
    """What every registered adapter version says about itself (MLflow tags are strings)."""
    from aads.modelcard import backbone_licence

    source = str(meta.backbone_settings.get("source", ""))
    return {
        "crop": meta.crop,
        "phase": meta.last_phase,
        "classes": ",".join(meta.classes),
        "domains": ",".join(meta.domains),
        "git_sha": git_sha,
        "manifest_sha256": meta.manifest_sha256,
        "backbone": source,
        "backbone_licence": backbone_licence(source),
        "gate": "passed" if gate.passed else "failed",
        "gate_detail": gate.summary(),
        **{f"metric.{k}": f"{v:.6g}" for k, v in sorted(metrics.items())},
    }


def register_adapter_step(
    config: PlatformConfig,
    package: Path,
    *,
    tracking_uri: str | None,
    kfp_run_id: str,
    git_sha: str = "",
):  # -> aads.registry.RegisteredVersion (imported lazily: MLflow is heavy)
    """Register a gated package as the next version of ``aads-adapter-<crop>`` (alias
    ``candidate``). Re-running with the same `kfp_run_id` returns the existing version."""
    from aads.registry import Registry, adapter_model_name

    evaluation = evaluate_step(config, package, kfp_run_id=kfp_run_id, git_sha=git_sha)
    if not evaluation.gate.passed:
        raise StepError(f"not registering {evaluation.meta.crop}: gate {evaluation.gate.summary()}")
    registry = Registry(config.registry, tracking_uri=tracking_uri)
    pictures = sorted(Path(package).glob("metrics/*.png")) + sorted(Path(package).glob("ood/*.png"))
    return registry.register_package(
        Path(package),
        name=adapter_model_name(config.registry, evaluation.meta.crop),
        tags=version_tags(evaluation.meta, evaluation.gate, evaluation.metrics, git_sha=git_sha),
        description=evaluation.model_card,
        metrics=evaluation.metrics,
        images={p.parent.name + "_" + p.name: p for p in pictures},
        kfp_run_id=kfp_run_id,
    )


def register_router_step(
    config: PlatformConfig,
    router_dir: Path,
    *,
    tracking_uri: str | None,
    kfp_run_id: str,
    git_sha: str = "",
):
    """Register a gated router as the next version of the router model (alias ``candidate``)."""
    import json

    from aads.modelcard import backbone_licence
    from aads.registry import Registry

    meta = json.loads((Path(router_dir) / "router.json").read_text())
    metrics = {k: float(v) for k, v in meta.get("metrics", {}).items()}
    gate = router_gate(metrics, config.gate)
    if not gate.passed:
        raise StepError(f"not registering the router: gate {gate.summary()}")
    source = str(meta.get("backbone_settings", {}).get("source", ""))
    card = "\n".join(
        [
            "# AADS crop router",
            "",
            f"Routes a photo to one of the crops {', '.join(meta['crops'])} and names the plant "
            f"part ({', '.join(meta['parts'])}) with two linear heads on frozen `{source}` "
            "features.",
            "",
            f"Backbone licence: {backbone_licence(source)}.",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())],
            "",
            f"Gate: {gate.summary()}. KFP run: `{kfp_run_id}`. Git: `{git_sha}`.",
        ]
    )
    tags = {
        "crops": ",".join(meta["crops"]),
        "git_sha": git_sha,
        "backbone": source,
        "backbone_licence": backbone_licence(source),
        "gate": "passed",
        **{f"metric.{k}": f"{v:.6g}" for k, v in sorted(metrics.items())},
    }
    return Registry(config.registry, tracking_uri=tracking_uri).register_package(
        Path(router_dir),
        name=config.registry.router_model_name,
        tags=tags,
        description=card + "\n",
        metrics=metrics,
        images={p.name: p for p in sorted(Path(router_dir).glob("metrics/*.png"))},
        kfp_run_id=kfp_run_id,
    )
