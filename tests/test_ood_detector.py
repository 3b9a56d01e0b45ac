"""The served OOD detector: verdicts, its files on disk, and the metrics that evaluate it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aads.config import OODSettings
from aads.ood import (
    UNKNOWN,
    OODError,
    fit_detector,
    leave_one_class_out,
    load_detector,
    ood_metrics,
    save_detector,
    save_roc,
)
from aads.ood.detector import CALIBRATION_RECORD, CALIBRATION_TENSORS

CLASSES = ["healthy", "blight", "rust"]
WIDTH = 8
RAW = OODSettings(feature_space="raw")


def gaussian_classes(per_class, seed, classes=len(CLASSES), width=WIDTH, spread=6.0):
    """Unit-variance Gaussians around `spread` times the first basis vectors."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    return spread * np.eye(classes, width)[y] + rng.normal(size=(len(y), width)), y


@pytest.fixture(scope="module")
def detector():
    return fit_detector(*gaussian_classes(40, 0), *gaussian_classes(30, 1), CLASSES, RAW)


def probes():
    """In-distribution test samples followed by samples far from every class."""
    far = 40.0 + np.random.default_rng(3).normal(size=(5, WIDTH))
    return np.concatenate([gaussian_classes(10, 2)[0], far])


def test_detect_flags_exactly_the_scores_above_the_nearest_class_threshold(detector):
    x = probes()
    found = detector.detect(x)
    scores = detector.estimator.score_samples(x)
    np.testing.assert_array_equal(found.nearest, scores.argmin(1))
    np.testing.assert_array_equal(found.threshold, detector.thresholds.values[found.nearest])
    np.testing.assert_array_equal(found.is_ood, found.score > found.threshold)
    assert found.is_ood.any() and not found.is_ood.all()


def test_far_sample_is_unknown_with_the_nearest_class_as_hint(detector):
    far = np.full((1, WIDTH), 30.0)
    far[0, 1] = 60.0  # nearest to "blight" (mean 6 * e_1)
    (verdict,) = detector.verdicts(far, logits=np.array([[0.0, 0.0, 5.0]]))
    assert verdict.is_ood
    assert verdict.label == UNKNOWN
    assert verdict.nearest_class == "blight"
    assert verdict.predicted_class == "rust"
    assert verdict.distance > verdict.threshold


def test_in_distribution_sample_gets_the_heads_class_and_softmax_confidence(detector):
    x = detector.estimator.means_[[1]]
    logits = np.array([[0.5, 2.0, -1.0]])
    (verdict,) = detector.verdicts(x, logits)
    assert not verdict.is_ood
    assert verdict.label == verdict.predicted_class == "blight"
    want = np.exp(2.0) / (np.exp(0.5) + np.exp(2.0) + np.exp(-1.0))
    assert verdict.confidence == pytest.approx(want, rel=1e-12)


def test_without_logits_the_nearest_class_is_predicted_with_confidence_one(detector):
    (verdict,) = detector.verdicts(detector.estimator.means_[[2]])
    assert verdict.label == verdict.predicted_class == verdict.nearest_class == "rust"
    assert verdict.confidence == 1.0


@pytest.mark.parametrize("shape", [(1, 2), (2, 3), (3,)])
def test_logits_of_the_wrong_shape_are_rejected(detector, shape):
    with pytest.raises(OODError, match="logits"):
        detector.verdicts(detector.estimator.means_[[0]], np.zeros(shape))


def test_saved_detector_loads_with_identical_detections_and_record(detector, tmp_path):
    save_detector(detector, tmp_path)
    loaded = load_detector(tmp_path)
    assert loaded is not None
    x = probes()
    want, got = detector.detect(x), loaded.detect(x)
    for field in ("nearest", "score", "threshold", "is_ood"):
        assert np.array_equal(getattr(got, field), getattr(want, field))
    assert loaded.record == detector.record


def test_a_folder_without_calibration_has_no_detector(tmp_path):
    assert load_detector(tmp_path) is None


