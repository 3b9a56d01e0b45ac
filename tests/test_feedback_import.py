"""`aads feedback import`: Label Studio's JSON export (its real format: tasks with
``annotations[].result[].value.choices``, ``textarea`` results, cancelled annotations, ground
truth) or hand-sorted folders into data batches with their ``task.json``; `aads data ingest`
reads what it writes. The export is built from the tasks a real review wrote."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aads.capture.records import open_capture_store
from aads.cli import app
from aads.config import PlatformConfig, StorageSettings
from aads.data.ingest import ingest
from aads.feedback.batch import BatchError, build_batches, labels_from_export, labels_from_folder
from aads.feedback.labelstudio import ExportTask, LabelStudioError, read_export, task_label
from aads.feedback.review import review_unknowns
from aads.tasks import read_task
from tests.loop_world import capture, flat_images, new_bucket, noise_images, spec_file

KNOWN = ["healthy", "early_blight", "leaf_mold"]


@dataclass
class Reviewed:
    config: PlatformConfig
    storage: StorageSettings
    out: Path
    flat: list[dict]  # tasks of the brownish pictures
    noise: list[dict]  # tasks of the noise pictures


@pytest.fixture(scope="module")
def reviewed(loop_world, tmp_path_factory, moto_endpoint) -> Iterator[Reviewed]:
    """A review of captured unknowns (12 brownish pictures, 12 noise pictures) on moto S3."""
    world = loop_world
    tmp = tmp_path_factory.mktemp("import")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        storage = new_bucket(
            StorageSettings(
                endpoint=moto_endpoint,
                secure=False,
                region="us-east-1",
                retries=2,
                timeout_s=2.0,
                cache_dir=tmp / "cache",
            )
        )
        flat, noise = flat_images(12), noise_images(12)
        capture(world.phase1, storage, flat + noise, rate=0.0)
        config = world.config.model_copy(update={"storage": storage})
        out = tmp / "review"
        review_unknowns(
            config, "tomato", datetime.now(UTC) - timedelta(days=7), out, package=world.phase1
        )
        tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
        flat_shas = {hashlib.sha256(im).hexdigest() for im in flat}
        yield Reviewed(
            config,
            storage,
            out,
            [t for t in tasks if t["data"]["sha256"] in flat_shas],
            [t for t in tasks if t["data"]["sha256"] not in flat_shas],
        )


# --------------------------------------------------------------------------- the export format


def choice(value: str, name: str = "label") -> dict:
    return {
        "id": "r1",
        "from_name": name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [value]},
        "origin": "manual",
    }


def new_class(name: str) -> list[dict]:
    return [
        choice("new class"),
        {
            "id": "r2",
            "from_name": "new_class",
            "to_name": "image",
            "type": "textarea",
            "value": {"text": [name]},
            "origin": "manual",
        },
    ]


def annotation(result: list[dict], *, cancelled: bool = False, ground_truth: bool = False) -> dict:
    return {
        "id": 1,
        "completed_by": 1,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": ground_truth,
        "created_at": "2026-05-04T10:00:00.000000Z",
        "updated_at": "2026-05-04T10:00:00.000000Z",
        "lead_time": 4.2,
        "task": 1,
    }


def exported(task: dict, *annotations: dict, task_id: int = 1) -> dict:
    """A task as Label Studio's JSON export writes it."""
    return {
        "id": task_id,
        "data": task["data"],
        "annotations": list(annotations),
        "predictions": task["predictions"],
        "project": 3,
        "drafts": [],
        "created_at": "2026-05-04T09:00:00.000000Z",
        "updated_at": "2026-05-04T10:00:00.000000Z",
    }


def write_export(tmp_path: Path, tasks: list[dict]) -> Path:
    path = tmp_path / "project-3-at-2026-05-04.json"
    path.write_text(json.dumps([{**t, "id": i + 1} for i, t in enumerate(tasks)], indent=1))
    return path


