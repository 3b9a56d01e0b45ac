"""MLflow runs of the training pipeline: one parent run per pipeline run, one nested run per
step (router, each crop's phases 1-3, OOD calibration and evaluation).

What an ML engineer finds in MLflow after a pipeline run, in the experiment
``registry.experiment``: a parent run named after the pipeline and its KFP run id (params: the
crops, phases, data URI and backbones; the spec as ``config.yaml``; at the end the gate verdict
and registered version of every crop as tags); under it a run per step with the step's settings
as params (learning rate, epochs, ranks, backbone, image size, seeds), per-epoch train loss,
validation metrics and learning rate as metric histories (straight from the training loop's
`EpochLog`, logged as each epoch ends), the final metrics, the dataset as an MLflow input (the
ingested manifest: source URI, manifest sha256, image counts per split) and the KFP run id as
a tag. Each crop's evaluation run holds the gate's verdict whether it passed or not, with the
model card, the HTML report and the pictures; registered versions link to it.

Why it is built this way:

- KFP runs each step in its own process (a pod on a cluster, a `kfp.local` subprocess here),
  so nothing relies on MLflow's fluent, process-global "active run": runs are created with an
  `MlflowClient` (`aads.mlflow_connection`, bounded retries), and the parent run id travels
  to every step as a pipeline value (the output of the first step).
- Idempotent. The parent run is found by its KFP run id before one is created, so a retried
  first step reuses it. A retried step finds the run of its earlier attempt (same parent, step
  and crop), deletes it (``mlflow runs restore`` brings it back) and logs a fresh one tagged
  with the attempt number: each step has one run, holding the attempt whose outputs the
  pipeline used, and no metric history mixes two attempts.
- A monitoring hiccup does not kill a training run: an epoch's metrics that cannot be logged
  right away (one attempt) are kept and sent, with retries, when the step ends.
- Settings arrive as arguments (tracking URI, parent run id); nothing here reads or changes
  the process environment.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aads.cluster import TRACKING_URI_ENV
from aads.config import RegistrySettings
from aads.errors import Unavailable
from aads.mlflow_connection import MlflowConnection, MlflowError
from aads.phases import ROUTER

if TYPE_CHECKING:
    from mlflow.entities import Run

    from aads.data.manifest import ManifestRow
    from aads.training import EpochLog

log = logging.getLogger(__name__)

KFP_RUN_TAG = "kfp_run_id"  # the registry tags versions with the same key
STEP_TAG = "aads.step"
CROP_TAG = "aads.crop"
ATTEMPT_TAG = "aads.attempt"
GATE_TAG = "gate"
GATE_DETAIL_TAG = "gate_detail"
PIPELINE_STEP = "pipeline"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


class TrackingUnavailable(Unavailable):
    """The tracking server did not answer after all retries."""


class TrackingError(MlflowError):
    """A tracking request the server refused, or a parent run that does not exist."""


@dataclass(frozen=True)
class RunRef:
    """Where a pipeline step logs: the tracking server and the pipeline's parent run."""

    tracking_uri: str
    parent_run_id: str


