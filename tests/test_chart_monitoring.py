"""The chart's monitoring (``monitoring.enabled``): a PodMonitor for every AADS server, the alert
rules, the Grafana dashboard and the drift CronJobs, rendered by Helm's engine and checked
against prometheus-operator's own CRD schemas (../shared/crds/prometheus-operator), Kubernetes'
schemas (kubernetes-validate, through the chart tests' scenarios) and the metrics
`aads.telemetry` really exports."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helm_python import Chart, HelmError
from prometheus_client import CollectorRegistry

from aads import chart
from aads.chart import PROMETHEUS_KINDS, crd_validators
from aads.telemetry import Telemetry
from tests.charts import (
    CHART,
    SCENARIOS,
    by_kind,
    load_scenario,
    named,
    pod_specs,
    render,
    scenario,
)
from tests.conftest import ROOT
from tests.test_contract import Rendered, external_secrets, pod_refs

pytestmark = pytest.mark.slow  # Helm's engine renders the chart in every test

PROMETHEUS_CRDS = ROOT.parent / "shared" / "crds" / "prometheus-operator"
CRDS = ROOT.parent / "shared" / "crds"
DASHBOARD = CHART / "dashboards" / "aads.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS = {
    "AADSUnknownRateHigh",
    "AADSNotAKnownCropRateHigh",
    "AADSPredictorErrors",
    "AADSLatencyP99High",
    "AADSServerDown",
    "AADSServiceDown",
    "AADSDriftCheckFailed",
}


@pytest.fixture(scope="module")
def monitored() -> list[dict]:
    return scenario("monitoring")


def rules_of(docs: list[dict]) -> list[dict]:
    (rule,) = by_kind(docs, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def exported_metrics() -> set[str]:
    """Every sample name `aads.telemetry` can expose (histogram parts included)."""
    t = Telemetry(CollectorRegistry())
    names = set()
    for metric in t.registry.collect():
        kind = metric.type
        base = metric.name
        if kind == "counter":
            names.add(f"{base}_total")
        elif kind == "histogram":
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        else:
            names.add(base)
    capture = ["offered_total", "written_total", "dropped_total", "skipped_total"]
    names |= {f"aads_capture_{n}" for n in capture}
    names |= {"aads_capture_queue_images", "aads_capture_queue_bytes", "aads_capture_store_up"}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers followed by { or [ or a space)."""
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr))
    functions = {"rate", "increase", "sum", "max", "min", "absent", "clamp_min", "count"}
    return {w for w in words if w not in functions and w != "by" and w != "on"}


# --------------------------------------------------------------------------- off by default


@pytest.mark.parametrize("name", [p.stem for p in SCENARIOS if p.stem != "monitoring"])
def test_no_scenario_without_monitoring_needs_prometheus_operators_crds(name):
    docs = scenario(name)
    assert not [d for d in docs if d["kind"] in PROMETHEUS_KINDS]
    assert not by_kind(docs, "CronJob")
    assert "aads-dashboard" not in {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}


# --------------------------------------------------------------------------- contracts of others


@pytest.mark.skipif(not PROMETHEUS_CRDS.is_dir(), reason=f"no CRD schemas at {PROMETHEUS_CRDS}")
def test_the_podmonitor_and_rules_match_prometheus_operators_crd_schemas(monitored):
    validators = crd_validators(PROMETHEUS_CRDS)
    checked = [d for d in monitored if d["kind"] in PROMETHEUS_KINDS]
    for doc in checked:
        validators[f"{doc['apiVersion']}/{doc['kind']}"].validate(doc)
    assert sorted(d["kind"] for d in checked) == ["PodMonitor", "PrometheusRule"]


@pytest.mark.skipif(not PROMETHEUS_CRDS.is_dir(), reason=f"no CRD schemas at {PROMETHEUS_CRDS}")
def test_a_rule_the_operator_would_refuse_is_caught_by_its_schema(monitored):
    import jsonschema

    (rule,) = by_kind(monitored, "PrometheusRule")
    broken = json.loads(json.dumps(rule))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "fifteen minutes"
    validator = crd_validators(PROMETHEUS_CRDS)["monitoring.coreos.com/v1/PrometheusRule"]
    with pytest.raises(jsonschema.ValidationError, match="fifteen minutes"):
        validator.validate(broken)


def test_a_promotion_validates_a_monitored_environment_with_every_crd(monitored):
    chart.validate(monitored, CRDS)  # what `aads promote` runs before committing a pin
    with pytest.raises(chart.ChartError, match="PodMonitor"):
        bad = json.loads(json.dumps(monitored))
        (pm,) = by_kind(bad, "PodMonitor")
        pm["spec"]["podMetricsEndpoints"][0]["portNumber"] = "http"
        chart.validate(bad, CRDS)


def test_every_secret_and_configmap_the_drift_jobs_read_is_rendered(monitored):
    values = load_scenario(CHART / "ci" / "monitoring.yaml")
    refs = [r for r in pod_refs(monitored) if r.by.startswith("CronJob")]
    assert {r.name for r in refs} == {"aads-s3", "aads-spec"}
    assert Rendered(monitored).missing(refs, external_secrets(values)) == []


