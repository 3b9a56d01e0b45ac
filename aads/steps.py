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
from aads.data.manifest import ManifestRow, read_manifest, select
from aads.errors import BadInput
from aads.gate import GateResult, adapter_gate, router_gate
from aads.headline import Headline
from aads.progress import Progress
from aads.storage import fetch_dir_cached
from aads.tracking import GATE_DETAIL_TAG, GATE_TAG, RunRef, StepRun, step_run

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
    source: str  # the data URI the manifest was made from (the MLflow dataset's source)


def manifest_inputs(config: PlatformConfig, manifest_dir: Path) -> ManifestInputs:
    """Rows, a local copy of the images (fetched and cached when remote) and the hash."""
    manifest_dir = Path(manifest_dir)
    summary = load_ingest_summary(manifest_dir)
    source = summary.get(DATA_URI_KEY) or summary["root"]
    root = fetch_dir_cached(source, config.storage)
    return ManifestInputs(
        read_manifest(manifest_dir / MANIFEST_FILE),
        root,
        summary.get("manifest_sha256", ""),
        str(source),
    )


# --------------------------------------------------------------------------- tracking


def open_pipeline_run_step(
    config: PlatformConfig,
    config_text: str,
    *,
    tracking_uri: str,
    kfp_run_id: str,
    data_uri: str,
    crops: list[str],
    phases: list[str],
    run_file: Path,
    git_sha: str = "",
) -> dict[str, str]:
    """The pipeline run's parent run in MLflow (found again when the step is retried), named
    in `run_file`, the artifact every other step reads it from; returns the run's id,
    experiment and page (metadata for the KFP UI)."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    from aads.tracking import Tracker, write_run_file

    tracker = Tracker(config.registry, tracking_uri=tracking_uri)
    params = {
        "config": config.name,
        "data_uri": data_uri,
        "crops": ",".join(crops),
        "phases": ",".join(phases),
        "router.backbone": config.router.source,
        "adapter.backbone": config.adapter.backbone.source,
        "data.split_seed": str(config.data.split_seed),
        "git_sha": git_sha,
    }
    run_id = tracker.open_pipeline_run(
        kfp_run_id,
        run_name=f"{config.name} {kfp_run_id[:12]}",
        params=params,
        tags={MLFLOW_GIT_COMMIT: git_sha} if git_sha else {},
        config_text=config_text,
    )
    experiment_id = tracker.experiment_id(config.registry.experiment)
    return write_run_file(run_file, tracker.tracking_uri, run_id, experiment_id)


def close_pipeline_run_step(
    config: PlatformConfig, *, tracking_uri: str, kfp_run_id: str, succeeded: bool, message: str
) -> str:
    """End the parent run with the pipeline's outcome and a summary of every crop."""
    from aads.tracking import Tracker

    tracker = Tracker(config.registry, tracking_uri=tracking_uri)
    return tracker.close_pipeline_run(kfp_run_id, succeeded=succeeded, message=message)


def _params(config: PlatformConfig, **sections: object) -> dict[str, str]:
    """A step's settings as MLflow params: each section (a settings model or a value) under
    its name, plus the split seed every step's data depends on."""
    from aads.tracking import flat_params

    plain = {
        name: value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        for name, value in sections.items()
    }
    return flat_params({**plain, "data": {"split_seed": config.data.split_seed}})


PHASE_RUN_NAMES = {"1": "phase 1 (DoRA)", "2": "phase 2 (SD-LoRA)", "3": "phase 3 (CONEC-LoRA)"}


def _phase_params(config: PlatformConfig, crop: str, phase: str) -> dict[str, str]:
    spec, adapter = config.crop(crop), config.adapter
    if phase == "1":
        return _params(
            config,
            backbone=adapter.backbone,
            dora=adapter.dora,
            training=config.training.phase1,
            classes=spec.phase1_classes,
        )
    if phase == "2":
        return _params(
            config,
            backbone=adapter.backbone,
            sd_lora=adapter.sd_lora,
            training=config.training.phase2,
            batches=[" ".join(b) for b in spec.phase2_batches],
        )
    return _params(
        config,
        backbone=adapter.backbone,
        conec=adapter.conec,
        training=config.training.phase3,
        domains=spec.phase3_domains,
    )


