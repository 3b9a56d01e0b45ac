"""The chart's alert rules under the real ``promtool`` (Debian's ``prometheus`` package, installed
by ``make tools``): ``promtool check rules`` on the rendered rule file, the dashboard's queries
parsed the same way, and ``promtool test rules`` with the shipped default thresholds on series
that must fire and series that must not (three unknowns at night, a canary with no traffic,
1.2x against 3x the calibrated unknown rate, a predictor down, p99 over its threshold).

The rule file is the PrometheusRule's ``spec.groups``, as prometheus-operator hands it to
Prometheus. For ``promtool test rules`` the annotations are left out (promtool compares them
exactly, values and all); ``promtool check rules`` checks that their templates parse, and the
server test (tests/test_prometheus_server.py) renders them for real."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts import CHART, by_kind, scenario

PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMTOOL is None,
        reason="promtool is not installed: `make tools` installs Debian's prometheus package "
        "(apt-get, as root)",
    ),
]

ROUTER = 'namespace="aads", isvc="aads-router", component="router"'


def rule_groups(**values) -> list[dict]:
    (rule,) = by_kind(scenario("monitoring", **values), "PrometheusRule")
    return rule["spec"]["groups"]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "aads-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def test_promtool_accepts_the_rendered_rules(rules_file):
    out = promtool("check", "rules", str(rules_file), cwd=rules_file.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 10 rules found" in out.stdout


def test_promtool_catches_a_broken_expression(tmp_path):
    groups = rule_groups()
    groups[0]["rules"][0]["expr"] = "sum by (crop (aads_answers_total)"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    out = promtool("check", "rules", str(path), cwd=tmp_path)
    assert out.returncode != 0 and "parse error" in (out.stdout + out.stderr)


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """Each panel's query, with Grafana's variables replaced, as a recording rule: promtool
    parses it with Prometheus' own parser."""
    dashboard = json.loads((CHART / "dashboards" / "aads.json").read_text())
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$namespace", "aads")
                .replace("$crop", ".*")
            )
            assert "$" not in expr, expr
            rules.append(
                {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(rules) >= 20


# --------------------------------------------------------------------------- promtool test rules


def answers(crop: str, version: str, verdict: str, per_minute: str, **extra: str) -> dict:
    """A router's answer counter growing by `per_minute` (promtool's series notation)."""
    labels = f'{ROUTER}, crop="{crop}", model_version="{version}", variant="champion"'
    labels += f', verdict="{verdict}"' + "".join(f', {k}="{v}"' for k, v in extra.items())
    return {"series": f"aads_answers_total{{{labels}}}", "values": per_minute}


def calibrated(crop: str, version: str, rate: float) -> dict:
    isvc = f"aads-{crop.replace('_', '-')}"
    labels = f'namespace="aads", isvc="{isvc}", crop="{crop}", model_version="{version}"'
    return {"series": f"aads_calibrated_rejection_ratio{{{labels}}}", "values": f"{rate}x150"}


def up(isvc: str, values: str) -> dict:
    labels = f'namespace="aads", isvc="{isvc}", pod="{isvc}-0", job="aads/aads"'
    return {"series": f"up{{{labels}}}", "values": values}


def alert(name: str, at: str, *expected: dict) -> dict:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in expected]}


def unknown_rate(crop: str, version: str) -> dict:
    return {"severity": "warning", "namespace": "aads", "crop": crop, "model_version": version}


SERVICES = ("aads-router", "aads-tomato", "aads-tomato-canary", "aads-corn-maize")
ALL_UP = [up(s, "1x150") for s in SERVICES]


def latency(le_counts: dict[str, str]) -> list[dict]:
    """The router's request-duration histogram: cumulative per-minute growth per bucket."""
    series = []
    for le, values in le_counts.items():
        labels = f'{ROUTER}, protocol="v2", le="{le}"'
        series.append(
            {"series": f"aads_request_duration_seconds_bucket{{{labels}}}", "values": values}
        )
    labels = f'{ROUTER}, protocol="v2"'
    series.append(
        {"series": f"aads_request_duration_seconds_count{{{labels}}}", "values": le_counts["+Inf"]}
    )
    return series


