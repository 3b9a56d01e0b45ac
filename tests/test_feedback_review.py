"""`aads feedback review`: captured unknowns clustered on the adapter's features, a contact
sheet per cluster, a Label Studio project whose tasks point at the captured images (the URLs
work: a presigned one is fetched from moto) and whose predictions fit its labelling config."""

from __future__ import annotations

import json
import urllib.request
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aads.capture.records import CaptureStore
from aads.capture.settings import CaptureSettings
from aads.capture.writer import CaptureWriter
from aads.cli import app
from aads.config import StorageSettings
from aads.feedback.clusters import cluster_features
from aads.feedback.review import NothingToReview, ReviewError, review_unknowns
from aads.storage import LocalStore
from tests.loop_world import (
    World,
    capture,
    flat_images,
    fresh_images,
    noise_images,
    spec_file,
)

WEEK = timedelta(days=7)


def with_storage(loop_world: World, storage: StorageSettings):
    return loop_world.config.model_copy(update={"storage": storage})


def review_week(loop_world: World, storage: StorageSettings, out, **options):
    """A review of the past week's captures in `storage` against the phase-1 package."""
    config = with_storage(loop_world, storage)
    since = datetime.now(UTC) - WEEK
    return review_unknowns(config, "tomato", since, out, package=loop_world.phase1, **options)


# --------------------------------------------------------------------------- clustering


def blobs(sizes: list[int], width: int = 16, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), width)) * 3
    return np.concatenate(
        [c + spread * rng.normal(size=(n, width)) for c, n in zip(centres, sizes, strict=True)]
    )


def test_separated_groups_are_found_and_numbered_by_size():
    clustering = cluster_features(blobs([10, 25, 15]))
    assert clustering.k == 3
    assert [int((clustering.labels == c).sum()) for c in range(3)] == [25, 15, 10]
    assert clustering.reason.startswith("k=3")


def test_one_cloud_is_one_cluster_not_invented_groups():
    x = np.random.default_rng(1).normal(size=(200, 16))
    clustering = cluster_features(x)
    assert clustering.k == 1 and "no clear groups" in clustering.reason


def test_members_come_most_typical_first():
    x = blobs([12, 12])
    clustering = cluster_features(x)
    members = clustering.members(0)
    d = clustering.centre_distance[members]
    assert np.all(np.diff(d) >= 0)


def test_clustering_is_deterministic():
    x = blobs([8, 9, 30], seed=3)
    assert np.array_equal(cluster_features(x).labels, cluster_features(x).labels)


# --------------------------------------------------------------------------- review


@pytest.mark.slow
def test_review_groups_two_kinds_of_strangers_and_writes_the_project(
    loop_world, fresh_bucket, tmp_path
):
    answers = capture(loop_world.phase1, fresh_bucket, noise_images(20) + flat_images(20), rate=0.0)
    unknown = [a.label == "unknown" for a in answers]
    assert sum(unknown) >= 30, "the adapter should reject most of these pictures"
    out = tmp_path / "review"
    review = review_week(loop_world, fresh_bucket, out, new_classes=("septoria_leaf_spot",))
    assert review.images == sum(unknown)
    assert len(review.clusters) == 2, review.reason
    noise_shas = {_sha(im) for im in noise_images(20)}
    for cluster in review.clusters:  # each cluster is one kind of picture
        kinds = {sha in noise_shas for sha in cluster.members}
        assert len(kinds) == 1
    summary = json.loads((out / "review.json").read_text())
    assert summary["clustering"]["k"] == 2 and summary["images"] == review.images
    for cluster in review.clusters:
        sheet = Image.open(out / cluster.sheet)
        assert sheet.format == "PNG" and sheet.width >= 600
        assert len(list((out / "images" / cluster.name).glob("*.jpg"))) == cluster.size


