"""`aads monitor`: has the field drifted from what a crop's adapter was calibrated on?

Reads the crop's capture records of a window, the adapter package that answered them (its
OOD calibration, its training domain mix and its reference feature sample) and runs the three
statistics of `aads.drift.stats`:

- unknown rate: every captured record (all unknowns + the sampled knowns) against the
  calibrated rejection rate (`calibrated_rejection_rate`);
- domain mix and feature drift: only records ``in_sample`` (the hash-chosen share of *all*
  answers, unknown or not), at most `max_images` of them, because only those are an unbiased
  picture of the traffic: the kept unknowns alone would show "drift" by construction.

The report says what was measured, what was not and why, and whether drift is significant:
the command exits with `DRIFT_EXIT_CODE` then, so a CronJob or a KFP recurring run can act.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aads.adapters.loading import LoadedAdapter
from aads.adapters.package import OOD_DIR
from aads.capture.features import answering_adapter, image_features, training_domain_mix
from aads.capture.records import CaptureRecord, open_capture_store
from aads.config import PlatformConfig
from aads.drift.stats import (
    ALPHA,
    MAX_ROWS,
    DriftCheck,
    domain_mix_check,
    mmd_check,
    not_measured,
    unknown_rate_check,
)
from aads.ood.mahalanobis import OODError
from aads.ood.reference import load_reference_features
from aads.progress import Progress

DRIFT_EXIT_CODE = 4
"""`aads monitor`'s exit code when drift is significant (2: bad input, 3: a store is down)."""
Variants = Literal["champion", "canary", "all"]
_FETCHERS = 8
MIN_MEASURED = 100


@dataclass
class DriftReport:
    """Everything `aads monitor` found, as written to ``monitor.json``."""

    crop: str
    since: datetime
    until: datetime
    store: str
    package: str
    model_versions: dict[str, int]
    records: dict[str, int]
    checks: list[DriftCheck]
    daily: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    alpha: float = ALPHA

    @property
    def drifted(self) -> bool:
        return any(c.significant for c in self.checks)

    @property
    def exit_code(self) -> int:
        return DRIFT_EXIT_CODE if self.drifted else 0

    def check(self, name: str) -> DriftCheck:
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        checks = []
        for c in self.checks:
            d = c.as_dict()
            d["detail"] = {k: v for k, v in d["detail"].items() if k != "null"}
            checks.append(d)
        return {
            "crop": self.crop,
            "window": {"since": self.since.isoformat(), "until": self.until.isoformat()},
            "store": self.store,
            "package": self.package,
            "model_versions": self.model_versions,
            "records": self.records,
            "alpha": self.alpha,
            "drifted": self.drifted,
            "exit_code": self.exit_code,
            "checks": checks,
            "daily": self.daily,
            "notes": self.notes,
        }


def calibrated_rejection_rate(
    adapter: LoadedAdapter, reference: np.ndarray | None
) -> tuple[float, str]:
    """The share of in-distribution images the OOD check rejects, and where the number comes
    from: measured on the held-out test split at calibration (``id_rejected`` in
    ``ood/calibration.json``); with fewer than `MIN_MEASURED` test images that measurement is
    too noisy to trust below the percentile threshold's design rate (a 95th percentile rejects
    5 % by construction), which is then the floor. Without a test split: the design rate, else
    (mean + k std thresholds) the rejection rate of the reference (validation) sample."""
    assert adapter.ood is not None
    record = adapter.ood.record
    threshold = record.settings.threshold
    nominal = 1.0 - threshold.percentile / 100.0 if threshold.mode == "percentile" else None
    if "id_rejected" in record.evaluation:
        measured, n = float(record.evaluation["id_rejected"]), int(record.evaluation.get("n_id", 0))
        source = f"measured on {n} test-split images at calibration"
        if nominal is None or n >= MIN_MEASURED or measured >= nominal:
            return measured, source
        return nominal, (
            f"the {threshold.percentile:g}th-percentile threshold's design rate ({source}: "
            f"{measured:.1%}, too few images to go below it)"
        )
    if nominal is not None:
        return nominal, f"the {threshold.percentile:g}th-percentile threshold's design rate"
    if reference is not None:
        rate = float(adapter.ood.detect(reference.astype(np.float64)).is_ood.mean())
        return rate, "measured on the reference (validation) sample"
    raise OODError("the calibration records no rejection rate and the package no reference")


