"""The data manifest: one row per accepted image, the single source of truth for every phase.

A manifest is a CSV (diff-able, readable in any tool) plus its sha256, which the registry
records on each model version so a model can be traced to exactly the images it saw.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from aads.atomic import atomic_write_text
from aads.errors import BadInput

SPLITS = ("train", "val", "test")
PHASES = ("1", "2", "3", "ood", "")


class ManifestError(BadInput):
    """A manifest file that cannot be read; the message names file, line and column."""


@dataclass(frozen=True, slots=True)
class ManifestRow:
    path: str  # relative to the data root, POSIX separators
    sha256: str
    crop: str
    part: str
    label: str  # disease class; "label" because "class" is a Python keyword
    domain: str
    split: str  # train | val | test
    phase: str  # "1", "2", "3", "ood", or "" when the config does not use the image
    task: str  # phase-2 batch index, phase-3 domain name, else ""
    width: int
    height: int


COLUMNS = tuple(f.name for f in fields(ManifestRow))


@dataclass(frozen=True, slots=True)
class RejectRow:
    path: str
    reason: str  # not_an_image | corrupt | too_small | too_large | duplicate | empty_class | ...
    detail: str


@dataclass(frozen=True, slots=True)
class UnusedRow:
    """A good image the config does not use: its crop, class or domain is not configured."""

    path: str
    crop: str  # the configured crop when only its class or domain is unknown, else as found
    label: str
    domain: str
    reason: str  # what the config does not name: crop | class | domain


def _to_csv(rows: Iterable[object], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))  # type: ignore[call-overload]
    return buf.getvalue()


def manifest_text(rows: Iterable[ManifestRow]) -> str:
    """Canonical CSV text: rows sorted by path so the hash does not depend on discovery order."""
    return _to_csv(sorted(rows, key=lambda r: r.path), COLUMNS)


def write_manifest(rows: Iterable[ManifestRow], path: Path) -> str:
    """Write atomically and return the manifest's sha256."""
    text = manifest_text(rows)
    atomic_write_text(Path(path), text)
    return hashlib.sha256(text.encode()).hexdigest()


def write_rejects(rows: Iterable[RejectRow], path: Path) -> None:
    cols = tuple(f.name for f in fields(RejectRow))
    atomic_write_text(Path(path), _to_csv(sorted(rows, key=lambda r: r.path), cols))


def write_unused(rows: Iterable[UnusedRow], path: Path) -> None:
    cols = tuple(f.name for f in fields(UnusedRow))
    atomic_write_text(Path(path), _to_csv(sorted(rows, key=lambda r: r.path), cols))


def read_manifest(path: Path) -> list[ManifestRow]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ManifestError(f"{path}: cannot read manifest ({err.strerror or err})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    rows = []
    for line, rec in enumerate(reader, start=2):
        try:
            row = ManifestRow(
                **{c: rec[c] for c in COLUMNS if c not in ("width", "height")},
                width=int(rec["width"]),
                height=int(rec["height"]),
            )
        except (TypeError, ValueError) as err:
            raise ManifestError(f"{path}:{line}: bad row ({err})") from None
        if row.split not in SPLITS:
            raise ManifestError(f"{path}:{line}: split {row.split!r} not one of {SPLITS}")
        if row.phase not in PHASES:
            raise ManifestError(f"{path}:{line}: phase {row.phase!r} not one of {PHASES}")
        rows.append(row)
    return rows


def select(
    rows: Iterable[ManifestRow],
    *,
    crop: str | None = None,
    split: str | None = None,
    phase: str | None = None,
    task: str | None = None,
    domain: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[ManifestRow]:
    """Rows matching every given filter (None means any)."""
    wanted = set(labels) if labels is not None else None
    return [
        r
        for r in rows
        if (crop is None or r.crop == crop)
        and (split is None or r.split == split)
        and (phase is None or r.phase == phase)
        and (task is None or r.task == task)
        and (domain is None or r.domain == domain)
        and (wanted is None or r.label in wanted)
    ]
