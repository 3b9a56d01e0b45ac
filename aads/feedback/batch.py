"""``aads feedback import``: labelled captures into the next task's data batch.

Labels come from Label Studio's JSON export of the review's project (`labelstudio.task_label`
reads each task), or from a folder a person sorted by hand (``<class>/<image>``, e.g. the
review's ``images/`` with ``cluster-NN`` folders renamed to class names).

Every image is labelled with a class name (a slug). Against the classes the answering model
knows:

- only new names: one ``classes`` task (SD-LoRA adds them);
- only known names: one ``domain`` task, named by ``--domain`` (CONEC-LoRA learns the new
  condition); without ``--domain`` this is an error before anything is written;
- both: two batches, ``<out>/classes`` and ``<out>/domain``, said in the result's messages.

Each batch folder holds ``<crop>/<class>/<sha256>.jpg`` (the crop-class layout `aads data
ingest` reads) and ``task.json`` (`aads.tasks.TaskSpec`). Left out and counted: ``skip``, ``not a
plant``, unlabelled, disputed (annotators disagree), unnamed new classes, images that cannot be
fetched or decoded, the same image under two labels, and (``--drop-known``) known classes.
The batch is written in a staging folder and renamed into place: all of it or nothing.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from aads.atomic import atomic_write_bytes
from aads.backbone import ImageDecodeError, open_image
from aads.capture.records import CaptureStore
from aads.config import BASE_DOMAIN, SLUG, StorageSettings
from aads.data.layout import slugify
from aads.errors import BadInput
from aads.feedback.labelstudio import read_export, task_label
from aads.feedback.staging import staged_dir
from aads.storage import StorageError, open_store
from aads.tasks import TaskSpec, write_task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
LEFT_OUT_FOLDERS = {
    "skip": "skipped",
    "not_a_plant": "not_a_plant",
    "unlabelled": "unlabelled",
    "unlabeled": "unlabelled",
}
"""Folder names (after slugify) that hold images a person set aside, and the reason counted."""


class BatchError(BadInput):
    """Labels that cannot become a task as given (the message says what to change)."""


@dataclass
class Labelled:
    label: str
    image: bytes
    sha256: str


@dataclass
class ImportResult:
    crop: str
    batches: list[tuple[TaskSpec, Path]]
    left_out: dict[str, int]
    messages: list[str] = field(default_factory=list)


def labels_from_export(
    export: Path, target: CaptureStore, storage: StorageSettings
) -> tuple[list[Labelled], Counter[str]]:
    """The labelled images of a Label Studio export, and what was left out, by reason."""
    items: list[Labelled] = []
    left_out: Counter[str] = Counter()
    for t in read_export(export):
        outcome, label = task_label(t)
        if outcome != "labelled" or label is None:
            left_out[outcome] += 1
            continue
        data = _fetch_task_image(t.data, target, storage)
        if data is None:
            left_out["image_missing"] += 1
            continue
        items.append(Labelled(label, data, hashlib.sha256(data).hexdigest()))
    return items, left_out


def _fetch_task_image(data: dict, target: CaptureStore, storage: StorageSettings) -> bytes | None:
    """A task's image: by its capture key (tasks from the review, checked against the hash
    recorded at capture), else an ``s3://`` URL or a local path in ``data.image``. HTTP URLs
    are not fetched: nothing here reaches the network beyond the configured store."""
    key, expected = data.get("capture_key"), data.get("image_sha256")
    url = data.get("image")
    try:
        with tempfile.TemporaryDirectory() as d:
            dst = Path(d) / "image"
            if isinstance(key, str):
                target.store.get_file(key, dst, expected_sha256=expected or None)
            elif isinstance(url, str) and url.startswith("s3://"):
                parsed = urlparse(url)
                store, _ = open_store(f"s3://{parsed.netloc}", storage)
                store.get_file(parsed.path.lstrip("/"), dst)
            elif isinstance(url, str) and Path(url).is_file():
                return Path(url).read_bytes()
            else:
                return None
            return dst.read_bytes()
    except (StorageError, OSError):
        return None


def labels_from_folder(folder: Path) -> tuple[list[Labelled], Counter[str]]:
    """Images sorted by hand into ``<class>/<image>``; ``skip``, ``not_a_plant``,
    ``unlabelled`` and untouched ``cluster-NN`` folders are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BatchError(f"{folder}: not a folder")
    items: list[Labelled] = []
    left_out: Counter[str] = Counter()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if len(rel) != 2 or path.suffix.lower() not in IMAGE_SUFFIXES:
            left_out["misplaced"] += 1
            continue
        name = slugify(rel[0])
        if name in LEFT_OUT_FOLDERS:
            left_out[LEFT_OUT_FOLDERS[name]] += 1
            continue
        if name.startswith("cluster_"):
            left_out["unlabelled"] += 1
            continue
        data = path.read_bytes()
        items.append(Labelled(name, data, hashlib.sha256(data).hexdigest()))
    return items, left_out


