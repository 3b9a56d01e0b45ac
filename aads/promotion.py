"""Promote a registered adapter version to a GitOps environment, and roll it back.

A promotion is a git commit: the environment's pin file for the crop
(``manifests/environments/<env>/pins/<crop>.yaml``, a Helm values fragment Argo CD applies)
now names the version's storage URI, version, model name and digest. Before committing, the
version must exist, have passed its gate (its ``gate`` tag), and its package must match its
checksums; the chart is rendered with the new pin and every object validated, so a promotion
that would not deploy is refused. The commit carries trailers (Model-Name, Model-Version,
Model-URI, Artifact-Digest, MLflow-Run-Id, KFP-Run-Id, metrics, Previous-Version), and MLflow
records it: the environment's alias on the version (production also moves ``champion``, the
previous one becoming ``rollback``) and tags naming the commit. Promoting what is already
pinned changes nothing in git and re-asserts the aliases (idempotent).

A canary (``--canary P``) keeps the pinned version and adds a ``canary`` block the chart turns
into a traffic split (KServe's canaryTrafficPercent in Knative mode, the router's split to a
second InferenceService in Standard mode); MLflow gets ``<env>-canary``. Promoting the canary
version fully ends the canary; a rollback while one runs removes it.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from aads.atomic import atomic_write_text
from aads.chart import ChartError, application_value_files, environment_values, render, validate
from aads.config import PlatformConfig
from aads.errors import BadInput
from aads.registry import Registry, RegistryError, adapter_model_name
from aads.storage import CHECKSUM_FILE

LOADABLE_SCHEMES = ("s3://", "gs://", "https://", "http://", "pvc://")
CHAMPION_ENV = "production"


class PromotionError(BadInput):
    """A promotion or rollback that must not happen; the message says why."""


@dataclass(frozen=True)
class Promotion:
    crop: str
    env: str
    version: str
    previous_version: str
    storage_uri: str
    digest: str
    commit: str  # "" when nothing changed (already promoted)


def pin_path(repo: Path, env: str, crop: str) -> Path:
    return Path(repo) / "manifests" / "environments" / env / "pins" / f"{crop}.yaml"


def read_pin(repo: Path, env: str, crop: str) -> dict:
    path = pin_path(repo, env, crop)
    if not path.is_file():
        return {}
    return (
        (yaml.safe_load(path.read_text()) or {}).get("adapters", {}).get("crops", {}).get(crop, {})
    )


def loadable_uri(source: str, config: PlatformConfig) -> str:
    """The version's package as a URI KServe's storage initializer can read."""
    if source.startswith(LOADABLE_SCHEMES):
        return source
    store = config.registry.artifact_store
    if source.startswith("mlflow-artifacts:/") and store:
        return store.rstrip("/") + "/" + source.removeprefix("mlflow-artifacts:/").lstrip("/")
    raise PromotionError(
        f"the package is at {source}, which KServe cannot load; point MLflow's artifacts at S3 "
        "and set registry.artifact_store to the server's --artifacts-destination"
    )


@dataclass(frozen=True)
class _Verified:
    """A registered version that exists, passed its gate and matches its checksums."""

    name: str
    version: str
    uri: str
    digest: str
    run_id: str
    tags: dict[str, str]

    def pin(self) -> dict[str, str]:
        return {
            "storageUri": self.uri,
            "version": self.version,
            "modelName": self.name,
            "digest": self.digest,
        }


def _verify(config: PlatformConfig, registry: Registry, crop: str, version: str) -> _Verified:
    name = adapter_model_name(config.registry, crop)
    try:
        found = registry.resolve(name, str(version))
    except RegistryError as err:
        raise PromotionError(f"cannot promote {name} v{version}: {err}") from None
    if found.tags.get("gate") != "passed":
        detail = found.tags.get("gate_detail") or found.tags.get("gate", "no gate tag")
        raise PromotionError(
            f"{name} v{found.version} did not pass its gate ({detail}); it cannot be promoted"
        )
    with tempfile.TemporaryDirectory() as tmp:
        package = registry.download(name, found.version, Path(tmp) / "package")
        if not (package / CHECKSUM_FILE).is_file():
            raise PromotionError(f"{name} v{found.version} has no {CHECKSUM_FILE}: unverifiable")
        digest = "sha256:" + hashlib.sha256((package / CHECKSUM_FILE).read_bytes()).hexdigest()
    uri = loadable_uri(found.source, config)
    return _Verified(name, found.version, uri, digest, found.run_id, dict(found.tags))


def promote(
    config: PlatformConfig,
    repo: Path,
    crop: str,
    version: str,
    env: str,
    *,
    canary: int | None = None,
    tracking_uri: str | None = None,
    crds: Path | None = None,
    reason: str = "promote",
) -> Promotion:
    """Pin `version` for `crop` in `env` (all traffic), or with `canary` (1-99) send that
    percentage of the crop's traffic to it beside the pinned version."""
    if env not in config.registry.environments:
        raise PromotionError(f"unknown environment {env!r}; known: {config.registry.environments}")
    if canary is not None and not 1 <= canary <= 99:
        raise PromotionError(f"--canary is a percentage of traffic from 1 to 99, not {canary}")
    registry = Registry(config.registry, tracking_uri=tracking_uri)
    found = _verify(config, registry, crop, version)
    before = read_pin(repo, env, crop)
    previous = str(before.get("version", ""))
    if canary is None:
        entry = found.pin()
        unchanged = previous == found.version and before.get("digest") == found.digest
        unchanged = unchanged and "canary" not in before
        title = f"{reason.capitalize()} {crop} to {found.name} v{found.version} in {env}"
    else:
        if not previous:
            raise PromotionError(
                f"{crop} has no version in {env} yet to run a canary beside; promote one first"
            )
        if previous == found.version:
            raise PromotionError(f"{found.name} v{found.version} already takes all of {env}")
        entry = {k: v for k, v in before.items() if k != "canary"}
        entry["canary"] = found.pin() | {"trafficPercent": canary}
        unchanged = before.get("canary") == entry["canary"]
        title = f"Canary {crop}: {found.name} v{found.version} at {canary}% in {env}"
    if unchanged:
        _record(registry, found.name, found.version, env, canary=canary, commit="")
        return Promotion(crop, env, found.version, previous, found.uri, found.digest, "")
    metrics = {
        k.removeprefix("metric."): v for k, v in found.tags.items() if k.startswith("metric.")
    }
    trailers = {
        "Model-Name": found.name,
        "Model-Version": found.version,
        "Model-URI": found.uri,
        "Artifact-Digest": found.digest,
        "MLflow-Run-Id": found.run_id,
        "KFP-Run-Id": found.tags.get("kfp_run_id", ""),
        "Previous-Version": previous or "none",
        **({"Canary-Percent": str(canary)} if canary is not None else {}),
        **{f"Metric-{k}": v for k, v in sorted(metrics.items())[:8]},
    }
    commit = _write_pin_and_commit(repo, env, crop, entry, _message(title, trailers), reason, crds)
    _record(registry, found.name, found.version, env, canary=canary, commit=commit)
    return Promotion(crop, env, found.version, previous, found.uri, found.digest, commit)


