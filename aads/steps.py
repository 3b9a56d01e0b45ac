"""The training pipeline's steps as plain functions: folders in, folders and numbers out.

Each KFP component in ``components/`` parses its parameters, calls one function here and
writes what it returns into KFP artifacts; the same functions run under `kfp.local`, in the
component image on a cluster, and in tests. Adapter phases run through the one phase runner
(`aads.runner`), which the CLI, the demo and TrainJobs use too; the router trains through
`run_router` here, which the CLI and the demo call as well. Outputs are whole folders
staged beside their place and renamed into it (`aads.atomic`), so a retried or killed task
never leaves half an artifact that the next task would read.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aads.adapters.package import AdapterMeta, read_meta, verify_package
from aads.atomic import atomic_dir
from aads.cluster import TRACKING_URI_ENV
from aads.config import PlatformConfig, parse_config_text
from aads.data.ingest import ingest, write_ingest_outputs
from aads.errors import BadInput
from aads.gate import GateResult, adapter_gate, router_gate
from aads.headline import Headline
from aads.phases import ROUTER, Phase
from aads.phases import get as get_phase
from aads.progress import Progress
from aads.runner import (
    DATA_URI_KEY,
    ManifestInputs,
    log_manifest,
    manifest_inputs,
    phase_numbers,
    run_manifest_phase,
    step_params,
)
from aads.storage import fetch_dir_cached
from aads.tracking import GATE_DETAIL_TAG, GATE_TAG, RunRef, run_ref, step_run
from aads.trainjob import TrainerPlacement

if TYPE_CHECKING:
    from aads.backbone import Backbone
    from aads.features import FeatureTable


class StepError(BadInput):
    """A step that cannot run with these inputs; the message says which input and why."""


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class ComponentInputs:
    """What every KFP component reads the same way at its entry point."""

    config: PlatformConfig  # the `config` parameter (the spec's YAML text), validated
    tracking_uri: str | None  # the parameter, else MLFLOW_TRACKING_URI, else None (the spec's)
    tracking: RunRef | None  # the pipeline's parent run; None for a step run on its own


def component_inputs(
    config: str,
    environ: Mapping[str, str],
    *,
    tracking_uri: str = "",
    mlflow_run: Any = None,
) -> ComponentInputs:
    """The spec, the MLflow server and the parent run of a component from its parameters and
    its pod's `environ` (``MLFLOW_TRACKING_URI`` from a Kubernetes Secret): `mlflow_run` is
    the component's ``Input[Artifact]`` naming the pipeline's parent run, or None. Here and not
    in ``components/``: KFP runs a component's body on its own, where `aads` is importable but
    the ``components`` package is not (importing it needs the KFP SDK's decorators)."""
    return ComponentInputs(
        parse_config_text(config, "config parameter"),
        tracking_uri or environ.get(TRACKING_URI_ENV) or None,
        run_ref(tracking_uri, mlflow_run.path if mlflow_run else None, environ),
    )


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


# --------------------------------------------------------------------------- tracking


def open_pipeline_run_step(
    config: PlatformConfig,
    config_text: str,
    *,
    tracking_uri: str | None,
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
    config: PlatformConfig,
    *,
    tracking_uri: str | None,
    kfp_run_id: str,
    succeeded: bool,
    message: str,
) -> str:
    """End the parent run with the pipeline's outcome and a summary of every crop."""
    from aads.tracking import Tracker

    tracker = Tracker(config.registry, tracking_uri=tracking_uri)
    return tracker.close_pipeline_run(kfp_run_id, succeeded=succeeded, message=message)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RouterOutcome:
    """A trained router: its metrics and the gate's verdict on them."""

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
    """The pipeline's router step: `run_router` on the manifest folder the preprocess step
    wrote (its rows, its images fetched and cached when remote, its hash and source)."""
    data = manifest_inputs(config, manifest_dir)
    return run_router(config, data, out_dir, tracking=tracking, progress=progress)


def run_router(
    config: PlatformConfig,
    data: ManifestInputs,
    out_dir: Path,
    *,
    features: FeatureTable | None = None,
    backbone: Backbone | None = None,
    tracking: RunRef | None = None,
    progress: Progress | None = None,
) -> RouterOutcome:
    """The one way the crop router trains (the pipeline's step, ``aads train router``,
    ``aads demo``): fit its heads on `data`'s rows of the configured crops (features from
    its images, or the cached `features` of `backbone`), write it to `out_dir` atomically,
    gate it. With `tracking` (the pipeline's parent run) its MLflow run nests under it:
    settings, the dataset, every epoch, metrics, confusion matrices, the gate's verdict."""
    params = step_params(
        config,
        backbone=config.router,
        training=config.training.router,
        crops=config.crop_names,
        parts=config.parts,
    )
    with step_run(
        config.registry, tracking, ROUTER.name, run_name=ROUTER.name, params=params
    ) as run:
        log_manifest(run, config, data, [r for r in data.rows if r.crop in config.crop_names])
        with atomic_dir(Path(out_dir)) as tmp:
            result = ROUTER.train(
                config,
                data.rows,
                data.data_root,
                tmp,
                features=features,
                backbone=backbone,
                progress=progress,
                on_epoch_end=run.log_epoch,
            )
        gate = router_gate(result.metrics, config.gate)
        run.log_metrics(result.metrics)
        run.log_files(sorted(Path(out_dir).glob("metrics/*.png")), "plots")
        run.set_tags({GATE_TAG: gate.verdict, GATE_DETAIL_TAG: gate.summary()})
    return RouterOutcome(result.metrics, gate)


def train_phase_step(
    config: PlatformConfig,
    manifest_dir: Path,
    crop: str,
    phase: Phase | str,
    previous: Path | None,
    out_dir: Path,
    *,
    phases: list[str] | None = None,
    tracking: RunRef | None = None,
    progress: Progress | None = None,
    trainer: TrainerPlacement | None = None,
) -> dict[str, float]:
    """The pipeline's phase step: train `phase` of `crop` from `previous` with the one runner
    (`aads.runner.run_phase`), on this pod or, with `trainer`, as a Kubeflow Trainer TrainJob
    (torchrun DDP over several GPUs or nodes). A phase not in `phases` or not configured for
    the crop passes the previous package through unchanged (metrics then say ``skipped``; no
    MLflow run). Returns the phase's ``phase<N>_*`` metrics."""
    phase = get_phase(phase)
    config.crop(crop)  # unknown crop: ConfigError naming the configured ones
    wanted = phases is None or phase.number in [str(p) for p in phases]
    if not (wanted and phase.applies(config.crop(crop))):
        if previous is None:
            raise StepError(f"{crop} has no package before {phase.title} to pass through")
        verify_package(previous)
        with atomic_dir(Path(out_dir)) as tmp:
            shutil.copytree(previous, tmp, dirs_exist_ok=True)
        return {"skipped": 1.0}
    if trainer is not None:
        from aads.trainjob import submit_phase

        pkg = submit_phase(
            config, manifest_dir, crop, phase, previous, Path(out_dir), trainer, tracking=tracking
        )
    else:
        pkg = run_manifest_phase(
            config,
            phase,
            crop,
            manifest_dir,
            previous,
            Path(out_dir),
            tracking=tracking,
            progress=progress,
        )
    return phase_numbers(pkg, phase)


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
    params = step_params(config, ood=config.adapter.ood, backbone=config.adapter.backbone)
    with step_run(
        config.registry,
        tracking,
        "ood",
        crop=crop,
        run_name=f"{crop}: OOD calibration",
        params=params,
    ) as run:
        log_manifest(run, config, data, data.rows)
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(package, tmp, dirs_exist_ok=True)
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
        params=step_params(config, gate=config.gate),
    ) as run:
        run.log_metrics(metrics)
        run.set_tags({GATE_TAG: gate.verdict, GATE_DETAIL_TAG: gate.summary()})
        run.log_text(card, "model_card.md")
        run.log_text(report, "report.html")
        run.log_text(gate.model_dump_json(indent=2), "gate.json")
        run.log_files(pictures(package), "plots")
    return Evaluation(meta, gate, metrics, top, card, report)


