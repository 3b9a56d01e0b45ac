"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) for every CI scenario, and
every object validated: core kinds with kubernetes-validate (strict), KServe kinds against the
CRD schemas in ../shared/crds/kserve."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, HelmError, lint

from aads import chart
from aads.chart import KSERVE_KINDS, KUBE_VERSION, crd_schemas
from aads.config import parse_config_text
from tests.conftest import ROOT

CHART = ROOT / "charts"
SCENARIOS = sorted((CHART / "ci").glob("*.yaml"))
CRDS = ROOT.parent / "shared" / "crds" / "kserve"


def render(values: dict | None = None) -> list[dict]:
    return chart.render(CHART, values or {}, namespace="aads")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_core_object_is_valid_kubernetes(scenario):
    for doc in render(yaml.safe_load(scenario.read_text())):
        if doc["kind"] not in KSERVE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.skipif(not CRDS.is_dir(), reason=f"KServe CRD schemas not found at {CRDS}")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_kserve_object_matches_its_crd_schema(scenario):
    schemas = crd_schemas(CRDS)
    checked = 0
    for doc in render(yaml.safe_load(scenario.read_text())):
        if doc["kind"] in KSERVE_KINDS:
            schema = schemas[f"{doc['apiVersion']}/{doc['kind']}"]
            jsonschema.validate(doc, schema)
            checked += 1
    assert checked >= 3  # runtime, router, at least one adapter service


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_helm_lint_passes(scenario):
    result = lint(
        CHART, yaml.safe_load(scenario.read_text()), strict=True, kube_version=KUBE_VERSION
    )
    assert result["errors"] == [], result


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"adapters": {"mode": "triple"}}, "mode"),
        ({"router": {"storageUri": "ftp://x"}}, "storageUri"),
        ({"adapters": {"crops": {"Tomato_Big": {"storageUri": "s3://a/b"}}}}, "Tomato_Big"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(values, field):
    with pytest.raises(HelmError, match=field):
        Chart.load(CHART).render(values, name="aads", namespace="aads")


def test_router_knows_every_crops_predictor_url():
    docs = render(yaml.safe_load((CHART / "ci" / "gpu-multi-crop.yaml").read_text()))
    (config_map,) = by_kind(docs, "ConfigMap")
    spec = parse_config_text(config_map["data"]["spec.yaml"], "chart ConfigMap")
    services = {d["metadata"]["name"] for d in by_kind(docs, "InferenceService")}
    assert set(spec.serving.predictor_urls) == {"tomato", "pepper", "corn"}
    for crop, url in spec.serving.predictor_urls.items():
        assert url == f"http://aads-{crop}-predictor.aads" and f"aads-{crop}" in services


def test_multi_adapter_mode_is_one_predictor_for_every_crop():
    docs = render(yaml.safe_load((CHART / "ci" / "multi-adapter.yaml").read_text()))
    adapters = [
        d for d in by_kind(docs, "InferenceService") if d["metadata"]["name"] != "aads-router"
    ]
    assert [d["metadata"]["name"] for d in adapters] == ["aads-adapters"]
    (config_map,) = by_kind(docs, "ConfigMap")
    urls = yaml.safe_load(config_map["data"]["spec.yaml"])["serving"]["predictor_urls"]
    assert set(urls.values()) == {"http://aads-adapters-predictor.aads"}


def test_object_store_secret_carries_kserve_s3_annotations():
    docs = render()
    (secret,) = by_kind(docs, "Secret")
    notes = secret["metadata"]["annotations"]
    assert notes["serving.kserve.io/s3-endpoint"] == "minio.aads.svc:9000"
    assert notes["serving.kserve.io/s3-usehttps"] == "0"
    assert "data" not in secret and "stringData" not in secret  # keys never come from values
    (account,) = by_kind(docs, "ServiceAccount")
    assert account["secrets"] == [{"name": "aads-s3"}]


def test_gpus_are_requested_only_when_asked():
    gpu = render(yaml.safe_load((CHART / "ci" / "gpu-multi-crop.yaml").read_text()))
    cpu = render(yaml.safe_load((CHART / "ci" / "minimal.yaml").read_text()))
    for docs, expected in ((gpu, 1), (cpu, None)):
        for isvc in by_kind(docs, "InferenceService"):
            if isvc["metadata"]["name"] == "aads-router":
                continue
            limits = isvc["spec"]["predictor"]["model"]["resources"]["limits"]
            assert limits.get("nvidia.com/gpu") == expected


def test_every_pod_runs_as_non_root():
    for doc in render(yaml.safe_load((CHART / "ci" / "minimal.yaml").read_text())):
        pod = doc.get("spec", {}).get("predictor") or (
            doc["spec"] if doc["kind"] == "Pod" else None
        )
        if pod is not None:
            assert pod["securityContext"]["runAsNonRoot"] is True


def test_chart_paths_exist():
    assert (CHART / "Chart.yaml").is_file() and (CHART / "values.schema.json").is_file()
    assert Path(CHART / "templates" / "tests" / "test-inference.yaml").is_file()


def test_only_the_router_may_call_the_adapter_predictors():
    docs = render(yaml.safe_load((CHART / "ci" / "gpu-multi-crop.yaml").read_text()))
    (policy,) = by_kind(docs, "NetworkPolicy")
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert sorted(selector["values"]) == ["aads-corn", "aads-pepper", "aads-tomato"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": "aads-router"}}}
    ]


def test_every_inference_service_has_a_disruption_budget():
    docs = render(yaml.safe_load((CHART / "ci" / "gpu-multi-crop.yaml").read_text()))
    budgets = {d["metadata"]["name"] for d in by_kind(docs, "PodDisruptionBudget")}
    assert budgets == {d["metadata"]["name"] for d in by_kind(docs, "InferenceService")}