def run_monitor(
    config: PlatformConfig,
    crop: str,
    since: datetime,
    *,
    package: str | Path | None = None,
    store: str | None = None,
    prefix: str | None = None,
    until: datetime | None = None,
    variant: Variants = "champion",
    alpha: float = ALPHA,
    max_images: int = MAX_ROWS,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
) -> DriftReport:
    """Read the window's captures of `crop` and test them against its adapter `package` (a
    folder, ``s3://`` or ``models:/``; default: the registry's champion)."""
    until = (until or datetime.now(UTC)).astimezone(UTC)
    target = open_capture_store(config.serving.capture, config.storage, store, prefix)
    answering = answering_adapter(config, crop, package, tracking_uri)
    adapter = answering.adapter
    found = target.records(crop, since, until)
    records = [r for r in found.records if variant == "all" or r.variant == variant]
    notes = []
    if found.unreadable:
        notes.append(f"{len(found.unreadable)} record(s) could not be read and were skipped")
    reference = load_reference_features(answering.path / OOD_DIR)
    p0, p0_source = calibrated_rejection_rate(adapter, reference)
    rate = unknown_rate_check(_rate_counts(records), p0, alpha=alpha)
    rate.detail["calibrated_rate_source"] = p0_source

    sample = sorted((r for r in records if r.in_sample), key=lambda r: r.sha256)[:max_images]
    with tempfile.TemporaryDirectory(prefix="aads-monitor-") as scratch:
        files = target.download(sample, Path(scratch))
        kept = [(r, f) for r, f in zip(sample, files, strict=True) if f is not None]
        found_features = image_features(adapter, [f for _, f in kept], progress=progress)
    if len(kept) < len(sample):
        notes.append(f"{len(sample) - len(kept)} captured image(s) could not be fetched")
    decoded = [r for (r, _), ok in zip(kept, found_features.decoded, strict=True) if ok]
    domains = [
        r.domain or picked for r, picked in zip(decoded, found_features.domains, strict=True)
    ]
    mix = domain_mix_check(
        dict(Counter(d for d in domains if d is not None)),
        training_domain_mix(adapter),
        alpha=alpha,
    )
    if reference is None:
        features = not_measured(
            "feature drift",
            "the package has no reference features; recalibrate with aads ood calibrate",
        )
    else:
        space = adapter.ood.estimator.transform  # compare features as the OOD check does
        features = mmd_check(
            space(reference), space(found_features.features), alpha=alpha, max_rows=max_images
        )
    return DriftReport(
        crop=crop,
        since=since.astimezone(UTC),
        until=until,
        store=target.description,
        package=answering.source,
        model_versions=dict(Counter(r.model.get("version", "?") for r in records)),
        records=_record_counts(found.records, records),
        checks=[rate, mix, features],
        daily=_daily(records, p0),
        notes=notes,
        alpha=alpha,
    )


def _rate_counts(records: list[CaptureRecord]) -> dict[float, tuple[int, int]]:
    counts: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.verdict == "unknown":
            counts[r.sample_rate][0] += 1
        elif r.verdict == "known":
            counts[r.sample_rate][1] += 1
    return {rate: (u, k) for rate, (u, k) in counts.items()}


def _record_counts(everything: list[CaptureRecord], used: list[CaptureRecord]) -> dict[str, int]:
    verdicts = Counter(r.verdict for r in used)
    return {
        "in_window": len(everything),
        "used": len(used),
        "unknown": verdicts["unknown"],
        "known_sampled": verdicts["known"],
        "in_sample": sum(r.in_sample for r in used),
        "canary": sum(r.variant == "canary" for r in everything),
    }


def _daily(records: list[CaptureRecord], p0: float) -> list[dict[str, Any]]:
    """Per UTC day: unknowns, sampled knowns and the estimated unknown rate."""
    days: dict[str, list[CaptureRecord]] = defaultdict(list)
    for r in records:
        days[r.time.date().isoformat()].append(r)
    out = []
    for day in sorted(days):
        counts = _rate_counts(days[day])
        unknowns = sum(u for u, _ in counts.values())
        total = unknowns + sum(k / rate for rate, (_, k) in counts.items() if rate > 0)
        out.append(
            {
                "day": day,
                "unknown": unknowns,
                "known_sampled": sum(k for _, k in counts.values()),
                "estimated_rate": unknowns / total if total and any(counts) else None,
                "calibrated_rate": p0,
            }
        )
    return out
