"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) for every CI scenario, and
every object validated: core kinds with kubernetes-validate (strict), KServe kinds against the
CRD schemas in ../shared/crds/kserve."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, HelmError, lint

from aads.chart import CUSTOM_KINDS, KSERVE_KINDS, KUBE_VERSION, ChartError, crd_validators
from aads.config import parse_config_text
from aads.telemetry import VARIANT_ENV
from tests.charts import (
    CHART,
    CRDS,
    SCENARIOS,
    by_kind,
    containers_of,
    load_scenario,
    named,
    pod_specs,
    render,
    scenario,
    spec_of,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # Helm's engine renders the chart in every test


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_core_object_is_valid_kubernetes(scenario):
    for doc in render(load_scenario(scenario)):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.skipif(not CRDS.is_dir(), reason=f"KServe CRD schemas not found at {CRDS}")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_kserve_object_matches_its_crd_schema(scenario):
    validators = crd_validators(CRDS)
    checked = 0
    for doc in render(load_scenario(scenario)):
        if doc["kind"] in KSERVE_KINDS:
            validators[f"{doc['apiVersion']}/{doc['kind']}"].validate(doc)
            checked += 1
    if scenario.stem != "platform-only":
        assert checked >= 3  # runtime, router, at least one adapter service


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_helm_lint_passes(scenario):
    result = lint(CHART, load_scenario(scenario), strict=True, kube_version=KUBE_VERSION)
    assert result["errors"] == [], result


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"adapters": {"mode": "triple"}}, "mode"),
        ({"router": {"storageUri": "ftp://x"}}, "storageUri"),
        ({"adapters": {"crops": {"Tomato_Big": {"storageUri": "s3://a/b"}}}}, "Tomato_Big"),
        ({"adapters": {"crops": {"corn-maize": {"storageUri": "s3://a/b"}}}}, "corn-maize"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"router": {"serviceAccount": {"create": True, "role": "x"}}}, "role"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(values, field):
    with pytest.raises(HelmError, match=field):
        Chart.load(CHART).render(values, name="aads", namespace="aads")


