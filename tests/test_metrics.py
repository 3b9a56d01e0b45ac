"""Metrics mean what the field means by them (scikit-learn numbers, forgetting as usual)."""

from __future__ import annotations

import json
import math

from PIL import Image

from aads.metrics import (
    average_forgetting,
    classification_summary,
    retention,
    save_confusion_matrix,
    subset_accuracy,
)


def test_summary_counts_and_per_class_accuracy():
    s = classification_summary([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert s["accuracy"] == 3 / 5
    assert s["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_subset_accuracy_scores_only_the_given_true_classes():
    assert subset_accuracy([0, 0, 1, 2], [0, 2, 2, 2], classes=[0]) == 0.5
    assert math.isnan(subset_accuracy([1], [1], classes=[0]))


def test_forgetting_is_the_drop_from_each_classs_best():
    history = [{"a": 0.9, "b": 0.8}, {"a": 0.7, "b": 0.85, "c": 0.9}, {"a": 0.6, "b": 0.8}]
    assert abs(average_forgetting(history, ["a", "b"]) - ((0.9 - 0.6) + (0.85 - 0.8)) / 2) < 1e-12


def test_retention_is_the_share_kept():
    assert abs(retention(0.8, 0.6) - 0.75) < 1e-12


def test_confusion_matrix_is_written_as_json_and_png(tmp_path):
    s = classification_summary([0, 1, 1], [0, 1, 0], ["healthy", "blight"])
    paths = save_confusion_matrix(s, tmp_path, "cm", "test")
    assert json.loads(paths["json"].read_text())["confusion_matrix"] == [[1, 0], [1, 1]]
    with Image.open(paths["png"]) as img:
        assert img.format == "PNG" and img.width > 100