def _log_manifest(
    run: StepRun, config: PlatformConfig, data: ManifestInputs, used: list[ManifestRow]
) -> None:
    """The ingested manifest as the step run's input dataset; `used`: this step's images."""
    run.log_dataset(
        data.rows,
        name=f"{config.name}-manifest",
        source=data.source,
        manifest_sha256=data.manifest_sha256,
        used=used,
    )


def _phase_run(
    config: PlatformConfig,
    tracking: RunRef | None,
    crop: str,
    phase: str,
    extra: dict[str, str] | None = None,
):  # -> a context manager yielding the phase's StepRun
    return step_run(
        config.registry,
        tracking,
        f"phase{phase}",
        crop=crop,
        run_name=f"{crop}: {PHASE_RUN_NAMES[phase]}",
        params={**_phase_params(config, crop, phase), **(extra or {})},
    )


def _log_phase(
    run: StepRun, pkg: Path, phase: str, before: int, *, replay: bool = False
) -> dict[str, float]:
    """A finished phase's metrics on its run: the package's ``phase<N>_*`` numbers, each task's
    numbers as a history over tasks (``task_<name>``, step = task number), its confusion
    matrix under ``plots/``; with `replay`, the epochs the package recorded (trained elsewhere,
    not logged as they ran). Returns the ``phase<N>_*`` numbers."""
    meta = read_meta(pkg)
    if replay:
        run.replay(epoch for record in meta.phases[before:] for epoch in record.history)
    numbers = {k: v for k, v in meta.metrics.items() if k.startswith(f"phase{phase}_")}
    run.log_metrics(numbers)
    for i, record in enumerate(meta.phases[before:], start=1):
        run.log_metrics({f"task_{k}": v for k, v in record.metrics.items()}, step=i)
        run.set_tags({f"task.{i}": f"{record.task or phase}: {', '.join(record.added)}"})
    run.log_files(sorted(Path(pkg).glob(f"metrics/phase{phase}_*.png")), "plots")
    return numbers


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
    tracking: RunRef | None = None,
    progress: Progress | None = None,
) -> RouterOutcome:
    """Train the crop router, gate it; with `tracking`, its MLflow run (settings, epochs,
    dataset, metrics, confusion matrices, gate verdict)."""
    from aads.router import train_router

    data = manifest_inputs(config, manifest_dir)
    params = _params(
        config,
        backbone=config.router,
        training=config.training.router,
        crops=config.crop_names,
        parts=config.parts,
    )
    with step_run(config.registry, tracking, "router", run_name="router", params=params) as run:
        _log_manifest(run, config, data, [r for r in data.rows if r.crop in config.crop_names])
        result = _staged(
            Path(out_dir),
            lambda tmp: train_router(
                config,
                data.rows,
                data.data_root,
                tmp,
                progress=progress,
                on_epoch_end=run.log_epoch,
            ),
        )
        gate = router_gate(result.metrics, config.gate)
        run.log_metrics(result.metrics)
        run.log_files(sorted(Path(out_dir).glob("metrics/*.png")), "plots")
        run.set_tags({GATE_TAG: gate.verdict, GATE_DETAIL_TAG: gate.summary()})
    return RouterOutcome(result.metrics, gate)


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
    tracking: RunRef | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Train `phase` of `crop` from `previous`; a phase not asked for or not configured for
    the crop passes the previous package through unchanged (metrics then say ``skipped``;
    no MLflow run). With `tracking`, the phase's MLflow run: settings, dataset, every epoch as
    it ends, the phase's metrics and confusion matrix."""
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
    before = len(read_meta(previous).phases) if previous is not None else 0
    with _phase_run(config, tracking, crop, phase) as run:
        _log_manifest(run, config, data, select(data.rows, crop=crop, phase=phase))
        common = {
            "manifest_sha256": data.manifest_sha256,
            "progress": progress,
            "on_epoch_end": run.log_epoch,
        }
        if phase == "1":
            pkg = train_phase1(config, crop, data.rows, data.data_root, Path(out_dir), **common)
        else:
            train = train_phase2 if phase == "2" else train_phase3
            pkg = train(config, crop, data.rows, data.data_root, previous, Path(out_dir), **common)
        return _log_phase(run, pkg, phase, before)


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
    tracking: RunRef | None = None,
) -> dict[str, float]:
    """`train_phase_step` as a Kubeflow Trainer TrainJob (torchrun DDP on `nodes` x
    `gpus_per_node` GPUs): inputs published to a scratch prefix of the object store, the job
    created and awaited, its package fetched back into `out_dir`. Its MLflow run (with
    `tracking`) has the settings, dataset and the phase's metrics, and the epochs the job's
    pods ran, from the package's record once the job is done."""
    from aads.storage import get_dir, open_store, put_dir
    from aads.trainjob import TrainJobSpec, job_name, render_trainjob, run_trainjob, scratch_uris

    name = job_name(run_id, crop, phase)
    prefix = "/".join(p for p in (config.storage.prefix.strip("/"), "trainjobs", name) if p)
    scratch = f"s3://{config.storage.bucket}/{prefix}"
    uris = scratch_uris(scratch)
    before = len(read_meta(previous).phases) if previous is not None else 0
    with _phase_run(config, tracking, crop, phase, {"trainjob": name, "nodes": str(nodes)}) as run:
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
        return _log_phase(run, Path(out_dir), phase, before, replay=True)


