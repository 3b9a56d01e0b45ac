"""Every AADS Prometheus metric, defined once, and the one-line helpers the servers call.

The metrics live on prometheus_client's default registry, which KServe's ModelServer serves at
``/metrics`` on its HTTP port: one scrape per pod gives KServe's own request histograms and
these. Names follow Prometheus' conventions: the ``aads_`` prefix, ``_total`` on counters, base
units (``_seconds``), ratios from 0 to 1 (``_ratio``).

=========================================  =========  =====================================
metric                                     type       labels
=========================================  =========  =====================================
``aads_requests_total``                    counter    protocol, code
``aads_request_duration_seconds``          histogram  protocol
``aads_answers_total``                     counter    crop, model_version, variant, verdict,
                                                      class, error_kind
``aads_answer_confidence_ratio``           histogram  crop, model_version, variant, verdict
``aads_ood_distance_ratio``                histogram  crop, model_version, variant
``aads_domain_picks_total``                counter    crop, model_version, variant, domain
``aads_stage_duration_seconds``            histogram  stage, crop, variant
``aads_batch_size_images``                 histogram  crop, model_version
``aads_calibrated_rejection_ratio``        gauge      crop, model_version
``aads_capture_*``                         (below)    read from `CaptureWriter.stats()`
=========================================  =========  =====================================

Who counts what: an answer is counted once, by the server that sends it to the client, which
in the cluster is the router (the network policy lets only the router call the predictors):
it sees every answer with its crop, model version and variant. The predictors export what only
they see: their calibrated rejection rate (`register_adapter`), batch sizes and the stages of a
forward pass. The router's answers carry the predictors' ``model.version``, so the alert that
compares a crop's unknown rate with its calibrated rate joins the two on (crop, model_version).

Label values are bounded: a crop is counted under its name only once a loaded model named it
(`register_crops`, `register_model`); model versions, classes and CONEC domains are the loaded
models' plus, in a process that only relays a predictor's answers (the router), at most a few
learned from those answers per crop. Nothing taken from a request ever becomes a label value:
anything else is counted as ``other``. A label that does not apply (the crop of a picture of no
known crop, the error kind of a diagnosis) is empty, which Prometheus stores as no label.

The helpers never raise into the request they measure, and cost a few microseconds: the label
children are looked up once per label combination and cached (`benchmarks/telemetry.py`
measures one `observe_answer`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aads.answer import answer_field, verdict_of
from aads.capture.records import variant_of
from aads.errors import ERROR_KINDS, error_kind

if TYPE_CHECKING:
    from aads.adapters.loading import LoadedAdapter
    from aads.capture.writer import CaptureWriter

log = logging.getLogger(__name__)

OTHER = "other"
"""The label value of anything no loaded model named."""
STAGES = ("decode", "route", "predict", "ood")
VERDICTS = ("known", "unknown", "not_a_known_crop", "error")
VARIANTS = ("champion", "canary")
VARIANT_ENV = "AADS_VARIANT"
"""What a predictor labels its own stage timings with (the chart sets it on a canary's pods):
the router labels answers by the route it took, but a predictor cannot see that route."""
PROTOCOLS = ("v1", "v2")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds; 2.5 s (the default p99 alert threshold) is a bucket boundary, so the alert's
quantile is not an interpolation across it."""
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
DISTANCE_RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
"""OOD distance / the nearest class's threshold: above 1.0 the answer is ``unknown``; the fine
buckets around 1.0 show how many answers were a near call."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

MAX_LEARNED = {"model_version": 8, "class": 256, "domain": 32}
"""Per crop, the values a relaying process (the router) may learn from answers, at most."""
_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:-]{0,63}")


class LabelValues:
    """Which label values may appear: crops named by loaded models, and per crop the model
    versions, classes and domains of its loaded models plus at most `MAX_LEARNED` learned from
    answers. Everything else is `OTHER`."""

    def __init__(self, max_learned: dict[str, int] | None = None) -> None:
        self.max_learned = dict(MAX_LEARNED if max_learned is None else max_learned)
        self._crops: set[str] = set()
        self._known: dict[tuple[str, str], set[str]] = {}
        self._learned: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def allow_crops(self, crops: Iterable[str]) -> None:
        with self._lock:
            self._crops.update(c for c in crops if _VALUE.fullmatch(str(c)))

    def allow(self, crop: str, label: str, values: Iterable[str]) -> None:
        """Values of `label` (model_version, class, domain) a loaded model of `crop` has."""
        with self._lock:
            self._crops.add(crop)
            known = self._known.setdefault((crop, label), set())
            known.update(str(v) for v in values if _VALUE.fullmatch(str(v)))

    def crop(self, value: Any) -> str:
        if value is None or value == "":
            return ""
        return value if isinstance(value, str) and value in self._crops else OTHER

    def of(self, crop: str, label: str, value: Any) -> str:
        """`value` as a label value of `label` for `crop` (`crop` already mapped by `crop`)."""
        if value is None or value == "":
            return ""
        value = str(value)
        if value in self._known.get((crop, label), ()) or value in self._learned.get(
            (crop, label), ()
        ):
            return value
        if crop in ("", OTHER) or not _VALUE.fullmatch(value):
            return OTHER
        with self._lock:
            learned = self._learned.setdefault((crop, label), set())
            if len(learned) < self.max_learned.get(label, 0):
                learned.add(value)
                return value
        return OTHER


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Telemetry:
    """The metrics on one registry (the default one in servers; a private one in tests), with
    the recording helpers. Module-level functions call the process's default instance."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        self.labels = LabelValues()
        answer = ["crop", "model_version", "variant"]
        self.requests = Counter(
            "aads_requests_total",
            "Inference requests answered, by protocol and HTTP status code.",
            ["protocol", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "aads_request_duration_seconds",
            "Time from an inference request's arrival to its response, server side.",
            ["protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.answers = Counter(
            "aads_answers_total",
            "Answers, one per image: verdict known (class named), unknown (the adapter's OOD "
            "check), not_a_known_crop (the router's), or error (error_kind).",
            [*answer, "verdict", "class", "error_kind"],
            registry=registry,
        )
        self.confidence = Histogram(
            "aads_answer_confidence_ratio",
            "Confidence (top class probability) of known and unknown answers.",
            [*answer, "verdict"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.distance_ratio = Histogram(
            "aads_ood_distance_ratio",
            "OOD distance over the nearest class's threshold (above 1: unknown); crop-level "
            "for images of no known crop.",
            answer,
            buckets=DISTANCE_RATIO_BUCKETS,
            registry=registry,
        )
        self.domain_picks = Counter(
            "aads_domain_picks_total",
            "CONEC domain the adapter's selector picked, per answer that names one.",
            [*answer, "domain"],
            registry=registry,
        )
        self.stage_duration = Histogram(
            "aads_stage_duration_seconds",
            "Time spent in one stage of answering: decode, route, predict, ood.",
            ["stage", "crop", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "aads_batch_size_images",
            "Images per batch the dynamic batcher ran through an adapter.",
            ["crop", "model_version"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.calibrated_rejection = Gauge(
            "aads_calibrated_rejection_ratio",
            "Share of in-distribution images the loaded adapter's OOD check rejects, from its "
            "calibration (ood/calibration.json id_rejected): the unknown rate with no drift.",
            ["crop", "model_version"],
            registry=registry,
        )
        self._capture = CaptureCollector(None)
        if registry is not None:
            registry.register(self._capture)
        self._answer_children: dict[tuple, tuple] = {}
        self._stage_children: dict[tuple, Any] = {}
        self._domain_children: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ what loaded models name

    def register_crops(self, crops: Iterable[str]) -> None:
        """The crops a router's model knows (their names become label values)."""
        self.labels.allow_crops(crops)

    def register_model(
        self,
        crop: str,
        version: str | int = "",
        *,
        classes: Iterable[str] = (),
        domains: Iterable[str] = (),
        rejection_rate: float | None = None,
    ) -> None:
        """A loaded adapter: its crop, version, classes and domains become label values, and
        its calibrated rejection rate (when given) the `aads_calibrated_rejection_ratio`."""
        version = str(version)
        self.labels.allow(crop, "model_version", [version] if version else [])
        self.labels.allow(crop, "class", classes)
        self.labels.allow(crop, "domain", domains)
        rate = _number(rejection_rate)
        if rate is not None:
            self.calibrated_rejection.labels(crop, version).set(min(max(rate, 0.0), 1.0))

    def register_adapter(
        self, adapter: LoadedAdapter, version: str | int, package: Path | None = None
    ) -> float:
        """`register_model` for a loaded adapter package: classes, CONEC domains and the
        calibrated rejection rate as `aads monitor` computes it
        (`aads.drift.monitor.calibrated_rejection_rate`, the package's reference sample at
        hand for calibrations without a measured rate). Returns the rate."""
        from aads.adapters.package import OOD_DIR
        from aads.drift.monitor import calibrated_rejection_rate
        from aads.ood.reference import load_reference_features

        reference = load_reference_features(Path(package) / OOD_DIR) if package else None
        rate, _ = calibrated_rejection_rate(adapter, reference)
        self.register_model(
            adapter.meta.crop,
            version,
            classes=adapter.classes,
            domains=adapter.meta.domains,
            rejection_rate=rate,
        )
        return rate

    def track_capture(self, writer: CaptureWriter | None) -> None:
        """Export `writer`'s counters at every scrape (nothing pushes); None stops it."""
        self._capture.writer = writer

    # ------------------------------------------------------------------ the request path

    def observe_request(self, protocol: str, status: int, seconds: float) -> None:
        """One inference request answered with HTTP `status` after `seconds`."""
        try:
            protocol = protocol if protocol in PROTOCOLS else OTHER
            code = str(status) if isinstance(status, int) and 100 <= status < 600 else OTHER
            self.requests.labels(protocol, code).inc()
            value = _number(seconds)
            if value is not None and value >= 0:
                self.request_duration.labels(protocol).observe(value)
        except Exception:  # noqa: BLE001 - telemetry never fails the request it measures
            log.exception("telemetry: observe_request failed")

    def observe_answer(
        self,
        answer: Any,
        crop: str | None = None,
        version: str | int | None = None,
        variant: str | None = None,
    ) -> str | None:
        """Count one image's answer (the wire dict or the `aads.answer.Answer` model): its
        verdict, class, confidence, distance to threshold and CONEC domain. `crop`, `version`
        and `variant` default to the answer's own (``crop``, ``model.version``,
        ``routing.variant``). A scouted photo is not counted (its regions were, as the router
        answered them). Returns the verdict counted, None when nothing was."""
        try:
            return self._observe_answer(answer, crop, version, variant)
        except Exception:  # noqa: BLE001 - telemetry never fails the request it measures
            log.exception("telemetry: observe_answer failed")
            return None

    def _observe_answer(
        self, answer: Any, crop: str | None, version: str | int | None, variant: str | None
    ) -> str | None:
        if answer_field(answer, "scouting"):
            return None
        error = answer_field(answer, "error")
        if error:
            verdict = "error"
            kind = error_kind(answer_field(error, "code") if not isinstance(error, str) else 500)
        else:
            verdict, kind = verdict_of(answer), ""
            if verdict == "none":
                return None
        if verdict == "not_a_known_crop":
            crop_label = model_version = variant_label = ""
        else:
            crop_label = self.labels.crop(
                crop if crop is not None else answer_field(answer, "crop")
            )
            if version is None:
                model = answer_field(answer, "model")
                version = answer_field(model, "version") if model else None
            model_version = self.labels.of(crop_label, "model_version", version)
            if crop_label:
                canary = variant == "canary" or (variant is None and variant_of(answer) == "canary")
                variant_label = "canary" if canary else "champion"
            else:
                variant_label = ""
        name = ""
        if verdict == "known":
            name = self.labels.of(crop_label, "class", answer_field(answer, "label"))
        key = (crop_label, model_version, variant_label, verdict, name, kind)
        children = self._answer_children.get(key)
        if children is None:
            children = self._children(key)
        counter, confidence, distance = children
        counter.inc()
        if confidence is not None:
            value = _number(answer_field(answer, "confidence"))
            if value is not None:
                confidence.observe(value)
        if distance is not None:
            ood = answer_field(answer, "ood")
            if ood:
                d, t = (
                    _number(answer_field(ood, "distance")),
                    _number(answer_field(ood, "threshold")),
                )
                if d is not None and t is not None and t > 0:
                    distance.observe(d / t)
        domain = answer_field(answer, "domain")
        if domain and crop_label:
            key = (
                crop_label,
                model_version,
                variant_label,
                self.labels.of(crop_label, "domain", domain),
            )
            child = self._domain_children.get(key)
            if child is None:
                child = self._domain_children[key] = self.domain_picks.labels(*key)
            child.inc()
        return verdict

    def _children(self, key: tuple) -> tuple:
        crop, version, variant, verdict, name, kind = key
        scored = verdict in ("known", "unknown")
        children = (
            self.answers.labels(crop, version, variant, verdict, name, kind),
            self.confidence.labels(crop, version, variant, verdict) if scored else None,
            self.distance_ratio.labels(crop, version, variant) if verdict != "error" else None,
        )
        self._answer_children[key] = children
        return children

    def observe_stage(self, stage: str, seconds: float, crop: str = "", variant: str = "") -> None:
        """`seconds` spent in `stage` (one of `STAGES`) for `crop` (empty before routing)."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r}: one of {', '.join(STAGES)}")
        value = _number(seconds)
        if value is None or value < 0:
            return
        crop_label = self.labels.crop(crop)
        variant_label = variant if variant in VARIANTS else ("champion" if crop_label else "")
        key = (stage, crop_label, variant_label)
        child = self._stage_children.get(key)
        if child is None:
            child = self._stage_children[key] = self.stage_duration.labels(*key)
        child.observe(value)

    def stage_timer(self, stage: str, crop: str = "", variant: str = "") -> StageTimer:
        """``with stage_timer("decode"): ...`` records the block's wall time."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r}: one of {', '.join(STAGES)}")
        return StageTimer(self, stage, crop, variant)

    def observe_batch(self, size: int, crop: str = "", version: str | int = "") -> None:
        """One batch of `size` images run through `crop`'s adapter."""
        try:
            crop_label = self.labels.crop(crop)
            model_version = self.labels.of(crop_label, "model_version", version)
            self.batch_size.labels(crop_label, model_version).observe(size)
        except Exception:  # noqa: BLE001 - telemetry never fails the request it measures
            log.exception("telemetry: observe_batch failed")


class StageTimer:
    """Context manager timing one stage (`Telemetry.stage_timer`)."""

    __slots__ = ("_t0", "crop", "stage", "telemetry", "variant")

    def __init__(self, telemetry: Telemetry, stage: str, crop: str, variant: str) -> None:
        self.telemetry, self.stage, self.crop, self.variant = telemetry, stage, crop, variant
        self._t0 = 0.0

    def __enter__(self) -> StageTimer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._t0
        self.telemetry.observe_stage(self.stage, seconds, self.crop, self.variant)


class CaptureCollector(Collector):
    """The capture writer's counters, read from `CaptureWriter.stats()` at each scrape."""

    def __init__(self, writer: CaptureWriter | None) -> None:
        self.writer = writer

    def describe(self) -> list[Metric]:
        return []  # exported only while a writer is tracked; nothing to check at register

    def collect(self) -> Iterator[Metric]:
        writer = self.writer
        if writer is None:
            return
        # Imported here: the writer module (and torch, which its image checks use) is loaded
        # only in a process that captures.
        from aads.capture.writer import DROP_REASONS, SKIP_REASONS

        stats = writer.stats()
        yield _single(CounterMetricFamily, "offered", "Answered images offered.", stats.offered)
        yield _single(
            CounterMetricFamily, "written", "Images written (image and record).", stats.written
        )
        yield _by_reason(
            "dropped",
            "Images capture meant to keep but dropped (queue full, store down ...).",
            DROP_REASONS,
            stats.dropped,
        )
        yield _by_reason(
            "skipped", "Images not kept (not sampled, duplicate ...).", SKIP_REASONS, stats.skipped
        )
        yield _single(
            GaugeMetricFamily, "queue_images", "Images waiting in the queue.", stats.queue_depth
        )
        yield _single(
            GaugeMetricFamily, "queue_bytes", "Bytes waiting in the queue.", stats.queue_bytes
        )
        yield _single(
            GaugeMetricFamily,
            "store_up",
            "1 while the store answers; 0 while writes wait out retry_after_s.",
            0 if stats.store_down else 1,
        )


def _single(kind: type, name: str, text: str, value: float) -> Metric:
    family = kind(f"aads_capture_{name}", f"Capture: {text}")
    family.add_metric([], value)
    return family


def _by_reason(name: str, text: str, reasons: Iterable[str], counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(f"aads_capture_{name}", f"Capture: {text}", labels=["reason"])
    for reason in reasons:
        family.add_metric([reason], counts.get(reason, 0))
    return family


_default: Telemetry | None = None
_default_lock = threading.Lock()


def telemetry() -> Telemetry:
    """The process's metrics on prometheus_client's default registry (created on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Telemetry(REGISTRY)
    return _default


def register_crops(crops: Iterable[str]) -> None:
    telemetry().register_crops(crops)


def register_model(crop: str, version: str | int = "", **kwargs: Any) -> None:
    telemetry().register_model(crop, version, **kwargs)


def register_adapter(
    adapter: LoadedAdapter, version: str | int, package: Path | None = None
) -> float:
    return telemetry().register_adapter(adapter, version, package)


def track_capture(writer: CaptureWriter | None) -> None:
    telemetry().track_capture(writer)


def observe_request(protocol: str, status: int, seconds: float) -> None:
    telemetry().observe_request(protocol, status, seconds)


def observe_answer(
    answer: Any,
    crop: str | None = None,
    version: str | int | None = None,
    variant: str | None = None,
) -> str | None:
    return telemetry().observe_answer(answer, crop, version, variant)


def observe_stage(stage: str, seconds: float, crop: str = "", variant: str = "") -> None:
    telemetry().observe_stage(stage, seconds, crop, variant)


def stage_timer(stage: str, crop: str = "", variant: str = "") -> StageTimer:
    return telemetry().stage_timer(stage, crop, variant)


def observe_batch(size: int, crop: str = "", version: str | int = "") -> None:
    telemetry().observe_batch(size, crop, version)


__all__ = [
    "ERROR_KINDS",
    "OTHER",
    "STAGES",
    "VERDICTS",
    "CaptureCollector",
    "LabelValues",
    "StageTimer",
    "Telemetry",
    "observe_answer",
    "observe_batch",
    "observe_request",
    "observe_stage",
    "register_adapter",
    "register_crops",
    "register_model",
    "stage_timer",
    "telemetry",
    "track_capture",
]
