"""``aads feedback review``: a crop's captured unknowns, clustered, ready for people to label.

Output folder::

    review.json                      clusters (size, nearest known class, members), how k was chosen
    contact-sheets/cluster-NN.png    the most typical images of each cluster, captioned
    labelstudio/labeling-config.xml  the Label Studio project's interface
    labelstudio/tasks.json           one task per image, pre-annotated (cluster, nearest class)
    images/cluster-NN/<sha256>.jpg   the images, per cluster (``--no-images`` leaves them out):
                                     rename a folder to its class and import it with
                                     ``aads feedback import --folder``

Images are the disease-level unknowns of the crop (``verdict: unknown``) from every variant,
each image once; the most recent ``max_images`` when there are more.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from aads.atomic import atomic_dir, atomic_write_text
from aads.capture.features import answering_adapter, image_features
from aads.capture.records import CaptureRecord, CaptureStore, open_capture_store
from aads.config import PlatformConfig
from aads.errors import BadInput, NotFound
from aads.feedback.clusters import MAX_CLUSTERS, cluster_features
from aads.feedback.labelstudio import labeling_config, task
from aads.feedback.sheets import contact_sheet
from aads.progress import Progress

MAX_IMAGES = 2000
REVIEW_FILE = "review.json"
SHEETS_DIR, IMAGES_DIR, LABELSTUDIO_DIR = "contact-sheets", "images", "labelstudio"
TASKS_FILE, CONFIG_FILE = "tasks.json", "labeling-config.xml"


class ReviewError(BadInput):
    """A review that cannot be written as asked."""


class NothingToReview(NotFound):
    """No captured unknowns of the crop in the window."""


@dataclass(frozen=True)
class ClusterSummary:
    name: str
    size: int
    nearest_class: str | None
    nearest_votes: int
    median_distance_ratio: float | None  # OOD distance / threshold: how far past the line
    sheet: str
    members: list[str] = field(repr=False)  # sha256 of the images, the most typical first


@dataclass(frozen=True)
class Review:
    crop: str
    out: Path
    images: int
    left_out: dict[str, int]
    clusters: list[ClusterSummary]
    reason: str
    silhouettes: dict[int, float]


def review_unknowns(
    config: PlatformConfig,
    crop: str,
    since: datetime,
    out: Path,
    *,
    package: str | Path | None = None,
    store: str | None = None,
    prefix: str | None = None,
    until: datetime | None = None,
    max_images: int = MAX_IMAGES,
    max_clusters: int = MAX_CLUSTERS,
    new_classes: tuple[str, ...] = (),
    presign: timedelta | None = None,
    url_prefix: str | None = None,
    copy_images: bool = True,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
) -> Review:
    """Cluster `crop`'s captured unknowns of [since, until] and write the review to `out`
    (replacing an earlier review there, never another folder)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / REVIEW_FILE).is_file():
        raise ReviewError(f"{out} exists and holds no earlier review: choose another --out")
    answering = answering_adapter(config, crop, package, tracking_uri)
    adapter = answering.adapter
    target = open_capture_store(config.serving.capture, config.storage, store, prefix)
    found = target.records(crop, since, until)
    latest: dict[str, CaptureRecord] = {}
    for r in found.records:  # oldest first: the last one seen of an image wins
        if r.verdict == "unknown" and r.image is not None:
            latest[r.sha256] = r
    if not latest:
        raise NothingToReview(
            f"no captured unknowns of {crop} since {since:%Y-%m-%d %H:%M} UTC in "
            f"{target.description}"
        )
    records = sorted(latest.values(), key=lambda r: (r.time, r.sha256), reverse=True)
    left_out = Counter({"over_max_images": max(0, len(records) - max_images)})
    records = records[:max_images]
    assert adapter.ood is not None
    model = f"{answering.source} / aads feedback review {datetime.now(UTC):%Y-%m-%d}"
    summaries, tasks = [], []
    with tempfile.TemporaryDirectory(prefix="aads-review-") as scratch, atomic_dir(out) as staging:
        files = target.download(records, Path(scratch))
        left_out["image_missing"] = sum(f is None for f in files)
        present = [(r, f) for r, f in zip(records, files, strict=True) if f is not None]
        found_features = image_features(adapter, [f for _, f in present], progress=progress)
        left_out["undecodable"] = int((~found_features.decoded).sum())
        kept = [p for p, ok in zip(present, found_features.decoded, strict=True) if ok]
        if not kept:
            raise NothingToReview(f"none of the {len(records)} captured unknowns could be read")
        clustering = cluster_features(
            adapter.ood.estimator.transform(found_features.features), max_clusters=max_clusters
        )
        names = [f"cluster-{c:02d}" for c in range(clustering.k)]
        for c, name in enumerate(names):
            members = [kept[i] for i in clustering.members(c)]
            summaries.append(_write_cluster(staging, crop, name, clustering.k, members))
            for r, path in members:
                if copy_images:
                    _copy_into(path, staging / IMAGES_DIR / name / path.name)
                tasks.append(_task(target, r, crop, name, model, presign, url_prefix))
        atomic_write_text(
            staging / LABELSTUDIO_DIR / CONFIG_FILE,
            labeling_config(adapter.classes, names, new_classes),
        )
        atomic_write_text(staging / LABELSTUDIO_DIR / TASKS_FILE, json.dumps(tasks, indent=1))
        review = Review(
            crop=crop,
            out=out,
            images=len(kept),
            left_out={k: v for k, v in left_out.items() if v},
            clusters=summaries,
            reason=clustering.reason,
            silhouettes=clustering.silhouettes,
        )
        atomic_write_text(staging / REVIEW_FILE, _review_json(review, answering.source, since))
    return review