def do_import(reviewed: Reviewed, export: Path, out: Path, **kwargs):
    target = open_capture_store(reviewed.config.serving.capture, reviewed.storage)
    items, left_out = labels_from_export(export, target, reviewed.storage)
    return build_batches("tomato", items, left_out, KNOWN, out, source="test", **kwargs)


# --------------------------------------------------------------------------- reading labels


def label_of(*annotations: dict) -> tuple:
    return task_label(ExportTask.model_validate({"data": {}, "annotations": list(annotations)}))


def test_a_known_class_choice_is_its_label():
    assert label_of(annotation([choice("early_blight")])) == ("labelled", "early_blight")


def test_a_new_class_is_named_by_its_text_box_as_a_slug():
    assert label_of(annotation(new_class("Septoria leaf spot"))) == (
        "labelled",
        "septoria_leaf_spot",
    )


def test_a_new_class_without_a_name_is_left_out():
    assert label_of(annotation([choice("new class")])) == ("unnamed", None)


def test_skip_not_a_plant_cancelled_and_unlabelled_are_told_apart():
    assert label_of(annotation([choice("skip")])) == ("skipped", None)
    assert label_of(annotation([choice("not a plant")])) == ("not_a_plant", None)
    assert label_of(annotation([choice("early_blight")], cancelled=True)) == ("skipped", None)
    assert label_of() == ("unlabelled", None)


def test_annotators_who_disagree_leave_the_image_out_unless_ground_truth_decides():
    a, b = annotation([choice("early_blight")]), annotation([choice("leaf_mold")])
    assert label_of(a, b) == ("conflict", None)
    truth = annotation([choice("leaf_mold")], ground_truth=True)
    assert label_of(a, b, truth) == ("labelled", "leaf_mold")


