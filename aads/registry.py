"""The MLflow model registry: one registered model per crop adapter (plus the router).

Why a thin layer of our own over `MlflowClient`:

- **Every version is an MLflow model.** The package is logged as a pyfunc model
  (`aads.pyfunc`: signature, input example, models from code, no pickle) among MLflow 3's
  logged models, linked to the run that evaluated it, so ``mlflow.pyfunc.load_model(
  "models:/aads-adapter-tomato@candidate")`` works; the package itself sits unchanged at
  ``<model>/artifacts/package``, which is what KServe serves and `download` fetches.
- **Aliases, not stages.** Stages are deprecated; a version is ``candidate`` (registered, gate
  passed), ``champion`` (served) or ``rollback`` (the previous champion). `promote` moves
  champion and rollback together, so a rollback is always one alias flip away.
- **Idempotent registration.** A KFP step can be retried after it registered but before it
  reported success. Every version and its logged model carry the tag ``kfp_run_id``;
  registering again with the same id returns the existing version instead of creating a
  duplicate (also checked between retries of the create call itself, in case only the
  response was lost), and a model a previous attempt finished logging is reused.
- **A few headline tags.** A version's tags say what it is and how good it is in a few
  numbers (`aads.steps.version_tags`); every metric lives on its evaluation run and is linked
  to the logged model, where MLflow shows it beside the version.
- **Bounded failure, no global MLflow state** (`aads.mlflow_connection`).
- **Verified downloads.** A version is downloaded into a temporary sibling, checked against the
  package's ``SHA256SUMS`` and renamed into place: a partial download is never visible.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from aads.adapters.package import PackageError, verify_package
from aads.atomic import replace_dir
from aads.config import RegistrySettings
from aads.errors import NotFound, Unavailable
from aads.mlflow_connection import (
    ALREADY_EXISTS,
    HTTP_ENV,
    NOT_FOUND,
    MlflowConnection,
    MlflowError,
    one_http_attempt,
    redact_uri,
)
from aads.storage import CHECKSUM_FILE

if TYPE_CHECKING:
    from mlflow.entities import LoggedModel
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

log = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "HTTP_ENV",
    "KFP_RUN_TAG",
    "RegisteredVersion",
    "Registry",
    "RegistryError",
    "RegistryNotFound",
    "RegistryUnavailable",
    "adapter_model_name",
    "redact_uri",
]

ALIASES = ("candidate", "champion", "rollback")
KFP_RUN_TAG = "kfp_run_id"
MODEL_CARD_FILE = "model_card.md"
READY_TIMEOUT_S = 60.0
_SAFE_VALUE = re.compile(r"^[\w.:/@+-]+$")
_LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)$")


class RegistryUnavailable(Unavailable):
    """The tracking server did not answer after all retries."""


class RegistryError(MlflowError):
    """A request the registry cannot satisfy as asked (unknown model, alias, version...).

    `code` is MLflow's error code when the server gave one (e.g. ``RESOURCE_DOES_NOT_EXIST``).
    """


class RegistryNotFound(NotFound, RegistryError):
    """The registry has no such model, alias or version (the message lists what exists)."""

    def __init__(self, message: str):
        super().__init__(message, code=NOT_FOUND)


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str  # artifact URI of the package folder
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    model_uri: str = ""  # the MLflow model (models:/m-...): mlflow.pyfunc.load_model loads it


def adapter_model_name(settings: RegistrySettings, crop: str) -> str:
    return f"{settings.adapter_model_prefix}{crop}"


def _check_value(what: str, value: str) -> str:
    """Names and run ids go into search filters inside quotes: refuse anything that could
    break out of them rather than trying to escape it."""
    if not value or not _SAFE_VALUE.match(value):
        raise RegistryError(
            f"{what} {value!r} must be non-empty letters, digits and . _ - : / @ + only"
        )
    return value


# --------------------------------------------------------------------------- the registry


class Registry(MlflowConnection):
    """Registered models, versions and aliases on one MLflow tracking server."""

    unavailable = RegistryUnavailable
    refused = RegistryError

    def __init__(
        self,
        settings: RegistrySettings,
        tracking_uri: str | None = None,
        retries: int = 5,
    ):
        super().__init__(tracking_uri or settings.tracking_uri or "", retries)
        self.settings = settings

    # ----------------------------------------------------------------------- plumbing

    def _version(self, mv: ModelVersion) -> RegisteredVersion:
        model_uri = mv.source if _LOGGED_MODEL_URI.match(mv.source or "") else ""
        return RegisteredVersion(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or "",
            source=self._package_source(mv.source),
            aliases=sorted(mv.aliases or []),
            tags=dict(mv.tags or {}),
            description=mv.description or "",
            model_uri=model_uri,
        )

    def _package_source(self, source: str) -> str:
        """Where a version's package folder lives: inside its logged model's artifacts, or
        (versions registered before packages became MLflow models) the source itself."""
        from aads.pyfunc import PACKAGE_PATH

        found = _LOGGED_MODEL_URI.match(source or "")
        if not found:
            return source
        model_id = found.group(1)
        logged = self.call(
            f"get logged model {model_id}", lambda: self.client.get_logged_model(model_id)
        )
        return f"{logged.artifact_location.rstrip('/')}/{PACKAGE_PATH}"

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
        kfp_run_id: str,
        run_id: str | None = None,
        alias: str = "candidate",
    ) -> RegisteredVersion:
        """Log the package (adapter or router) as a pyfunc model and register it as a new
        version of `name`, or return the version a previous attempt of the same KFP run
        registered.

        `run_id` is the run that produced and evaluated the package (the pipeline's evaluation
        or router run): the model is linked to it and `metrics` are logged on it for the
        model. Without one, a finished run named ``register <name>`` holds them.
        `description` is the model card (the version's description and the run's
        ``model_card.md``); `tags` (strings) go on the version. Only finite metrics are logged.
        """
        _check_value("model name", name)
        _check_value("kfp_run_id", kfp_run_id)
        self._check_alias(alias)
        bad = sorted(k for k, v in tags.items() if not isinstance(v, str))
        if bad:
            raise RegistryError(f"tag values must be strings; not strings: {bad}")
        pkg_dir = Path(pkg_dir)
        version_tags = {**tags, KFP_RUN_TAG: kfp_run_id}

        existing = self.call(
            f"look up {name} versions of KFP run {kfp_run_id}",
            lambda: self._find_by_kfp_run(name, kfp_run_id),
        )
        if existing is not None:
            log.info("%s v%s already registered by %s", name, existing.version, kfp_run_id)
            return self._finish(name, existing.version, alias)

        self._check_package(pkg_dir)
        experiment_id = self.experiment_id(self.settings.experiment)
        if run_id is None:
            run_id = self._registration_run(experiment_id, name, kfp_run_id)
        logged = self._log_model(pkg_dir, experiment_id, name, run_id, kfp_run_id)
        self._link_metrics(run_id, logged.model_id, metrics, description)
        self._ensure_model(name)

        def create() -> ModelVersion:
            # A lost response to an earlier attempt may have created the version already.
            return self._find_by_kfp_run(name, kfp_run_id) or self.client.create_model_version(
                name,
                source=logged.model_uri,
                run_id=run_id,
                model_id=logged.model_id,
                tags=version_tags,
                description=description,
                await_creation_for=0,
            )

        created = self.call(f"create a version of {name}", create)
        return self._finish(name, created.version, alias)

    def _finish(self, name: str, version: str, alias: str) -> RegisteredVersion:
        self._wait_ready(name, version)
        self.set_alias(name, alias, version)
        return self.resolve(name, version)

    @staticmethod
    def _check_package(pkg_dir: Path) -> None:
        if not pkg_dir.is_dir():
            raise RegistryError(f"{pkg_dir} is not a package folder")
        if not (pkg_dir / CHECKSUM_FILE).is_file():
            raise RegistryError(f"refusing to register {pkg_dir}: it has no {CHECKSUM_FILE}")
        try:
            verify_package(pkg_dir)
        except PackageError as err:
            raise RegistryError(f"refusing to register {pkg_dir}: {err}") from None

    def _registration_run(self, experiment_id: str, name: str, kfp_run_id: str) -> str:
        """A run for a registration made outside a pipeline run (no evaluation run to use)."""
        run = self.call(
            f"create a run in experiment {self.settings.experiment!r}",
            lambda: self.client.create_run(
                experiment_id,
                tags={KFP_RUN_TAG: kfp_run_id, "aads.registered_model": name},
                run_name=f"register {name}",
            ),
        )
        self.call("finish the run", lambda: self.client.set_terminated(run.info.run_id))
        return run.info.run_id

    def _log_model(
        self, pkg_dir: Path, experiment_id: str, name: str, run_id: str, kfp_run_id: str
    ) -> LoggedModel:
        """The package as a logged pyfunc model (reusing one a previous attempt finished)."""
        from aads.pyfunc import model_kind, save_model

        def finished() -> LoggedModel | None:
            found = self.client.search_logged_models(
                [experiment_id],
                filter_string=f"name = '{name}' AND tags.{KFP_RUN_TAG} = '{kfp_run_id}'",
            )
            return next((m for m in found if str(m.status) == "READY"), None)

        existing = self.call(f"look up logged models of {name}", finished)
        if existing is not None:
            return existing
        with tempfile.TemporaryDirectory() as tmp:
            # Loads the package once: its answer on the input example is the signature.
            model_dir = save_model(pkg_dir, Path(tmp) / "model")
            logged = self.call(
                f"create a logged model {name}",
                lambda: self.client.create_logged_model(
                    experiment_id,
                    name=name,
                    source_run_id=run_id,
                    tags={KFP_RUN_TAG: kfp_run_id, "aads.kind": model_kind(pkg_dir)},
                ),
            )
            try:
                self.call(
                    f"upload model {logged.model_id}",
                    lambda: self.client.log_model_artifacts(logged.model_id, str(model_dir)),
                )
                return self.call(
                    f"finalize model {logged.model_id}",
                    lambda: self.client.finalize_logged_model(logged.model_id, "READY"),
                )
            except BaseException:
                self._model_failed(logged.model_id)
                raise

    def _model_failed(self, model_id: str) -> None:
        """Best effort, no retries: the server may be the reason we are failing."""
        try:
            with one_http_attempt():
                self.client.finalize_logged_model(model_id, "FAILED")
        except Exception as err:  # already failing: keep the first error
            log.warning("could not mark model %s failed: %s", model_id, self.clean(err))

    def _link_metrics(
        self, run_id: str, model_id: str, metrics: dict[str, float], card: str
    ) -> None:
        """`metrics` on the run for the model (MLflow shows them with the version), and the
        model card beside them."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [
            Metric(k, float(v), now, 0, model_id=model_id)
            for k, v in sorted(metrics.items())
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        for i in range(0, len(rows), 1000):
            batch = rows[i : i + 1000]
            self.call("log metrics", lambda b=batch: self.client.log_batch(run_id, metrics=b))
        self.call(
            "upload the model card", lambda: self.client.log_text(run_id, card, MODEL_CARD_FILE)
        )

    def _ensure_model(self, name: str) -> None:
        def ensure() -> None:
            try:
                self.client.get_registered_model(name)
                return
            except Exception as err:
                if getattr(err, "error_code", "") != NOT_FOUND:
                    raise
            try:
                self.client.create_registered_model(
                    name,
                    description=(
                        f"AADS model {name}. Each version is a pyfunc model whose description "
                        "is its model card. Aliases: candidate (registered, gate passed), "
                        "champion (served), rollback (the previous champion)."
                    ),
                )
            except Exception as err:  # created concurrently by another step
                if getattr(err, "error_code", "") != ALREADY_EXISTS:
                    raise

        self.call(f"create registered model {name}", ensure)

    def _wait_ready(self, name: str, version: str) -> None:
        """Versions start PENDING_REGISTRATION on some stores; aliases need a READY one."""

        def status() -> tuple[str, str]:
            mv = self.call(
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
        self.call(
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
        self.call(
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
            self.call(
                f"set {name}@{alias} -> v{version}",
                lambda: self.client.set_registered_model_alias(name, alias, str(version)),
            )
        elif alias in self.aliases(name):
            self.call(
                f"delete {name}@{alias}",
                lambda: self.client.delete_registered_model_alias(name, alias),
            )

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: version} of a registered model."""
        return {a: str(v) for a, v in self._model(name).aliases.items()}

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.call(
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
            model = self.call(f"get {name}", lambda: self.client.get_registered_model(name))
        except RegistryError as err:
            if err.code != NOT_FOUND:
                raise
            names = self.call(
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
        found = self.call(
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
            mv = self.call(
                f"get {name} v{version}", lambda: self.client.get_model_version(name, version)
            )
        except RegistryError as err:
            if err.code != NOT_FOUND:
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

            local = self.call(f"download {name} v{found.version}", fetch)
            if (local / CHECKSUM_FILE).is_file():
                try:
                    verify_package(local)
                except PackageError as err:
                    raise RegistryError(f"{name} v{found.version}: {err}") from None
            replace_dir(local, dst)  # the earlier folder survives a failed move
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dst