def build_batches(
    crop: str,
    items: list[Labelled],
    left_out: Counter[str],
    known: list[str],
    out: Path,
    *,
    domain: str | None = None,
    drop_known: bool = False,
    source: str = "",
) -> ImportResult:
    """Check the labels, split them into tasks and write the batch(es) under `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BatchError(f"{out} exists and is not empty: choose a new --out")
    if domain is not None and (not re.fullmatch(SLUG, domain) or domain == BASE_DOMAIN):
        raise BatchError(
            f"--domain {domain!r}: a new condition's name, lowercase letters, digits and _, "
            f"not '{BASE_DOMAIN}'"
        )
    by_sha: dict[str, Labelled] = {}
    disputed: set[str] = set()
    for item in items:
        seen = by_sha.get(item.sha256)
        if seen is not None and seen.label != item.label:
            disputed.add(item.sha256)
        by_sha.setdefault(item.sha256, item)
    left_out["conflict"] += 2 * len(disputed)  # both copies
    left_out["duplicate"] += len(items) - len(by_sha) - len(disputed)
    decodable = []
    for sha, item in by_sha.items():
        if sha in disputed:
            continue
        try:
            open_image(item.image)
        except ImageDecodeError:
            left_out["undecodable"] += 1
            continue
        decodable.append(item)
    known_items = [i for i in decodable if i.label in known]
    new_items = [i for i in decodable if i.label not in known]
    if known_items and domain is None and not drop_known:
        names = ", ".join(sorted({i.label for i in known_items}))
        raise BatchError(
            f"{len(known_items)} image(s) are labelled with classes the model knows ({names}): "
            "that is a domain task; name the new condition with --domain NAME (e.g. field, "
            "night, phone_camera), or leave them out with --drop-known"
        )
    if drop_known:
        left_out["known_class"] += len(known_items)
        known_items = []
    if not known_items and not new_items:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(left_out.items()) if v) or "none"
        raise BatchError(f"no labelled images to import (left out: {counts})")
    tasks: list[tuple[str, list[Labelled], TaskSpec]] = []
    if new_items:
        tasks.append(("classes", new_items, _spec("classes", crop, new_items, None, source)))
    if known_items:
        tasks.append(("domain", known_items, _spec("domain", crop, known_items, domain, source)))
    messages = []
    batches: list[tuple[TaskSpec, Path]] = []
    with staged_dir(out) as staging:
        for kind, chosen, spec in tasks:
            sub = Path(kind) if len(tasks) > 1 else Path()
            for item in chosen:
                atomic_write_bytes(
                    staging / sub / crop / item.label / f"{item.sha256}.jpg", item.image
                )
            write_task(staging / sub, spec)
            batches.append((spec, out / sub))
    if len(tasks) > 1:
        new_names = ", ".join(tasks[0][2].classes)
        known_names = ", ".join(tasks[1][2].classes)
        messages.append(
            f"the labels hold new classes ({new_names}) and known classes ({known_names}): "
            f"written as two batches, {out / 'classes'} (a classes task) and "
            f"{out / 'domain'} (a domain task for '{domain}'); continue with each in turn"
        )
    return ImportResult(crop, batches, {k: v for k, v in left_out.items() if v}, messages)


def _spec(kind: str, crop: str, items: list[Labelled], domain: str | None, source: str) -> TaskSpec:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item.label] += 1
    return TaskSpec(
        kind=kind,  # type: ignore[arg-type]
        crop=crop,
        classes=sorted(counts),
        domain=domain,
        images=dict(sorted(counts.items())),
        source=source,
    )