def test_the_cluster_choice_is_not_mistaken_for_the_label():
    assert label_of(annotation([choice("cluster-01", name="cluster")])) == ("unlabelled", None)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=12),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "annotations",
                        "result",
                        "value",
                        "choices",
                        "text",
                        "type",
                        "from_name",
                        "was_cancelled",
                        "data",
                        "id",
                        "ground_truth",
                    ]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=25,
    )
)
def test_any_json_is_read_as_an_export_or_refused_clearly(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("fuzz") / "export.json"
    path.write_text(json.dumps(payload))
    try:
        tasks = read_export(path)
    except LabelStudioError:
        return
    for t in tasks:
        outcome, label = task_label(t)
        assert (label is not None) == (outcome == "labelled")


def test_a_file_that_is_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "export.json"
    path.write_bytes(b"\x89PNG not json")
    with pytest.raises(LabelStudioError, match="not a JSON file"):
        read_export(path)


# --------------------------------------------------------------------------- batches


@pytest.mark.slow
def test_new_classes_become_a_classes_task_with_the_captured_images(reviewed, tmp_path):
    tasks = [exported(t, annotation(new_class("Septoria leaf spot"))) for t in reviewed.flat]
    tasks += [exported(reviewed.noise[0], annotation([choice("not a plant")]))]
    tasks += [exported(reviewed.noise[1], annotation([choice("skip")]))]
    tasks += [exported(reviewed.noise[2], annotation([choice("leaf_mold")], cancelled=True))]
    tasks += [exported(reviewed.noise[3])]
    out = tmp_path / "batch"
    result = do_import(reviewed, write_export(tmp_path, tasks), out)
    ((spec, path),) = result.batches
    assert path == out and spec.kind == "classes" and spec.crop == "tomato"
    assert spec.classes == ["septoria_leaf_spot"] and spec.images == {"septoria_leaf_spot": 12}
    assert read_task(out) == spec
    assert result.left_out == {"not_a_plant": 1, "skipped": 2, "unlabelled": 1}
    files = sorted((out / "tomato" / "septoria_leaf_spot").glob("*.jpg"))
    stored = {t["data"]["image_sha256"] for t in reviewed.flat}
    assert {hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == stored


@pytest.mark.slow
def test_ingest_reads_the_batch_as_crop_class_data(reviewed, tmp_path):
    tasks = [exported(t, annotation([choice("septoria_leaf_spot")])) for t in reviewed.flat]
    out = tmp_path / "batch"
    do_import(reviewed, write_export(tmp_path, tasks), out)
    result = ingest(out, layout="crop-class")
    assert len(result.rows) == 12 and {(r.crop, r.label) for r in result.rows} == {
        ("tomato", "septoria_leaf_spot")
    }
    assert not result.rejects, "the batch's task.json is the batch's own file, not a reject"


@pytest.mark.slow
def test_known_classes_need_the_domain_named_and_nothing_is_written_before(reviewed, tmp_path):
    tasks = [exported(t, annotation([choice("early_blight")])) for t in reviewed.noise[:6]]
    export, out = write_export(tmp_path, tasks), tmp_path / "batch"
    with pytest.raises(BatchError, match="--domain NAME"):
        do_import(reviewed, export, out)
    assert not out.exists()
    result = do_import(reviewed, export, out, domain="night")
    ((spec, _),) = result.batches
    assert spec.kind == "domain" and spec.domain == "night" and spec.classes == ["early_blight"]


@pytest.mark.slow
def test_mixed_labels_become_two_batches_and_say_so(reviewed, tmp_path):
    tasks = [exported(t, annotation([choice("septoria_leaf_spot")])) for t in reviewed.flat[:5]]
    tasks += [exported(t, annotation([choice("healthy")])) for t in reviewed.noise[:4]]
    out = tmp_path / "batch"
    result = do_import(reviewed, write_export(tmp_path, tasks), out, domain="field")
    kinds = {spec.kind: path for spec, path in result.batches}
    assert kinds == {"classes": out / "classes", "domain": out / "domain"}
    assert read_task(out / "classes").images == {"septoria_leaf_spot": 5}
    assert read_task(out / "domain").images == {"healthy": 4}
    assert "two batches" in result.messages[0]


@pytest.mark.slow
def test_known_classes_can_be_dropped_instead(reviewed, tmp_path):
    tasks = [exported(t, annotation([choice("septoria_leaf_spot")])) for t in reviewed.flat[:3]]
    tasks += [exported(t, annotation([choice("healthy")])) for t in reviewed.noise[:2]]
    result = do_import(reviewed, write_export(tmp_path, tasks), tmp_path / "b", drop_known=True)
    assert [s.kind for s, _ in result.batches] == ["classes"]
    assert result.left_out == {"known_class": 2}


@pytest.mark.slow
def test_the_same_image_under_two_labels_is_left_out(reviewed, tmp_path):
    t = reviewed.flat[0]
    tasks = [exported(t, annotation([choice("septoria_leaf_spot")]))]
    tasks += [exported(t, annotation([choice("bacterial_speck")]))]
    tasks += [exported(reviewed.flat[1], annotation([choice("septoria_leaf_spot")]))]
    result = do_import(reviewed, write_export(tmp_path, tasks), tmp_path / "b")
    assert result.left_out == {"conflict": 2}
    assert result.batches[0][0].images == {"septoria_leaf_spot": 1}


@pytest.mark.slow
def test_a_capture_changed_since_review_is_left_out(reviewed, tmp_path):
    victim = reviewed.noise[5]
    target = open_capture_store(reviewed.config.serving.capture, reviewed.storage)
    original = target.store.read_bytes(victim["data"]["capture_key"])
    target.store.write_bytes(victim["data"]["capture_key"], flat_images(1, seed=99)[0])
    try:
        tasks = [exported(victim, annotation([choice("septoria_leaf_spot")]))]
        tasks += [exported(reviewed.flat[0], annotation([choice("septoria_leaf_spot")]))]
        result = do_import(reviewed, write_export(tmp_path, tasks), tmp_path / "b")
        assert result.left_out == {"image_missing": 1}
    finally:
        target.store.write_bytes(victim["data"]["capture_key"], original)


@pytest.mark.slow
def test_nothing_labelled_is_a_clear_error(reviewed, tmp_path):
    tasks = [exported(t, annotation([choice("skip")])) for t in reviewed.noise[:3]]
    with pytest.raises(BatchError, match="no labelled images to import.*skipped 3"):
        do_import(reviewed, write_export(tmp_path, tasks), tmp_path / "b")


@pytest.mark.slow
def test_an_existing_batch_is_never_overwritten(reviewed, tmp_path):
    out = tmp_path / "batch"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    tasks = [exported(reviewed.flat[0], annotation([choice("septoria_leaf_spot")]))]
    with pytest.raises(BatchError, match="not empty"):
        do_import(reviewed, write_export(tmp_path, tasks), out)
    assert (out / "keep.txt").read_text() == "earlier work"


@pytest.mark.slow
def test_the_base_domain_is_refused_as_a_new_condition(reviewed, tmp_path):
    tasks = [exported(reviewed.noise[0], annotation([choice("healthy")]))]
    with pytest.raises(BatchError, match="--domain 'base'"):
        do_import(reviewed, write_export(tmp_path, tasks), tmp_path / "b", domain="base")


# --------------------------------------------------------------------------- folders


@pytest.mark.slow
def test_renamed_review_folders_become_a_batch(reviewed, tmp_path):
    sorted_by_hand = tmp_path / "images"
    shutil.copytree(reviewed.out / "images", sorted_by_hand)
    flat_cluster = next(
        d
        for d in sorted_by_hand.iterdir()
        if (d / f"{reviewed.flat[0]['data']['sha256']}.jpg").exists()
    )
    flat_cluster.rename(sorted_by_hand / "Septoria leaf spot")
    skip = sorted_by_hand / "skip"
    skip.mkdir()
    moved = next((sorted_by_hand / "Septoria leaf spot").glob("*.jpg"))
    moved.rename(skip / moved.name)
    (sorted_by_hand / "Septoria leaf spot" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 trunc")
    (sorted_by_hand / "notes.txt").write_text("reviewed by A. Gardener")
    items, left_out = labels_from_folder(sorted_by_hand)
    result = build_batches("tomato", items, left_out, KNOWN, tmp_path / "batch")
    ((spec, _),) = result.batches
    assert spec.kind == "classes" and spec.images == {"septoria_leaf_spot": 11}
    assert result.left_out == {
        "skipped": 1,
        "unlabelled": len(reviewed.noise),
        "undecodable": 1,
        "misplaced": 1,
    }


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BatchError, match="not a folder"):
        labels_from_folder(tmp_path / "nope")


# --------------------------------------------------------------------------- the command


def import_cli(reviewed: Reviewed, tmp_path: Path, *args: str):
    config = ["--config", str(spec_file(tmp_path, reviewed.storage))]
    return CliRunner().invoke(app, ["feedback", "import", "--crop", "tomato", *args, *config])


@pytest.mark.slow
def test_cli_import_writes_the_batch_and_reports_what_was_left_out(reviewed, tmp_path):
    tasks = [exported(t, annotation([choice("septoria_leaf_spot")])) for t in reviewed.flat]
    tasks += [exported(reviewed.noise[0], annotation([choice("not a plant")]))]
    out = tmp_path / "batch"
    export = write_export(tmp_path, tasks)
    result = import_cli(reviewed, tmp_path, "--labelstudio", str(export), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "septoria_leaf_spot" in result.output and "not_a_plant" in result.output
    assert read_task(out).kind == "classes"


@pytest.mark.slow
def test_cli_import_needs_exactly_one_source(reviewed, tmp_path):
    result = import_cli(reviewed, tmp_path, "--out", str(tmp_path / "b"))
    assert result.exit_code == 2 and "exactly one of --labelstudio" in result.output
