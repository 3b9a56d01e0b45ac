"""One runner for every adapter phase: check the inputs, train, record the MLflow run.

Every way of training a phase goes through `run_phase`: the pipeline's step (`aads.steps`,
called by the KFP component), ``aads train phaseN``, ``aads demo``, the pods of a Kubeflow
Trainer TrainJob (`aads.trainjob`), and continuing a registered package with one more task.
It sits below `aads.steps` and `aads.trainjob` (both import it, it imports neither), and
reads what differs between phases from the phase table (`aads.phases`).

The MLflow side (`phase_run`, `log_phase`) is separate from the training so that a TrainJob's
submitting step can open the phase's run, let the job's pods train, and log the package's
record once it is back.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from aads import phases
from aads.adapters.package import read_meta, verify_package
from aads.config import PlatformConfig
from aads.data.ingest import load_ingest_summary
from aads.data.manifest import ManifestRow, read_manifest, select
from aads.errors import BadInput
from aads.phases import Phase
from aads.progress import Progress
from aads.storage import fetch_dir_cached
from aads.tracking import RunRef, StepRun, step_run

MANIFEST_FILE = "manifest.csv"
DATA_URI_KEY = "data_uri"


class PhaseInputError(BadInput):
    """A phase that cannot run with these inputs; the message says which input and why."""


@dataclass(frozen=True)
class ManifestInputs:
    """What a phase trains on: the manifest's rows, a local copy of their images, and what
    the MLflow dataset records (the manifest's hash and where the images came from)."""

    rows: list[ManifestRow]
    data_root: Path
    manifest_sha256: str
    source: str  # the data URI the manifest was made from (the MLflow dataset's source)


def manifest_inputs(config: PlatformConfig, manifest_dir: Path) -> ManifestInputs:
    """Rows, a local copy of the images (fetched and cached when remote) and the hash of the
    manifest folder `aads data ingest` (or the preprocess step) wrote."""
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


# --------------------------------------------------------------------------- MLflow


def step_params(config: PlatformConfig, **sections: object) -> dict[str, str]:
    """A step's settings as MLflow params: each section (a settings model or a value) under
    its name, plus the split seed every step's data depends on."""
    from aads.tracking import flat_params

    plain = {
        name: value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        for name, value in sections.items()
    }
    return flat_params({**plain, "data": {"split_seed": config.data.split_seed}})


def phase_run(
    config: PlatformConfig,
    tracking: RunRef | None,
    crop: str,
    phase: Phase | str,
    extra: Mapping[str, str] | None = None,
) -> AbstractContextManager[StepRun]:
    """The phase's MLflow run for the duration of a block (nested under the pipeline's run
    `tracking` names; a run that logs nothing when `tracking` is None): its settings as
    params, plus `extra` ones (a TrainJob's name)."""
    phase = phases.get(phase)
    return step_run(
        config.registry,
        tracking,
        phase.name,
        crop=crop,
        run_name=f"{crop}: {phase.title}",
        params={**step_params(config, **phase.params(config, crop)), **(extra or {})},
    )


def log_manifest(
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


def phase_numbers(pkg: Path, phase: Phase | str) -> dict[str, float]:
    """The ``phase<N>_*`` metrics a package records for `phase`."""
    prefix = f"{phases.get(phase).name}_"
    return {k: v for k, v in read_meta(pkg).metrics.items() if k.startswith(prefix)}


def log_phase(
    run: StepRun, pkg: Path, phase: Phase | str, before: int, *, replay: bool = False
) -> dict[str, float]:
    """A finished phase's metrics on its run: the package's ``phase<N>_*`` numbers, each task's
    numbers as a history over tasks (``task_<name>``, step = task number), its confusion
    matrix under ``plots/``; with `replay`, the epochs the package recorded (trained elsewhere,
    not logged as they ran). `before`: how many phase records the previous package had.
    Returns the ``phase<N>_*`` numbers."""
    phase = phases.get(phase)
    meta = read_meta(pkg)
    if replay:
        run.replay(epoch for record in meta.phases[before:] for epoch in record.history)
    numbers = phase_numbers(pkg, phase)
    run.log_metrics(numbers)
    for i, record in enumerate(meta.phases[before:], start=1):
        run.log_metrics({f"task_{k}": v for k, v in record.metrics.items()}, step=i)
        run.set_tags({f"task.{i}": f"{record.task or phase.number}: {', '.join(record.added)}"})
    run.log_files(sorted(Path(pkg).glob(f"metrics/{phase.name}_*.png")), "plots")
    return numbers


# --------------------------------------------------------------------------- the runner


def check_inputs(
    config: PlatformConfig, phase: Phase | str, crop: str, from_pkg: Path | None
) -> int:
    """Refuse a phase that cannot run (unknown phase or crop, a previous package missing,
    given where none is taken, or not a whole package); returns how many phase records the
    previous package has (0 without one), so the new records can be told apart."""
    phase = phases.get(phase)
    config.crop(crop)  # unknown crop: ConfigError naming the configured ones
    if from_pkg is None:
        if phase.needs_previous:
            raise PhaseInputError(
                f"{phase.title} of {crop} needs the previous phase's package (--from)"
            )
        return 0
    if not phase.needs_previous:
        raise PhaseInputError(
            f"{phase.title} of {crop} starts from the backbone: it takes no previous package, "
            f"got {from_pkg}"
        )
    verify_package(from_pkg)
    return len(read_meta(from_pkg).phases)


def run_phase(
    config: PlatformConfig,
    phase: Phase | str,
    crop: str,
    rows: list[ManifestRow],
    data_root: Path,
    from_pkg: Path | None,
    out_dir: Path,
    *,
    manifest_sha256: str = "",
    source: str = "",
    tracking: RunRef | None = None,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
) -> Path:
    """Train `phase` ("1", "2", "3" or a `Phase`) of `crop` on `rows` (images under
    `data_root`) on top of `from_pkg` (the previous package; None for phase 1), and write the
    new adapter package to `out_dir` atomically; returns `out_dir`.

    Phases 2 and 3 learn every task the crop configures that `from_pkg` has not learnt yet
    (one SD-LoRA class batch, one CONEC domain each), so continuing a registered package with
    one new task is: the package as `from_pkg`, a spec whose crop lists that task, and the
    manifest rows holding its images. `manifest_sha256` is recorded in the package; with
    `tracking` (the pipeline's parent run) the phase's MLflow run nests under it, with its
    settings, the dataset (`source`: where the images came from), every epoch as it ends,
    the phase's metrics and confusion matrix. `checkpoint_dir` makes the training resumable
    (re-run to resume). Bad inputs raise `BadInput` kinds before anything trains.
    """
    phase = phases.get(phase)
    before = check_inputs(config, phase, crop, from_pkg)
    data = ManifestInputs(list(rows), Path(data_root), manifest_sha256, source or str(data_root))
    with phase_run(config, tracking, crop, phase) as run:
        log_manifest(run, config, data, select(data.rows, crop=crop, phase=phase.number))
        pkg = phase.train(
            config,
            crop,
            data.rows,
            data.data_root,
            from_pkg,
            Path(out_dir),
            checkpoint_dir=checkpoint_dir,
            manifest_sha256=manifest_sha256,
            progress=progress,
            on_epoch_end=run.log_epoch,
        )
        log_phase(run, pkg, phase, before)
    return Path(pkg)


def run_manifest_phase(
    config: PlatformConfig,
    phase: Phase | str,
    crop: str,
    manifest_dir: Path,
    from_pkg: Path | None,
    out_dir: Path,
    *,
    tracking: RunRef | None = None,
    progress: Progress | None = None,
) -> Path:
    """`run_phase` on the manifest folder a preprocess step (or ``aads data ingest``) wrote:
    its rows, its images (fetched and cached when they are remote), its hash and source."""
    check_inputs(config, phase, crop, from_pkg)  # before fetching any image
    data = manifest_inputs(config, manifest_dir)
    return run_phase(
        config,
        phase,
        crop,
        data.rows,
        data.data_root,
        from_pkg,
        out_dir,
        manifest_sha256=data.manifest_sha256,
        source=data.source,
        tracking=tracking,
        progress=progress,
    )
