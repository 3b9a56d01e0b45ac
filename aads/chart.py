"""Render the Helm chart for a GitOps environment and validate every object, offline.

Used by `aads promote` before it commits a pin (a promotion that would not deploy is refused)
and by the tests. Helm's own engine (helm-python-sdk) renders; core kinds are checked with
kubernetes-validate (strict), KServe kinds against their CRD schemas when a folder of them is
given. Both libraries are optional dependencies (the ``dev`` extra): missing, they raise a
clear error.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from aads.errors import BadInput

KSERVE_KINDS = {"InferenceService", "ServingRuntime", "ClusterServingRuntime", "InferenceGraph"}
KUBE_VERSION = "1.32.0"


class ChartError(BadInput):
    """The chart did not render or an object is invalid; the message names which."""


def application_value_files(repo: Path, env: str) -> tuple[Path, list[str]]:
    """(the Argo CD Application file, its serving release's valueFiles, chart-relative)."""
    path = Path(repo) / "manifests" / "argocd" / f"{env}.yaml"
    if not path.is_file():
        raise ChartError(f"no Argo CD application for environment {env!r} at {path}")
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["metadata"]["name"] == f"aads-serving-{env}":
            return path, list(doc["spec"]["source"]["helm"]["valueFiles"])
    raise ChartError(f"{path}: no Application named aads-serving-{env}")


def environment_values(repo: Path, env: str) -> dict:
    """The environment's values merged in Argo CD's order (values file, then every pin)."""
    chart = Path(repo) / "charts"
    merged: dict = {}
    for rel in application_value_files(repo, env)[1]:
        merged = deep_merge(merged, yaml.safe_load((chart / rel).resolve().read_text()) or {})
    return merged


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = deep_merge(out[k], v) if both else v
    return out


def render(
    chart_dir: Path, values: dict, *, release: str = "aads", namespace: str = "aads"
) -> list[dict]:
    try:
        from helm_python import Chart, HelmError
    except ImportError:
        raise ChartError("rendering needs helm-python-sdk (pip install 'aads[dev]')") from None
    try:
        out = Chart.load(chart_dir).render(values, name=release, namespace=namespace)
    except HelmError as err:
        raise ChartError(f"the chart does not render: {err}") from None
    return [
        d
        for name, text in sorted(out.items())
        if not name.endswith(".txt")
        for d in yaml.safe_load_all(text)
        if d
    ]


def crd_schemas(crd_dir: Path) -> dict[str, dict]:
    schemas = {}
    for path in Path(crd_dir).glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate(docs: list[dict], crd_dir: Path | None = None) -> None:
    """Every object valid, or `ChartError` naming the first invalid one."""
    import jsonschema
    import kubernetes_validate

    schemas = crd_schemas(crd_dir) if crd_dir and Path(crd_dir).is_dir() else {}
    for doc in docs:
        where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        try:
            if doc["kind"] in KSERVE_KINDS:
                schema = schemas.get(f"{doc['apiVersion']}/{doc['kind']}")
                if schema is not None:
                    jsonschema.validate(doc, schema)
            else:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as err:
            raise ChartError(f"{where}: {str(err).splitlines()[0]}") from None
