"""A continuation's images: the task's batch (what it trains on) and the evaluation set (what
measures it), checked against the parent and the task before anything is trained.

The phases read their work from a `CropSpec` (phase-1 classes, phase-2 batches, phase-3
domains) and a manifest. A continuation does not edit the platform spec: `task_config` derives
the crop's spec from the parent's own history plus this one task, so the phase code the full
pipeline runs learns exactly this task and nothing else. The batch is ingested with that spec
(every image decoded, de-duplicated and split as `aads data ingest` does); the evaluation set
is ingested beside it. Both are read through one folder of links (`joined_root`) because a
manifest's paths are relative to one root.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from aads.adapters.package import AdapterMeta
from aads.config import BASE_DOMAIN, CropSpec, PlatformConfig
from aads.continual.base import ContinuationError
from aads.data.ingest import IngestResult, ingest
from aads.data.manifest import ManifestRow
from aads.phases import DORA, SD_LORA
from aads.tasks import TASK_FILE, TaskSpec, read_task

TASK_PREFIX = "task"
EVAL_PREFIX = "eval"


def learned_batches(meta: AdapterMeta) -> tuple[list[str], list[list[str]]]:
    """(phase-1 classes, phase-2 batches in order) as the package's history records them."""
    phase1 = next((p.added for p in meta.phases if p.phase == DORA.number), [])
    batches = [p.added for p in meta.phases if p.phase == SD_LORA.number]
    tasks = [p.task for p in meta.phases if p.phase == SD_LORA.number]
    if tasks != [str(i) for i in range(len(batches))]:
        raise ContinuationError(
            f"the parent's phase-2 tasks are {tasks}, not 0..{len(batches) - 1}: its history "
            "cannot be continued"
        )
    if not phase1 or [*phase1, *(c for b in batches for c in b)] != meta.classes:
        raise ContinuationError(
            f"the parent's history does not add up to its classes {meta.classes}: it cannot be "
            "continued (retrain it with the pipeline)"
        )
    return phase1, batches


def check_task(task: TaskSpec, parent: AdapterMeta | None) -> None:
    """What the task asks against what the parent knows; each failure names the field."""
    if task.kind == "base":
        if parent is not None:
            raise ContinuationError(
                "task.kind: a 'base' task trains a first version; it does not continue one "
                "(leave --from out, or use --classes / --domain)"
            )
        return
    if parent is None:
        raise ContinuationError(f"task.kind '{task.kind}' continues a version: name it with --from")
    if task.crop != parent.crop:
        raise ContinuationError(
            f"task.crop '{task.crop}' but the parent is an adapter for '{parent.crop}'"
        )
    if task.kind == "classes":
        repeated = [c for c in task.classes if c in parent.classes]
        if repeated:
            raise ContinuationError(
                f"task.classes: {repeated} already known to the parent ({parent.classes}); a "
                "classes task adds new diseases only (a known class under new conditions is a "
                "domain task)"
            )
        learned_batches(parent)
        return
    if task.domain in parent.domains:
        raise ContinuationError(
            f"task.domain '{task.domain}' is already learned (parent domains {parent.domains})"
        )
    unknown = [c for c in task.classes if c not in parent.classes]
    if unknown:
        raise ContinuationError(
            f"task.classes: {unknown} are not known to the parent ({parent.classes}); a domain "
            "task shows known classes under a new condition (new diseases are a classes task)"
        )


def task_config(
    config: PlatformConfig, task: TaskSpec, parent: AdapterMeta | None
) -> PlatformConfig:
    """`config` with the task's crop spec derived from the parent's history plus the task."""
    old = next((c for c in config.crops if c.name == task.crop), None)
    if task.kind == "base":
        phase1, batches, domains = list(task.classes), [], []
    else:
        assert parent is not None
        phase1, batches = learned_batches(parent)
        domains = list(parent.domains[1:])
        if task.kind == "classes":
            batches = [*batches, list(task.classes)]
        else:
            domains = [*domains, str(task.domain)]
    known = {*phase1, *(c for b in batches for c in b)}
    holdout = [c for c in (old.ood_holdout if old else []) if c not in known]
    aliases = {
        k: v for k, v in (old.class_aliases if old else {}).items() if k in known or k in holdout
    }
    spec = CropSpec(
        name=task.crop,
        parts=old.parts if old else ["leaf"],
        phase1_classes=phase1,
        phase2_batches=batches,
        phase3_domains=domains,
        ood_holdout=holdout,
        aliases=old.aliases if old else [],
        class_aliases=aliases,
    )
    others = [c for c in config.crops if c.name != task.crop]
    return config.model_copy(update={"crops": [spec, *others]})


@dataclass(frozen=True)
class TaskData:
    rows: list[ManifestRow]  # the task's images (paths under TASK_PREFIX/)
    rejected: int
    images: dict[str, int]  # per class