def calibrate_step(
    config: PlatformConfig,
    manifest_dir: Path,
    package: Path,
    out_dir: Path,
    *,
    tracking: RunRef | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """A copy of `package` with its OOD calibration (the input artifact stays immutable);
    with `tracking`, the calibration's MLflow run (settings, dataset, AUROCs, ROC curve)."""
    from aads.ood.calibrate import calibrate_package

    verify_package(package)
    data = manifest_inputs(config, manifest_dir)
    crop = read_meta(package).crop
    params = _params(config, ood=config.adapter.ood, backbone=config.adapter.backbone)
    with step_run(
        config.registry,
        tracking,
        "ood",
        crop=crop,
        run_name=f"{crop}: OOD calibration",
        params=params,
    ) as run:
        _log_manifest(run, config, data, data.rows)
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
        run.log_metrics(result.metrics)
        run.log_files(sorted(out_dir.glob("ood/*.png")), "plots")
        run.log_files(sorted(out_dir.glob("ood/*.json")), "ood")
    return result.metrics


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    meta: AdapterMeta
    gate: GateResult
    metrics: dict[str, float]
    headline: Headline
    model_card: str
    html: str


def evaluate_step(
    config: PlatformConfig,
    package: Path,
    *,
    kfp_run_id: str = "",
    git_sha: str = "",
    tracking: RunRef | None = None,
) -> Evaluation:
    """Gate, headline, model card and HTML report of a calibrated package. With `tracking`,
    the crop's evaluation run in MLflow records all of it, whether the gate passed or not."""
    from aads import headline
    from aads.modelcard import backbone_licence, model_card
    from aads.reporting import finite_metrics, html_report, pictures

    verify_package(package)
    meta = read_meta(package)
    gate = adapter_gate(meta, config)
    top = headline.build(package, meta, gate)
    card = model_card(
        meta,
        pkg_dir=package,
        kfp_run_id=kfp_run_id,
        git_sha=git_sha,
        gate=gate,
        backbone_licence=backbone_licence(str(meta.backbone_settings.get("source", ""))),
    )
    metrics = {**finite_metrics(meta), **top.metrics()}
    report = html_report(package, meta, gate)
    with step_run(
        config.registry,
        tracking,
        "evaluation",
        crop=meta.crop,
        run_name=f"{meta.crop}: evaluation",
        params=_params(config, gate=config.gate),
    ) as run:
        run.log_metrics(metrics)
        run.set_tags({GATE_TAG: gate.verdict, GATE_DETAIL_TAG: gate.summary()})
        run.log_text(card, "model_card.md")
        run.log_text(report, "report.html")
        run.log_text(gate.model_dump_json(indent=2), "gate.json")
        run.log_files(pictures(package), "plots")
    return Evaluation(meta, gate, metrics, top, card, report)


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


def version_tags(evaluation: Evaluation, *, git_sha: str) -> dict[str, str]:
    """What a registered adapter version says about itself in a few tags (MLflow tags are
    strings): what it is, where it came from, the gate, and the headline numbers as
    ``metric.<name>`` (accuracy with its 95 % interval, retention, near- and far-OOD AUROC,
    each only when measured). Every metric is on the evaluation run and its logged model."""
    from aads.modelcard import backbone_licence

    meta = evaluation.meta
    source = str(meta.backbone_settings.get("source", ""))
    top = evaluation.headline.metrics()
    shown = {k: top[k] for k in HEADLINE_TAGS if k in top}
    accuracy = evaluation.headline.accuracy
    interval = (
        {"metric.accuracy_ci95": f"{accuracy.low:.4f}-{accuracy.high:.4f}"}
        if accuracy is not None and accuracy.low is not None and accuracy.high is not None
        else {}
    )
    return {
        "crop": meta.crop,
        "phase": meta.last_phase,
        "classes": ",".join(meta.classes),
        "domains": ",".join(meta.domains),
        "git_sha": git_sha,
        "manifest_sha256": meta.manifest_sha256,
        "backbone": source,
        "backbone_licence": backbone_licence(source),
        GATE_TAG: evaluation.gate.verdict,
        GATE_DETAIL_TAG: evaluation.gate.summary(),
        **{f"metric.{k}": f"{v:.4f}" for k, v in shown.items()},
        **interval,
    }


HEADLINE_TAGS = ("accuracy", "retention", "near_ood_auroc", "far_ood_auroc")
"""The headline numbers a version carries as ``metric.*`` tags (`aads promote` turns them into
commit trailers)."""


def _registry_run(
    config: PlatformConfig, tracking: RunRef | None, step: str, crop: str
) -> str | None:
    """The pipeline's run for this model (evaluation or router), or None outside a pipeline."""
    if tracking is None:
        return None
    from aads.tracking import Tracker

    tracker = Tracker(config.registry, tracking_uri=tracking.tracking_uri)
    return tracker.find_step_run(tracking, step, crop) or None


def register_adapter_step(
    config: PlatformConfig,
    package: Path,
    *,
    tracking_uri: str | None,
    kfp_run_id: str,
    git_sha: str = "",
    tracking: RunRef | None = None,
):  # -> aads.registry.RegisteredVersion (imported lazily: MLflow is heavy)
    """Register a gated package as the next version of ``aads-adapter-<crop>`` (alias
    ``candidate``): a pyfunc model linked to the crop's evaluation run in the pipeline run
    `tracking` names. Re-running with the same `kfp_run_id` returns the existing version."""
    from aads.registry import Registry, adapter_model_name

    evaluation = evaluate_step(config, package, kfp_run_id=kfp_run_id, git_sha=git_sha)
    if not evaluation.gate.passed:
        raise StepError(f"not registering {evaluation.meta.crop}: gate {evaluation.gate.summary()}")
    registry = Registry(config.registry, tracking_uri=tracking_uri)
    run_id = _registry_run(config, tracking, "evaluation", evaluation.meta.crop)
    return registry.register_package(
        Path(package),
        name=adapter_model_name(config.registry, evaluation.meta.crop),
        tags=version_tags(evaluation, git_sha=git_sha),
        description=evaluation.model_card,
        metrics=evaluation.metrics,
        kfp_run_id=kfp_run_id,
        run_id=run_id,
    )


def register_router_step(
    config: PlatformConfig,
    router_dir: Path,
    *,
    tracking_uri: str | None,
    kfp_run_id: str,
    git_sha: str = "",
    tracking: RunRef | None = None,
):
    """Register a gated router as the next version of the router model (alias ``candidate``):
    a pyfunc model linked to the router's run in the pipeline run `tracking` names."""
    import json

    from aads.modelcard import backbone_licence, router_card
    from aads.registry import Registry

    meta = json.loads((Path(router_dir) / "router.json").read_text())
    metrics = {k: float(v) for k, v in meta.get("metrics", {}).items()}
    gate = router_gate(metrics, config.gate)
    if not gate.passed:
        raise StepError(f"not registering the router: gate {gate.summary()}")
    source = str(meta.get("backbone_settings", {}).get("source", ""))
    tags = {
        "crops": ",".join(meta["crops"]),
        "git_sha": git_sha,
        "backbone": source,
        "backbone_licence": backbone_licence(source),
        GATE_TAG: gate.verdict,
        GATE_DETAIL_TAG: gate.summary(),
        **{f"metric.{k}": f"{metrics[k]:.4f}" for k in ROUTER_TAGS if k in metrics},
    }
    registry = Registry(config.registry, tracking_uri=tracking_uri)
    return registry.register_package(
        Path(router_dir),
        name=config.registry.router_model_name,
        tags=tags,
        description=router_card(meta, metrics, gate, kfp_run_id=kfp_run_id, git_sha=git_sha),
        metrics=metrics,
        kfp_run_id=kfp_run_id,
        run_id=_registry_run(config, tracking, "router", ""),
    )


ROUTER_TAGS = ("test_crop_accuracy", "test_part_accuracy")
