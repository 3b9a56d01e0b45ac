"""Model cards and HTML reports a person can read: a headline first (accuracy with its 95 %
interval, per-class precision and recall, retention, near/far-OOD AUROC, the calibrated
operating point, the gate), one definition of accuracy everywhere, integer counts, the ROC
curve marking the operating point, and the full metric list after the headline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aads import headline
from aads.adapters.package import AdapterMeta, PackageContents, PhaseRecord, write_package
from aads.config import GateSettings, parse_config
from aads.gate import adapter_gate, router_gate
from aads.metrics import classification_summary, save_confusion_matrix, wilson_interval
from aads.modelcard import backbone_licence, model_card, router_card
from aads.ood.evaluation import save_roc
from aads.phases import ROUTER
from aads.reporting import html_report

SPEC = {
    "crops": [
        {
            "name": "tomato",
            "phase1_classes": ["healthy", "early_blight"],
            "phase2_batches": [["late_blight"]],
            "phase3_domains": ["low_light"],
            "ood_holdout": ["mosaic_virus"],
        },
        {"name": "corn", "phase1_classes": ["healthy", "common_rust"]},
    ],
    "router": {"source": "random:tiny"},
    "adapter": {"backbone": {"source": "random:tiny"}},
}
CLASSES = ["healthy", "early_blight", "late_blight"]
# The last phase's 24 test images (both domains pooled): 18 right, accuracy 0.750; the mean of
# the per-domain accuracies (0.743 in the metrics) is a different number the gate must not use.
# early_blight: 6 of its 8 images found, predicted 10 times.
Y_TRUE = [0] * 8 + [1] * 8 + [2] * 8
Y_PRED = [0] * 7 + [1] + [1] * 6 + [2, 2] + [2] * 5 + [1, 1, 1]


def phase3_meta() -> AdapterMeta:
    return AdapterMeta(
        crop="tomato",
        classes=CLASSES,
        domains=["base", "low_light"],
        backbone_settings={"source": "random:tiny", "image_size": 32},
        backbone_signature={"model_type": "dinov3_vit", "hidden_size": "32"},
        adapter_settings={"dora": {"r": 4, "alpha": 8.0}, "sd_lora": {"rank": 2}},
        phases=[
            PhaseRecord(phase="1", added=["healthy", "early_blight"], epochs=2),
            PhaseRecord(phase="2", task="0", added=["late_blight"], epochs=1),
            PhaseRecord(phase="3", task="low_light", added=["low_light"], epochs=1),
        ],
        metrics={
            "phase3_test_accuracy": 0.75,
            "phase3_mean_accuracy": 0.743,
            "phase2_retention": 1.04,
            "phase2_forgetting": -0.02,
            "phase3_protected_retention": 0.95,
            "phase3_forgetting": 0.01,
        },
        manifest_sha256="f" * 64,
        ood={
            "method": "mahalanobis/shared_ledoit_wolf/l2",
            "threshold": "percentile",
            "near_auroc": 0.8123,
            "far_auroc": 0.9871,
            "n_id": 24.0,
            "near_n_ood": 10.0,
            "far_n_ood": 40.0,
            "id_rejected": 0.0833,
            "near_detected": 0.6,
            "far_detected": 0.95,
        },
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    summary = classification_summary(Y_TRUE, Y_PRED, CLASSES)
    assert summary["accuracy"] == 0.75
    return write_package(
        PackageContents(
            meta=phase3_meta(),
            heads={"head.0.weight": torch.zeros(3, 4), "head.0.bias": torch.zeros(3)},
            extra=lambda d: save_confusion_matrix(
                summary, d / "metrics", "phase3_test", "tomato: phase 3, all domains (test)"
            ),
        ),
        tmp_path_factory.mktemp("card") / "tomato",
    )


@pytest.fixture(scope="module")
def gate():
    return adapter_gate(phase3_meta(), parse_config(SPEC))


@pytest.fixture(scope="module")
def card(package, gate) -> str:
    return model_card(
        phase3_meta(), pkg_dir=package, kfp_run_id="kfp-run-42", git_sha="0123abc", gate=gate
    )


def section(card: str, title: str) -> str:
    return card.split(f"## {title}")[1].split("\n## ")[0]


# --------------------------------------------------------------------------- headline


def test_the_card_opens_with_the_headline_and_lists_every_metric_after_it(card):
    titles = [line for line in card.splitlines() if line.startswith("## ")]
    assert titles[:2] == ["## At a glance", "## All metrics"]


def test_the_headline_gives_accuracy_with_its_wilson_interval_over_the_test_images(card):
    low, high = wilson_interval(18, 24)
    expected = f"| accuracy | 0.750 (95 % CI {low:.3f}-{high:.3f}; 18 of 24 test images) |"
    assert expected in section(card, "At a glance")


def test_one_accuracy_in_gate_card_and_confusion_matrix(package, gate, card):
    matrix = json.loads((package / "metrics" / "phase3_test.json").read_text())
    check = next(c for c in gate.checks if c.name == "accuracy")
    assert matrix["accuracy"] == check.value == 0.75
    assert "| accuracy | 0.750 " in section(card, "At a glance")


def test_the_headline_has_per_class_precision_and_recall(card):
    glance = section(card, "At a glance")
    # early_blight: 6 of 8 found; predicted 10 times, 6 right.
    assert "| early_blight | 0.600 | 0.750 | 8 |" in glance


def test_the_headline_has_retention_ood_and_the_operating_point_with_counts(card):
    glance = section(card, "At a glance")
    assert "| retention, old classes after phase 2 | 1.040 (forgetting -0.020) |" in glance
    assert "| near-OOD AUROC (unknown diseases) | 0.812 (10 images) |" in glance
    assert "| far-OOD AUROC (other crops) | 0.987 (40 images) |" in glance
    assert "| in-distribution answered unknown | 8.3% (2 of 24) |" in glance
    assert "| near-OOD accepted as a disease | 40.0% (4 of 10) |" in glance
    minimum = GateSettings().min_accuracy  # 0.75 is under the default
    assert "| gate | passed: accuracy 0.750" not in glance
    assert f"| gate | failed: accuracy 0.750 < {minimum:g} |" in glance


def test_a_retention_above_1_and_a_negative_forgetting_are_explained_in_one_line(card):
    notes = [line for line in section(card, "At a glance").splitlines() if line.startswith("- ")]
    assert len(notes) == 2
    assert notes[0].startswith("- Retention, old classes after phase 2: above 1: ")
    assert "negative forgetting" in notes[1] and "backward transfer" in notes[1]


def test_counts_in_the_full_metric_list_are_integers(card):
    ood = section(card, "All metrics")
    assert "| n_id | 24 |" in ood and "| far_n_ood | 40 |" in ood
    assert "| near_auroc | 0.8123 |" in ood


def test_a_check_not_measured_says_so_in_the_headline(package):
    meta = phase3_meta()
    meta.ood = {k: v for k, v in meta.ood.items() if not k.startswith("near")}
    result = adapter_gate(meta, parse_config(SPEC))
    glance = section(model_card(meta, pkg_dir=package, gate=result), "At a glance")
    assert "| near-OOD AUROC (unknown diseases) | failed (not measured;" in glance


def test_the_card_lists_each_gate_check_with_minimum_and_outcome(card):
    assert "Gate: **failed**" in card
    minimum = GateSettings().min_accuracy
    assert f"| accuracy | phase3_test_accuracy | {minimum:.4f} | 0.7500 | failed |" in card


def test_without_the_package_the_headline_still_has_the_accuracy_but_no_interval():
    glance = section(model_card(phase3_meta()), "At a glance")
    assert "| accuracy | 0.750 |" in glance and "CI" not in glance


def test_wilson_interval_matches_the_closed_form():
    z = 1.959963984540054
    for k, n in ((18, 24), (0, 10), (10, 10), (76, 96)):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low, high = wilson_interval(k, n)
        assert low == pytest.approx(centre - half, abs=1e-9)
        assert high == pytest.approx(centre + half, abs=1e-9)


def test_the_headline_metrics_are_what_mlflow_gets(package, gate):
    numbers = headline.build(package, phase3_meta(), gate).metrics()
    assert numbers["accuracy"] == 0.75 and numbers["test_images"] == 24
    assert numbers["retention"] == 0.95  # the worst of the phases' retentions
    assert numbers["near_accepted"] == pytest.approx(0.4)


# --------------------------------------------------------------------------- the rest


def test_model_card_names_the_crop_and_the_classes_in_head_order(card):
    assert "# Plant-disease adapter: tomato" in card
    assert "`healthy`, `early_blight`, `late_blight`" in card


def test_model_card_has_one_history_row_per_phase_record(card):
    history = section(card, "Continual-learning history")
    rows = [line for line in history.splitlines() if line.startswith("| ") and "phase" not in line]
    assert [r.split(" | ")[1] for r in rows] == ["DoRA", "SD-LoRA", "CONEC-LoRA"]


def test_model_card_states_the_backbone_licence(card):
    assert "- Backbone licence: none (built in code for tests and demos)" in card


def test_model_card_records_the_kfp_run(card):
    assert "KFP run id: `kfp-run-42`" in card


@pytest.mark.parametrize(
    ("source", "licence"),
    [
        ("facebook/dinov3-vitl16-pretrain-lvd1689m", "DINOv3 License (Meta; gated"),
        ("synthetic:small", "none (built in code"),
        ("random:tiny", "none (built in code"),
        ("s3://mirror/dinov3", "unknown: check the weights' licence"),
    ],
)
def test_backbone_licence_follows_the_source(source, licence):
    assert backbone_licence(source).startswith(licence)


# --------------------------------------------------------------------------- HTML, pictures


def test_the_html_report_opens_with_the_headline_table(package, gate):
    page = html_report(package, phase3_meta(), gate)
    assert page.index("At a glance") < page.index("Gate failed") < page.index("All metrics")
    assert "18 of 24 test images" in page and "<td>0.600</td><td>0.750</td><td>8</td>" in page


def test_the_confusion_matrix_title_gives_the_gates_accuracy_with_its_interval(package):
    matrix = json.loads((package / "metrics" / "phase3_test.json").read_text())
    assert matrix["accuracy"] == 0.75 and matrix["n"] == 24
    from aads.metrics import _accuracy_line

    low, high = wilson_interval(18, 24)
    assert _accuracy_line(matrix) == f"accuracy 0.750 (95 % CI {low:.2f}-{high:.2f}, 18/24)"


def test_the_roc_curve_marks_the_calibrated_operating_point(tmp_path):
    rng = np.random.default_rng(0)
    curves = {"near-OOD": (rng.normal(0, 1, 50), rng.normal(1.5, 1, 40))}
    plain = save_roc(curves, tmp_path / "plain", "roc", "t")
    marked = save_roc(curves, tmp_path / "marked", "roc", "t", {"near-OOD": (0.06, 0.7)})
    payload = json.loads(marked["json"].read_text())["curves"]["near-OOD"]
    assert payload["operating_point"] == {"fpr": 0.06, "tpr": 0.7}
    assert "operating_point" not in json.loads(plain["json"].read_text())["curves"]["near-OOD"]
    assert marked["png"].read_bytes() != plain["png"].read_bytes()


def test_the_router_card_says_what_it_routes_how_under_which_licence_and_the_gate():
    meta = {
        "crops": ["tomato", "corn"],
        "parts": ["leaf", "fruit"],
        "backbone_settings": {"source": "facebook/dinov3-vits16-pretrain-lvd1689m"},
    }
    metrics = {"test_crop_accuracy": 0.97, "test_part_accuracy": 0.91}
    gate = router_gate(metrics, GateSettings())
    card = router_card(meta, metrics, gate, kfp_run_id="run-1", git_sha="abc")
    assert "crops tomato, corn; parts leaf, fruit" in card
    assert ROUTER.method in card and "dinov3-vits16" in card
    assert backbone_licence("facebook/dinov3-vits16-pretrain-lvd1689m") in card
    assert f"Gate: **{gate.verdict}**" in card and "0.9700" in card
