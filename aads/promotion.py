"""Promote a registered adapter version to a GitOps environment, and roll it back.

A promotion is a git commit: the environment's pin file for the crop
(``manifests/environments/<env>/pins/<crop>.yaml``, a Helm values fragment Argo CD applies)
now names the version's storage URI, version, model name and digest. Before committing, the
version must exist, have passed its gate (its ``gate`` tag), and its package must match its
checksums; the chart is rendered with the new pin and every object validated, so a promotion
that would not deploy is refused. The commit carries trailers (Model-Name, Model-Version,
Model-URI, Artifact-Digest, MLflow-Run-Id, KFP-Run-Id, the headline metrics, Gate,
Previous-Version), and MLflow records it: the environment's alias on the version (production
also moves ``champion``, the previous one becoming ``rollback``) and tags naming the commit.
Promoting what is already pinned changes nothing in git and re-asserts the aliases.

Atomic: every check, edit and render happens in memory first; only then are the files written
and committed, and a failure after that (a refused commit, MLflow down) puts back every byte
and the previous HEAD. YAML is edited round-trip (ruamel.yaml): comments, key order and flow
style in the pin and Application files survive.

A canary (``--canary P``) keeps the pinned version and adds a ``canary`` block the chart turns
into a traffic split (KServe's canaryTrafficPercent in Knative mode, the router's split to a
second InferenceService in Standard mode); MLflow gets ``<env>-canary``. Promoting the canary
version fully ends the canary; a rollback while one runs removes it.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from aads.atomic import atomic_write_bytes, atomic_write_text
from aads.chart import ChartError, application_value_files, environment_values, render, validate
from aads.config import PlatformConfig
from aads.errors import AADSError, BadInput
from aads.metrics import headline_metrics
from aads.registry import Registry, RegistryError, adapter_model_name
from aads.storage import CHECKSUM_FILE, S3Store, put_dir

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


# --------------------------------------------------------------------------- round-trip YAML


def _yaml() -> YAML:
    """Round-trip YAML in the layout of the repository's files (lists indented under keys)."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)
    return rt


def _load(path: Path, text: str) -> object:
    try:
        return _yaml().load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise PromotionError(f"{path}:{line} is not valid YAML: {problem}") from None


def _dump(data: object) -> str:
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def _pin_document(repo: Path, env: str, crop: str) -> tuple[str | None, CommentedMap]:
    """(the pin file's text or None, its round-trip document, created when missing)."""
    path = pin_path(repo, env, crop)
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    doc = _load(path, text) if text is not None else None
    if doc is None:
        doc = CommentedMap()
        doc.yaml_set_start_comment(
            f"Promoted model for {crop} in {env}. Written by `aads promote`; edit only through "
            "it (or a reviewed PR)."
        )
    if not isinstance(doc, dict):
        raise PromotionError(f"{path}: a pin file must be a mapping of Helm values")
    crops = doc.setdefault("adapters", CommentedMap()).setdefault("crops", CommentedMap())
    if not isinstance(crops, dict) or not isinstance(crops.setdefault(crop, CommentedMap()), dict):
        raise PromotionError(f"{path}: adapters.crops.{crop} must be a mapping")
    return text, doc


def read_pin(repo: Path, env: str, crop: str) -> dict:
    """The crop's pinned entry in `env` (plain data), or {} when none."""
    path = pin_path(repo, env, crop)
    if not path.is_file():
        return {}
    doc = _load(path, path.read_text(encoding="utf-8"))
    entry = (doc or {}).get("adapters", {}).get("crops", {}).get(crop, {}) if doc else {}
    return _plain(entry or {})


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _set_entry(entry: CommentedMap, values: dict) -> None:
    """Make `entry` hold exactly `values`, editing in place (keys keep their place, comments
    and a nested block's style stay)."""
    for key in [k for k in entry if k not in values]:
        del entry[key]
    for key, value in values.items():
        if isinstance(value, dict):
            if not isinstance(entry.get(key), dict):
                entry[key] = CommentedMap()
            _set_entry(entry[key], value)
        else:
            entry[key] = value


# --------------------------------------------------------------------------- where the package is