@pytest.mark.slow
def test_label_studio_tasks_point_at_the_captures_and_fit_the_config(
    loop_world, fresh_bucket, tmp_path
):
    capture(loop_world.phase1, fresh_bucket, noise_images(12), rate=0.0)
    out = tmp_path / "review"
    review = review_week(loop_world, fresh_bucket, out)
    tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    assert len(tasks) == review.images
    config = ET.fromstring((out / "labelstudio" / "labeling-config.xml").read_text())
    controls = {c.get("name"): c for c in config.iter() if c.tag in ("Choices", "TextArea")}
    objects = {o.get("name") for o in config.iter("Image")}
    choice_values = {
        name: {ch.get("value") for ch in c.iter("Choice")} for name, c in controls.items()
    }
    assert {"healthy", "early_blight", "leaf_mold", "new class", "skip"} <= choice_values["label"]
    store = CaptureStore(None, "capture")  # type: ignore[arg-type] - key layout only
    for t in tasks:
        data = t["data"]
        assert data["image"] == f"s3://{fresh_bucket.bucket}/{data['capture_key']}"
        assert data["capture_key"].startswith(store.day_prefix("tomato", _day(data["captured"])))
        assert data["cluster"] in choice_values["cluster"] and data["hint"]
        (prediction,) = t["predictions"]
        for result in prediction["result"]:
            assert result["from_name"] in controls and result["to_name"] in objects
            assert result["value"]["choices"][0] in choice_values[result["from_name"]]


@pytest.mark.slow
def test_presigned_urls_fetch_the_stored_image(loop_world, fresh_bucket, tmp_path):
    capture(loop_world.phase1, fresh_bucket, noise_images(4), rate=0.0)
    out = tmp_path / "review"
    review_week(loop_world, fresh_bucket, out, presign=timedelta(hours=1))
    task = json.loads((out / "labelstudio" / "tasks.json").read_text())[0]
    url = task["data"]["image"]
    assert (
        url.startswith(f"http://{fresh_bucket.endpoint}/{fresh_bucket.bucket}/")
        and "X-Amz-Signature" in url
    )
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback moto
        body = response.read()
    stored = next((out / "images").rglob(f"{task['data']['sha256']}.jpg")).read_bytes()
    assert body == stored


@pytest.mark.slow
def test_a_local_capture_folder_gives_label_studio_local_file_urls(loop_world, tmp_path):
    diag_answers = capture_local(loop_world, tmp_path / "store", noise_images(5))
    assert diag_answers
    out = tmp_path / "review"
    review_week(loop_world, loop_world.config.storage, out, store=str(tmp_path / "store"))
    task = json.loads((out / "labelstudio" / "tasks.json").read_text())[0]
    assert task["data"]["image"].startswith("/data/local-files/?d=capture/tomato/")


@pytest.mark.slow
def test_a_folder_that_is_not_a_review_is_never_replaced(loop_world, fresh_bucket, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ReviewError, match="holds no earlier review"):
        review_week(loop_world, fresh_bucket, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


@pytest.mark.slow
def test_nothing_captured_is_one_clear_error(loop_world, fresh_bucket, tmp_path):
    with pytest.raises(NothingToReview, match="no captured unknowns of tomato"):
        review_week(loop_world, fresh_bucket, tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_known_answers_are_not_reviewed(loop_world, fresh_bucket, tmp_path):
    answers = capture(
        loop_world.phase1, fresh_bucket, fresh_images(loop_world, "base", 20), rate=1.0
    )
    known = sum(a.label != "unknown" for a in answers)
    assert known
    review = None
    try:
        review = review_week(loop_world, fresh_bucket, tmp_path / "r")
    except NothingToReview:
        pass
    assert review is None or review.images == len(answers) - known


@pytest.mark.slow
def test_cli_review_prints_the_clusters(loop_world, fresh_bucket, tmp_path):
    capture(loop_world.phase1, fresh_bucket, noise_images(10), rate=0.0)
    out = tmp_path / "review"
    result = CliRunner().invoke(
        app,
        [
            "feedback",
            "review",
            "--crop",
            "tomato",
            "--since",
            "7d",
            "--config",
            str(spec_file(tmp_path, fresh_bucket)),
            "--package",
            str(loop_world.phase1),
            "--out",
            str(out),
            "--no-images",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cluster-00" in result.output and (out / "labelstudio" / "tasks.json").is_file()
    assert not (out / "images").exists()


# --------------------------------------------------------------------------- helpers


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _day(iso: str):
    return datetime.fromisoformat(iso).astimezone(UTC).date()


def capture_local(loop_world: World, root, images: list[bytes]) -> list[dict]:
    from aads.backbone import open_image
    from aads.inference import Diagnoser

    diagnoser = Diagnoser.from_dir(loop_world.phase1)
    answers = diagnoser.diagnose([open_image(im) for im in images])
    settings = CaptureSettings(enabled=True, sample_rate=0.0)
    with CaptureWriter(settings, CaptureStore(LocalStore(root), "capture")) as writer:
        for data, answer in zip(images, answers, strict=True):
            writer.offer(data, answer)
    return answers
