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
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from aads.telemetry import Telemetry
from tests.charts import by_kind, scenario
from tests.conftest import free_port

PROMETHEUS = shutil.which("prometheus")
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


def api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


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
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))

    def target(port: int, isvc: str, component: str) -> dict:
        labels = {"namespace": "aads", "isvc": isvc, "component": component, "pod": f"{isvc}-0"}
        return {"targets": [f"127.0.0.1:{port}"], "labels": labels}

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "aads/aads",
                "static_configs": [
                    target(ports["router"], "aads-router", "router"),
                    target(ports["predictor"], "aads-tomato", "adapter-predictor"),
                    target(free_port(), "aads-corn-maize", "adapter-predictor"),  # down
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    traffic = Traffic(router)
    try:
        yield {"web": web, "traffic": traffic, "log": tmp_path / "prometheus.log"}
    finally:
        traffic.stop.set()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        for http, thread in servers:
            http.shutdown()
            http.server_close()
            thread.join(timeout=5)


def wait_for(check, deadline: float, what: str, log: Path):  # noqa: ANN001, ANN201
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:  # the server is still starting
            found = None
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what} within {DEADLINE:.0f} s; prometheus log:\n{log.read_text()[-3000:]}")


def firing(web: int) -> dict[tuple, dict]:
    alerts = api(web, "/api/v1/alerts")["alerts"]
    return {
        (a["labels"]["alertname"], a["labels"].get("crop", a["labels"].get("isvc"))): a
        for a in alerts
        if a["state"] == "firing"
    }


def test_prometheus_scrapes_the_telemetry_and_the_unknown_rate_and_down_alerts_fire(world):
    start = time.monotonic()
    deadline = start + DEADLINE
    web = world["web"]
    wait_for(lambda: api(web, "/api/v1/status/buildinfo"), deadline, "prometheus up", world["log"])
    world["traffic"].thread.start()

    def scraped() -> list:
        result = api(web, "/api/v1/query?query=aads_answers_total")["result"]
        return [r for r in result if r["metric"].get("crop") == "tomato"]

    series = wait_for(scraped, deadline, "the router's answers scraped", world["log"])
    labels = {json.dumps(r["metric"], sort_keys=True) for r in series}
    assert any('"class": "healthy"' in s and '"verdict": "known"' in s for s in labels)
    assert any('"verdict": "unknown"' in s and '"class"' not in s for s in labels)  # "" = none

    def alerts_fired() -> dict | None:
        found = firing(web)
        wanted = {("AADSUnknownRateHigh", "tomato"), ("AADSServiceDown", "aads-corn-maize")}
        return found if wanted <= set(found) else None

    found = wait_for(
        alerts_fired, deadline, "the unknown-rate and down alerts firing", world["log"]
    )
    tomato = found[("AADSUnknownRateHigh", "tomato")]
    assert tomato["labels"]["model_version"] == "7"
    assert tomato["annotations"]["summary"].startswith("tomato v7 answers unknown")
    assert "%" in tomato["annotations"]["description"]
    assert tomato["annotations"]["runbook_url"].endswith("#aadsunknownratehigh")
    assert ("AADSUnknownRateHigh", "corn") not in found  # 1.2x its calibration
    assert ("AADSServerDown", "aads-corn-maize") in found
    assert ("AADSServiceDown", "aads-router") not in found

    # The real evaluator found nothing wrong with any expression on real data.
    groups = api(web, "/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 9
    assert all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    assert time.monotonic() - start < DEADLINE
