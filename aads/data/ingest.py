"""Ingest: image folders in, a checked manifest + a rejects report out.

Nothing a user drops into the data folder can crash the run: non-images, corrupt or truncated
files, tiny or enormous images, duplicates, empty class folders and images the config lists
under ``data.exclude`` each land in the rejects report with a reason, and the run carries on
with what is usable.

With a config, the manifest holds exactly the images the config uses. Folder names are matched
to configured crops and classes through their slugs and the config's ``aliases`` /
``class_aliases`` (PlantVillage's ``Corn_(maize)`` is crop ``corn`` once corn lists that
alias); images of crops, classes or domains the config does not name are counted by label in
``unused.csv`` and ``ingest.json``, never kept silently. A configured class with no images gets
a warning naming the labels found for its crop and the closest one.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from aads.atomic import atomic_write_bytes
from aads.config import BASE_DOMAIN, DataSettings, PlatformConfig
from aads.data.images import ImageProbe, ImageRejected, probe_image
from aads.data.layout import Labelled, Layout, discover
from aads.data.manifest import (
    ManifestRow,
    RejectRow,
    UnusedRow,
    write_manifest,
    write_rejects,
    write_unused,
)
from aads.data.splits import assign_phase, assign_splits
from aads.errors import BadInput
from aads.progress import Progress

MANIFEST_FILE = "manifest.csv"
REJECTS_FILE = "rejects.csv"
UNUSED_FILE = "unused.csv"
SUMMARY_FILE = "ingest.json"


class NothingIngested(BadInput):
    """Ingest kept no image: every file was rejected or belongs to nothing the config names."""


@dataclass
class IngestResult:
    rows: list[ManifestRow]
    rejects: list[RejectRow]
    unused: list[UnusedRow] = field(default_factory=list)
    manifest_sha256: str = ""
    summary: dict = field(default_factory=dict)


def _named_by_config(
    items: list[Labelled], config: PlatformConfig | None
) -> tuple[list[Labelled], list[UnusedRow]]:
    """Items renamed to the config's crop and class names, and the ones the config does not
    use (with the crop and class they were found under)."""
    if config is None:
        return items, []
    named: list[Labelled] = []
    unused: list[UnusedRow] = []
    for item in items:
        spec = config.crop_named(item.crop)
        if spec is None:
            unused.append(UnusedRow(item.rel, item.crop, item.label, item.domain, "crop"))
            continue
        label = spec.class_named(*filter(None, (item.label, item.written_label)))
        if label is None:
            unused.append(UnusedRow(item.rel, spec.name, item.label, item.domain, "class"))
            continue
        if not assign_phase(config, spec.name, label, item.domain)[0]:
            unused.append(UnusedRow(item.rel, spec.name, label, item.domain, "domain"))
            continue
        named.append(replace(item, crop=spec.name, label=label))
    return named, unused


def _excluded(item: Labelled, probe: ImageProbe, settings: DataSettings) -> RejectRow | None:
    """The reject row of an image the config's ``data.exclude`` names, else None."""
    for entry in settings.exclude:
        if entry.sha256 == probe.sha256 or entry.path == item.rel:
            return RejectRow(item.rel, "excluded", entry.reason)
    return None


def _probe_all(
    items: list[Labelled], settings: DataSettings, progress: Progress | None, workers: int
) -> list[ImageProbe | ImageRejected]:
    def one(item: Labelled) -> ImageProbe | ImageRejected:
        try:
            return probe_image(
                item.path, min_side=settings.min_image_side, max_pixels=settings.max_image_pixels
            )
        except ImageRejected as rej:
            return rej
        except OSError as err:  # unreadable file (permissions, vanished mid-run)
            return ImageRejected("unreadable", err.strerror or str(err))

    results: list[ImageProbe | ImageRejected] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, res in enumerate(pool.map(one, items), 1):
            results.append(res)
            if progress:
                progress(i, len(items))
    return results


