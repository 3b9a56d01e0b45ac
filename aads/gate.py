"""The promotion gate: does a trained adapter or router keep the product's promises?

An adapter promises three things: it names the disease (accuracy), it still knows what it
knew before a continual phase (retention), and it answers *unknown* for what it does not know
(near-OOD: the crop's diseases it never learned; far-OOD: other crops). The gate checks each
promise the run could measure against `GateSettings`:

- accuracy always (without it nothing shows the model works, so "not measured" fails);
- retention for each continual phase that ran (phase 2: old classes, phase 3: base domain);
- near-OOD AUROC when the crop has diseases the adapter does not know (hold-outs, or later
  phases' classes when only early phases ran); far-OOD AUROC when other crops are configured.

A check that applies but whose number the run did not produce is ``not measured``;
``gate.not_measured`` says whether that fails or passes. A check that does not apply (corn has
no hold-out disease) is ``not applicable`` and never fails. The pipeline's evaluate step
returns ``passed``; the checks go into the model card, the HTML report, the evaluation run in
MLflow and the registry's ``gate_detail`` tag, so a refusal says which number fell short.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from aads.adapters.package import AdapterMeta
from aads.config import GateSettings, PlatformConfig
from aads.phases import PHASES

Outcome = Literal["passed", "failed", "not measured", "not applicable"]

# The accuracy of a package: pooled over every test image of the last phase (all its classes,
# and with phase 3 all its domains, each image routed by the domain selector as in serving).
# The same number titles that phase's confusion matrix (metrics/phase<N>_test.json), so gate,
# model card and picture agree, and it is a proportion of n images (a Wilson interval fits).
ACCURACY_BY_PHASE = {p.number: p.accuracy_metric for p in PHASES}
RETENTION_BY_PHASE = {
    p.number: (f"retention (phase {p.number}, {p.retention.kept})", p.retention.metric)
    for p in PHASES
    if p.retention is not None
}


class GateCheck(BaseModel):
    name: str
    metric: str
    value: float | None
    minimum: float
    outcome: Outcome
    note: str = ""  # why a check is not measured or not applicable

    def describe(self) -> str:
        """One phrase: ``near-OOD AUROC 0.331 < 0.6`` or ``... not measured (allowed)``."""
        if self.value is not None:
            sign = ">=" if self.outcome == "passed" else "<"
            return f"{self.name} {self.value:.3f} {sign} {self.minimum:g}"
        return f"{self.name} {self.outcome}" + (f" ({self.note})" if self.note else "")


class GateResult(BaseModel):
    passed: bool
    checks: list[GateCheck]

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "failed"

    def summary(self) -> str:
        """One line: what failed, or what passed."""
        if self.passed:
            shown = [c for c in self.checks if c.outcome != "not applicable"]
            return "passed: " + ", ".join(c.describe() for c in shown)
        return "failed: " + ", ".join(c.describe() for c in self.checks if c.outcome == "failed")


def _check(name: str, metric: str, value: float | None, minimum: float, gate: GateSettings):
    if value is None or not math.isfinite(value):
        allowed = gate.not_measured == "pass"
        return GateCheck(
            name=name,
            metric=metric,
            value=None,
            minimum=minimum,
            outcome="not measured" if allowed else "failed",
            note=f"not measured; gate.not_measured is {gate.not_measured}",
        )
    outcome: Outcome = "passed" if value >= minimum else "failed"
    return GateCheck(name=name, metric=metric, value=value, minimum=minimum, outcome=outcome)


def _not_applicable(name: str, metric: str, minimum: float, why: str) -> GateCheck:
    return GateCheck(
        name=name, metric=metric, value=None, minimum=minimum, outcome="not applicable", note=why
    )


def adapter_gate(meta: AdapterMeta, config: PlatformConfig) -> GateResult:
    """Every check that applies to this package, given its crop and the configured crops."""
    gate = config.gate
    accuracy_key = ACCURACY_BY_PHASE.get(meta.last_phase, "")
    accuracy = _check(
        "accuracy", accuracy_key, meta.metrics.get(accuracy_key), gate.min_accuracy, gate
    )
    if accuracy.value is None:  # no test images: nothing shows the model works
        accuracy = accuracy.model_copy(
            update={"outcome": "failed", "note": "not measured (accuracy is always required)"}
        )
    checks = [accuracy]
    ran = {p.phase for p in meta.phases}
    for phase, (name, key) in RETENTION_BY_PHASE.items():
        if phase in ran:
            checks.append(_check(name, key, meta.metrics.get(key), gate.min_retention, gate))

    ood = meta.ood or {}
    spec = next((c for c in config.crops if c.name == meta.crop), None)
    unknown = [c for c in spec.all_classes if c not in meta.classes] if spec else []
    name, metric, minimum = "near-OOD AUROC", "ood.near_auroc", gate.min_near_ood_auroc
    if spec is not None and not unknown:
        why = f"{meta.crop} has no disease the adapter does not know (no ood_holdout)"
        checks.append(_not_applicable(name, metric, minimum, why))
    else:
        checks.append(_check(name, metric, ood.get("near_auroc"), minimum, gate))
    name, metric, minimum = "far-OOD AUROC", "ood.far_auroc", gate.min_far_ood_auroc
    if len(config.crops) < 2:
        checks.append(_not_applicable(name, metric, minimum, "no other crop is configured"))
    else:
        checks.append(_check(name, metric, ood.get("far_auroc"), minimum, gate))
    if not meta.ood:
        checks.append(
            GateCheck(
                name="OOD calibration",
                metric="ood",
                value=None,
                minimum=0,
                outcome="failed",
                note="the package has no OOD calibration",
            )
        )
    return GateResult(passed=all(c.outcome != "failed" for c in checks), checks=checks)


def router_gate(metrics: dict[str, float], gate: GateSettings) -> GateResult:
    check = _check(
        "crop accuracy",
        "test_crop_accuracy",
        metrics.get("test_crop_accuracy"),
        gate.min_router_crop_accuracy,
        gate,
    )
    if check.value is None:
        check = check.model_copy(update={"outcome": "failed"})
    return GateResult(passed=check.outcome != "failed", checks=[check])