def test_a_record_without_its_tensors_is_an_error(detector, tmp_path):
    save_detector(detector, tmp_path)
    (tmp_path / CALIBRATION_TENSORS).unlink()
    with pytest.raises(OODError, match=CALIBRATION_TENSORS):
        load_detector(tmp_path)


def test_a_record_with_an_unknown_field_is_rejected_naming_it(detector, tmp_path):
    save_detector(detector, tmp_path)
    path = tmp_path / CALIBRATION_RECORD
    record = json.loads(path.read_text())
    record["margin_of_safety"] = 1.5
    path.write_text(json.dumps(record))
    with pytest.raises(OODError, match="margin_of_safety"):
        load_detector(tmp_path)


def test_fitting_without_images_of_a_class_is_rejected_naming_it():
    x, y = gaussian_classes(20, 0)
    keep = y != 2
    with pytest.raises(OODError, match="'rust'"):
        fit_detector(x[keep], y[keep], x, y, CLASSES, RAW)


# ---------------------------------------------------------------------- evaluation


def test_auroc_equals_sklearn():
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
    want = roc_auc_score(np.r_[np.zeros(200), np.ones(150)], np.r_[id_scores, ood_scores])
    assert ood_metrics(id_scores, ood_scores)["auroc"] == pytest.approx(want, rel=1e-12)


def test_fpr95_in_both_conventions_on_a_hand_counted_example():
    id_scores = np.arange(0, 40, 2)  # 0, 2, ..., 38
    ood_scores = np.r_[3, 31, np.arange(41, 77, 2)]  # 3, 31, 41, 43, ..., 75
    assert len(id_scores) == len(ood_scores) == 20
    m = ood_metrics(id_scores, ood_scores)
    # Catching 19 of 20 OOD needs score >= 31: ID 32, 34, 36, 38 are flagged -> 4 / 20.
    assert m["fpr95_id"] == 0.2
    # Keeping 19 of 20 ID needs score <= 36: OOD 3 and 31 are accepted -> 2 / 20.
    assert m["fpr95_ood"] == 0.1
    assert m["n_id"] == m["n_ood"] == 20


def test_perfectly_separated_scores_are_perfect_in_every_metric():
    m = ood_metrics(np.arange(20.0), np.arange(100.0, 120.0))
    assert m["auroc"] == 1.0
    assert m["fpr95_id"] == m["fpr95_ood"] == 0.0
    assert m["aupr_in"] == m["aupr_out"] == 1.0


def test_metrics_without_ood_samples_are_an_error():
    with pytest.raises(OODError):
        ood_metrics(np.arange(5.0), np.array([]))


def test_leave_one_class_out_separates_well_separated_classes():
    names = ["a", "b", "c", "d"]
    parts = [gaussian_classes(n, seed, classes=4) for n, seed in ((30, 0), (20, 1), (20, 2))]
    result = leave_one_class_out(*parts, names, OODSettings())
    assert set(result) == {*names, "mean"}
    assert all(m["auroc"] > 0.9 for m in result.values())


def test_leave_one_class_out_needs_three_classes():
    x, y = gaussian_classes(20, 0, classes=2)
    with pytest.raises(OODError, match="3 classes"):
        leave_one_class_out((x, y), (x, y), (x, y), ["a", "b"], OODSettings())


def test_roc_is_saved_as_png_and_strict_json(tmp_path):
    rng = np.random.default_rng(0)
    curves = {
        "near": (rng.normal(0, 1, 50), rng.normal(1, 1, 40)),
        "far": (rng.normal(0, 1, 50), rng.normal(4, 1, 40)),
    }
    paths = save_roc(curves, tmp_path, "roc", "test")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_constants(name):
        raise ValueError(f"non-finite number {name} in the ROC JSON")

    payload = json.loads(paths["json"].read_text(), parse_constant=no_constants)
    assert set(payload["curves"]) == {"near", "far"}
    for label, curve in payload["curves"].items():
        assert len(curve["fpr"]) == len(curve["tpr"]) > 2
        assert curve["auroc"] == pytest.approx(ood_metrics(*curves[label])["auroc"])