# --------------------------------------------------------------------------- scraping


def test_one_podmonitor_scrapes_every_server_of_the_release_on_its_http_port(monitored):
    (pm,) = by_kind(monitored, "PodMonitor")
    (selector,) = pm["spec"]["selector"]["matchExpressions"]
    assert selector["key"] == "serving.kserve.io/inferenceservice"
    services = {d["metadata"]["name"] for d in by_kind(monitored, "InferenceService")}
    assert (
        set(selector["values"])
        == services
        == {
            "aads-router",
            "aads-tomato",
            "aads-tomato-canary",
            "aads-corn-maize",
        }
    )
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["portNumber"] == 8080 and endpoint["path"] == "/metrics"
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    assert {"isvc", "component"} <= targets
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_scouting_service_is_scraped_too():
    docs = scenario("scouting", monitoring={"enabled": True})
    (pm,) = by_kind(docs, "PodMonitor")
    assert "aads-scouting" in pm["spec"]["selector"]["matchExpressions"][0]["values"]


def test_the_servers_port_8080_is_container_port_of_every_scraped_pod(monitored):
    ports = set()
    for d in monitored:
        if d["kind"] == "ServingRuntime" or d["kind"] == "InferenceService":
            spec = d["spec"] if d["kind"] == "ServingRuntime" else d["spec"]["predictor"]
            for c in spec.get("containers", []):
                ports |= {p["containerPort"] for p in c["ports"]}
    assert ports == {8080}


