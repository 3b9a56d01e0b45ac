"""Which registered version (or package folder) a continuation starts from, fetched and verified.

``--from`` takes what an ML engineer has at hand: an alias of the crop's registered model
(``champion``), a version number (``3``), a registry URI (``models:/aads-adapter-tomato@champion``
or ``models:/aads-adapter-tomato/3``), an ``s3://`` prefix, or a package folder. Every form ends
as a local package folder whose every file matched its ``SHA256SUMS``, plus the registry
version it is (empty for a folder), which the child records as its parent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aads.adapters.package import AdapterMeta, PackageError, read_meta, verify_package
from aads.config import PlatformConfig
from aads.errors import BadInput, NotFound
from aads.registry import ALIASES, adapter_model_name
from aads.storage import CHECKSUM_FILE, StorageError, get_dir, open_store, sha256_file


class ContinuationError(BadInput):
    """A continuation that cannot start: the message names the option or field to change."""


class BaseNotFound(NotFound, ContinuationError):
    """``--from`` names nothing that exists (no folder, alias or version)."""


@dataclass(frozen=True)
class Parent:
    """The verified package a continuation starts from."""

    path: Path
    meta: AdapterMeta
    source: str  # what --from said
    model: str = ""  # registered model name ('' for a folder)
    version: str = ""  # registry version number ('' for a folder)
    digest: str = ""  # sha256 of its SHA256SUMS

    @property
    def label(self) -> str:
        """``v3`` for a registered version, else the folder."""
        return f"v{self.version}" if self.version else str(self.path)


_ALIAS = re.compile(r"^[a-z][a-z0-9_-]*$")


def registry_uri(config: PlatformConfig, crop: str, base: str) -> str | None:
    """The ``models:/`` URI `base` stands for, or None when it names a folder or URI itself.

    A bare version number or a known alias (``champion``, ``candidate``, ``rollback``, an
    environment) is the crop's adapter model; anything else that is not an existing path and
    looks like an alias is tried as one, so a typo fails naming the registry's aliases."""
    text = base.strip()
    if text.startswith(("models:/", "s3://")):
        return None
    name = adapter_model_name(config.registry, crop)
    if text.isdigit():
        return f"models:/{name}/{text}"
    known = (*ALIASES, *config.registry.environments)
    if text in known or (_ALIAS.match(text) and not Path(text).exists()):
        return f"models:/{name}@{text}"
    return None


def resolve_base(
    config: PlatformConfig, crop: str, base: str | Path, *, tracking_uri: str | None = None
) -> Parent:
    """Fetch (registry, S3) or find (folder) the base package and verify every checksum.

    Raises `BaseNotFound` for a missing folder, alias or version, and `ContinuationError` for a
    package that fails its checksums or is not an adapter of `crop`."""
    from aads.inference import ModelSourceNotFound, ResolvedModel, resolve_model

    source = str(base).strip()
    if not source:
        raise ContinuationError("--from is empty: name an alias, a version, a URI or a folder")
    uri = registry_uri(config, crop, source) or source
    try:
        if uri.startswith("s3://"):
            resolved = ResolvedModel(_fetch_published(uri, config))
        else:
            resolved = resolve_model(
                uri, config.storage, config.registry, tracking_uri=tracking_uri
            )
    except (ModelSourceNotFound, NotFound) as err:
        raise BaseNotFound(f"--from {source}: {err}") from None
    except StorageError as err:
        raise ContinuationError(f"--from {source}: {err}") from None
    path = resolved.path
    if not (path / CHECKSUM_FILE).is_file():
        raise ContinuationError(
            f"--from {source}: {path} has no {CHECKSUM_FILE}; an incomplete package is never "
            "continued"
        )
    try:
        verify_package(path)
        meta = read_meta(path)
    except PackageError as err:
        raise ContinuationError(f"--from {source}: {err}") from None
    if meta.crop != crop:
        raise ContinuationError(
            f"--from {source} is an adapter for '{meta.crop}', but the task is for '{crop}'"
        )
    model = ""
    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        model = ref.partition("@")[0] if "@" in ref else ref.rpartition("/")[0]
    return Parent(
        path=path,
        meta=meta,
        source=source,
        model=model,
        version=resolved.version,
        digest=sha256_file(path / CHECKSUM_FILE),
    )


def _fetch_published(uri: str, config: PlatformConfig) -> Path:
    """A package `put_dir` published at `uri`, downloaded with every file checked against its
    published ``SHA256SUMS`` (a file that does not match fails here, naming it) into a fresh
    folder under the cache, with that ``SHA256SUMS`` beside the files."""
    import hashlib

    from aads.atomic import atomic_dir

    store, prefix = open_store(uri, config.storage)
    key = hashlib.sha256(uri.encode()).hexdigest()[:24]
    dest = Path(config.storage.cache_dir) / "continuation-bases" / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest) as staging:
        get_dir(store, prefix, staging)
    return dest