CASES = {
    "unknown rate 3x calibrated fires; 1.2x does not": {
        "input_series": [
            # tomato v7, calibrated 5 %: 3 of 20 answers a minute unknown (15 %, 3x)
            answers("tomato", "7", "known", "0+17x150", **{"class": "healthy"}),
            answers("tomato", "7", "unknown", "0+3x150"),
            calibrated("tomato", "7", 0.05),
            # corn_maize v2, calibrated 5 %: 3 of 50 a minute (6 %, 1.2x) - 180 unknowns an hour
            answers("corn_maize", "2", "known", "0+47x150", **{"class": "common_rust"}),
            answers("corn_maize", "2", "unknown", "0+3x150"),
            calibrated("corn_maize", "2", 0.05),
            *ALL_UP,
        ],
        "alert_rule_test": [
            alert("AADSUnknownRateHigh", "10m"),  # pending: `for` is 15 minutes
            alert("AADSUnknownRateHigh", "75m", unknown_rate("tomato", "7")),
            alert("AADSUnknownRateHigh", "140m", unknown_rate("tomato", "7")),
        ],
    },
    "three unknowns at night page nobody": {
        "input_series": [
            answers("tomato", "7", "unknown", "0x30 1x30 2x30 3x60"),  # 100 % unknown, 3 images
            calibrated("tomato", "7", 0.05),
            *ALL_UP,
        ],
        "alert_rule_test": [alert("AADSUnknownRateHigh", t) for t in ("60m", "100m", "140m")],
    },
    "a canary with no traffic alerts on nothing": {
        "input_series": [
            answers("tomato", "7", "known", "0+19x150", **{"class": "healthy"}),
            answers("tomato", "7", "unknown", "0+1x150"),
            calibrated("tomato", "7", 0.05),
            calibrated("tomato", "8", 0.04),  # the canary's package is loaded ...
            {  # ... and its counters exist, flat
                "series": f'aads_answers_total{{{ROUTER}, crop="tomato", model_version="8", '
                'variant="canary", verdict="unknown"}',
                "values": "0x150",
            },
            *ALL_UP,
        ],
        "alert_rule_test": [
            alert(name, "120m")
            for name in (
                "AADSUnknownRateHigh",
                "AADSPredictorErrors",
                "AADSLatencyP99High",
                "AADSServerDown",
                "AADSServiceDown",
                "AADSNotAKnownCropRateHigh",
            )
        ],
    },
    "a calibration of 0 % is floored, so a few unknowns do not alert": {
        "input_series": [
            answers("tomato", "7", "known", "0+98x150", **{"class": "healthy"}),
            answers("tomato", "7", "unknown", "0+1x150"),  # 1 % unknown, 60 an hour
            calibrated("tomato", "7", 0.0),
            *ALL_UP,
        ],
        "alert_rule_test": [alert("AADSUnknownRateHigh", "90m")],
    },
    "a predictor down": {
        "input_series": [
            up("aads-router", "1x150"),
            up("aads-tomato", "1x150"),
            up("aads-tomato-canary", "1x150"),
            up("aads-corn-maize", "1x20 0x130"),  # stops answering at 21 minutes
        ],
        "alert_rule_test": [
            alert("AADSServerDown", "24m"),  # pending
            alert(
                "AADSServerDown",
                "30m",
                {
                    "severity": "warning",
                    "namespace": "aads",
                    "isvc": "aads-corn-maize",
                    "pod": "aads-corn-maize-0",
                    "job": "aads/aads",
                },
            ),
            alert("AADSServiceDown", "30m", {"severity": "critical", "isvc": "aads-corn-maize"}),
        ],
    },
    "a service with no pod at all": {
        "input_series": [up(s, "1x150") for s in SERVICES if s != "aads-router"],
        "alert_rule_test": [
            alert("AADSServiceDown", "3m"),
            alert("AADSServiceDown", "10m", {"severity": "critical", "isvc": "aads-router"}),
        ],
    },
    "p99 over 2.5 s fires; a fast router does not": {
        "input_series": [
            # 60 requests a minute; from 30 minutes on, 3 a minute (5 %) take 2.5-5 s
            *latency(
                {
                    "0.5": "0+60x30 1800+57x120",
                    "2.5": "0+60x30 1800+57x120",
                    "5.0": "0+60x150",
                    "+Inf": "0+60x150",
                }
            ),
            *ALL_UP,
        ],
        "alert_rule_test": [
            alert("AADSLatencyP99High", "28m"),
            alert("AADSLatencyP99High", "60m", {"severity": "warning", "namespace": "aads"}),
        ],
    },
    "a slow trickle of requests is no p99": {
        "input_series": [
            # one request every 50 minutes, every one slow: 0.0003 requests a second
            *latency({"2.5": "0x150", "5.0": "0x49 1x50 2x50", "+Inf": "0x49 1x50 2x50"}),
            *ALL_UP,
        ],
        "alert_rule_test": [alert("AADSLatencyP99High", t) for t in ("55m", "110m")],
    },
    "the platform's errors alert, the clients' do not": {
        "input_series": [
            answers("tomato", "7", "known", "0+18x60", **{"class": "healthy"}),
            answers("tomato", "7", "error", "0+2x60", error_kind="unavailable"),  # 10 %
            answers("corn_maize", "2", "known", "0+10x60", **{"class": "common_rust"}),
            answers("corn_maize", "2", "error", "0+10x60", error_kind="bad_input"),  # 50 %
            *ALL_UP,
        ],
        "alert_rule_test": [
            alert(
                "AADSPredictorErrors",
                "20m",
                {"severity": "critical", "namespace": "aads", "crop": "tomato"},
            ),
        ],
    },
    "many pictures of no known crop": {
        "input_series": [
            answers("tomato", "7", "known", "0+14x90", **{"class": "healthy"}),
            {
                "series": f'aads_answers_total{{{ROUTER}, verdict="not_a_known_crop"}}',
                "values": "0+6x90",  # 30 %
            },
            *ALL_UP,
        ],
        "alert_rule_test": [
            alert("AADSNotAKnownCropRateHigh", "10m"),
            alert("AADSNotAKnownCropRateHigh", "30m", {"severity": "warning", "namespace": "aads"}),
        ],
    },
    "a drift check that exits 4 fails its Job": {
        "input_series": [
            {
                "series": 'kube_job_failed{namespace="aads", job_name="aads-drift-tomato-2941",'
                ' condition="true"}',
                "values": "0x5 1x60",
            },
            {
                "series": 'kube_job_failed{namespace="aads", job_name="aads-kfp-upload",'
                ' condition="true"}',
                "values": "1x60",  # another Job of the release: not a drift check
            },
            *ALL_UP,
        ],
        "alert_rule_test": [
            alert("AADSDriftCheckFailed", "3m"),
            alert(
                "AADSDriftCheckFailed",
                "10m",
                {
                    "severity": "warning",
                    "namespace": "aads",
                    "job_name": "aads-drift-tomato-2941",
                    "condition": "true",
                },
            ),
        ],
    },
}