def flat_params(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: ``{"dora": {"r": 8}} -> {"dora.r": "8"}``; lists are
    comma-joined, values cut at MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flat_params(value, f"{name}.")
        elif isinstance(value, list | tuple):
            out[name] = ",".join(map(str, value))[:MAX_PARAM_LENGTH]
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


# --------------------------------------------------------------------------- the tracker


class Tracker(MlflowConnection):
    """Pipeline and step runs in the configured experiment of one tracking server."""

    unavailable = TrackingUnavailable
    refused = TrackingError

    def __init__(self, settings: RegistrySettings, tracking_uri: str | None = None, retries=5):
        super().__init__(tracking_uri or settings.tracking_uri or "", retries)
        self.settings = settings

    # ----------------------------------------------------------------------- pipeline runs

    def find_pipeline_run(self, kfp_run_id: str) -> Run | None:
        """The parent run of a KFP run, if one was opened."""
        experiment_id = self.experiment_id(self.settings.experiment)
        found = self.call(
            f"look up the run of KFP run {kfp_run_id}",
            lambda: self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.{KFP_RUN_TAG} = '{_quoted(kfp_run_id)}' "
                f"and tags.`{STEP_TAG}` = '{PIPELINE_STEP}'",
                order_by=["attributes.start_time ASC"],
            ),
        )
        return found[0] if found else None

    def open_pipeline_run(
        self,
        kfp_run_id: str,
        *,
        run_name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str] | None = None,
        config_text: str = "",
    ) -> str:
        """The parent run of `kfp_run_id`: created once, found again by a retried step."""
        existing = self.find_pipeline_run(kfp_run_id)
        if existing is not None:
            return existing.info.run_id
        experiment_id = self.experiment_id(self.settings.experiment)
        run = self.call(
            f"create the run of KFP run {kfp_run_id}",
            lambda: self.client.create_run(
                experiment_id,
                run_name=run_name,
                tags={**(tags or {}), KFP_RUN_TAG: kfp_run_id, STEP_TAG: PIPELINE_STEP},
            ),
        )
        run_id = run.info.run_id
        self._log_params(run_id, params)
        if config_text:
            self.call(
                "upload the spec", lambda: self.client.log_text(run_id, config_text, "config.yaml")
            )
        return run_id

    def close_pipeline_run(self, kfp_run_id: str, *, succeeded: bool, message: str = "") -> str:
        """End the parent run: its status, a summary of every crop (gate verdict, registered
        version) as tags and ``summary.md``; step runs still marked running (a step killed
        mid-way) end as failed. Returns the run id ("" when the run was never opened)."""
        from mlflow.entities import RunStatus
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        parent = self.find_pipeline_run(kfp_run_id)
        if parent is None:
            return ""
        run_id = parent.info.run_id
        children = self.call(
            "list the step runs",
            lambda: self.client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'",
            ),
        )
        for child in children:
            if child.info.status == "RUNNING":
                self.call(
                    "end a step run",
                    lambda c=child: self.client.set_terminated(
                        c.info.run_id, RunStatus.to_string(RunStatus.FAILED)
                    ),
                )
        summary = self._summary(children, kfp_run_id)
        tags = {f"gate.{crop}": verdict for crop, (verdict, _) in summary.items()}
        tags |= {f"registered.{crop}": version for crop, (_, version) in summary.items() if version}
        if message:
            tags["aads.pipeline_message"] = message[:5000]
        self._set_tags(run_id, tags)
        self.call(
            "upload the run summary",
            lambda: self.client.log_text(run_id, _summary_markdown(summary), "summary.md"),
        )
        status = RunStatus.FINISHED if succeeded else RunStatus.FAILED
        self.call(
            "end the pipeline run",
            lambda: self.client.set_terminated(run_id, RunStatus.to_string(status)),
        )
        return run_id

    def _summary(self, children: Sequence[Run], kfp_run_id: str) -> dict[str, tuple[str, str]]:
        """crop (or "router", `ROUTER.name`) -> (gate verdict, "name/version" registered by
        this KFP run)."""
        verdicts: dict[str, tuple[str, str]] = {}
        for child in children:
            tags = child.data.tags
            if GATE_TAG in tags:
                verdicts[tags.get(CROP_TAG) or ROUTER.name] = (tags[GATE_TAG], "")
        versions = self.call(
            "list the versions this run registered",
            lambda: self.client.search_model_versions(f"tag.{KFP_RUN_TAG} = '{kfp_run_id}'"),
        )
        prefix = self.settings.adapter_model_prefix
        for mv in versions:
            crop = mv.name.removeprefix(prefix) if mv.name.startswith(prefix) else ROUTER.name
            verdict = verdicts.get(crop, ("passed", ""))[0]
            verdicts[crop] = (verdict, f"{mv.name}/{mv.version}")
        return dict(sorted(verdicts.items()))

    # ----------------------------------------------------------------------- step runs

    def start_step(
        self,
        ref: RunRef,
        step: str,
        *,
        crop: str = "",
        run_name: str,
        params: Mapping[str, str] | None = None,
    ) -> StepRun:
        """A new run for `step` (of `crop`) under the parent run; an earlier attempt's run of
        the same step is deleted first."""
        from mlflow.entities import ViewType
        from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

        parent = self.call(
            f"get the pipeline run {ref.parent_run_id}",
            lambda: self.client.get_run(ref.parent_run_id),
        )
        experiment_id = parent.info.experiment_id
        earlier = self.call(
            f"look up earlier attempts of {run_name}",
            lambda: self.client.search_runs(
                [experiment_id],
                filter_string=_step_filter(ref, step, crop),
                run_view_type=ViewType.ALL,
            ),
        )
        for run in earlier:
            if run.info.lifecycle_stage == "active":
                log.info("replacing run %s of an earlier attempt of %s", run.info.run_id, step)
                self.call(
                    "delete an earlier attempt",
                    lambda r=run: self.client.delete_run(r.info.run_id),
                )
        inherited = {
            k: v for k, v in parent.data.tags.items() if k in (KFP_RUN_TAG, MLFLOW_GIT_COMMIT)
        }
        tags = {
            **inherited,
            MLFLOW_PARENT_RUN_ID: ref.parent_run_id,
            STEP_TAG: step,
            ATTEMPT_TAG: str(len(earlier) + 1),
            **({CROP_TAG: crop} if crop else {}),
        }
        run = self.call(
            f"create the run {run_name}",
            lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags),
        )
        step_run = StepRun(self, run.info.run_id)
        step_run.log_params(params or {})
        return step_run

    def find_step_run(self, ref: RunRef, step: str, crop: str = "") -> str:
        """The id of the latest run of `step` (of `crop`) under the parent run ("" if none)."""
        parent = self.call(
            f"get the pipeline run {ref.parent_run_id}",
            lambda: self.client.get_run(ref.parent_run_id),
        )
        found = self.call(
            f"look up the {step} run",
            lambda: self.client.search_runs(
                [parent.info.experiment_id],
                filter_string=_step_filter(ref, step, crop),
                order_by=["attributes.start_time DESC"],
                max_results=1,
            ),
        )
        return found[0].info.run_id if found else ""

    # ----------------------------------------------------------------------- plumbing

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        rows = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        for i in range(0, len(rows), 100):
            batch = rows[i : i + 100]
            self.call("log params", lambda b=batch: self.client.log_batch(run_id, params=b))

    def _set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        rows = [RunTag(k, str(v)) for k, v in sorted(tags.items())]
        if rows:
            self.call("set tags", lambda: self.client.log_batch(run_id, tags=rows))


