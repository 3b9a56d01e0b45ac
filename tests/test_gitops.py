"""The GitOps layout: every kustomize overlay builds, every environment's values with its
model pins render into valid objects, and each Argo CD Application points at files that exist."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from helm_python import Chart

from tests.conftest import ROOT
from tests.test_chart import CHART, KSERVE_KINDS, KUBE_VERSION, crd_schemas

MANIFESTS = ROOT / "manifests"
ENVIRONMENTS = sorted(p.name for p in (MANIFESTS / "environments").iterdir())
OVERLAYS = sorted((MANIFESTS / "overlays").iterdir())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_every_overlay_builds_with_kubectl_kustomize(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds == ["Pipeline", "PipelineVersion"]


def environment_values(env: str) -> dict:
    """The environment's values merged with every pin, as Argo CD's valueFiles do (in order)."""
    (app,) = [
        d
        for d in yaml.safe_load_all((MANIFESTS / "argocd" / f"{env}.yaml").read_text())
        if d["metadata"]["name"] == f"aads-serving-{env}"
    ]
    merged: dict = {}
    for rel in app["spec"]["source"]["helm"]["valueFiles"]:
        merged = deep_merge(merged, yaml.safe_load((CHART / rel).resolve().read_text()))
    return merged


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_argocd_lists_the_environment_values_and_every_pin(env):
    (app,) = [
        d
        for d in yaml.safe_load_all((MANIFESTS / "argocd" / f"{env}.yaml").read_text())
        if d["metadata"]["name"] == f"aads-serving-{env}"
    ]
    listed = {(CHART / rel).resolve() for rel in app["spec"]["source"]["helm"]["valueFiles"]}
    pins = set((MANIFESTS / "environments" / env / "pins").glob("*.yaml"))
    assert {p.resolve() for p in pins} <= listed
    assert (MANIFESTS / "environments" / env / "values.yaml").resolve() in listed


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_renders_into_valid_objects(env):
    import jsonschema
    import kubernetes_validate

    out = Chart.load(CHART).render(environment_values(env), name="aads", namespace=f"aads-{env}")
    docs = [
        d
        for name, t in out.items()
        if not name.endswith(".txt")
        for d in yaml.safe_load_all(t)
        if d
    ]
    schemas = crd_schemas() if (ROOT.parent / "shared" / "crds" / "kserve").is_dir() else {}
    for doc in docs:
        if doc["kind"] in KSERVE_KINDS:
            if schemas:
                jsonschema.validate(doc, schemas[f"{doc['apiVersion']}/{doc['kind']}"])
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    pinned = {d["metadata"].get("labels", {}).get("aads.io/crop") for d in docs}
    assert "tomato" in pinned or env == "staging"  # staging serves all crops from one predictor