def _trusted_artifact_store(config: PlatformConfig, tracking_uri: str | None) -> str | None:
    """`registry.artifact_store` describes the MLflow server the config names; another server
    (e.g. `make demo`'s local one, whose artifacts live on its disk) gets no mapping."""
    store = config.registry.artifact_store
    configured = (config.registry.tracking_uri or "").rstrip("/")
    used = (tracking_uri or configured).rstrip("/")
    return store if store and used == configured else None


def loadable_uri(source: str, config: PlatformConfig, tracking_uri: str | None = None) -> str:
    """The version's package as a URI KServe's storage initializer can read, or "" when it
    must be published to the object store first."""
    if source.startswith(LOADABLE_SCHEMES):
        return source
    store = _trusted_artifact_store(config, tracking_uri)
    if source.startswith("mlflow-artifacts:/") and store:
        return store.rstrip("/") + "/" + source.removeprefix("mlflow-artifacts:/").lstrip("/")
    return ""


def published_key(config: PlatformConfig, crop: str, version: str) -> str:
    prefix = config.storage.prefix.strip("/")
    return "/".join(p for p in (prefix, "models", "adapters", crop, f"v{version}") if p)


def _publish(config: PlatformConfig, package: Path, crop: str, version: str) -> str:
    """Copy the verified package to the serving object store; its ``s3://`` URI."""
    key = published_key(config, crop, version)
    store = S3Store(config.storage.bucket, config.storage)
    try:
        put_dir(store, package, key)
    except AADSError as err:
        where = f"s3://{config.storage.bucket}/{key}"
        raise type(err)(f"publishing the package to {where}: {err}") from None
    return f"s3://{config.storage.bucket}/{key}"


@dataclass(frozen=True)
class _Verified:
    """A registered version that exists, passed its gate and matches its checksums."""

    name: str
    version: str
    uri: str
    digest: str
    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]

    def pin(self) -> dict[str, str]:
        return {
            "storageUri": self.uri,
            "version": self.version,
            "modelName": self.name,
            "digest": self.digest,
        }


def _run_metrics(registry: Registry, run_id: str) -> dict[str, float]:
    """The registering run's metrics (the full list lives there); {} when unreadable."""
    if not run_id:
        return {}
    try:
        return dict(registry.client.get_run(run_id).data.metrics)
    except Exception:  # noqa: BLE001 - MLflow raises several types; the tags still count
        return {}


def _verify(
    config: PlatformConfig,
    registry: Registry,
    crop: str,
    version: str,
    tracking_uri: str | None,
) -> _Verified:
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
        uri = loadable_uri(found.source, config, tracking_uri) or _publish(
            config, package, crop, found.version
        )
    metrics = _run_metrics(registry, found.run_id)
    metrics.update(
        {
            k.removeprefix("metric."): float(v)
            for k, v in found.tags.items()
            if k.startswith("metric.") and _is_number(v)
        }
    )
    return _Verified(name, found.version, uri, digest, found.run_id, dict(found.tags), metrics)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- commands


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
    repo = Path(repo)
    application_value_files(repo, env)  # the environment exists before anything is fetched
    read_pin(repo, env, crop)  # and its pin (if any) is readable
    registry = Registry(config.registry, tracking_uri=tracking_uri)
    found = _verify(config, registry, crop, version, tracking_uri)
    before = read_pin(repo, env, crop)
    previous = str(before.get("version", ""))
    if canary is None:
        entry = found.pin()
        unchanged = previous == found.version and before.get("digest") == found.digest
        unchanged = unchanged and "canary" not in before and before.get("storageUri") == found.uri
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
    trailers = {
        "Model-Name": found.name,
        "Model-Version": found.version,
        "Model-URI": found.uri,
        "Artifact-Digest": found.digest,
        "MLflow-Run-Id": found.run_id,
        "KFP-Run-Id": found.tags.get("kfp_run_id", ""),
        "Previous-Version": previous or "none",
        # A continuation's parent (its registry tag; `aads lineage` prints the whole chain).
        **(
            {"Parent-Version": found.tags["parent_version"]}
            if "parent_version" in found.tags
            else {}
        ),
        **({"Canary-Percent": str(canary)} if canary is not None else {}),
        **metric_trailers(found.metrics, found.tags),
    }
    change = _PinChange(repo, env, crop, entry, _message(title, trailers), crds)
    commit = change.commit(
        lambda sha: _record(registry, found.name, found.version, env, canary=canary, commit=sha)
    )
    return Promotion(crop, env, found.version, previous, found.uri, found.digest, commit)


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


