"""One contract for names and secrets across the chart, the pipeline, the configs and GitOps.

The chart is rendered (Helm's engine) as the platform release that creates the pipeline's
Secrets (kfp.createSecrets); the compiled pipeline, a TrainJob, config/production.yaml and every
GitOps environment's values are read; every Secret, Secret key, ConfigMap and Service any of
them refers to must be rendered, or declared external (an ``existingSecret`` value, a host
outside the cluster). The negative tests show the check fails for each kind of break."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
import yaml

from aads.chart import environment_values, render
from aads.cluster import load_cluster
from aads.config import load_config
from aads.trainjob import TrainJobSpec, render_trainjob
from pipelines.compile import PIPELINE_YAML
from tests.charts import CHART
from tests.conftest import ROOT

RELEASE_NS = "aads"
PLATFORM_VALUES = {"kfp": {"createSecrets": True, "uploadPipeline": True}}


@dataclass(frozen=True)
class Ref:
    """Something a consumer needs: kind Secret/ConfigMap/Service, where, which key or port."""

    kind: str
    namespace: str
    name: str
    key: str = ""
    by: str = ""


class Rendered:
    """What a render created: names per kind and namespace, Secret keys, Service ports."""

    def __init__(self, docs: list[dict]) -> None:
        self.objects = {
            (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs
        }
        self.keys = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): set(d.get("data") or {})
            | set(d.get("stringData") or {})
            for d in docs
            if d["kind"] in ("Secret", "ConfigMap")
        }
        self.ports = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): {
                str(p["port"]) for p in d["spec"]["ports"]
            }
            for d in docs
            if d["kind"] == "Service"
        }

    def missing(self, refs: list[Ref], external: set[str]) -> list[Ref]:
        out = []
        for ref in refs:
            if ref.kind == "Secret" and ref.name in external:
                continue
            if (ref.kind, ref.namespace, ref.name) not in self.objects:
                out.append(ref)
            elif ref.kind == "Service" and ref.key not in self.ports[(ref.namespace, ref.name)]:
                out.append(ref)
            elif ref.kind in ("Secret", "ConfigMap") and ref.key:
                if ref.key not in self.keys[(ref.namespace, ref.name)]:
                    out.append(ref)
        return out


def external_secrets(values: dict) -> set[str]:
    """Secrets the values declare as made outside the chart."""
    return {
        name
        for name in (
            values.get("objectStore", {}).get("existingSecret"),
            values.get("mlflow", {}).get("postgresql", {}).get("existingSecret"),
        )
        if name
    }


def service_ref(address: str, by: str) -> Ref | None:
    """A Service an address names (``name.ns.svc[.cluster.local][:port]``), or None for a host
    outside the cluster."""
    parsed = urlparse(address if "://" in address else f"//{address}")
    host, port = (
        parsed.hostname or "",
        str(parsed.port or (443 if parsed.scheme == "https" else 80)),
    )
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return Ref("Service", parts[1], parts[0], port, by)
    return None


def pod_refs(docs: list[dict]) -> list[Ref]:
    """Secrets, keys and ConfigMaps the rendered workloads read."""
    refs = []
    for d in docs:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        spec = d.get("spec", {})
        spec = spec.get("jobTemplate", {}).get("spec", spec)  # a CronJob's pods
        pod = spec.get("predictor") or spec.get("template", {}).get("spec") or spec
        if d["kind"] == "ServiceAccount":
            refs += [
                Ref("Secret", ns, s["name"], by=f"ServiceAccount {name}")
                for s in d.get("secrets", [])
            ]
        for container in pod.get("containers", []) if isinstance(pod, dict) else []:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append(Ref("Secret", ns, ref["name"], ref["key"], f"{d['kind']} {name}"))
        for volume in pod.get("volumes", []) if isinstance(pod, dict) else []:
            if "configMap" in volume:
                refs.append(
                    Ref("ConfigMap", ns, volume["configMap"]["name"], by=f"{d['kind']} {name}")
                )
    return refs


def pipeline_refs(namespace: str) -> list[Ref]:
    """Secrets, keys and ConfigMaps the compiled pipeline's steps read, in KFP's namespace."""
    platform = list(yaml.safe_load_all(PIPELINE_YAML.read_text()))[1]
    refs = []
    for step, executor in platform["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ].items():
        for secret in executor.get("secretAsEnv", []):
            for pair in secret["keyToEnv"]:
                refs.append(Ref("Secret", namespace, secret["secretName"], pair["secretKey"], step))
        for config_map in executor.get("configMapAsVolume", []):
            refs.append(Ref("ConfigMap", namespace, config_map["configMapName"], "", step))
    return refs


def trainjob_refs(namespace: str) -> list[Ref]:
    spec = TrainJobSpec(
        name="x", namespace=namespace, image="i", crop="tomato", phase="1",
        scratch="s3://aads/trainjobs/x", has_previous=False,
    )  # fmt: skip
    env = render_trainjob(spec, "x: 1\n")["spec"]["trainer"]["env"]
    keys = [e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]
    return [Ref("Secret", namespace, k["name"], k["key"], "TrainJob") for k in keys]


def spec_service_refs(spec: dict, by: str) -> list[Ref]:
    storage = spec.get("storage", {})
    addresses = [storage.get("endpoint") or "", spec.get("registry", {}).get("tracking_uri") or ""]
    return [r for a in addresses if a for r in [service_ref(a, by)] if r]


@pytest.fixture(scope="module")
def platform() -> list[dict]:
    return render(CHART, PLATFORM_VALUES, namespace=RELEASE_NS)


def rendered_spec(docs: list[dict], namespace: str, name: str) -> dict:
    (cm,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap"
        and d["metadata"]["name"] == name
        and d["metadata"]["namespace"] == namespace
    ]
    return yaml.safe_load(cm["data"]["spec.yaml"])


def all_refs(docs: list[dict]) -> list[Ref]:
    kfp = PLATFORM_VALUES["kfp"].get("namespace", "kubeflow")
    refs = pod_refs(docs) + pipeline_refs(kfp) + trainjob_refs(kfp)
    production = load_config(ROOT / "config" / "production.yaml").model_dump(mode="json")
    refs += spec_service_refs(production, "config/production.yaml")
    refs += spec_service_refs(rendered_spec(docs, RELEASE_NS, "aads-spec"), "the spec ConfigMap")
    refs += spec_service_refs(
        rendered_spec(docs, kfp, load_cluster().spec_config_map), "the pipeline's spec"
    )
    for d in docs:
        if d["kind"] == "Secret":
            for key, value in (d.get("stringData") or {}).items():
                ref = service_ref(value, f"Secret {d['metadata']['name']} {key}")
                if ref:
                    refs.append(ref)
    return refs


def test_every_secret_key_configmap_and_service_referenced_is_rendered(platform):
    refs = all_refs(platform)
    assert len(refs) >= 40  # the check saw the pipeline, the pods, the configs
    missing = Rendered(platform).missing(refs, external_secrets(PLATFORM_VALUES))
    assert missing == [], "\n".join(map(str, missing))


@pytest.mark.parametrize("env", ["staging", "production"])
def test_every_environment_reads_the_platform_releases_stores_and_declares_its_keys(env, platform):
    values = environment_values(ROOT, env)
    docs = render(CHART, values, namespace=f"aads-{env}")
    refs = pod_refs(docs) + spec_service_refs(
        rendered_spec(docs, f"aads-{env}", "aads-spec"), f"{env} spec"
    )
    external = external_secrets(values)
    assert external == {"aads-s3-keys"}
    # The environment's own objects, plus the platform release's Services it points at.
    missing = Rendered(docs + platform).missing(refs, external)
    assert missing == [], "\n".join(map(str, missing))


def test_production_config_names_the_services_the_chart_creates(platform):
    production = load_config(ROOT / "config" / "production.yaml")
    assert production.storage.endpoint == "aads-minio.aads.svc:9000"
    assert production.registry.tracking_uri == "http://aads-mlflow.aads.svc:5000"
    mlflow = [
        d for d in platform if d["kind"] == "Deployment" and "mlflow" in d["metadata"]["name"]
    ]
    args = mlflow[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--artifacts-destination={production.registry.artifact_store}" in args


def test_kserve_reads_the_s3_annotations_from_the_secrets_it_is_given(platform):
    for d in platform:
        if (
            d["kind"] == "Secret"
            and "AWS_ENDPOINT_URL_S3" in (d.get("stringData") or {}) | (d.get("data") or {})
            or (d["kind"] == "Secret" and d["metadata"]["name"] == "aads-s3")
        ):
            notes = d["metadata"]["annotations"]
            assert notes["serving.kserve.io/s3-endpoint"] == "aads-minio.aads.svc:9000"
            assert notes["serving.kserve.io/s3-usehttps"] == "0"
            assert notes["serving.kserve.io/s3-region"] == "us-east-1"


# --------------------------------------------------------------------------- the check can fail


def test_a_secret_nobody_renders_is_reported(platform):
    refs = [Ref("Secret", "kubeflow", "aads-s3-typo", "AWS_ACCESS_KEY_ID", "step")]
    assert Rendered(platform).missing(refs, set()) == refs


def test_a_key_the_secret_does_not_have_is_reported(platform):
    refs = [Ref("Secret", "kubeflow", "aads-s3", "accesskey", "old pipeline")]
    assert Rendered(platform).missing(refs, set()) == refs


def test_a_service_the_chart_never_creates_is_reported(platform):
    ref = service_ref("minio.aads.svc.cluster.local:9000", "the old production.yaml")
    assert ref == Ref("Service", "aads", "minio", "9000", "the old production.yaml")
    assert Rendered(platform).missing([ref], set()) == [ref]
    wrong_port = service_ref("http://aads-mlflow.aads.svc:8080", "x")
    assert Rendered(platform).missing([wrong_port], set()) == [wrong_port]
    assert service_ref("https://s3.eu-central-1.amazonaws.com", "x") is None  # external
