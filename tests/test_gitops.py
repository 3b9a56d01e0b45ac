"""The GitOps layout: every kustomize overlay builds, every environment's values with its
model pins render into valid objects, and each Argo CD Application points at files that exist."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from aads.chart import environment_values, render, validate
from tests.charts import CHART, CRDS
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # kustomize builds and Helm renders

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
    docs = render(CHART, environment_values(ROOT, env), namespace=f"aads-{env}")
    validate(docs, CRDS)
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "InferenceService"}
    pins = sorted((MANIFESTS / "environments" / env / "pins").glob("*.yaml"))
    assert "aads-router" in services
    assert len(services) == 1 + len(pins)  # an adapter only for a pinned crop, no phantom