def metric_trailers(metrics: dict[str, float], tags: dict[str, str]) -> dict[str, str]:
    """The numbers a reviewer decides by: accuracy, retention, near- and far-OOD AUROC (each
    only when measured), and the gate's verdict."""
    out = {f"Metric-{k}": f"{v:.4f}" for k, v in headline_metrics(metrics).items()}
    gate = tags.get("gate", "unknown")
    detail = tags.get("gate_detail", "")
    out["Gate"] = f"{gate} ({detail})" if detail and detail != gate else gate
    return out


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
    repo = Path(repo)
    application_value_files(repo, env)
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
        registry = Registry(config.registry, tracking_uri=tracking_uri)
        name = adapter_model_name(config.registry, crop)
        change = _PinChange(repo, env, crop, entry, _message(title, trailers), crds)
        commit = change.commit(lambda _sha: registry.set_canary_alias(name, env, None))
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


# --------------------------------------------------------------------------- the atomic change


class _PinChange:
    """A pin (and, for a new crop, the Application listing it) edited in memory, rendered and
    validated, then written and committed as one step that either happens whole or leaves
    the repository byte-identical."""

    def __init__(
        self, repo: Path, env: str, crop: str, entry: dict, message: str, crds: Path | None
    ) -> None:
        self.repo, self.env, self.message = repo, env, message
        self.pin = pin_path(repo, env, crop)
        self.app, files = application_value_files(repo, env)
        _, doc = _pin_document(repo, env, crop)
        _set_entry(doc["adapters"]["crops"][crop], entry)
        self.before = {p: p.read_bytes() if p.is_file() else None for p in (self.pin, self.app)}
        self.after = {self.pin: _dump(doc)}
        rel = "../" + self.pin.relative_to(repo).as_posix()
        if rel not in files:
            self.after[self.app] = self._listed(self.app.read_text(encoding="utf-8"), rel)
        try:
            values = environment_values(repo, env, pending=self.after)
            validate(render(repo / "charts", values, namespace=f"aads-{env}"), crds)
        except ChartError as err:
            message = f"the {env} release would not deploy with this pin: {err}"
            raise PromotionError(message) from None

    def _listed(self, text: str, rel: str) -> str:
        """The Application text with `rel` appended to the serving release's valueFiles."""
        docs = list(_yaml().load_all(text))
        for doc in docs:
            if doc and doc.get("metadata", {}).get("name") == f"aads-serving-{self.env}":
                doc["spec"]["source"]["helm"]["valueFiles"].append(rel)
        out = io.StringIO()
        _yaml().dump_all(docs, out)
        return out.getvalue()

    def commit(self, record) -> str:  # noqa: ANN001 - Callable[[str], None]
        """Write, commit, then `record(sha)` (MLflow). Any failure restores every byte and
        the previous HEAD, and is raised as one line."""
        head = _git(self.repo, "rev-parse", "HEAD").strip()
        paths = [str(p.relative_to(self.repo)) for p in self.after]
        try:
            for path, text in self.after.items():
                atomic_write_text(path, text)
            _git(self.repo, "add", "--", *paths)
            _git(self.repo, "commit", "-q", "-m", self.message, "--", *paths)
            sha = _git(self.repo, "rev-parse", "HEAD").strip()
            record(sha)
        except Exception as err:
            self._restore(head, paths)
            if isinstance(err, AADSError):
                raise type(err)(f"nothing was changed: {err}") from None
            raise PromotionError(f"nothing was changed: {type(err).__name__}: {err}") from None
        return sha

    def _restore(self, head: str, paths: list[str]) -> None:
        if _git(self.repo, "rev-parse", "HEAD", check=False).strip() != head:
            _git(self.repo, "reset", "-q", "--soft", head, check=False)
        _git(self.repo, "reset", "-q", "--", *paths, check=False)
        for path, data in self.before.items():
            if data is None:
                path.unlink(missing_ok=True)
            elif path in self.after and (not path.is_file() or path.read_bytes() != data):
                atomic_write_bytes(path, data)


def _git(repo: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0 and check:
        reason = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise PromotionError(f"git {' '.join(args[:2])} failed: {reason[-1] if reason else ''}")
    return out.stdout
