"""Run the training pipeline on this machine with `kfp.local` (SubprocessRunner, no Docker).

The same compiled-from-Python pipeline a cluster runs: every component executes its function
in this Python environment. Without a tracking URI a local MLflow server (sqlite under the work
folder) is started for the run and stopped after, so registration is real. Returns a summary
read back from the run's own outputs (each crop's gate and evaluation) and from MLflow (the
versions registered by this run).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from aads.config import PlatformConfig, parse_config_text
from aads.errors import AADSError
from aads.mlflow_server import local_mlflow_server
from aads.phases import NUMBERS as PHASE_NUMBERS


class PipelineFailed(AADSError, RuntimeError):
    """A task failed; the message names it and where its outputs are."""


class TaskTimer(logging.Filter):
    """Wall time per task from kfp.local's own log lines ("Executing task 'x'" ... "Task 'x'
    finished"); ParallelFor iterations of one task are paired first-in, first-out.

    A filter on the root logger, not a handler: kfp.local replaces the root logger's handlers
    for the duration of a run, but leaves its filters alone.
    """

    START = re.compile(r"Executing task '([^']+)'")
    END = re.compile(r"Task '([^']+)' finished with status (\w+)")
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.started: dict[str, deque[float]] = defaultdict(deque)
        self.tasks: list[tuple[str, float, str]] = []  # (task, seconds, status)
        self.echo = echo

    def filter(self, record: logging.LogRecord) -> bool:
        self._observe(record)
        return True

    def _observe(self, record: logging.LogRecord) -> None:
        text = self.ANSI.sub("", record.getMessage())
        if m := self.START.search(text):
            self.started[m.group(1)].append(record.created)
        elif (m := self.END.search(text)) and self.started[m.group(1)]:
            begun = self.started[m.group(1)].popleft()
            seconds = record.created - begun
            self.tasks.append((m.group(1), seconds, m.group(2)))
            if self.echo:
                self.echo(f"{m.group(2).lower():>7}  {m.group(1)}  {seconds:.1f} s")


def last_error(log_path: Path) -> str:
    """The last ``SomeError: message`` line of a task log: why a task failed, in one line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    pattern = re.compile(r"^\s*([\w.]+(?:Error|Exception|Unavailable|Mismatch)): (.+)$")
    for line in reversed(lines):
        if m := pattern.match(TaskTimer.ANSI.sub("", line)):
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    return ""