def rollback(
    config: PlatformConfig,
    repo: Path,
    crop: str,
    env: str,
    *,
    tracking_uri: str | None = None,
    crds: Path | None = None,
) -> Promotion:
    """End a running canary; without one, pin the version the current pin replaced (from its
    last promotion commit's trailer)."""
    before = read_pin(repo, env, crop)
    if "canary" in before:
        canary = before["canary"]
        entry = {k: v for k, v in before.items() if k != "canary"}
        title = (
            f"Rollback canary {crop}: {canary.get('modelName', '')} v{canary.get('version')} "
            f"in {env}"
        )
        trailers = {
            "Model-Name": str(canary.get("modelName", "")),
            "Model-Version": str(before.get("version", "")),
            "Canary-Version": str(canary.get("version", "")),
        }
        message = _message(title, trailers)
        commit = _write_pin_and_commit(repo, env, crop, entry, message, "rollback", crds)
        registry = Registry(config.registry, tracking_uri=tracking_uri)
        name = adapter_model_name(config.registry, crop)
        registry.set_canary_alias(name, env, None)
        return Promotion(
            crop,
            env,
            str(before.get("version", "")),
            str(canary.get("version", "")),
            str(before.get("storageUri", "")),
            str(before.get("digest", "")),
            commit,
        )
    path = pin_path(repo, env, crop)
    log = _git(repo, "log", "--format=%B%x00", "--", str(path.relative_to(repo)))
    # The last commit that changed the pinned version; canary commits leave it as it was.
    pinning = next((m for m in log.split("\0") if _changes_the_pinned_version(m)), "")
    previous = next(
        (
            line.split(":", 1)[1].strip()
            for line in pinning.splitlines()
            if line.startswith("Previous-Version:")
        ),
        "none",
    )
    if previous in ("", "none"):
        raise PromotionError(f"{crop} in {env} has no earlier promoted version to roll back to")
    return promote(
        config, repo, crop, previous, env, tracking_uri=tracking_uri, crds=crds, reason="rollback"
    )


