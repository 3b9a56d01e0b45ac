"""The real Prometheus server (Debian's ``prometheus`` package) scrapes `aads.telemetry`'s
exposition over HTTP on 127.0.0.1 with the chart's rule file loaded, and the alerts go pending
and firing through its HTTP API.

Two tiny endpoints stand in for the pods the PodMonitor finds (prometheus_client's own HTTP
server, each with its own registry, as each pod has its own process): a "router" that counts
answers, and a "predictor" exporting its calibrated rejection rate; their static labels are
what the PodMonitor's relabelling adds (namespace, isvc, component). A third target is a port
nobody listens on: a predictor that is down. The rules are the chart's, rendered with short
windows and ``for`` durations (values only; the expressions are the shipped ones), evaluated
every second. Bounded: at most `DEADLINE` seconds, and the server is stopped however the
test ends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from aads.prometheus_local import LocalPrometheus, Target, find_binary
from aads.telemetry import Telemetry
from tests.charts import by_kind, scenario
from tests.conftest import free_port

PROMETHEUS = find_binary()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the prometheus server is not installed: `make tools` installs Debian's prometheus "
        "package (apt-get, as root)",
    ),
]
DEADLINE = 45.0
FAST = {
    "rules": {
        "interval": "1s",
        "unknownRate": {"window": "20s", "for": "2s", "minUnknowns": 5},
        "down": {"for": "2s"},
    }
}


def answer(crop: str, unknown: bool, version: str) -> dict:
    return {
        "label": "unknown" if unknown else "healthy",
        "is_ood": unknown,
        "confidence": 0.4 if unknown else 0.9,
        "crop": crop,
        "ood": {"distance": 14.0 if unknown else 6.0, "threshold": 10.0},
        "model": {"name": f"aads-adapter-{crop}", "version": version},
    }


class Traffic:
    """Answers counted by the "router" until stopped: tomato 30 % unknown (6x its calibrated
    5 %), corn 6 % (1.2x)."""

    def __init__(self, router: Telemetry) -> None:
        self.router = router
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.wait(0.05):
            i += 1
            self.router.observe_answer(answer("tomato", i % 10 < 3, "7"))
            self.router.observe_answer(answer("corn", i % 50 < 3, "2"))


@pytest.fixture
def world(tmp_path) -> Iterator[dict]:
    router, predictor = Telemetry(CollectorRegistry()), Telemetry(CollectorRegistry())
    router.register_crops(["tomato", "corn"])
    predictor.register_model("tomato", "7", classes=["healthy"], rejection_rate=0.05)
    predictor.register_model("corn", "2", classes=["healthy"], rejection_rate=0.05)
    servers = []
    ports = {}
    for name, t in (("router", router), ("predictor", predictor)):
        ports[name] = free_port()
        servers.append(start_http_server(ports[name], addr="127.0.0.1", registry=t.registry))
    (rule,) = by_kind(scenario("monitoring", monitoring=FAST), "PrometheusRule")
    targets = [
        Target(ports["router"], "aads-router", "router"),
        Target(ports["predictor"], "aads-tomato", "adapter-predictor"),
        Target(free_port(), "aads-corn-maize", "adapter-predictor"),  # down
    ]
    traffic = Traffic(router)
    try:
        with LocalPrometheus(tmp_path, targets, rule["spec"]["groups"]) as prometheus:
            yield {"prometheus": prometheus, "traffic": traffic}
    finally:
        traffic.stop.set()
        for http, thread in servers:
            http.shutdown()
            http.server_close()
            thread.join(timeout=5)


def wait_for(check, deadline: float, what: str, prometheus: LocalPrometheus):  # noqa: ANN001, ANN201
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:  # the server is still starting
            found = None
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what} within {DEADLINE:.0f} s; prometheus log:\n{prometheus.log_tail()}")


def test_prometheus_scrapes_the_telemetry_and_the_unknown_rate_and_down_alerts_fire(world):
    start = time.monotonic()
    deadline = start + DEADLINE
    prometheus = world["prometheus"]
    wait_for(
        lambda: prometheus.api("/api/v1/status/buildinfo"), deadline, "prometheus up", prometheus
    )
    world["traffic"].thread.start()

    def scraped() -> list:
        result = prometheus.api("/api/v1/query?query=aads_answers_total")["result"]
        return [r for r in result if r["metric"].get("crop") == "tomato"]

    series = wait_for(scraped, deadline, "the router's answers scraped", prometheus)
    labels = {json.dumps(r["metric"], sort_keys=True) for r in series}
    assert any('"class": "healthy"' in s and '"verdict": "known"' in s for s in labels)
    assert any('"verdict": "unknown"' in s and '"class"' not in s for s in labels)  # "" = none

    def alerts_fired() -> dict | None:
        found = prometheus.firing()
        wanted = {("AADSUnknownRateHigh", "tomato"), ("AADSServiceDown", "aads-corn-maize")}
        return found if wanted <= set(found) else None

    found = wait_for(alerts_fired, deadline, "the unknown-rate and down alerts firing", prometheus)
    tomato = found[("AADSUnknownRateHigh", "tomato")]
    assert tomato["labels"]["model_version"] == "7"
    assert tomato["annotations"]["summary"].startswith("tomato v7 answers unknown")
    assert "%" in tomato["annotations"]["description"]
    assert tomato["annotations"]["runbook_url"].endswith("#aadsunknownratehigh")
    assert ("AADSUnknownRateHigh", "corn") not in found  # 1.2x its calibration
    assert ("AADSServerDown", "aads-corn-maize") in found
    assert ("AADSServiceDown", "aads-router") not in found

    # The real evaluator found nothing wrong with any expression on real data.
    groups = prometheus.api("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 9
    assert all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    assert time.monotonic() - start < DEADLINE