def task_data(config: PlatformConfig, task: TaskSpec, data_dir: Path) -> TaskData:
    """Ingest the batch (``<crop>/<class>/<image>``) and check it holds exactly the task."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContinuationError(f"--data {data_dir}: not a folder")
    domain = task.domain or BASE_DOMAIN
    try:
        result = ingest(
            data_dir, config=config, layout="crop-class", domain_dirs=False, domain=domain
        )
    except ContinuationError:
        raise
    except Exception as err:  # a LayoutError (BadInput) says why; keep its words
        raise ContinuationError(f"--data {data_dir}: {err}") from None
    _check_batch(result, task, data_dir)
    rows = [replace(r, path=f"{TASK_PREFIX}/{r.path}") for r in result.rows]
    counts = Counter(r.label for r in rows)
    return TaskData(rows, len(result.rejects), dict(sorted(counts.items())))


def _check_batch(result: IngestResult, task: TaskSpec, data_dir: Path) -> None:
    stray_crops = sorted({u.crop for u in result.unused if u.reason == "crop"})
    stray = sorted({u.label for u in result.unused if u.reason != "crop"})
    stray += sorted({r.label for r in result.rows if r.label not in task.classes} - set(stray))
    other_crops = sorted({r.crop for r in result.rows if r.crop != task.crop} | set(stray_crops))
    if other_crops:
        raise ContinuationError(
            f"--data {data_dir}: images of crop(s) {other_crops}; the task is for '{task.crop}'"
        )
    if stray:
        raise ContinuationError(
            f"--data {data_dir}: images of class(es) {stray} that the task does not name "
            f"(task.classes {task.classes}); remove them or name them in the task"
        )
    have = Counter(r.label for r in result.rows if r.split == "train")
    empty = [c for c in task.classes if not have[c]]
    if not result.rows:
        raise ContinuationError(
            f"--data {data_dir}: the task has no usable images ({len(result.rejects)} rejected; "
            f"expected {task.crop}/<class>/<image> for {task.classes})"
        )
    if empty:
        raise ContinuationError(f"--data {data_dir}: task.classes {empty} have no training images")


def eval_data(config: PlatformConfig, eval_dir: Path, crop: str) -> list[ManifestRow]:
    """The evaluation set's images (paths under EVAL_PREFIX/), in any layout `aads data
    ingest` reads (its marker file, ``crop/class``, ``crop/part/class``, PlantVillage's, each
    optionally under one folder per domain), detected as ingest detects it. Images of crops,
    classes or domains the config does not name are left out."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise ContinuationError(f"--eval {eval_dir}: not a folder")
    try:
        result = ingest(eval_dir, config=config)
    except Exception as err:  # noqa: BLE001 - a LayoutError/BadInput says why
        raise ContinuationError(f"--eval {eval_dir}: {err}") from None
    rows = [replace(r, path=f"{EVAL_PREFIX}/{r.path}") for r in result.rows]
    if not any(r.crop == crop for r in rows):
        raise ContinuationError(f"--eval {eval_dir}: no usable images of crop '{crop}'")
    return rows


def joined_root(work: Path, data_dir: Path, eval_dir: Path | None) -> Path:
    """One folder whose ``task/`` and ``eval/`` link to the two data folders (rows are
    relative to it)."""
    root = Path(work) / "images"
    root.mkdir(parents=True, exist_ok=True)
    for name, target in ((TASK_PREFIX, data_dir), (EVAL_PREFIX, eval_dir)):
        link = root / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if target is not None:
            os.symlink(Path(target).resolve(), link, target_is_directory=True)
    return root


def task_for(data: Path, crop: str | None, classes: list[str], domain: str | None) -> TaskSpec:
    """The task: ``DATA/task.json`` when present (options must agree with it), else built
    from the options and the batch's folders (``<crop>/<class>/<image>``)."""
    if (Path(data) / TASK_FILE).is_file():
        task = read_task(Path(data))
        wanted = {"crop": crop, "domain": domain, "classes": classes or None}
        differ = [
            f"--{k} {v!r} but {TASK_FILE} says {getattr(task, k)!r}"
            for k, v in wanted.items()
            if v and v != getattr(task, k)
        ]
        if differ:
            raise ContinuationError(f"{data}: " + "; ".join(differ))
        return task
    folders = sorted(p.name for p in Path(data).iterdir() if p.is_dir()) if data.is_dir() else []
    if crop is None:
        if len(folders) != 1:
            raise ContinuationError(
                f"--crop: {data} holds crop folders {folders}; name the crop with --crop"
            )
        crop = folders[0]
    if domain is None and not classes:
        raise ContinuationError(
            "name the task: --classes NEW[,NEW...] (new diseases) or --domain NAME (a new "
            f"condition), or give a batch with {TASK_FILE}"
        )
    if domain is not None and not classes:
        shown = Path(data) / crop
        classes = sorted(p.name for p in shown.iterdir() if p.is_dir()) if shown.is_dir() else []
    try:
        return TaskSpec(
            kind="domain" if domain else "classes",
            crop=crop,
            classes=classes,
            domain=domain,
            source=f"options for {data}",
        )
    except ValueError as err:
        raise ContinuationError(f"the task from the options is invalid: {err}") from None
