"""A Prometheus server on this machine, loaded with the chart's alert rules.

The demo's field loop starts one beside the servers it runs, so the unknown-rate alert a team
would be paged by fires on the demo's own traffic; the tests start one to check the chart's
rules against real scrapes. Debian's ``prometheus`` package provides the binary (``make
tools``, or ``make demo`` where apt-get runs as root); where it is absent `find_binary` is
None and callers say so.

The server listens on 127.0.0.1 only and keeps its data in the folder it is given. Targets
are labelled as the chart's PodMonitor labels KServe's pods (``namespace``, ``isvc``,
``component``, ``pod``), so the rules' expressions select them unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from aads import chart
from aads.errors import Unavailable
from aads.mlflow_server import free_port

NAMESPACE = "aads"
RELEASE = "aads"


class PrometheusFailed(Unavailable):
    """The local Prometheus server did not start or did not answer."""


@dataclass(frozen=True)
class Target:
    """One server to scrape, labelled as the chart's PodMonitor labels its pod."""

    port: int
    isvc: str  # the InferenceService: ``aads-router``, ``aads-<crop>``
    component: str  # ``router`` or ``adapter-predictor``

    def static_config(self) -> dict:
        labels = {"namespace": NAMESPACE, "isvc": self.isvc, "component": self.component}
        return {"targets": [f"127.0.0.1:{self.port}"], "labels": {**labels, "pod": self.isvc}}


def find_binary() -> Path | None:
    """The ``prometheus`` executable on PATH, or None."""
    found = shutil.which("prometheus")
    return Path(found) if found else None


def chart_rule_groups(chart_dir: Path, monitoring: dict | None = None) -> list[dict]:
    """The rule groups of the chart's PrometheusRule, rendered by Helm's engine with
    ``monitoring.enabled`` and `monitoring` merged into the chart's values (release ``aads``,
    namespace ``aads``): the expressions exactly as a cluster gets them."""
    values = {"monitoring": chart.deep_merge({"enabled": True}, monitoring or {})}
    docs = chart.render(chart_dir, values, release=RELEASE, namespace=NAMESPACE)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


class LocalPrometheus:
    """``with LocalPrometheus(workdir, targets, groups) as prom:`` runs the server, scraping
    `targets` every `interval` and evaluating `groups` as often; stopped however the block ends."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[Target],
        groups: list[dict],
        *,
        interval: str = "1s",
        binary: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.binary = binary or find_binary()
        if self.binary is None:
            raise PrometheusFailed(
                "the prometheus server is not installed (Debian's prometheus package; "
                "`make tools` and `make demo` install it where apt-get runs as root)"
            )
        self.targets, self.groups, self.interval = list(targets), groups, interval
        self.port = 0
        self.log = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = self.workdir / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": self.groups}, sort_keys=False))
        scrape = {"scrape_interval": self.interval, "scrape_timeout": self.interval}
        config = {
            "global": {**scrape, "evaluation_interval": self.interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": f"{NAMESPACE}/{RELEASE}",
                    "static_configs": [t.static_config() for t in self.targets],
                }
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        with self.log.open("w") as log:
            self._proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str) -> dict:
        """The ``data`` of a successful answer of Prometheus's HTTP API at `path`; raises
        OSError while the server is still starting."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise PrometheusFailed(f"{path}: {body}")
        return body["data"]

    def firing(self) -> dict[tuple[str, str], dict]:
        """Firing alerts by (alert name, crop), or (alert name, isvc) for one without a crop."""
        alerts = self.api("/api/v1/alerts")["alerts"]
        return {
            (a["labels"]["alertname"], a["labels"].get("crop", a["labels"].get("isvc", ""))): a
            for a in alerts
            if a["state"] == "firing"
        }

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
