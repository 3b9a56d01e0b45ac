"""``aads feedback import``: labelled captures into the next task's data batch.

Labels come from Label Studio's JSON export of the review's project (`labelstudio.task_label`
reads each task), or from a folder a person sorted by hand (``<class>/<image>``, e.g. the
review's ``images/`` with ``cluster-NN`` folders renamed to class names).

Every image is labelled with a class name (a slug). Against the classes the answering model
knows:

- only new names: one ``classes`` task (SD-LoRA adds them);
- only known names: one ``domain`` task, named by ``--domain`` (CONEC-LoRA learns the new
  condition); without ``--domain`` this is an error before anything is fetched or written;
- both: two batches, ``<out>/classes`` and ``<out>/domain``, said in the result's messages.

Each batch folder holds ``<crop>/<class>/<sha256>.jpg`` (the crop-class layout `aads data
ingest` reads) and ``task.json`` (`aads.tasks.TaskSpec`). Left out and counted: ``skip``, ``not a
plant``, unlabelled, disputed (annotators disagree, or one image under two labels), unnamed
new classes, images that cannot be fetched or decoded, and (``--drop-known``) known classes.
Images are fetched one at a time straight into a staging folder that is renamed into place
at the end: memory holds one image, and the batch appears whole or not at all.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from aads.atomic import atomic_dir
from aads.backbone import ImageDecodeError, open_image
from aads.capture.records import CaptureStore
from aads.config import BASE_DOMAIN, SLUG, StorageSettings
from aads.data.layout import slugify
from aads.errors import BadInput
from aads.feedback.labelstudio import read_export, task_label
from aads.storage import StorageError, open_store, sha256_file
from aads.tasks import TaskSpec, write_task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
LEFT_OUT_FOLDERS = {
    "skip": "skipped",
    "not_a_plant": "not_a_plant",
    "unlabelled": "unlabelled",
    "unlabeled": "unlabelled",
}
"""Folder names (after slugify) that hold images a person set aside, and the reason counted."""


class BatchError(BadInput):
    """Labels that cannot become a task as given (the message says what to change)."""


@dataclass(frozen=True)
class Labelled:
    """One labelled image, not fetched yet: `fetch(dst)` writes it to `dst` (False: missing)."""

    label: str
    identity: str  # the same image has the same identity (its capture hash, or file hash)
    fetch: Callable[[Path], bool]


@dataclass
class ImportResult:
    crop: str
    batches: list[tuple[TaskSpec, Path]]
    left_out: dict[str, int]
    messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- sources


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
        identity = t.data.get("sha256") or t.data.get("capture_key") or t.data.get("image")
        if not isinstance(identity, str) or not identity:
            left_out["image_missing"] += 1
            continue
        items.append(Labelled(label, identity, _task_fetcher(t.data, target, storage)))
    return items, left_out


def _task_fetcher(
    data: dict, target: CaptureStore, storage: StorageSettings
) -> Callable[[Path], bool]:
    """How to fetch a task's image: by its capture key (tasks from the review, checked against
    the hash recorded at capture), else an ``s3://`` URL or a local path in ``data.image``.
    HTTP URLs are not fetched: nothing here reaches the network beyond the configured store."""
    key, expected, url = data.get("capture_key"), data.get("image_sha256"), data.get("image")

    def fetch(dst: Path) -> bool:
        try:
            if isinstance(key, str):
                target.store.get_file(key, dst, expected_sha256=expected or None)
            elif isinstance(url, str) and url.startswith("s3://"):
                parsed = urlparse(url)
                store, _ = open_store(f"s3://{parsed.netloc}", storage)
                store.get_file(parsed.path.lstrip("/"), dst)
            elif isinstance(url, str) and Path(url).is_file():
                shutil.copyfile(url, dst)
            else:
                return False
        except (StorageError, OSError):
            return False
        return True

    return fetch


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
        items.append(Labelled(name, sha256_file(path), _file_fetcher(path)))
    return items, left_out


def _file_fetcher(path: Path) -> Callable[[Path], bool]:
    def fetch(dst: Path) -> bool:
        try:
            shutil.copyfile(path, dst)
        except OSError:
            return False
        return True

    return fetch


# --------------------------------------------------------------------------- the batch


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
    """Check the labels, split them into tasks, fetch the images and write the batch(es)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BatchError(f"{out} exists and is not empty: choose a new --out")
    if domain is not None and (not re.fullmatch(SLUG, domain) or domain == BASE_DOMAIN):
        raise BatchError(
            f"--domain {domain!r}: a new condition's name, lowercase letters, digits and _, "
            f"not '{BASE_DOMAIN}'"
        )
    items = _undisputed(items, left_out)
    known_items = [i for i in items if i.label in known]
    if known_items and domain is None and not drop_known:
        names = ", ".join(sorted({i.label for i in known_items}))
        raise BatchError(
            f"{len(known_items)} image(s) are labelled with classes the model knows ({names}): "
            "that is a domain task; name the new condition with --domain NAME (e.g. field, "
            "night, phone_camera), or leave them out with --drop-known"
        )
    if drop_known:
        left_out["known_class"] += len(known_items)
        items = [i for i in items if i.label not in known]
    with atomic_dir(out) as staging:
        written = _fetch_all(items, staging / ".incoming", left_out)
        if not written:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(left_out.items()) if v) or "none"
            raise BatchError(f"no labelled images to import (left out: {counts})")
        groups = {
            "classes": [(lab, f) for lab, f in written if lab not in known],
            "domain": [(lab, f) for lab, f in written if lab in known],
        }
        groups = {kind: files for kind, files in groups.items() if files}
        batches = []
        for kind, files in groups.items():
            sub = Path(kind) if len(groups) > 1 else Path()
            counts: dict[str, int] = defaultdict(int)
            for label, file in files:
                dst = staging / sub / crop / label / file.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                file.rename(dst)
                counts[label] += 1
            spec = TaskSpec(
                kind=kind,  # type: ignore[arg-type]
                crop=crop,
                classes=sorted(counts),
                domain=domain if kind == "domain" else None,
                images=dict(sorted(counts.items())),
                source=source,
            )
            write_task(staging / sub, spec)
            batches.append((spec, out / sub))
        shutil.rmtree(staging / ".incoming")
    messages = []
    if len(batches) > 1:
        (new, _), (old, _) = batches
        messages.append(
            f"the labels hold new classes ({', '.join(new.classes)}) and known classes "
            f"({', '.join(old.classes)}): written as two batches, {out / 'classes'} (a classes "
            f"task) and {out / 'domain'} (a domain task for '{domain}'); continue with each "
            "in turn"
        )
    return ImportResult(crop, batches, {k: v for k, v in left_out.items() if v}, messages)


