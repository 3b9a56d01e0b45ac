"""The MLflow model registry: one registered model per crop adapter (plus the router).

Why a thin layer of our own over `MlflowClient`:

- **Aliases, not stages.** Stages are deprecated; a version is ``candidate`` (registered, gate
  passed), ``champion`` (served) or ``rollback`` (the previous champion). `promote` moves
  champion and rollback together, so a rollback is always one alias flip away.
- **Idempotent registration.** A KFP step can be retried after it registered but before it
  reported success. Every version carries the tag ``kfp_run_id``; registering again with the
  same id returns the existing version instead of creating a duplicate (also checked between
  retries of the create call itself, in case only the response was lost).
- **Bounded failure.** MLflow's own HTTP client retries 7 times with exponential backoff: a
  dead server takes about 4 minutes per call to fail. Here MLflow makes one attempt per call
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and a 15 s ``MLFLOW_HTTP_REQUEST_TIMEOUT``, set only
  while a call runs and only where the operator has not set them), tenacity retries
  connection-type failures with exponential backoff, then `RegistryUnavailable` names the URI.
- **No global MLflow state.** Each `Registry` has its own `MlflowClient`; nothing calls
  ``mlflow.set_tracking_uri``, so two registries in one process do not interfere.
- **Verified downloads.** A version is downloaded into a temporary sibling, checked against the
  package's ``SHA256SUMS`` and renamed into place: a partial download is never visible.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse, urlunparse

import requests
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

from aads.adapters.package import PackageError, verify_package
from aads.config import RegistrySettings
from aads.errors import BadInput, NotFound, Unavailable
from aads.storage import CHECKSUM_FILE

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

log = logging.getLogger(__name__)

ALIASES = ("candidate", "champion", "rollback")
KFP_RUN_TAG = "kfp_run_id"
PACKAGE_ARTIFACT = "package"
PLOTS_ARTIFACT = "plots"
MODEL_CARD_FILE = "model_card.md"
READY_TIMEOUT_S = 60.0

# One HTTP attempt per MLflow call: tenacity owns retrying. An operator who sets these
# variables keeps their values.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# What MLflow says when the server cannot be reached or fails on its side: it wraps every
# `requests` failure into a plain MlflowException("API request to ... failed with exception
# HTTPConnectionPool(...): Max retries exceeded ... Connection refused").
_TRANSIENT_MARKERS = (
    "max retries exceeded",
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remotedisconnected",
    "timeout exception",
    "timed out",
    "error responses",  # urllib3: "too many 503 error responses"
    "temporary failure in name resolution",
    "name or service not known",
)
_SAFE_VALUE = re.compile(r"^[\w.:/@+-]+$")
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_EXISTS = "RESOURCE_ALREADY_EXISTS"

T = TypeVar("T")


class RegistryUnavailable(Unavailable):
    """The tracking server did not answer after all retries."""


class RegistryError(BadInput):
    """A request the registry cannot satisfy as asked (unknown model, alias, version...).

    `code` is MLflow's error code when the server gave one (e.g. ``RESOURCE_DOES_NOT_EXIST``).
    """

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class RegistryNotFound(NotFound, RegistryError):
    """The registry has no such model, alias or version (the message lists what exists)."""

    def __init__(self, message: str):
        super().__init__(message, code=_NOT_FOUND)


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str  # artifact URI of the package folder
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""


def adapter_model_name(settings: RegistrySettings, crop: str) -> str:
    return f"{settings.adapter_model_prefix}{crop}"


def router_model_name(settings: RegistrySettings) -> str:
    return settings.router_model_name


def redact_uri(uri: str) -> str:
    """The URI without user:password, for messages and logs."""
    parsed = urlparse(uri)
    if not parsed.netloc or "@" not in parsed.netloc:
        return uri
    return urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]))


# --------------------------------------------------------------------------- HTTP behaviour

_env_lock = threading.Lock()
_env_users = 0
_env_applied: list[str] = []


@contextmanager
def _one_http_attempt() -> Iterator[None]:
    """Apply `HTTP_ENV` while any registry call runs (refcounted: threads may overlap)."""
    global _env_users, _env_applied
    with _env_lock:
        if _env_users == 0:
            _env_applied = [k for k in HTTP_ENV if k not in os.environ]
            os.environ.update({k: HTTP_ENV[k] for k in _env_applied})
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for k in _env_applied:
                    os.environ.pop(k, None)
                _env_applied = []


def _is_transient(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, requests.exceptions.HTTPError):  # artifact uploads and downloads
        return exc.response is not None and exc.response.status_code >= 500
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, RestException):  # the server answered with a JSON error
        return exc.get_http_status_code() >= 500
    if isinstance(exc, MlflowException):
        message = str(exc).lower()
        return any(marker in message for marker in _TRANSIENT_MARKERS)
    return False


def _check_value(what: str, value: str) -> str:
    """Names and run ids go into search filters inside quotes: refuse anything that could
    break out of them rather than trying to escape it."""
    if not value or not _SAFE_VALUE.match(value):
        raise RegistryError(
            f"{what} {value!r} must be non-empty letters, digits and . _ - : / @ + only"
        )
    return value


# --------------------------------------------------------------------------- the registry


class Registry:
    """Registered models, versions and aliases on one MLflow tracking server."""

    def __init__(
        self,
        settings: RegistrySettings,
        tracking_uri: str | None = None,
        retries: int = 5,
    ):
        from mlflow import MlflowClient

        uri = tracking_uri or settings.tracking_uri
        if not uri:
            raise RegistryError(
                "no tracking URI: set registry.tracking_uri in the platform config or pass "
                "tracking_uri (e.g. http://mlflow.aads.svc:5000)"
            )
        if retries < 1:
            raise RegistryError(f"retries must be at least 1, got {retries}")
        self.settings = settings
        self.tracking_uri = uri
        self.retries = retries
        self.description = f"MLflow at {redact_uri(uri)}"
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # ----------------------------------------------------------------------- plumbing

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` with one HTTP attempt per MLflow call, retrying connection failures."""
        from mlflow.exceptions import MlflowException

        retrying = Retrying(
            stop=stop_after_attempt(self.retries),
            wait=wait_exponential(multiplier=0.5, max=4.0),
            retry=retry_if_exception(_is_transient),
            reraise=False,
        )
        try:
            with _one_http_attempt():
                return retrying(fn)
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise RegistryUnavailable(
                f"{self.description} unreachable: {what} failed after {self.retries} attempts "
                f"({type(cause).__name__}: {self._clean(cause)}). Check that the tracking "
                "server is running and reachable from here (URI, port, network policy, and "
                "--allowed-hosts on the server when it is behind a Service or Ingress)."
            ) from None
        except (MlflowException, requests.exceptions.RequestException) as err:
            raise RegistryError(
                f"{self.description}: {what}: {self._clean(err)}",
                code=str(getattr(err, "error_code", "")),
            ) from None

    def _clean(self, err: BaseException | None) -> str:
        """The error text with the raw URI (which may carry credentials) redacted."""
        text = getattr(err, "message", None) or str(err)
        return text.replace(self.tracking_uri, redact_uri(self.tracking_uri))

    @staticmethod
    def _version(mv: ModelVersion) -> RegisteredVersion:
        return RegisteredVersion(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or "",
            source=mv.source,
            aliases=sorted(mv.aliases or []),
            tags=dict(mv.tags or {}),
            description=mv.description or "",
        )

    def _find_by_kfp_run(self, name: str, kfp_run_id: str) -> ModelVersion | None:
        """The oldest version of `name` tagged with `kfp_run_id` (one raw call, no retries)."""
        found = self.client.search_model_versions(
            f"name = '{name}' and tag.{KFP_RUN_TAG} = '{kfp_run_id}'"
        )
        return min(found, key=lambda mv: int(mv.version)) if found else None

    # ----------------------------------------------------------------------- registration

    def register_package(
        self,
        pkg_dir: Path,
        *,
        name: str,
        tags: dict[str, str],
        description: str,
        metrics: dict[str, float],
        images: dict[str, Path] | None = None,
        kfp_run_id: str,
        alias: str = "candidate",
    ) -> RegisteredVersion:
        """Register the package folder as a new version of `name`, or return the version a
        previous attempt of the same KFP run registered.

        `description` is the model card: it becomes the version's description and the run's
        ``model_card.md``. `tags` (git_sha, manifest_sha256, backbone, backbone_licence,
        gate...) go on the version; values must be strings. `images` (confusion matrices,
        ROC curves) are logged under ``plots/`` as ``<key>`` (the file's suffix is added when
        the key has none). Only finite metrics are logged.
        """
        _check_value("model name", name)
        _check_value("kfp_run_id", kfp_run_id)
        self._check_alias(alias)
        bad = sorted(k for k, v in tags.items() if not isinstance(v, str))
        if bad:
            raise RegistryError(f"tag values must be strings; not strings: {bad}")
        pkg_dir = Path(pkg_dir)
        version_tags = {**tags, KFP_RUN_TAG: kfp_run_id}

        existing = self._call(
            f"look up {name} versions of KFP run {kfp_run_id}",
            lambda: self._find_by_kfp_run(name, kfp_run_id),
        )
        if existing is not None:
            log.info("%s v%s already registered by %s", name, existing.version, kfp_run_id)
            return self._finish(name, existing.version, alias)

        self._check_package(pkg_dir)
        plots = self._plot_files(images or {})
        run_id, artifact_uri = self._log_run(
            pkg_dir, name, version_tags, description, metrics, plots
        )
        self._ensure_model(name)

        def create() -> ModelVersion:
            # A lost response to an earlier attempt may have created the version already.
            return self._find_by_kfp_run(name, kfp_run_id) or self.client.create_model_version(
                name,
                source=f"{artifact_uri}/{PACKAGE_ARTIFACT}",
                run_id=run_id,
                tags=version_tags,
                description=description,
                await_creation_for=0,
            )

        created = self._call(f"create a version of {name}", create)
        return self._finish(name, created.version, alias)

    def _finish(self, name: str, version: str, alias: str) -> RegisteredVersion:
        self._wait_ready(name, version)
        self.set_alias(name, alias, version)
        return self.resolve(name, version)

    def _check_package(self, pkg_dir: Path) -> None:
        if not pkg_dir.is_dir():
            raise RegistryError(f"{pkg_dir} is not a package folder")
        if not (pkg_dir / CHECKSUM_FILE).is_file():
            # The router folder has no SHA256SUMS yet; adapter packages always do.
            log.warning("%s has no %s: registering it unverified", pkg_dir, CHECKSUM_FILE)
            return
        try:
            verify_package(pkg_dir)
        except PackageError as err:
            raise RegistryError(f"refusing to register {pkg_dir}: {err}") from None

    @staticmethod
    def _plot_files(images: dict[str, Path]) -> dict[str, Path]:
        """Artifact file name -> local file, checked before anything is created remotely."""
        plots: dict[str, Path] = {}
        for key, path in images.items():
            path = Path(path)
            if not path.is_file():
                raise RegistryError(f"image {key!r}: {path} is not a file")
            if not re.fullmatch(r"[\w.-]+", key):
                raise RegistryError(f"image name {key!r} must be a plain file name")
            plots[key if Path(key).suffix else f"{key}{path.suffix}"] = path
        return plots

    def _log_run(
        self,
        pkg_dir: Path,
        name: str,
        tags: dict[str, str],
        card: str,
        metrics: dict[str, float],
        plots: dict[str, Path],
    ) -> tuple[str, str]:
        """One MLflow run holding the package, plots, metrics and card; (run id, artifact URI)."""
        from mlflow.entities import Metric, Param

        experiment_id = self._experiment_id()
        run = self._call(
            f"create a run in experiment {self.settings.experiment!r}",
            lambda: self.client.create_run(
                experiment_id,
                tags={KFP_RUN_TAG: tags[KFP_RUN_TAG], "aads.registered_model": name},
                run_name=f"register-{name}",
            ),
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        finite = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        metric_rows = [Metric(k, v, now, 0) for k, v in sorted(finite.items())]
        param_rows = [Param(k, v[:6000]) for k, v in sorted(tags.items())]
        try:
            for i in range(0, len(metric_rows), 1000):
                batch = metric_rows[i : i + 1000]
                self._call("log metrics", lambda b=batch: self.client.log_batch(run_id, metrics=b))
            for i in range(0, len(param_rows), 100):
                batch = param_rows[i : i + 100]
                self._call("log params", lambda b=batch: self.client.log_batch(run_id, params=b))
            if plots:
                with tempfile.TemporaryDirectory() as tmp:
                    for file_name, src in plots.items():
                        shutil.copyfile(src, Path(tmp) / file_name)
                    self._call(
                        "upload plots",
                        lambda: self.client.log_artifacts(run_id, tmp, PLOTS_ARTIFACT),
                    )
            self._call(
                f"upload {pkg_dir}",
                lambda: self.client.log_artifacts(run_id, str(pkg_dir), PACKAGE_ARTIFACT),
            )
            self._call(
                "upload the model card",
                lambda: self.client.log_text(run_id, card, MODEL_CARD_FILE),
            )
            self._call("finish the run", lambda: self.client.set_terminated(run_id))
        except BaseException:
            self._mark_failed(run_id)
            raise
        return run_id, run.info.artifact_uri

    def _mark_failed(self, run_id: str) -> None:
        """Best effort, no retries: the server may be the reason we are failing."""
        from mlflow.entities import RunStatus

        try:
            with _one_http_attempt():
                self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        except Exception as err:  # already failing: keep the first error
            log.warning("could not mark run %s failed: %s", run_id, self._clean(err))

    def _experiment_id(self) -> str:
        exp_name = self.settings.experiment

        def get_or_create() -> str:
            exp = self.client.get_experiment_by_name(exp_name)
            if exp is not None and exp.lifecycle_stage == "deleted":
                raise RegistryError(
                    f"experiment {exp_name!r} is deleted on {self.description}: restore it "
                    "(mlflow experiments restore) or set registry.experiment to another name"
                )
            if exp is not None:
                return exp.experiment_id
            try:
                return self.client.create_experiment(exp_name)
            except Exception as err:  # created concurrently by another step
                if getattr(err, "error_code", "") != _EXISTS:
                    raise
                return self.client.get_experiment_by_name(exp_name).experiment_id

        return self._call(f"get or create experiment {exp_name!r}", get_or_create)

    def _ensure_model(self, name: str) -> None:
        def ensure() -> None:
            try:
                self.client.get_registered_model(name)
                return
            except Exception as err:
                if getattr(err, "error_code", "") != _NOT_FOUND:
                    raise
            try:
                self.client.create_registered_model(
                    name,
                    description=(
                        f"AADS model {name}. Each version's description is its model card. "
                        "Aliases: candidate (registered, gate passed), champion (served), "
                        "rollback (the previous champion)."
                    ),
                )
            except Exception as err:  # created concurrently by another step
                if getattr(err, "error_code", "") != _EXISTS:
                    raise

        self._call(f"create registered model {name}", ensure)

    def _wait_ready(self, name: str, version: str) -> None:
        """Versions start PENDING_REGISTRATION on some stores; aliases need a READY one."""

        def status() -> tuple[str, str]:
            mv = self._call(
                f"get {name} v{version}", lambda: self.client.get_model_version(name, version)
            )
            return mv.status, mv.status_message or ""

        waiting = Retrying(
            stop=stop_after_delay(READY_TIMEOUT_S),
            wait=wait_fixed(0.5),
            retry=retry_if_result(lambda s: s[0] == "PENDING_REGISTRATION"),
            retry_error_callback=lambda state: state.outcome.result(),
        )
        state, message = waiting(status)
        if state != "READY":
            raise RegistryError(f"{name} v{version} is {state}, not READY: {message}".rstrip(": "))

    # ----------------------------------------------------------------------- aliases

    @staticmethod
    def _check_alias(alias: str) -> None:
        if alias not in ALIASES:
            raise RegistryError(
                f"alias {alias!r} is not allowed; use one of {', '.join(ALIASES)} "
                "(aliases replace the deprecated stages)"
            )

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._check_alias(alias)
        self._call(
            f"set {name}@{alias} -> v{version}",
            lambda: self.client.set_registered_model_alias(name, alias, str(version)),
        )

    def set_environment_alias(self, name: str, env: str, version: str) -> None:
        """Point the environment's alias (``staging``, ``production``, ...) at `version`."""
        if env not in self.settings.environments:
            raise RegistryError(
                f"environment {env!r} is not configured; registry.environments: "
                f"{self.settings.environments}"
            )
        self._call(
            f"set {name}@{env} -> v{version}",
            lambda: self.client.set_registered_model_alias(name, env, str(version)),
        )

    def set_canary_alias(self, name: str, env: str, version: str | None) -> None:
        """Point ``<env>-canary`` at the version taking part of the environment's traffic, or
        remove it (`version` None) when the canary ends."""
        if env not in self.settings.environments:
            raise RegistryError(
                f"environment {env!r} is not configured; registry.environments: "
                f"{self.settings.environments}"
            )
        alias = f"{env}-canary"
        if version is not None:
            self._call(
                f"set {name}@{alias} -> v{version}",
                lambda: self.client.set_registered_model_alias(name, alias, str(version)),
            )
        elif alias in self.aliases(name):
            self._call(
                f"delete {name}@{alias}",
                lambda: self.client.delete_registered_model_alias(name, alias),
            )

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: version} of a registered model."""
        return {a: str(v) for a, v in self._model(name).aliases.items()}

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._call(
                f"tag {name} v{version} {key}",
                lambda k=key, v=value: self.client.set_model_version_tag(name, str(version), k, v),
            )

    def promote(self, name: str, version: str) -> None:
        """Make `version` the champion; the previous champion becomes the rollback.

        Rollback is set first: if the champion flip then fails, both aliases still point at
        the old champion, which is safe.
        """
        target = self.resolve(name, str(version)).version
        aliases = self._model(name).aliases
        previous = aliases.get("champion")
        if previous == target:
            return
        if previous is not None:
            self.set_alias(name, "rollback", previous)
        self.set_alias(name, "champion", target)

    # ----------------------------------------------------------------------- lookups

    def _model(self, name: str) -> RegisteredModel:
        try:
            model = self._call(f"get {name}", lambda: self.client.get_registered_model(name))
        except RegistryError as err:
            if err.code != _NOT_FOUND:
                raise
            names = self._call(
                "list registered models",
                lambda: sorted(m.name for m in self.client.search_registered_models()),
            )
            raise RegistryNotFound(
                f"{self.description} has no registered model {name!r}; "
                f"registered: {', '.join(names) or '(none)'}"
            ) from None
        return model

    def versions(self, name: str) -> list[str]:
        """Version numbers of `name`, oldest first."""
        found = self._call(
            f"list versions of {name}",
            lambda: self.client.search_model_versions(f"name = '{_check_value('name', name)}'"),
        )
        return sorted((mv.version for mv in found), key=int)

    def resolve(self, name: str, ref: str) -> RegisteredVersion:
        """`ref` is an alias (``champion``) or a version number (``3``)."""
        ref = str(ref).strip()
        model = self._model(name)
        aliases: dict[str, str] = dict(model.aliases)
        if ref.isdigit():
            version = ref
        elif ref in aliases:
            version = str(aliases[ref])
        else:
            shown = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "(none)"
            raise RegistryNotFound(f"{name} has no alias {ref!r}; aliases: {shown}")
        try:
            mv = self._call(
                f"get {name} v{version}", lambda: self.client.get_model_version(name, version)
            )
        except RegistryError as err:
            if err.code != _NOT_FOUND:
                raise
            versions = ", ".join(self.versions(name)) or "(none)"
            raise RegistryNotFound(
                f"{name} has no version {version}; versions: {versions}"
            ) from None
        return self._version(mv)

    # ----------------------------------------------------------------------- download

    def download(self, name: str, ref: str, dst: Path) -> Path:
        """Download the package folder of `name`@`ref` to `dst` (replacing it) and return it.

        The files land in a temporary sibling and are checked against the package's
        ``SHA256SUMS`` before one rename puts them at `dst`.
        """
        import mlflow.artifacts

        found = self.resolve(name, ref)
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
        retired = staging.with_name(staging.name + ".old")
        try:

            def fetch() -> Path:
                target = Path(tempfile.mkdtemp(dir=staging))  # fresh for every attempt
                return Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=found.source,
                        dst_path=str(target),
                        tracking_uri=self.tracking_uri,
                    )
                )

            local = self._call(f"download {name} v{found.version}", fetch)
            if (local / CHECKSUM_FILE).is_file():
                try:
                    verify_package(local)
                except PackageError as err:
                    raise RegistryError(f"{name} v{found.version}: {err}") from None
            if dst.exists():
                dst.rename(retired)
            try:
                local.rename(dst)
            except OSError:
                if retired.exists():
                    retired.rename(dst)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(retired, ignore_errors=True)
        return dst