@contextmanager
def output_to(log_path: Path) -> Iterator[Callable[[str], None]]:
    """Send this process's and every task subprocess's stdout/stderr to `log_path` (kfp.local
    prints each task's full executor input); yield a function that still prints to the
    terminal, for one line per finished task."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield lambda line: print(line, file=terminal)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


@dataclass
class CropResult:
    crop: str
    passed: bool | None = None
    gate: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    version: str = ""


@dataclass
class LocalRun:
    run_dir: Path
    tracking_uri: str
    seconds: float
    crops: dict[str, CropResult]
    router: CropResult
    tasks: list[tuple[str, float, str]] = field(default_factory=list)


def run_local(
    config_text: str,
    data_uri: str,
    workdir: Path,
    *,
    crops: list[str] | None = None,
    phases: list[str] | None = None,
    tracking_uri: str | None = None,
    git_sha: str = "",
    echo: Callable[[str], None] | None = None,
) -> LocalRun:
    """Run the pipeline; `echo` gets one line per finished task (progress for terminals)."""
    from pipelines.training import default_pipeline

    config = parse_config_text(config_text, "config")  # fail before any task on a bad spec
    crops = crops or config.crop_names
    for crop in crops:
        config.crop(crop)
    workdir = Path(workdir).resolve()
    server = local_mlflow_server(workdir / "mlflow") if not tracking_uri else nullcontext()
    start = time.perf_counter()
    with server as started:
        uri = tracking_uri or str(started)
        run_dir, tasks = _run_pipeline(
            default_pipeline(local=True),
            workdir / "kfp",
            echo,
            config_yaml=config_text,
            data_uri=str(data_uri),
            crops=list(crops),
            phases=list(phases or PHASE_NUMBERS),
            tracking_uri=uri,
            git_sha=git_sha,
        )
    run = summarise(run_dir, config, crops, uri, time.perf_counter() - start)
    run.tasks = tasks
    return run


def _run_pipeline(
    pipeline: Callable,
    root: Path,
    echo: Callable[[str], None] | None,
    **arguments: object,
) -> tuple[Path, list[tuple[str, float, str]]]:
    """Run `pipeline` with kfp.local under `root`; return its run folder and timed tasks, or
    raise `PipelineFailed` naming where its task outputs and logs are."""
    from kfp import local

    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    # GPU requests, node selectors and display names are for the cluster; say so once, here.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
    before = set(root.iterdir())
    timer = TaskTimer(echo)
    root_logger = logging.getLogger()
    level = root_logger.level
    # kfp.local resets the root level to what it found when a ParallelFor iteration ends;
    # at INFO the later iterations' task lines still reach the timer.
    root_logger.setLevel(logging.INFO)
    root_logger.addFilter(timer)
    try:
        pipeline(**arguments)
    except RuntimeError as err:
        runs = sorted(set(root.iterdir()) - before)
        where = runs[-1] if runs else root
        reason = TaskTimer.ANSI.sub("", str(err))
        raise PipelineFailed(f"{reason} (task outputs and logs under {where})") from None
    finally:
        root_logger.removeFilter(timer)
        root_logger.setLevel(level)
    (run_dir,) = sorted(set(root.iterdir()) - before)
    return run_dir, timer.tasks


@dataclass
class ContinuationRun:
    """What a local run of the continuation pipeline decided."""

    run_dir: Path
    seconds: float
    passed: bool | None = None
    gate: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    version: str = ""  # ``<model>/<version>`` when the child was registered
    tasks: list[tuple[str, float, str]] = field(default_factory=list)


def run_continuation_local(
    config_text: str,
    data_uri: str,
    workdir: Path,
    *,
    base: str,
    crop: str,
    classes: list[str] | None = None,
    domain: str = "",
    eval_uri: str = "",
    tracking_uri: str,
    git_sha: str = "",
    echo: Callable[[str], None] | None = None,
) -> ContinuationRun:
    """Run the continuation pipeline (`pipelines.continuation`) with kfp.local, as `run_local`
    runs the training pipeline; the gate's answer and the registered version come back from
    the run's own outputs."""
    from pipelines.continuation import default_pipeline

    parse_config_text(config_text, "config")  # fail before any task on a bad spec
    start = time.perf_counter()
    run_dir, tasks = _run_pipeline(
        default_pipeline(local=True),
        Path(workdir).resolve() / "kfp",
        echo,
        data_uri=str(data_uri),
        base=base,
        crop=crop,
        classes=",".join(classes or []),
        domain=domain,
        eval_uri=str(eval_uri),
        config_yaml=config_text,
        tracking_uri=tracking_uri,
        git_sha=git_sha,
    )
    run = ContinuationRun(run_dir, time.perf_counter() - start, tasks=tasks)
    for out in run_dir.rglob("executor_output.json"):
        data = json.loads(out.read_text())
        params = data.get("parameterValues", {})
        if out.parent.name == "continue-adapter":
            run.passed, run.gate = params.get("passed"), params.get("gate", "")
            run.metrics = _metrics(data, "metrics")
        elif out.parent.name == "register-continuation":
            run.version = params.get("Output", "")
    return run


def summarise(
    run_dir: Path, config: PlatformConfig, crops: list[str], tracking_uri: str, seconds: float
) -> LocalRun:
    """Per crop: gate and metrics from evaluate-adapter, version from register-adapter."""
    by_crop: dict[str, CropResult] = {c: CropResult(c) for c in crops}
    router = CropResult("router")
    for out in run_dir.rglob("executor_output.json"):
        task = out.parent.name
        data = json.loads(out.read_text())
        params = data.get("parameterValues", {})
        if task == "train-router":
            router.passed, router.gate = params.get("passed"), params.get("gate", "")
            router.metrics = _metrics(data, "metrics")
        elif task == "register-router":
            router.version = params.get("Output", "")
        elif task in ("evaluate-adapter", "register-adapter"):
            crop = _crop_of(out.parent.parent, config)
            if crop not in by_crop:
                continue
            if task == "evaluate-adapter":
                by_crop[crop].passed = params.get("passed")
                by_crop[crop].gate = params.get("gate", "")
                by_crop[crop].metrics = _metrics(data, "metrics")
            else:
                by_crop[crop].version = params.get("Output", "")
    return LocalRun(run_dir, tracking_uri, seconds, by_crop, router)


def _metrics(executor_output: dict, name: str) -> dict[str, float]:
    for artifact in executor_output.get("artifacts", {}).get(name, {}).get("artifacts", []):
        return {k: float(v) for k, v in artifact.get("metadata", {}).items() if _is_number(v)}
    return {}


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _crop_of(iteration_dir: Path, config: PlatformConfig) -> str:
    """The crop a ParallelFor iteration trained: its phase-1 task records it in metadata."""
    out = iteration_dir / "train-adapter-phase" / "executor_output.json"
    if out.is_file():
        data = json.loads(out.read_text())
        for artifact in data.get("artifacts", {}).get("adapter", {}).get("artifacts", []):
            crop = artifact.get("metadata", {}).get("crop")
            if crop:
                return str(crop)
    return ""