def _write_cluster(
    staging: Path, crop: str, name: str, k: int, members: list[tuple[CaptureRecord, Path]]
) -> ClusterSummary:
    """The cluster's contact sheet, and its summary (the nearest known class by vote)."""
    votes = Counter(r.nearest_class for r, _ in members if r.nearest_class)
    nearest, count = votes.most_common(1)[0] if votes else (None, 0)
    ratios = [x for x in (_distance_ratio(r) for r, _ in members) if x is not None]
    sheet = f"{SHEETS_DIR}/{name}.png"
    contact_sheet(
        [path for _, path in members],
        [_caption(r) for r, _ in members],
        f"{crop}: {name} of {k} — {len(members)} unknown image(s) — nearest known class "
        f"{nearest or '?'} ({count}/{len(members)})\n"
        "caption: image sha256 · OOD distance ÷ threshold; most typical first",
        staging / sheet,
    )
    return ClusterSummary(
        name=name,
        size=len(members),
        nearest_class=nearest,
        nearest_votes=count,
        median_distance_ratio=float(np.median(ratios)) if ratios else None,
        sheet=sheet,
        members=[r.sha256 for r, _ in members],
    )


def _task(
    target: CaptureStore,
    record: CaptureRecord,
    crop: str,
    cluster: str,
    model: str,
    presign: timedelta | None,
    url_prefix: str | None,
) -> dict:
    """The Label Studio task of one captured image."""
    assert record.image is not None
    ratio = _distance_ratio(record)
    return task(
        target.image_url(record.image.key, presign=presign, url_prefix=url_prefix),
        {
            "crop": crop,
            "sha256": record.sha256,
            "capture_key": record.image.key,
            "image_sha256": record.image.sha256,
            "cluster": cluster,
            "nearest_class": record.nearest_class,
            "captured": record.time.isoformat(),
            "hint": f"{cluster} · nearest known class {record.nearest_class or '?'}"
            + (f" · {ratio:.1f}x past its threshold" if ratio else ""),
        },
        cluster=cluster,
        nearest_class=record.nearest_class,
        model_version=model,
        score=round(1.0 / ratio, 4) if ratio else 0.0,
    )


def _copy_into(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _distance_ratio(record: CaptureRecord) -> float | None:
    ood = record.answer.get("ood") or {}
    try:
        distance, threshold = float(ood["distance"]), float(ood["threshold"])
    except (KeyError, TypeError, ValueError):
        return None
    return distance / threshold if threshold > 0 else None


def _caption(record: CaptureRecord) -> str:
    ratio = _distance_ratio(record)
    return record.sha256[:8] + (f" · {ratio:.1f}x" if ratio else "")


def _review_json(review: Review, package: str, since: datetime) -> str:
    payload = {
        "crop": review.crop,
        "package": package,
        "since": since.isoformat(),
        "images": review.images,
        "left_out": review.left_out,
        "clustering": {
            "method": "Ward linkage on the OOD feature space, k by silhouette",
            "k": len(review.clusters),
            "reason": review.reason,
            "silhouette_by_k": {str(k): round(v, 4) for k, v in review.silhouettes.items()},
        },
        "clusters": [
            {
                "name": c.name,
                "size": c.size,
                "nearest_class": c.nearest_class,
                "nearest_votes": c.nearest_votes,
                "median_distance_ratio": c.median_distance_ratio,
                "contact_sheet": c.sheet,
                "members": c.members,
            }
            for c in review.clusters
        ],
        "next": (
            "label in Label Studio (labelstudio/), then `aads feedback import --labelstudio "
            "EXPORT.json`, or rename images/cluster-NN to the class and `aads feedback import "
            "--folder images`"
        ),
    }
    return json.dumps(payload, indent=2) + "\n"