def ingest(
    root: Path,
    *,
    config: PlatformConfig | None = None,
    settings: DataSettings | None = None,
    layout: Layout = "auto",
    domain_dirs: bool | None = None,
    default_part: str = "leaf",
    domain: str = BASE_DOMAIN,
    progress: Progress | None = None,
    workers: int | None = None,
) -> IngestResult:
    """Label, check, de-duplicate, split and phase-assign every image under `root`."""
    settings = settings or (config.data if config else DataSettings())
    labelled, misplaced, empty_dirs, used_layout, used_domain_dirs = discover(
        Path(root),
        layout,
        domain_dirs=domain_dirs,
        default_part=default_part,
        domain=domain,
        names_crop=(lambda name: config.crop_named(name) is not None) if config else None,
    )
    rejects = [RejectRow(m.rel, "misplaced", m.why) for m in misplaced]
    rejects += [RejectRow(d, "empty_class", "folder holds no files") for d in empty_dirs]
    named, unused = _named_by_config(labelled, config)

    probes = _probe_all(named, settings, progress, workers or min(8, (os.cpu_count() or 2) * 2))
    good: dict[str, list[tuple[Labelled, ImageProbe]]] = defaultdict(list)
    for item, probe in zip(named, probes, strict=True):
        if isinstance(probe, ImageRejected):
            rejects.append(RejectRow(item.rel, probe.reason, probe.detail))
        elif excluded := _excluded(item, probe, settings):
            rejects.append(excluded)
        else:
            good[probe.sha256].append((item, probe))
    accepted: list[tuple[Labelled, ImageProbe]] = []
    for copies in good.values():
        first = copies[0][0]
        if len({(i.crop, i.label) for i, _ in copies}) > 1:
            # The same bytes under two labels: we cannot know which is right, so use neither.
            for item, _ in copies:
                others = ", ".join(f"{i.rel}" for i, _ in copies if i is not item)
                rejects.append(RejectRow(item.rel, "conflicting_labels", f"same bytes as {others}"))
            continue
        accepted.append(copies[0])
        rejects += [
            RejectRow(i.rel, "duplicate", f"same bytes as {first.rel}") for i, _ in copies[1:]
        ]

    # A class folder whose every file was rejected is an empty class too.
    by_folder = Counter(str(Path(i.rel).parent) for i, _ in accepted)
    for folder in sorted({str(Path(i.rel).parent) for i in named} - set(by_folder)):
        rejects.append(RejectRow(folder, "empty_class", "no usable image in this folder"))

    splits = assign_splits(
        ((p.sha256, (i.crop, i.label, i.domain)) for i, p in accepted),
        settings.split,
        settings.split_seed,
    )
    rows = []
    for item, probe in accepted:
        phase, task = assign_phase(config, item.crop, item.label, item.domain)
        rows.append(
            ManifestRow(
                path=item.rel,
                sha256=probe.sha256,
                crop=item.crop,
                part=item.part,
                label=item.label,
                domain=item.domain,
                split=splits[probe.sha256],
                phase=phase,
                task=task,
                width=probe.width,
                height=probe.height,
            )
        )
    result = IngestResult(rows=rows, rejects=rejects, unused=unused)
    result.summary = summarize(result, config, Path(root), used_layout, used_domain_dirs, settings)
    return result


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate `name` most likely means: one whose words include all of `name`'s
    (``gray_leaf_spot`` -> ``cercospora_leaf_spot_gray_leaf_spot``), else the nearest by
    `difflib` similarity, else None."""
    options = sorted(set(candidates) - {name})
    words = set(name.split("_"))
    containing = [c for c in options if words <= set(c.split("_"))]
    if containing:
        return min(containing, key=len)
    near = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return near[0] if near else None


def _unused_counts(unused: list[UnusedRow]) -> list[dict]:
    """Unused images counted by (crop, class, domain) as found, with why they are unused."""
    counts = Counter((u.crop, u.label, u.domain, u.reason) for u in unused)
    return [
        {"crop": c, "label": lbl, "domain": d, "not_in_config": why, "images": n}
        for (c, lbl, d, why), n in sorted(counts.items())
    ]


def _missing_warnings(
    config: PlatformConfig, rows: list[ManifestRow], unused: list[UnusedRow]
) -> tuple[dict[str, list[str]], dict[str, dict], list[str]]:
    """Configured classes without base-domain images: the gaps, the labels found for each crop
    with the closest match per gap, and one readable warning per gap."""
    found: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        found[r.crop].add(r.label)
    for u in unused:
        found[u.crop].add(u.label)
    other_crops = sorted({u.crop for u in unused if u.reason == "crop"})
    gaps: dict[str, list[str]] = {}
    detail: dict[str, dict] = {}
    warnings: list[str] = []
    for spec in config.crops:
        have = {r.label for r in rows if r.crop == spec.name and r.domain == BASE_DOMAIN}
        gap = [c for c in spec.all_classes if c not in have]
        if not gap:
            continue
        gaps[spec.name] = gap
        labels = sorted(found.get(spec.name, ()))
        if not labels:
            near = closest(spec.name, other_crops)
            detail[spec.name] = {"labels_found": [], "closest_crop": near}
            hint = f"; closest: '{near}' (add it to the crop's aliases)" if near else ""
            others = ", ".join(other_crops) or "none"
            warnings.append(
                f"{spec.name}: no images of this crop; crops found that the config does not "
                f"name: {others}{hint}"
            )
            continue
        matches = {c: closest(c, set(labels) - set(spec.all_classes)) for c in gap}
        detail[spec.name] = {"labels_found": labels, "closest": matches}
        for c in gap:
            hint = (
                f"; closest: '{matches[c]}' (add it under class_aliases.{c})" if matches[c] else ""
            )
            warnings.append(
                f"{spec.name}: class '{c}' has no base-domain images; labels found for "
                f"{spec.name}: {', '.join(labels)}{hint}"
            )
    return gaps, detail, warnings


def require_images(result: IngestResult, out_dir: Path | None = None) -> None:
    """Raise `NothingIngested` when `result` kept no image, saying where the reasons are."""
    if result.rows:
        return
    where = f" (see {Path(out_dir) / REJECTS_FILE} and {UNUSED_FILE})" if out_dir else ""
    raise NothingIngested(
        f"no image kept: {len(result.rejects)} rejected, {len(result.unused)} of crops, classes "
        f"or domains the config does not name{where}"
    )


def summarize(
    result: IngestResult,
    config: PlatformConfig | None,
    root: Path,
    layout: str,
    domain_dirs: bool,
    settings: DataSettings,
) -> dict:
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in result.rows:
        counts[r.crop][f"{r.domain}/{r.label}"] += 1
    missing: dict[str, list[str]] = {}
    missing_detail: dict[str, dict] = {}
    warnings: list[str] = []
    if config:
        missing, missing_detail, warnings = _missing_warnings(config, result.rows, result.unused)
    return {
        "root": str(Path(root).resolve()),
        "layout": layout,
        "domain_dirs": domain_dirs,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "images": len(result.rows),
        "rejected": len(result.rejects),
        "rejects_by_reason": dict(Counter(r.reason for r in result.rejects)),
        "splits": dict(Counter(r.split for r in result.rows)),
        "phases": dict(Counter(r.phase or "unused" for r in result.rows)),
        "split_fractions": settings.split.model_dump(),
        "split_seed": settings.split_seed,
        "per_crop": {c: dict(sorted(v.items())) for c, v in sorted(counts.items())},
        "unused_images": len(result.unused),
        "unused": _unused_counts(result.unused),
        "missing_classes": missing,
        "missing_detail": missing_detail,
        "warnings": warnings,
    }


def write_ingest_outputs(result: IngestResult, out_dir: Path) -> dict[str, Path]:
    """manifest.csv, rejects.csv, unused.csv and ingest.json (summary + manifest sha256), each
    atomic."""
    out_dir = Path(out_dir)
    result.manifest_sha256 = write_manifest(result.rows, out_dir / MANIFEST_FILE)
    write_rejects(result.rejects, out_dir / REJECTS_FILE)
    write_unused(result.unused, out_dir / UNUSED_FILE)
    result.summary["manifest_sha256"] = result.manifest_sha256
    atomic_write_bytes(
        out_dir / SUMMARY_FILE, (json.dumps(result.summary, indent=2) + "\n").encode()
    )
    return {
        "manifest": out_dir / MANIFEST_FILE,
        "rejects": out_dir / REJECTS_FILE,
        "unused": out_dir / UNUSED_FILE,
        "summary": out_dir / SUMMARY_FILE,
    }


def load_ingest_summary(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / SUMMARY_FILE).read_text())
