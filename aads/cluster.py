"""The cluster contract: names, keys and scheduling shared by the Helm chart, the training
pipeline and Kubeflow Trainer jobs, read from one file (``config/cluster.yaml``).

A Secret's keys are the environment variables they fill (``AWS_ACCESS_KEY_ID`` ...), so the
chart, the pipeline and KServe read one Secret layout. The chart reads the same file
(``charts/files/cluster.yaml``) when it creates the pipeline's Secrets, and a contract test
renders the chart and reads the compiled pipeline to prove every name agrees.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aads.errors import BadInput

CLUSTER_FILE = Path(__file__).resolve().parents[1] / "config" / "cluster.yaml"
SPEC_MOUNT = "/etc/aads"
"""Where every step and server finds the platform spec ConfigMap (``/etc/aads/spec.yaml``)."""

# The object store's Secret: its keys are the variables boto3 and `aads.storage` read.
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
STORAGE_KEYS = (ACCESS_KEY_ENV, SECRET_KEY_ENV, ENDPOINT_ENV)
# MLflow's Secret: the tracking server, and the S3 endpoint its artifact client uses.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_S3_ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"
REGISTRY_KEYS = (TRACKING_URI_ENV, MLFLOW_S3_ENDPOINT_ENV)


def secret_env(keys: tuple[str, ...]) -> dict[str, str]:
    """Secret key -> the environment variable it fills: the same name, the one Secret layout
    of the chart, the pipeline's steps and TrainJob pods."""
    return {key: key for key in keys}


class ClusterFileError(BadInput):
    """The cluster settings file is missing or invalid; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Model):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] = ""


class GpuScheduling(_Model):
    resource: str = Field(min_length=1, description="extended resource, e.g. nvidia.com/gpu")
    per_step: int = Field(ge=1, le=16)
    node_selector: dict[str, str]
    tolerations: list[Toleration]


class StepResources(_Model):
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


class Resources(_Model):
    gpu_step: StepResources
    cpu_step: StepResources


class Retries(_Model):
    gpu_steps: int = Field(ge=0, le=10)
    backoff: str = Field(pattern=r"^[0-9]+s$")
    backoff_factor: float = Field(ge=1)
    backoff_max: str = Field(pattern=r"^[0-9]+s$")


class SecretNames(_Model):
    storage: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    registry: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

    @property
    def storage_env(self) -> dict[str, str]:
        """Secret key -> environment variable (the same names)."""
        return secret_env(STORAGE_KEYS)

    @property
    def registry_env(self) -> dict[str, str]:
        return secret_env(REGISTRY_KEYS)


class ClusterSettings(_Model):
    """Where the pipeline's steps run; `config/cluster.yaml` documents each field."""

    registry: str = Field(min_length=1, description="image registry and organisation")
    component_image: str = Field(min_length=1)
    gpu: GpuScheduling
    resources: Resources
    retries: Retries
    max_parallel_crops: int = Field(ge=1, le=64)
    secrets: SecretNames
    spec_config_map: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

    def image(self, name: str, tag: str | None = None) -> str:
        """``<registry>/<name>:<tag>``; the tag defaults to the installed package's version."""
        return f"{self.registry.rstrip('/')}/{name}:{tag or package_version()}"

    @property
    def component_image_ref(self) -> str:
        return self.image(self.component_image)


def package_version() -> str:
    try:
        return version("aads")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0.0.0"


def load_cluster(path: Path | None = None) -> ClusterSettings:
    """The settings in `path` (default: the repository's ``config/cluster.yaml``)."""
    path = Path(path or CLUSTER_FILE)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ClusterFileError(f"cannot read cluster settings {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ClusterFileError(f"{path}: not YAML: {str(err).splitlines()[0]}") from None
    try:
        return ClusterSettings.model_validate(data or {})
    except ValidationError as err:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors()
        )
        raise ClusterFileError(f"{path}: {fields}") from None


def spec_text(uri: str, override: str = "") -> str:
    """The platform spec a pipeline run uses, validated: `override` (YAML text) when given,
    else the file at `uri`: a path (the chart's ConfigMap mounted at /etc/aads/spec.yaml) or
    ``s3://bucket/key.yaml`` (read with the storage Secret's keys and endpoint from env)."""
    from aads.config import StorageSettings, parse_config_text
    from aads.storage import open_store

    if override.strip():
        text, where = override, "config_yaml parameter"
    elif uri.startswith("s3://"):
        store, key = open_store(uri, StorageSettings())
        text, where = store.read_bytes(key).decode("utf-8"), uri
    else:
        try:
            text, where = Path(uri).read_text(encoding="utf-8"), uri
        except OSError as err:
            raise ClusterFileError(
                f"config_uri {uri}: {err.strerror}; mount the platform spec ConfigMap "
                "(kfp.createSecrets in the chart), give an s3:// URI, or paste config_yaml"
            ) from None
    parse_config_text(text, where)  # refuse a bad spec before any step runs
    return text