def _changes_the_pinned_version(message: str) -> bool:
    lines = message.splitlines()
    canary = any(line.startswith(("Canary-Percent:", "Canary-Version:")) for line in lines)
    return not canary and any(line.startswith("Previous-Version:") for line in lines)


def _message(title: str, trailers: dict[str, str]) -> str:
    return title + "\n\n" + "\n".join(f"{k}: {v}" for k, v in trailers.items())


def _write_pin_and_commit(
    repo: Path,
    env: str,
    crop: str,
    entry: dict,
    message: str,
    reason: str,
    crds: Path | None,
) -> str:
    """Write the pin, render and validate the environment's release with it, commit. A
    release that would not deploy leaves the repository exactly as it was."""
    path = pin_path(repo, env, crop)
    header = f"# Promoted model for {crop} in {env}. Written by `aads {reason}`; do not edit.\n"
    original = path.read_text() if path.is_file() else None
    app_before = application_value_files(repo, env)[0].read_text()
    pin = {"adapters": {"crops": {crop: entry}}}
    atomic_write_text(path, header + yaml.safe_dump(pin, sort_keys=False))
    app_path = _ensure_listed(repo, env, path)
    try:
        validate(
            render(Path(repo) / "charts", environment_values(repo, env), namespace=f"aads-{env}"),
            crds,
        )
    except ChartError as err:
        atomic_write_text(app_path, app_before)
        if original is None:
            path.unlink()
        else:
            atomic_write_text(path, original)
        raise PromotionError(f"the {env} release would not deploy with this pin: {err}") from None
    return _commit(repo, [path, app_path], message)


def _record(
    registry: Registry,
    name: str,
    version: str,
    env: str,
    *,
    canary: int | None,
    commit: str,
) -> None:
    """MLflow's view of the promotion: the environment alias (or ``<env>-canary``), champion
    and rollback for production, and the commit on the version."""
    if canary is not None:
        registry.set_canary_alias(name, env, version)
        if commit:
            registry.set_version_tags(name, version, {f"canary.{env}.commit": commit})
        return
    registry.set_environment_alias(name, env, version)
    registry.set_canary_alias(name, env, None)
    if env == CHAMPION_ENV:
        registry.promote(name, version)
    if commit:
        registry.set_version_tags(name, version, {f"promoted.{env}.commit": commit})


def _ensure_listed(repo: Path, env: str, pin: Path) -> Path:
    """Add the pin to the environment's Argo CD Application when it is a new crop."""
    app_path, files = application_value_files(repo, env)
    rel = "../" + pin.relative_to(repo).as_posix()
    if rel in files:
        return app_path
    docs = list(yaml.safe_load_all(app_path.read_text()))
    for doc in docs:
        if doc and doc["metadata"]["name"] == f"aads-serving-{env}":
            doc["spec"]["source"]["helm"]["valueFiles"].append(rel)
    atomic_write_text(app_path, yaml.safe_dump_all(docs, sort_keys=False))
    return app_path


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise PromotionError(f"git {' '.join(args[:2])} failed: {out.stderr.strip()}")
    return out.stdout


def _commit(repo: Path, paths: list[Path], message: str) -> str:
    _git(repo, "add", *[str(Path(p).relative_to(repo)) for p in paths])
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD").strip()