def _undisputed(items: list[Labelled], left_out: Counter[str]) -> list[Labelled]:
    """One entry per image; an image given two different labels is left out altogether."""
    labels: dict[str, set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    for item in items:
        labels[item.identity].add(item.label)
        counts[item.identity] += 1
    seen: set[str] = set()
    keep = []
    for item in items:
        if len(labels[item.identity]) > 1:
            continue
        if item.identity in seen:
            left_out["duplicate"] += 1
            continue
        seen.add(item.identity)
        keep.append(item)
    left_out["conflict"] += sum(counts[i] for i, ls in labels.items() if len(ls) > 1)
    return keep


def _fetch_all(
    items: list[Labelled], incoming: Path, left_out: Counter[str]
) -> list[tuple[str, Path]]:
    """Fetch each image into `incoming` as ``<sha256>.<format>``; count what is missing, cannot be
    decoded, or turns out to be an image already fetched under the same label."""
    incoming.mkdir(parents=True)
    written: list[tuple[str, Path]] = []
    names: set[str] = set()
    for n, item in enumerate(items):
        tmp = incoming / f".{n}"
        if not item.fetch(tmp):
            left_out["image_missing"] += 1
            continue
        try:
            open_image(tmp)
            with Image.open(tmp) as probe:
                suffix = SUFFIX_OF_FORMAT.get(probe.format or "", ".jpg")
        except ImageDecodeError:
            tmp.unlink()
            left_out["undecodable"] += 1
            continue
        name = f"{sha256_file(tmp)}{suffix}"
        if name in names:
            tmp.unlink()
            left_out["duplicate"] += 1
            continue
        names.add(name)
        written.append((item.label, tmp.rename(incoming / name)))
    return written