def test_prometheus_may_scrape_the_predictors_only_on_the_metrics_port(monitored):
    policy = named(monitored, "NetworkPolicy", "aads-adapters")
    router, scrape = policy["spec"]["ingress"]
    assert "ports" not in router  # the router's rule is unchanged
    assert scrape["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert scrape["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    quiet = named(scenario("canary"), "NetworkPolicy", "aads-adapters")
    assert len(quiet["spec"]["ingress"]) == 1


def test_a_platform_without_models_gets_rules_and_a_dashboard_but_no_empty_podmonitor():
    docs = render({"monitoring": {"enabled": True}})
    assert by_kind(docs, "PodMonitor") == []  # an empty `In` selector is invalid
    names = {r["alert"] for r in rules_of(docs)}
    assert "AADSServerDown" not in names and "AADSServiceDown" not in names
    assert "aads-dashboard" in {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}


# --------------------------------------------------------------------------- the rules


def test_the_rules_hold_every_alert_with_summary_description_and_a_runbook_section(monitored):
    rules = rules_of(monitored)
    assert {r["alert"] for r in rules} == ALERTS
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for r in rules:
        notes = r["annotations"]
        assert notes["summary"] and len(notes["description"].split()) >= 10, r["alert"]
        url = notes["runbook_url"]
        assert url.startswith("https://github.com/aads-platform/aads/blob/main/docs/runbook.md#")
        assert url.split("#")[1] in anchors, url
        assert r["labels"]["severity"] in ("warning", "critical")


def test_every_service_has_its_own_service_down_alert(monitored):
    down = [r for r in rules_of(monitored) if r["alert"] == "AADSServiceDown"]
    assert sorted(r["labels"]["isvc"] for r in down) == [
        "aads-corn-maize",
        "aads-router",
        "aads-tomato",
        "aads-tomato-canary",
    ]


def test_every_metric_a_rule_reads_is_one_the_servers_export(monitored):
    outside = {"up", "kube_job_failed"}  # Prometheus' own, kube-state-metrics'
    known = exported_metrics() | outside
    for r in rules_of(monitored):
        used = metric_names(r["expr"])
        assert used and used <= known, (r["alert"], used - known)


def test_thresholds_are_values(monitored):
    docs = scenario(
        "monitoring",
        monitoring={
            "rules": {
                "unknownRate": {"factor": 3, "minUnknowns": 50, "window": "2h", "for": "30m"},
                "latency": {"p99Seconds": 1},
            }
        },
    )
    (unknown,) = [r for r in rules_of(docs) if r["alert"] == "AADSUnknownRateHigh"]
    assert "3 * clamp_min(" in unknown["expr"] and ">= 50" in unknown["expr"]
    assert "[2h]" in unknown["expr"] and unknown["for"] == "30m"
    (latency,) = [r for r in rules_of(docs) if r["alert"] == "AADSLatencyP99High"]
    assert ") > 1\n" in latency["expr"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"rules": {"unknownRate": {"window": "one hour"}}}, "window"),
        ({"rules": {"errors": {"ratio": 5}}}, "ratio"),
        ({"rules": {"latency": {"p99Seconds": 0}}}, "p99Seconds"),
        ({"drift": {"since": "a week"}}, "since"),
        ({"drift": {"crops": ["Tomato"]}}, "crops"),
        ({"dashboard": {"labels": {"grafana_dashboard": 1}}}, "grafana_dashboard"),
    ],
)
def test_bad_monitoring_values_are_rejected_naming_the_field(values, field):
    with pytest.raises(HelmError, match=field):
        Chart.load(CHART).render({"monitoring": values}, name="aads", namespace="aads")


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_is_a_configmap_grafanas_sidecar_loads(monitored):
    cm = named(monitored, "ConfigMap", "aads-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "AADS"}
    assert json.loads(cm["data"]["aads.json"]) == json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_the_dashboard_has_the_panels_an_operator_needs():
    titles = {p["title"] for p in dashboard_panels()}
    assert {
        "Request rate",
        "Verdict mix per crop",
        "Unknown rate vs calibrated rate",
        "Answers per class",
        "Confidence of known answers",
        "OOD distance / threshold",
        "Stage latency p50 / p99",
        "Batch size",
        "Capture queue",
        "Capture writes and drops",
        "Unknown rate by variant",
        "CONEC domain picks",
    } <= titles
    kinds = {p["title"]: p["type"] for p in dashboard_panels()}
    assert kinds["Confidence of known answers"] == kinds["OOD distance / threshold"] == "heatmap"


def test_every_dashboard_query_reads_metrics_the_servers_export():
    known = exported_metrics() | {"up"}
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used and used <= known, (panel["title"], used - known)
            assert target["datasource"]["uid"] == "${datasource}"


def test_panels_do_not_overlap_on_the_grid():
    cells = set()
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine


# --------------------------------------------------------------------------- the drift CronJobs


def test_a_drift_cronjob_per_pinned_crop_runs_aads_monitor_on_its_pinned_package(monitored):
    jobs = {j["metadata"]["name"]: j for j in by_kind(monitored, "CronJob")}
    assert set(jobs) == {"aads-drift-tomato", "aads-drift-corn-maize"}
    tomato = jobs["aads-drift-tomato"]
    assert tomato["spec"]["schedule"] == "17 3 * * *"
    assert tomato["spec"]["concurrencyPolicy"] == "Forbid"
    pod = tomato["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["aads", "monitor"]
    assert container["args"] == [
        "--crop=tomato",
        "--since=7d",
        "--config=/etc/aads/spec.yaml",
        "--alpha=0.01",
        "--out=/tmp/monitor",
        "--package=s3://aads/models/adapters/tomato/v7",  # what the champion serves
    ]
    corn = jobs["aads-drift-corn-maize"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # a gs:// pin is not an aads package source: the registry's champion answers for it
    assert "--crop=corn_maize" in corn["containers"][0]["args"]
    assert not [a for a in corn["containers"][0]["args"] if a.startswith("--package")]


def test_drift_exit_code_4_fails_the_job_at_once_and_a_store_outage_is_retried(monitored):
    job = named(monitored, "CronJob", "aads-drift-tomato")["spec"]["jobTemplate"]["spec"]
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": "monitor", "operator": "In", "values": [2, 4]}
    assert job["backoffLimit"] >= 1  # exit 3 (store down) is retried
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    from aads.drift.monitor import DRIFT_EXIT_CODE

    assert DRIFT_EXIT_CODE in rule["onExitCodes"]["values"]


def test_the_drift_jobs_take_the_per_workload_pod_settings():
    docs = scenario(
        "monitoring",
        imagePullSecrets=[{"name": "regcred"}],
        monitoring={
            "drift": {
                "nodeSelector": {"pool": "batch"},
                "imagePullSecrets": [{"name": "drift-pull"}],
                "serviceAccount": {
                    "create": True,
                    "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/drift"},
                },
                "priorityClassName": "batch-low",
                "crops": ["tomato"],
                "schedule": "0 * * * *",
            }
        },
    )
    pods = pod_specs(docs)
    pod = pods["aads-drift-tomato"]
    assert pod["nodeSelector"] == {"pool": "batch"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "drift-pull"}]
    assert pod["priorityClassName"] == "batch-low"
    assert pod["serviceAccountName"] == "aads-monitoring-drift"
    account = named(docs, "ServiceAccount", "aads-monitoring-drift")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("drift")
    assert "secrets" not in account  # it reads its keys from the environment, not KServe's way
    assert [j["metadata"]["name"] for j in by_kind(docs, "CronJob")] == ["aads-drift-tomato"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] == "8Gi"


def test_drift_checks_need_no_prometheus_and_no_crop_means_no_job():
    docs = scenario("minimal", monitoring={"drift": {"enabled": True}})
    assert [j["metadata"]["name"] for j in by_kind(docs, "CronJob")] == ["aads-drift-tomato"]
    assert not [d for d in docs if d["kind"] in PROMETHEUS_KINDS]
    assert by_kind(render({"monitoring": {"drift": {"enabled": True}}}), "CronJob") == []


def test_the_notes_say_how_a_drift_finding_reaches_an_alert():
    text = Chart.load(CHART).render(
        load_scenario(CHART / "ci" / "monitoring.yaml"), name="aads", namespace="aads"
    )["aads/templates/NOTES.txt"]
    assert "Exit 4 (significant drift) fails the Job" in text
    assert 'kube_job_failed{job_name=~"aads-drift-.+"}' in text
    assert "monitoring.labels" in text


def test_values_yaml_documents_monitoring_off_by_default():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["monitoring"]["enabled"] is False
    assert values["monitoring"]["drift"]["enabled"] is False