def _step_filter(ref: RunRef, step: str, crop: str) -> str:
    """Search filter for the runs of `step` (of `crop`) under the parent run."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    return (
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{_quoted(ref.parent_run_id)}' "
        f"and tags.`{STEP_TAG}` = '{_quoted(step)}'"
        + (f" and tags.`{CROP_TAG}` = '{_quoted(crop)}'" if crop else "")
    )


def _quoted(value: str) -> str:
    """A value for a search filter: single quotes cannot end the string early."""
    return value.replace("'", "")


def _summary_markdown(summary: Mapping[str, tuple[str, str]]) -> str:
    lines = ["| model | gate | registered |", "|---|---|---|"]
    lines += [
        f"| {crop} | {gate} | {version or '-'} |" for crop, (gate, version) in summary.items()
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- one step's run


@dataclass
class StepRun:
    """The MLflow run of one pipeline step. ``StepRun(None)`` logs nothing: steps run without
    a tracking server (tests, `aads demo`) call the same methods."""

    tracker: Tracker | None
    run_id: str = ""
    epochs: int = 0  # epochs logged so far, over every task of the step (the metrics' step)
    pending: list[Any] = field(default_factory=list)  # epoch metrics not sent yet
    histories: set[str] = field(default_factory=set)  # keys logged per epoch

    @property
    def enabled(self) -> bool:
        return self.tracker is not None

    def log_params(self, params: Mapping[str, str]) -> None:
        if self.tracker is not None:
            self.tracker._log_params(self.run_id, params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.tracker is not None:
            self.tracker._set_tags(self.run_id, tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite metrics only (MLflow refuses NaN), sent with retries. A key the epochs
        already have a history of is left out: the history holds it, epoch by epoch."""
        if self.tracker is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = {k: v for k, v in _finite(metrics).items() if k not in self.histories}
        rows = [Metric(k, v, now, step) for k, v in sorted(final.items())]
        self._send(rows, attempts=None)

    def log_epoch(self, epoch: EpochLog) -> None:
        """One epoch of the training loop, as it ends: ``train_loss``, every validation
        metric, ``lr``, ``epoch_seconds`` and ``images_per_second``, at step = the epoch's
        number within this step's run (tasks of phases 2 and 3 continue the count). One
        attempt: a failure keeps the epoch for `flush` instead of stopping training."""
        if self.tracker is None:
            return
        self._queue(epoch)
        try:
            self._send(self.pending, attempts=1)
            self.pending = []
        except Unavailable as err:
            log.warning("epoch %d metrics kept for later: %s", self.epochs, err)

    def replay(self, epochs: Iterable[EpochLog]) -> None:
        """Epochs the loop ran elsewhere (a TrainJob's pods), from the package's record."""
        if self.tracker is None:
            return
        for epoch in epochs:
            self._queue(epoch)
        self.flush()

    def _queue(self, epoch: EpochLog) -> None:
        from mlflow.entities import Metric

        self.epochs += 1
        now = int(time.time() * 1000)
        values = {
            "train_loss": epoch.train_loss,
            **epoch.metrics,
            "lr": epoch.lr,
            "epoch_seconds": epoch.seconds,
            "images_per_second": epoch.images_per_s,
        }
        self.pending += [Metric(k, v, now, self.epochs) for k, v in _finite(values).items()]
        self.histories |= values.keys()

    def flush(self) -> None:
        """Send the epoch metrics that could not be sent when their epoch ended."""
        if self.tracker is not None and self.pending:
            self._send(self.pending, attempts=None)
            self.pending = []

    def _send(self, rows: list, attempts: int | None) -> None:
        assert self.tracker is not None
        client, run_id = self.tracker.client, self.run_id
        for i in range(0, len(rows), 1000):
            batch = rows[i : i + 1000]
            self.tracker.call(
                "log metrics",
                lambda b=batch: client.log_batch(run_id, metrics=b),
                attempts=attempts,
            )

    def log_dataset(
        self,
        rows: Sequence[ManifestRow],
        *,
        name: str,
        source: str,
        manifest_sha256: str,
        used: Iterable[ManifestRow],
        context: str = "training",
    ) -> None:
        """The ingested manifest as the run's input dataset (``mlflow.data``): `source` is the
        data URI, the digest the manifest's sha256 (its first 16 hex digits, MLflow's digest
        field is short; the whole hash is an input tag), and the images this step used are
        counted per split in the input's tags."""
        if self.tracker is None:
            return
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        frame = pd.DataFrame([asdict(r) for r in rows])
        digest = manifest_sha256[:16] or "unknown"
        with warnings.catch_warnings():  # MLflow's hints on integer columns and local paths
            warnings.simplefilter("ignore", UserWarning)
            try:
                dataset = from_pandas(frame, source=source, name=name, digest=digest)
            except MlflowException:  # a scheme MLflow has no resolver for: keep it as a tag
                dataset = from_pandas(frame, name=name, digest=digest)
            entity = dataset._to_mlflow_entity()
        counts: dict[str, int] = {}
        for r in used:
            counts[r.split] = counts.get(r.split, 0) + 1
        tags = [
            InputTag("mlflow.data.context", context),
            InputTag("manifest_sha256", manifest_sha256),
            InputTag("data_uri", source),
            *[InputTag(f"images.{split}", str(n)) for split, n in sorted(counts.items())],
        ]
        entity = DatasetInput(entity, tags)
        client, run_id = self.tracker.client, self.run_id
        self.tracker.call("log the dataset", lambda: client.log_inputs(run_id, datasets=[entity]))

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        if self.tracker is None or not Path(local_dir).is_dir():
            return
        client, run_id = self.tracker.client, self.run_id
        self.tracker.call(
            f"upload {artifact_path or local_dir}",
            lambda: client.log_artifacts(run_id, str(local_dir), artifact_path),
        )

    def log_files(self, files: Iterable[Path], artifact_path: str) -> None:
        """Several files under one artifact folder (copied together, uploaded once)."""
        import shutil

        files = [Path(f) for f in files if Path(f).is_file()]
        if self.tracker is None or not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                shutil.copyfile(f, Path(tmp) / f.name)
            self.log_artifacts(Path(tmp), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.tracker is None:
            return
        client, run_id = self.tracker.client, self.run_id
        self.tracker.call(
            f"upload {artifact_file}", lambda: client.log_text(run_id, text, artifact_file)
        )

    def end(self, failed: BaseException | None = None) -> None:
        """Send what is pending and end the run: FINISHED, or FAILED with the error as a tag."""
        if self.tracker is None:
            return
        from mlflow.entities import RunStatus

        if failed is not None:
            reason = f"{type(failed).__name__}: {failed}"[:5000]
            try:
                self.set_tags({"aads.error": reason})
            except Exception as err:  # the server may be why the step failed
                log.warning("could not record the failure on run %s: %s", self.run_id, err)
            self.tracker.mark_failed(self.run_id)
            return
        self.flush()
        client, run_id = self.tracker.client, self.run_id
        self.tracker.call(
            "end the run",
            lambda: client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED)),
        )


