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


def scenario(name: str) -> list[dict]:
    return render(yaml.safe_load((CHART / "ci" / f"{name}.yaml").read_text()))


def spec_of(docs: list[dict]) -> dict:
    (config_map,) = by_kind(docs, "ConfigMap")
    return yaml.safe_load(config_map["data"]["spec.yaml"])


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def test_multi_adapter_mode_is_one_predictor_mounting_each_crops_pinned_package():
    docs = scenario("multi-adapter")
    adapters = [
        d for d in by_kind(docs, "InferenceService") if d["metadata"]["name"] != "aads-router"
    ]
    assert [d["metadata"]["name"] for d in adapters] == ["aads-adapters"]
    mounts = {m["mountPath"]: m["uri"] for m in adapters[0]["spec"]["predictor"]["storageUris"]}
    assert mounts == {
        "/mnt/models/tomato": "s3://aads/models/adapters/tomato/v4",
        "/mnt/models/corn": "s3://aads/models/adapters/corn/v2",
    }
    urls = spec_of(docs)["serving"]["predictor_urls"]
    assert set(urls.values()) == {"http://aads-adapters-predictor.aads"}


def test_default_install_brings_its_own_minio_and_mlflow_and_points_everything_at_them():
    docs = render()
    assert {d["metadata"]["name"] for d in by_kind(docs, "Deployment")} == {
        "aads-minio",
        "aads-mlflow",
    }
    spec = spec_of(docs)
    assert spec["storage"]["endpoint"] == "aads-minio.aads.svc:9000"
    assert spec["registry"] == {
        "tracking_uri": "http://aads-mlflow.aads.svc:5000",
        "artifact_store": "s3://aads/mlflow",
    }
    args = named(docs, "Deployment", "aads-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--artifacts-destination=s3://aads/mlflow" in args["args"]
    env = {e["name"]: e for e in args["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("sqlite:////var/lib/mlflow/")
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://aads-minio.aads.svc:9000"


def test_in_chart_minio_keys_are_generated_never_taken_from_values():
    (secret,) = by_kind(render(), "Secret")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    other = by_kind(render(), "Secret")[0]
    assert other["data"] != secret["data"]  # random per install; upgrades keep the first


def test_external_stores_install_neither_minio_nor_mlflow():
    docs = scenario("external-stores")
    assert by_kind(docs, "Deployment") == [] and by_kind(docs, "PersistentVolumeClaim") == []
    assert by_kind(docs, "Secret") == []  # existingSecret
    spec = spec_of(docs)
    assert spec["storage"] == {
        "endpoint": "s3.eu-central-1.amazonaws.com",
        "secure": True,
        "region": "eu-central-1",
        "bucket": "agri-models",
    }
    assert spec["registry"] == {"tracking_uri": "https://mlflow.example.com"}
    (account,) = by_kind(docs, "ServiceAccount")
    assert account["secrets"] == [{"name": "aads-s3-keys"}]


def test_the_kfp_upload_job_publishes_this_release_with_a_pipelines_token():
    (job,) = [
        j for j in by_kind(scenario("external-stores"), "Job") if "kfp" in j["metadata"]["name"]
    ]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["aads", "pipeline", "upload"]
    assert (
        "--version-name=aads-0.1.0" in container["args"]
        and "--namespace=agri-ml" in container["args"]
    )
    (source,) = pod["volumes"][0]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


def test_a_standard_mode_canary_is_a_second_service_the_router_splits_to():
    docs = scenario("canary")
    canary = named(docs, "InferenceService", "aads-tomato-canary")
    assert (
        canary["spec"]["predictor"]["model"]["storageUri"] == "s3://aads/models/adapters/tomato/v8"
    )
    assert canary["metadata"]["labels"]["aads.io/model-version"] == "8"
    stable = named(docs, "InferenceService", "aads-tomato")
    assert stable["spec"]["predictor"]["model"]["storageUri"].endswith("/tomato/v7")
    canaries = spec_of(docs)["serving"]["canaries"]
    assert canaries == {
        "tomato": {"url": "http://aads-tomato-canary-predictor.aads", "percent": 10, "version": "8"}
    }
    policy = named(docs, "NetworkPolicy", "aads-adapters")
    assert "aads-tomato-canary" in policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert "aads-tomato-canary" in {
        d["metadata"]["name"] for d in by_kind(docs, "PodDisruptionBudget")
    }


def test_a_knative_canary_uses_kserves_own_traffic_split():
    docs = scenario("canary-knative")
    names = {d["metadata"]["name"] for d in by_kind(docs, "InferenceService")}
    assert names == {"aads-router", "aads-tomato"}
    predictor = named(docs, "InferenceService", "aads-tomato")["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 25
    assert predictor["model"]["storageUri"].endswith("/tomato/v8")
    assert spec_of(docs)["serving"]["canaries"] == {}


def test_the_scouting_service_is_its_own_gpu_inference_service_the_router_knows():
    docs = scenario("scouting")
    isvc = named(docs, "InferenceService", "aads-scouting")
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["command"] == ["python", "-m", "serving.scouting"]
    assert "--router-url=http://aads-router-predictor.aads" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    spec = parse_config_text(yaml.safe_dump(spec_of(docs)), "chart ConfigMap")
    assert spec.serving.scouting_url == "http://aads-scouting-predictor.aads"
    assert spec.scouting is not None and spec.scouting.sam2.source.startswith("s3://")
    policy = named(docs, "NetworkPolicy", "aads-adapters")
    assert "aads-scouting" in policy["spec"]["podSelector"]["matchExpressions"][0]["values"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mlflow": {"backend": "postgresql"}}, "mlflow.postgresql.existingSecret"),
        ({"minio": {"enabled": False}}, "objectStore.endpoint is empty"),
        ({"scouting": {"enabled": True}}, "spec.scouting is not set"),
        (
            {
                "adapters": {
                    "crops": {
                        "tomato": {
                            "storageUri": "s3://a/b",
                            "canary": {"storageUri": "s3://a/c", "trafficPercent": 100},
                        }
                    }
                }
            },
            "trafficPercent",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(values, message):
    with pytest.raises(HelmError, match=message):
        Chart.load(CHART).render(values, name="aads", namespace="aads")


def test_object_store_secret_carries_kserve_s3_annotations():
    docs = scenario("gpu-multi-crop")
    (secret,) = by_kind(docs, "Secret")
    notes = secret["metadata"]["annotations"]
    assert notes["serving.kserve.io/s3-endpoint"] == "aads-minio.aads.svc:9000"
    assert notes["serving.kserve.io/s3-usehttps"] == "0"
    (account,) = by_kind(docs, "ServiceAccount")
    assert account["secrets"] == [{"name": "aads-s3"}]
    external = by_kind(
        render({"objectStore": {"endpoint": "s3.example.com", "useHttps": True}}), "Secret"
    )[0]
    assert external["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "s3.example.com"
    assert external["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "1"
    assert "data" not in external and "stringData" not in external  # keys never come from values


def test_gpus_are_requested_only_when_asked():
    gpu = render(yaml.safe_load((CHART / "ci" / "gpu-multi-crop.yaml").read_text()))
    cpu = render(yaml.safe_load((CHART / "ci" / "minimal.yaml").read_text()))
    for docs, expected in ((gpu, 1), (cpu, None)):
        for isvc in by_kind(docs, "InferenceService"):
            if isvc["metadata"]["name"] == "aads-router":
                continue
            limits = isvc["spec"]["predictor"]["model"]["resources"]["limits"]
            assert limits.get("nvidia.com/gpu") == expected


@pytest.mark.parametrize("scenario_name", ["minimal", "canary", "external-stores"])
def test_every_pod_runs_as_non_root(scenario_name):
    pods = 0
    for doc in scenario(scenario_name):
        spec = doc.get("spec", {})
        pod = (
            spec.get("predictor")
            or spec.get("template", {}).get("spec")
            or (spec if doc["kind"] == "Pod" else None)
        )
        if pod is not None:
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
            pods += 1
    assert pods >= 3


def test_chart_paths_exist():
    assert (CHART / "Chart.yaml").is_file() and (CHART / "values.schema.json").is_file()
    assert Path(CHART / "templates" / "tests" / "test-inference.yaml").is_file()


def test_only_the_router_may_call_the_adapter_predictors():
    docs = render(yaml.safe_load((CHART / "ci" / "gpu-multi-crop.yaml").read_text()))
    policy = named(docs, "NetworkPolicy", "aads-adapters")
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