def test_router_knows_every_crops_predictor_url():
    docs = scenario("gpu-multi-crop")
    (config_map,) = by_kind(docs, "ConfigMap")
    spec = parse_config_text(config_map["data"]["spec.yaml"], "chart ConfigMap")
    services = {d["metadata"]["name"] for d in by_kind(docs, "InferenceService")}
    assert set(spec.serving.predictor_urls) == {"tomato", "pepper", "corn"}
    for crop, url in spec.serving.predictor_urls.items():
        assert url == f"http://aads-{crop}-predictor.aads" and f"aads-{crop}" in services


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
    assert spec["registry"]["tracking_uri"] == "http://aads-mlflow.aads.svc:5000"
    assert spec["registry"]["artifact_store"] == "s3://aads/mlflow"
    args = named(docs, "Deployment", "aads-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--artifacts-destination=s3://aads/mlflow" in args["args"]
    env = {e["name"]: e for e in args["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("sqlite:////var/lib/mlflow/")
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://aads-minio.aads.svc:9000"


def test_in_chart_minio_keys_are_generated_at_install_never_taken_from_values():
    (secret,) = by_kind(render(), "Secret")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    other = by_kind(render(), "Secret")[0]
    assert other["data"] != secret["data"]  # random per install; upgrades keep the first


def test_every_pod_of_one_render_reads_the_same_generated_keys():
    def checksums(docs: list[dict]) -> set[str]:
        return {
            d["spec"]["template"]["metadata"]["annotations"]["checksum/s3-secret"]
            for d in by_kind(docs, "Deployment")
        }

    first, second = checksums(render()), checksums(render())
    assert len(first) == 1 and len(second) == 1 and first != second


def test_gitops_renders_are_byte_identical_because_keys_come_from_an_existing_secret():
    values = load_scenario(CHART / "ci" / "gitops-platform.yaml")
    first = Chart.load(CHART).render(values, name="aads", namespace="aads")
    assert Chart.load(CHART).render(values, name="aads", namespace="aads") == first
    assert not any(
        d["kind"] == "Secret" and "AWS_ACCESS_KEY_ID" in d.get("data", {}) for d in render(values)
    )


def test_template_renders_without_an_existing_secret_are_refused_when_keys_are_not_generated():
    with pytest.raises(ChartError, match="objectStore.existingSecret is empty"):
        render({"objectStore": {"generateKeys": False}})


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
    assert spec["registry"]["tracking_uri"] == "https://mlflow.example.com"
    assert "artifact_store" not in spec["registry"]
    for name in ("aads-router", "aads-adapters"):
        assert named(docs, "ServiceAccount", name)["secrets"] == [{"name": "aads-s3-keys"}]


def test_the_kfp_upload_job_publishes_this_release_with_a_pipelines_token():
    (job,) = [
        j for j in by_kind(scenario("external-stores"), "Job") if "kfp" in j["metadata"]["name"]
    ]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["aads", "pipeline", "upload"]
    assert container["args"] == [
        "--host=http://ml-pipeline.kubeflow.svc.cluster.local:8888",
        "--cluster=/etc/aads-cluster/cluster.yaml",  # the chart's own config/cluster.yaml
        "--spec=/etc/aads/spec.yaml",  # the release's spec: its crops are the default
        "--namespace=agri-ml",
    ]  # no --version-name: the Job uses the one naming scheme of `aads pipeline upload`
    (token,) = [v for v in pod["volumes"] if v["name"] == "kfp-token"]
    (source,) = token["projected"]["sources"]
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
    assert canary["spec"]["predictor"]["model"]["env"] == [{"name": VARIANT_ENV, "value": "canary"}]
    assert "env" not in stable["spec"]["predictor"]["model"]  # the champion's stage timings
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
    # the new revision (the canary) labels its stage timings canary; the old one did not
    assert predictor["model"]["env"] == [{"name": VARIANT_ENV, "value": "canary"}]
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
    account = named(docs, "ServiceAccount", "aads-adapters")
    assert account["secrets"] == [{"name": "aads-s3"}]
    external = by_kind(
        render({"objectStore": {"endpoint": "s3.example.com", "useHttps": True}}), "Secret"
    )[0]
    assert external["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "s3.example.com"
    assert external["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "1"
    assert "data" not in external and "stringData" not in external  # keys never come from values


def test_gpus_are_requested_only_when_asked():
    gpu = scenario("gpu-multi-crop")
    cpu = scenario("minimal")
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
    assert Path(CHART / "templates" / "tests" / "test-release.yaml").is_file()


def test_only_the_router_may_call_the_adapter_predictors():
    docs = scenario("gpu-multi-crop")
    policy = named(docs, "NetworkPolicy", "aads-adapters")
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert sorted(selector["values"]) == ["aads-corn", "aads-pepper", "aads-tomato"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": "aads-router"}}}
    ]


def test_every_inference_service_has_a_disruption_budget():
    docs = scenario("gpu-multi-crop")
    budgets = {d["metadata"]["name"] for d in by_kind(docs, "PodDisruptionBudget")}
    assert budgets == {d["metadata"]["name"] for d in by_kind(docs, "InferenceService")}


# --------------------------------------------------------------------------- a healthy default


def notes(values: dict | None = None) -> str:
    return Chart.load(CHART).render(values or {}, name="aads", namespace="aads")[
        "aads/templates/NOTES.txt"
    ]


def test_a_default_install_creates_no_inference_service_for_a_model_that_does_not_exist():
    docs = render()
    assert by_kind(docs, "InferenceService") == [] and by_kind(docs, "ServingRuntime") == []
    assert by_kind(docs, "PodDisruptionBudget") == []
    assert "aads-adapters" not in {d["metadata"]["name"] for d in by_kind(docs, "NetworkPolicy")}
    assert spec_of(docs)["serving"]["predictor_urls"] == {}


def test_an_empty_crops_map_keeps_no_phantom_crop():
    docs = render({"adapters": {"crops": {}}, "router": {"storageUri": "s3://aads/router/v1"}})
    assert [d["metadata"]["name"] for d in by_kind(docs, "InferenceService")] == ["aads-router"]


def test_the_notes_say_what_to_do_when_no_model_is_pinned():
    text = notes()
    assert "No model is pinned yet" in text and "aads promote --crop" in text
    assert "router.storageUri" in text
    pinned = notes(load_scenario(CHART / "ci" / "minimal.yaml"))
    assert "No model is pinned" not in pinned and "Serving tomato" in pinned


def test_a_values_file_removes_everything_the_defaults_add():
    nothing = {
        "objectStore": {"endpoint": "s3.example.com", "existingSecret": "mine"},
        "minio": {"enabled": False},
        "mlflow": {"enabled": False},
        "router": {"enabled": False, "storageUri": "s3://aads/router/v1"},
        "jobs": {"serviceAccount": {"create": False}},
        "tests": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
    }
    docs = render(nothing)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("ConfigMap", "aads-spec")]


def test_router_enabled_false_removes_the_router_even_with_a_model():
    docs = scenario("minimal", router={"enabled": False})
    for kind in ("InferenceService", "PodDisruptionBudget", "ServiceAccount"):
        assert "aads-router" not in {d["metadata"]["name"] for d in by_kind(docs, kind)}, kind


def test_helm_test_checks_what_the_release_deployed():
    (platform,) = by_kind(render(), "Pod")
    assert platform["spec"]["containers"][0]["args"] == [
        "minio=http://aads-minio.aads.svc:9000/minio/health/ready",
        "mlflow=http://aads-mlflow.aads.svc:5000/health",
    ]
    (serving,) = by_kind(scenario("external-stores"), "Pod")
    (container,) = serving["spec"]["containers"]
    assert container["args"] == ["router=http://aads-router-predictor.aads"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert serving["metadata"]["annotations"]["helm.sh/hook"] == "test"


# --------------------------------------------------------------------------- config reaches pods


def pod_annotations(docs: list[dict], name: str) -> dict:
    return named(docs, "InferenceService", name)["spec"]["predictor"]["annotations"]


def test_a_canary_promotion_rolls_the_router_but_not_the_other_crops_predictors():
    values = load_scenario(CHART / "ci" / "canary.yaml")
    after = render(values)
    del values["adapters"]["crops"]["tomato"]["canary"]
    before = render(values)
    assert (
        pod_annotations(before, "aads-router")["checksum/spec"]
        != pod_annotations(after, "aads-router")["checksum/spec"]
    )
    corn = [pod_annotations(docs, "aads-corn")["checksum/spec"] for docs in (before, after)]
    assert corn[0] == corn[1]


def test_a_serving_setting_rolls_every_pod_that_reads_the_spec():
    before = scenario("scouting")
    after = scenario("scouting", spec={"serving": {"max_batch_size": 4}})
    for name in ("aads-router", "aads-tomato", "aads-scouting"):
        assert (
            pod_annotations(before, name)["checksum/spec"]
            != pod_annotations(after, name)["checksum/spec"]
        ), name


def test_the_spec_is_mounted_as_a_volume_folder_never_with_subpath():
    docs = scenario("scouting")
    containers = [
        c
        for name, c in containers_of(docs).items()
        if not name.startswith(("aads-minio", "aads-mlflow", "aads-test"))
    ]
    assert len(containers) == 3  # router, scouting, the adapter runtime
    for container in containers:
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "spec"]
        assert mount == {"name": "spec", "mountPath": "/etc/aads", "readOnly": True}
        assert "--spec=/etc/aads/spec.yaml" in container["args"] or (
            "/etc/aads/spec.yaml" in container["args"]
        )


# --------------------------------------------------------------------------- per-workload settings


@pytest.mark.parametrize("scenario_name", ["scouting", "gitops-platform", "canary"])
def test_every_long_running_container_has_liveness_and_readiness_probes(scenario_name):
    docs = scenario(scenario_name)
    run_once = {d["metadata"]["name"] for d in docs if d["kind"] in ("Job", "Pod")}
    checked = 0
    for name, container in containers_of(docs).items():
        if name.split("/")[0] in run_once:
            continue
        assert "livenessProbe" in container and "readinessProbe" in container, name
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("scenario_name", [p.stem for p in SCENARIOS])
def test_every_container_has_a_read_only_root_and_resources(scenario_name):
    for name, container in containers_of(scenario(scenario_name)).items():
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        if "ServingRuntime" not in name and not name.startswith("aads-adapter/"):
            assert container.get("resources", {}).get("requests"), name


@pytest.mark.parametrize("scenario_name", [p.stem for p in SCENARIOS])
def test_no_pod_mounts_a_kubernetes_api_token(scenario_name):
    docs = scenario(scenario_name)
    for name, pod in pod_specs(docs).items():
        assert pod["automountServiceAccountToken"] is False, name
    for account in by_kind(docs, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_every_workloads_pod_settings_reach_its_pods():
    docs = scenario("gitops-platform")
    pods = pod_specs(docs)
    router = named(docs, "InferenceService", "aads-router")["spec"]["predictor"]
    assert router["priorityClassName"] == "aads-serving"
    assert router["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert router["labels"]["team"] == "agronomy"
    assert router["annotations"]["prometheus.io/scrape"] == "true"
    assert router["serviceAccountName"] == "aads-router"
    account = named(docs, "ServiceAccount", "aads-router")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("aads-router")
    assert "nodeAffinity" in pods["aads-corn-maize"]["affinity"]
    assert pods["aads-minio"]["serviceAccountName"] == "default"
    assert "aads-minio" not in {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    assert pods["aads-minio"]["tolerations"][0]["key"] == "storage"
    assert pods["aads-mlflow"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mlflow-pull"}]
    assert pods["aads-kfp-upload"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pods["aads-test"]["priorityClassName"] == "aads-tests"
    for name, pod in pods.items():
        assert {"name": "regcred"} in pod["imagePullSecrets"], name


@pytest.mark.parametrize("scenario_name", [p.stem for p in SCENARIOS])
def test_every_object_names_its_namespace(scenario_name):
    for doc in scenario(scenario_name):
        assert doc["metadata"].get("namespace"), f"{doc['kind']} {doc['metadata']['name']}"


def test_a_crop_named_with_an_underscore_gets_dns_safe_objects_and_keeps_its_name():
    docs = scenario("gitops-platform")
    isvc = named(docs, "InferenceService", "aads-corn-maize")
    assert isvc["metadata"]["annotations"]["aads.io/crop"] == "corn_maize"
    urls = spec_of(docs)["serving"]["predictor_urls"]
    assert urls == {"corn_maize": "http://aads-corn-maize-predictor.aads"}


def test_an_image_digest_replaces_the_tag():
    digest = "sha256:" + "a" * 64
    docs = scenario("minimal", image={"digest": digest})
    router = named(docs, "InferenceService", "aads-router")["spec"]["predictor"]
    assert router["containers"][0]["image"] == f"ghcr.io/aads-platform/aads-serving@{digest}"


def test_chart_metadata_is_complete_for_artifact_hub():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["home"].startswith("https://") and meta["sources"] and meta["icon"]
    assert meta["maintainers"][0]["name"]
    notes_ = meta["annotations"]
    assert notes_["artifacthub.io/license"] == "Apache-2.0"
    images = yaml.safe_load(notes_["artifacthub.io/images"])
    registry = yaml.safe_load((ROOT / "config" / "cluster.yaml").read_text())["registry"]
    assert images[0]["image"] == f"{registry}/aads-serving:{meta['appVersion']}"
    assert images[1]["image"] == f"{registry}/aads-components:{meta['appVersion']}"
    icon = ROOT / "docs" / "images" / "aads-icon.svg"
    assert icon.is_file() and meta["icon"].endswith("docs/images/aads-icon.svg")
