"""``task.json``: the schema the continuation reads, refusing what cannot be a task."""

from __future__ import annotations

import json

import pytest

from aads.tasks import TaskError, TaskNotFound, TaskSpec, read_task, write_task


def test_a_task_round_trips_through_its_file(tmp_path):
    spec = TaskSpec(
        kind="classes",
        crop="tomato",
        classes=["septoria_leaf_spot"],
        images={"septoria_leaf_spot": 12},
    )
    write_task(tmp_path, spec)
    assert read_task(tmp_path) == spec
    assert json.loads((tmp_path / "task.json").read_text())["format"] == "aads-task/1"


def test_a_domain_task_names_its_domain():
    with pytest.raises(ValueError, match="names its domain"):
        TaskSpec(kind="domain", crop="tomato", classes=["healthy"])


def test_the_base_domain_is_no_new_domain():
    with pytest.raises(ValueError, match="starts with"):
        TaskSpec(kind="domain", crop="tomato", classes=["healthy"], domain="base")


def test_a_classes_task_has_no_domain():
    with pytest.raises(ValueError, match="has no domain"):
        TaskSpec(kind="classes", crop="tomato", classes=["x"], domain="field")


def test_class_names_must_be_slugs_and_unique():
    with pytest.raises(ValueError, match="classes"):
        TaskSpec(kind="classes", crop="tomato", classes=["Septoria Leaf Spot"])
    with pytest.raises(ValueError, match="duplicates"):
        TaskSpec(kind="classes", crop="tomato", classes=["a", "a"])


def test_a_hand_edited_file_fails_naming_the_field(tmp_path):
    (tmp_path / "task.json").write_text(
        json.dumps({"kind": "classes", "crop": "Tomato!", "classes": ["a"]})
    )
    with pytest.raises(TaskError, match=r"crop: String should match pattern"):
        read_task(tmp_path)


def test_a_folder_without_a_task_is_not_found(tmp_path):
    with pytest.raises(TaskNotFound, match="no task file"):
        read_task(tmp_path)
