"""Ingest: image folders in, a checked manifest + a rejects report out.

Nothing a user drops into the data folder can crash the run: non-images, corrupt or truncated
files, tiny or enormous images, duplicates and empty class folders each land in the rejects
report with a reason, and the run carries on with what is usable.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aads.atomic import atomic_write_bytes
from aads.config import BASE_DOMAIN, DataSettings, PlatformConfig
from aads.data.images import ImageProbe, ImageRejected, probe_image
from aads.data.layout import Labelled, Layout, discover
from aads.data.manifest import ManifestRow, RejectRow, write_manifest, write_rejects
from aads.data.splits import assign_phase, assign_splits
from aads.progress import Progress

MANIFEST_FILE = "manifest.csv"
REJECTS_FILE = "rejects.csv"
SUMMARY_FILE = "ingest.json"


@dataclass
class IngestResult:
    rows: list[ManifestRow]
    rejects: list[RejectRow]
    manifest_sha256: str = ""
    summary: dict = field(default_factory=dict)


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
        Path(root), layout, domain_dirs=domain_dirs, default_part=default_part, domain=domain
    )
    rejects = [RejectRow(m.rel, "misplaced", m.why) for m in misplaced]
    rejects += [RejectRow(d, "empty_class", "folder holds no files") for d in empty_dirs]

    probes = _probe_all(labelled, settings, progress, workers or min(8, (os.cpu_count() or 2) * 2))
    good: dict[str, list[tuple[Labelled, ImageProbe]]] = defaultdict(list)
    for item, probe in zip(labelled, probes, strict=True):
        if isinstance(probe, ImageRejected):
            rejects.append(RejectRow(item.rel, probe.reason, probe.detail))
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
    for folder in sorted({str(Path(i.rel).parent) for i in labelled} - set(by_folder)):
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
    result = IngestResult(rows=rows, rejects=rejects)
    result.summary = summarize(result, config, Path(root), used_layout, used_domain_dirs, settings)
    return result


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
    if config:
        for spec in config.crops:
            have = {r.label for r in result.rows if r.crop == spec.name and r.domain == BASE_DOMAIN}
            gap = [c for c in spec.all_classes if c not in have]
            if gap:
                missing[spec.name] = gap
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
        "missing_classes": missing,
    }


def write_ingest_outputs(result: IngestResult, out_dir: Path) -> dict[str, Path]:
    """manifest.csv, rejects.csv and ingest.json (summary + manifest sha256), each atomic."""
    out_dir = Path(out_dir)
    result.manifest_sha256 = write_manifest(result.rows, out_dir / MANIFEST_FILE)
    write_rejects(result.rejects, out_dir / REJECTS_FILE)
    result.summary["manifest_sha256"] = result.manifest_sha256
    atomic_write_bytes(
        out_dir / SUMMARY_FILE, (json.dumps(result.summary, indent=2) + "\n").encode()
    )
    return {
        "manifest": out_dir / MANIFEST_FILE,
        "rejects": out_dir / REJECTS_FILE,
        "summary": out_dir / SUMMARY_FILE,
    }


def load_ingest_summary(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / SUMMARY_FILE).read_text())
