"""Render the Helm chart for a GitOps environment and validate every object, offline.

Used by `aads promote` before it commits a pin (a promotion that would not deploy is refused)
and by the tests. Helm's own engine (helm-python-sdk) renders; core kinds are checked with
kubernetes-validate (strict), KServe and prometheus-operator kinds against their CRD schemas
when a folder of them is given. Both libraries are optional dependencies (the ``dev`` extra):
missing, they raise a clear error.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from aads.errors import BadInput

KSERVE_KINDS = {"InferenceService", "ServingRuntime", "ClusterServingRuntime", "InferenceGraph"}
PROMETHEUS_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
"""prometheus-operator's kinds the chart renders with ``monitoring.enabled``."""
CUSTOM_KINDS = KSERVE_KINDS | PROMETHEUS_KINDS
"""Kinds kubernetes-validate does not know: checked against their CRD schemas, when given."""
KUBE_VERSION = "1.32.0"


class ChartError(BadInput):
    """The chart did not render or an object is invalid; the message names which."""


def _load_yaml(path: Path, text: str | None = None, *, many: bool = False):  # noqa: ANN202
    """YAML from `text` (or the file), or `ChartError` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
        return list(yaml.safe_load_all(text)) if many else yaml.safe_load(text)
    except OSError as err:
        raise ChartError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ChartError(f"{path}:{line} is not valid YAML: {problem}") from None


def application_path(repo: Path, env: str) -> Path:
    return Path(repo) / "manifests" / "argocd" / f"{env}.yaml"


def application_value_files(
    repo: Path, env: str, text: str | None = None
) -> tuple[Path, list[str]]:
    """(the Argo CD Application file, its serving release's valueFiles, chart-relative);
    `text` stands for the file's content when given (a change not yet written)."""
    path = application_path(repo, env)
    if text is None and not path.is_file():
        raise ChartError(f"no Argo CD application for environment {env!r} at {path}")
    for doc in _load_yaml(path, text, many=True):
        if isinstance(doc, dict) and doc.get("metadata", {}).get("name") == f"aads-serving-{env}":
            try:
                return path, list(doc["spec"]["source"]["helm"]["valueFiles"])
            except (KeyError, TypeError):
                raise ChartError(f"{path}: aads-serving-{env} has no helm valueFiles") from None
    raise ChartError(f"{path}: no Application named aads-serving-{env}")


def environment_values(repo: Path, env: str, pending: dict[Path, str] | None = None) -> dict:
    """The environment's values merged in Argo CD's order (values file, then every pin).

    `pending` maps files to contents not yet written (a promotion renders with them before
    it writes anything)."""
    pending = {Path(p).resolve(): t for p, t in (pending or {}).items()}
    app = application_path(repo, env).resolve()
    chart = Path(repo) / "charts"
    merged: dict = {}
    for rel in application_value_files(repo, env, pending.get(app))[1]:
        path = (chart / rel).resolve()
        values = _load_yaml(path, pending.get(path)) or {}
        if not isinstance(values, dict):
            kind = type(values).__name__
            raise ChartError(f"{path}: a values file must be a mapping, not {kind}")
        merged = deep_merge(merged, values)
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
    """{group/version/kind: openAPIV3Schema} of every CRD under `crd_dir` (subfolders too, so
    ``shared/crds`` gives KServe's and prometheus-operator's)."""
    schemas = {}
    for path in sorted(Path(crd_dir).rglob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def crd_validators(crd_dir: Path) -> dict:
    """{apiVersion/kind: a jsonschema validator} for the CRDs in `crd_dir`. Built once: the
    schemas come from the CRDs themselves, so `jsonschema.validate`'s check of the schema
    (seconds per InferenceService) is skipped."""
    import jsonschema

    return {
        key: jsonschema.validators.validator_for(schema)(schema)
        for key, schema in crd_schemas(crd_dir).items()
    }


def validate(docs: list[dict], crd_dir: Path | None = None) -> None:
    """Every object valid, or `ChartError` naming the first invalid one."""
    import jsonschema
    import kubernetes_validate

    validators = crd_validators(crd_dir) if crd_dir and Path(crd_dir).is_dir() else {}
    for doc in docs:
        where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        try:
            if doc["kind"] in CUSTOM_KINDS:
                validator = validators.get(f"{doc['apiVersion']}/{doc['kind']}")
                if validator is not None:
                    validator.validate(doc)
            else:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as err:
            raise ChartError(f"{where}: {str(err).splitlines()[0]}") from None
