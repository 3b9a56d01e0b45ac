"""The promotion gate: does a trained adapter or router meet the configured minimums?

The pipeline's evaluate step returns the gate's ``passed`` as a parameter, and only a passing
model is registered; the checks (metric, value, minimum, outcome) go into the model card, the
KFP report and the registry tags, so a failed run says exactly which number fell short.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from aads.adapters.package import AdapterMeta
from aads.config import GateSettings

Outcome = Literal["passed", "failed", "skipped"]

# Headline accuracy of the last phase run: what a user of that package gets.
ACCURACY_BY_PHASE = {
    "1": "phase1_test_accuracy",
    "2": "phase2_test_accuracy",
    "3": "phase3_mean_accuracy",
}
RETENTION_BY_PHASE = {"2": "phase2_retention", "3": "phase3_protected_retention"}


class GateCheck(BaseModel):
    name: str
    metric: str
    value: float | None
    minimum: float
    outcome: Outcome


class GateResult(BaseModel):
    passed: bool
    checks: list[GateCheck]

    def summary(self) -> str:
        """One line: what failed, or that everything passed."""
        failed = [c for c in self.checks if c.outcome == "failed"]
        if not failed:
            return "passed: " + ", ".join(
                f"{c.name} {c.value:.3f} >= {c.minimum}" for c in self.checks if c.value is not None
            )
        return "failed: " + ", ".join(
            f"{c.name} {c.value:.3f} < {c.minimum}" if c.value is not None else f"{c.name} missing"
            for c in failed
        )


def _check(name: str, metric: str, value: float | None, minimum: float) -> GateCheck:
    if value is None or not math.isfinite(value):
        return GateCheck(name=name, metric=metric, value=None, minimum=minimum, outcome="skipped")
    outcome: Outcome = "passed" if value >= minimum else "failed"
    return GateCheck(name=name, metric=metric, value=value, minimum=minimum, outcome=outcome)


def adapter_gate(meta: AdapterMeta, gate: GateSettings) -> GateResult:
    """Checks on the package's last phase and its OOD calibration."""
    phase = meta.last_phase
    accuracy_key = ACCURACY_BY_PHASE.get(phase, "")
    accuracy = _check("accuracy", accuracy_key, meta.metrics.get(accuracy_key), gate.min_accuracy)
    if accuracy.outcome == "skipped":  # no test images: nothing shows the model works
        accuracy = accuracy.model_copy(update={"outcome": "failed"})
    checks = [accuracy]
    retention_key = RETENTION_BY_PHASE.get(phase)
    if retention_key:
        checks.append(
            _check("retention", retention_key, meta.metrics.get(retention_key), gate.min_retention)
        )
    ood = meta.ood or {}
    checks.append(
        _check("far-OOD AUROC", "ood.far_auroc", ood.get("far_auroc"), gate.min_far_ood_auroc)
    )
    checks.append(
        _check("near-OOD AUROC", "ood.near_auroc", ood.get("near_auroc"), gate.min_near_ood_auroc)
    )
    if not meta.ood:
        checks.append(
            GateCheck(name="OOD calibration", metric="ood", value=None, minimum=0, outcome="failed")
        )
    return GateResult(passed=all(c.outcome != "failed" for c in checks), checks=checks)


def router_gate(metrics: dict[str, float], gate: GateSettings) -> GateResult:
    check = _check(
        "crop accuracy",
        "test_crop_accuracy",
        metrics.get("test_crop_accuracy"),
        gate.min_router_crop_accuracy,
    )
    return GateResult(passed=check.outcome != "failed", checks=[check])
