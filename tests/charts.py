"""The Helm chart as the tests render it: where it is, its CI value scenarios, the KServe CRD
schemas, and small readers of a render (objects by kind or name, pod specs, containers).
Shared by the chart, monitoring, policy, contract and GitOps tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from aads import chart
from tests.conftest import ROOT

CHART = ROOT / "charts"
SCENARIOS = sorted((CHART / "ci").glob("*.yaml"))
CRDS = ROOT.parent / "shared" / "crds" / "kserve"


def render(values: dict | None = None) -> list[dict]:
    return chart.render(CHART, values or {}, namespace="aads")


def load_scenario(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def scenario(name: str, **overrides) -> list[dict]:
    return render(chart.deep_merge(load_scenario(CHART / "ci" / f"{name}.yaml"), overrides))


def spec_of(docs: list[dict]) -> dict:
    config_map = named(docs, "ConfigMap", "aads-spec")
    return yaml.safe_load(config_map["data"]["spec.yaml"])


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """{object name: its pod-level spec} for every workload that makes pods."""
    pods = {}
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "InferenceService":
            pods[d["metadata"]["name"]] = spec["predictor"]
        elif d["kind"] in ("Deployment", "Job"):
            pods[d["metadata"]["name"]] = spec["template"]["spec"]
        elif d["kind"] == "CronJob":
            pods[d["metadata"]["name"]] = spec["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            pods[d["metadata"]["name"]] = spec
    return pods


def containers_of(docs: list[dict]) -> dict[str, dict]:
    out = {}
    for d in docs:
        if d["kind"] == "ServingRuntime":
            for c in d["spec"]["containers"]:
                out[f"{d['metadata']['name']}/{c['name']}"] = c
    for name, pod in pod_specs(docs).items():
        for c in pod.get("containers", []):
            out[f"{name}/{c['name']}"] = c
    return out