@contextmanager
def step_run(
    settings: RegistrySettings,
    ref: RunRef | None,
    step: str,
    *,
    crop: str = "",
    run_name: str,
    params: Mapping[str, str] | None = None,
) -> Iterator[StepRun]:
    """The run of one step for the duration of the block: ended FINISHED when the block
    completes, FAILED (with the error) when it raises. `ref` None: a `StepRun` that logs
    nothing."""
    if ref is None:
        yield StepRun(None)
        return
    tracker = Tracker(settings, tracking_uri=ref.tracking_uri)
    run = tracker.start_step(ref, step, crop=crop, run_name=run_name, params=params)
    try:
        yield run
    except BaseException as err:
        run.end(failed=err)
        raise
    run.end()


def write_run_file(path: Path, tracking_uri: str, run_id: str, experiment_id: str) -> dict:
    """The parent run as a pipeline artifact: ``{"run_id": ...}`` in the file (what steps
    read), and metadata for the KFP UI (run id, experiment, the run's page)."""
    import json

    from aads.mlflow_connection import redact_uri

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"run_id": run_id}) + "\n", encoding="utf-8")
    base = redact_uri(tracking_uri).rstrip("/")
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "url": f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
    }


def run_ref(tracking_uri: str, run_file: str | None, environ: Mapping[str, str]) -> RunRef | None:
    """What a pipeline component logs to: the parent run named in `run_file` (the
    ``mlflow_run`` artifact of the pipeline's first step) on `tracking_uri`, else on the
    ``MLFLOW_TRACKING_URI`` the component's entry point read from `environ` (a Kubernetes
    Secret in the cluster). None without a run file (a step run on its own)."""
    import json

    if not run_file or not Path(run_file).is_file():
        return None
    uri = tracking_uri or environ.get(TRACKING_URI_ENV, "")
    run_id = json.loads(Path(run_file).read_text(encoding="utf-8")).get("run_id", "")
    return RunRef(uri, run_id) if uri and run_id else None