# --------------------------------------------------------------------------- registration


def package_tags(meta: AdapterMeta, *, git_sha: str) -> dict[str, str]:
    """What a registered adapter version says about the package itself (MLflow tags are
    strings): crop, last phase, classes, domains, code, data and backbone with its licence.
    Pipeline registrations and continuations both tag versions with these."""
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
    }


def version_tags(evaluation: Evaluation, *, git_sha: str) -> dict[str, str]:
    """What a registered adapter version says about itself in a few tags (MLflow tags are
    strings): what it is, where it came from, the gate, and the headline numbers as
    ``metric.<name>`` (accuracy with its 95 % interval, retention, near- and far-OOD AUROC,
    each only when measured). Every metric is on the evaluation run and its logged model."""
    meta = evaluation.meta
    top = evaluation.headline.metrics()
    shown = {k: top[k] for k in HEADLINE_TAGS if k in top}
    accuracy = evaluation.headline.accuracy
    interval = (
        {"metric.accuracy_ci95": f"{accuracy.low:.4f}-{accuracy.high:.4f}"}
        if accuracy is not None and accuracy.low is not None and accuracy.high is not None
        else {}
    )
    return {
        **package_tags(meta, git_sha=git_sha),
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
        run_id=_registry_run(config, tracking, ROUTER.name, ""),
    )


ROUTER_TAGS = ROUTER.headline_metrics
"""The router's headline numbers, carried as ``metric.*`` tags by a registered version."""
