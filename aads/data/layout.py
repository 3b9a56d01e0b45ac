"""Folder layouts we read labels from, so users can point AADS at data as they already keep it.

- ``plantvillage``: ``Crop___Disease/img.jpg`` (PlantVillage's own naming; all leaves)
- ``crop-class``: ``crop/class/img.jpg``
- ``crop-part-class``: ``crop/part/class/img.jpg``

Any of them may sit under one folder per domain (``<domain>/...``, e.g. ``field/``), which is
how `aads data synth` writes its output. ``auto`` reads the ``aads-layout.json`` marker that
synth leaves, else infers the layout from folder depth and PlantVillage's ``___`` separator.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aads.config import BASE_DOMAIN, slugify
from aads.errors import BadInput
from aads.tasks import TASK_FILE

Layout = Literal["auto", "plantvillage", "crop-class", "crop-part-class"]
LAYOUT_MARKER = "aads-layout.json"
_LABEL_DEPTH = {"plantvillage": 1, "crop-class": 2, "crop-part-class": 3}


class LayoutError(BadInput):
    """The folder does not look like any layout we read; says what was found."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """A file plus the labels its location gives it (not yet checked to be an image)."""

    path: Path
    rel: str
    crop: str
    part: str
    label: str
    domain: str
    written_label: str = ""
    """The class folder's own slug when the layout shortened it (``tomato_mosaic_virus``)."""


@dataclass(frozen=True, slots=True)
class Misplaced:
    rel: str
    why: str


__all__ = ["Labelled", "Layout", "LayoutError", "Misplaced", "detect_layout", "discover", "slugify"]


def _plantvillage_labels(folder: str) -> tuple[str, str, str]:
    """(crop, class, class as written) slugs of a ``Crop___Disease`` folder."""
    crop_raw, sep, disease_raw = folder.partition("___")
    if not sep:
        raise LayoutError(f"folder {folder!r} is not Crop___Disease")
    crop = slugify(crop_raw)
    label = written = slugify(disease_raw)
    # PlantVillage repeats the crop in some classes: Tomato___Tomato_mosaic_virus.
    first_word = crop.split("_")[0]
    if label.startswith(f"{first_word}_") and label != first_word:
        label = label[len(first_word) + 1 :]
    return crop, label, written


def _files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.name not in (LAYOUT_MARKER, TASK_FILE)
    )


def detect_layout(
    root: Path, files: list[Path], names_crop: Callable[[str], bool] | None = None
) -> tuple[str, bool]:
    """Return (layout, domain_dirs) for `root`, or raise naming what was seen.

    Four folder levels are either ``crop/part/class`` or ``domain/crop/class``; `names_crop`
    (the config's crop names and aliases) tells them apart: when the top folders name no crop
    and the folders under them do, the top level is one folder per domain. Without it, or when
    the names do not say, four levels read as ``crop/part/class``.
    """
    marker = root / LAYOUT_MARKER
    if marker.is_file():
        meta = json.loads(marker.read_text())
        return meta["layout"], bool(meta.get("domain_dirs", False))
    if not files:
        raise LayoutError(f"{root}: no files found")
    depths = Counter(len(p.relative_to(root).parts) for p in files)
    depth = depths.most_common(1)[0][0]
    tops = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    if depth == 2 and tops and all("___" in t for t in tops):
        return "plantvillage", False
    second_level = {
        p.relative_to(root).parts[1] for p in files if len(p.relative_to(root).parts) == 3
    }
    if depth == 3 and second_level and all("___" in t for t in second_level):
        return "plantvillage", True
    if depth == 3:
        return "crop-class", False
    if depth == 4:
        if _domain_folders_over(root, files, names_crop):
            return "crop-class", True
        return "crop-part-class", False
    if depth == 5:
        return "crop-part-class", True
    raise LayoutError(
        f"{root}: cannot infer the layout (most files are {depth} folders deep); pass "
        "--layout plantvillage|crop-class|crop-part-class and --domain-dirs if the top "
        "level is one folder per domain"
    )


def _domain_folders_over(
    root: Path, files: list[Path], names_crop: Callable[[str], bool] | None
) -> bool:
    """Whether four-level files are ``domain/crop/class`` (True) rather than
    ``crop/part/class``: only when `names_crop` finds crops one level down and none at the top."""
    if names_crop is None:
        return False
    rels = [p.relative_to(root).parts for p in files if len(p.relative_to(root).parts) == 4]
    tops, seconds = {r[0] for r in rels}, {r[1] for r in rels}
    return not any(names_crop(t) for t in tops) and any(names_crop(s) for s in seconds)


def discover(
    root: Path,
    layout: Layout = "auto",
    *,
    domain_dirs: bool | None = None,
    default_part: str = "leaf",
    domain: str = BASE_DOMAIN,
    names_crop: Callable[[str], bool] | None = None,
) -> tuple[list[Labelled], list[Misplaced], list[str], str, bool]:
    """Walk `root` and label every file by its location.

    Returns (labelled files, misplaced files, label folders that hold no file at all,
    layout used, whether top folders are domains).
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory")
    files = _files(root)
    if layout == "auto":
        layout, detected_domains = detect_layout(root, files, names_crop)
        domain_dirs = detected_domains if domain_dirs is None else domain_dirs
    domain_dirs = bool(domain_dirs)
    depth = _LABEL_DEPTH[layout] + int(domain_dirs)

    labelled: list[Labelled] = []
    misplaced: list[Misplaced] = []
    for p in files:
        parts = p.relative_to(root).parts
        rel = "/".join(parts)
        if len(parts) != depth + 1:
            misplaced.append(Misplaced(rel, f"expected {depth} folder level(s) for {layout}"))
            continue
        dom, dirs = (slugify(parts[0]), parts[1:-1]) if domain_dirs else (domain, parts[:-1])
        if layout == "plantvillage":
            try:
                crop, label, written = _plantvillage_labels(dirs[0])
            except LayoutError as err:
                misplaced.append(Misplaced(rel, str(err)))
                continue
            part = default_part
            labelled.append(Labelled(p, rel, crop, part, label, dom, written))
            continue
        elif layout == "crop-class":
            crop, part, label = slugify(dirs[0]), default_part, slugify(dirs[1])
        else:
            crop, part, label = slugify(dirs[0]), slugify(dirs[1]), slugify(dirs[2])
        labelled.append(Labelled(p, rel, crop, part, label, dom))

    empty_dirs = sorted(
        d.relative_to(root).as_posix()
        for d in root.rglob("*")
        if d.is_dir()
        and len(d.relative_to(root).parts) == depth
        and not any(part.startswith(".") for part in d.relative_to(root).parts)
        and not any(c.is_file() for c in d.iterdir())
    )
    return labelled, misplaced, empty_dirs, layout, domain_dirs