@pytest.fixture(scope="module")
def bare_rules(tmp_path_factory) -> Path:
    """The default rules without annotations (see the module docstring)."""
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path_factory.mktemp("bare") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def run_case(bare_rules: Path, name: str, case: dict) -> subprocess.CompletedProcess:
    test = {
        "rule_files": [bare_rules.name],
        "evaluation_interval": "1m",
        "tests": [{"name": name, "interval": "1m", **case}],
    }
    path = bare_rules.parent / f"test-{abs(hash(name))}.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return promtool("test", "rules", path.name, cwd=bare_rules.parent)


@pytest.mark.parametrize("name", list(CASES))
def test_promtool_unit_tests_of_the_default_thresholds(bare_rules, name):
    out = run_case(bare_rules, name, CASES[name])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_unit_tests_can_fail(bare_rules):
    """The 1.2x case claimed to fire is refused by promtool: the harness sees a wrong claim."""
    case = json.loads(json.dumps(CASES["unknown rate 3x calibrated fires; 1.2x does not"]))
    case["alert_rule_test"].append(
        alert("AADSUnknownRateHigh", "75m", unknown_rate("corn_maize", "2"))
    )
    out = run_case(bare_rules, "wrong claim", case)
    assert out.returncode != 0 and "corn_maize" in out.stdout + out.stderr


def test_the_count_floor_is_what_keeps_three_unknowns_at_night_quiet(tmp_path):
    """Without `minUnknowns` the same three images would page: the floor does the work."""
    groups = rule_groups(monitoring={"rules": {"unknownRate": {"minUnknowns": 0}}})
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    case = json.loads(json.dumps(CASES["three unknowns at night page nobody"]))
    case["alert_rule_test"] = [
        alert("AADSUnknownRateHigh", "100m", unknown_rate("tomato", "7")),
    ]
    out = run_case(rules, "no floor", case)
    assert out.returncode == 0, out.stdout + out.stderr
