"""Object storage: one interface over S3-compatible stores (MinIO, AWS, moto) and local folders.

Why our own layer rather than raw clients everywhere: every artifact AADS publishes (backbone
mirrors, adapter packages, manifests) must be verifiable and never half-visible. So:

- every object carries its sha256 (S3 user metadata ``sha256``), and a published directory has
  a ``SHA256SUMS`` file (``sha256sum -c`` format) written LAST: readers trust only what it lists,
  so a directory whose upload died half-way is simply not there yet;
- directory uploads go to a temporary prefix first and are copied into place server-side;
- downloads land in a temporary file and are renamed after the checksum matches;
- network calls retry with exponential backoff (tenacity), then fail with `StoreUnavailable`
  naming the endpoint, instead of hanging in the client's own long retry loop.

Credentials come from `StorageSettings.credentials()` (environment / Kubernetes Secrets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import urlparse

import urllib3
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from aads.atomic import atomic_dir, atomic_write, atomic_write_bytes
from aads.config import StorageSettings
from aads.errors import BadInput, NotFound, Unavailable

log = logging.getLogger(__name__)

CHECKSUM_FILE = "SHA256SUMS"
CACHE_RECORD = ".aads-cache.json"
_CHUNK = 1 << 20
T = TypeVar("T")


class StorageError(BadInput):
    """A storage operation that cannot succeed as asked (missing object, bad checksum...)."""


class StoreUnavailable(Unavailable, StorageError):
    """The store did not answer after all retries."""


class ObjectNotFound(NotFound, StorageError):
    """No object (or no published package) under that key or prefix."""


class ChecksumMismatch(StorageError):
    """Bytes on arrival differ from the sha256 recorded at publish time."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    sha256: str | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def format_checksums(checksums: dict[str, str]) -> str:
    return "".join(f"{checksums[k]}  {k}\n" for k in sorted(checksums))


def parse_checksums(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise StorageError(f"{CHECKSUM_FILE} line {n} is malformed: {line!r}")
        out[_safe_relpath(rel)] = digest
    return out


def write_checksums(folder: Path) -> dict[str, str]:
    """Write ``SHA256SUMS`` over every file in `folder`, last: its presence marks the folder
    complete, and readers verify against it (`verify_checksums`)."""
    folder = Path(folder)
    sums = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != CHECKSUM_FILE
    }
    atomic_write_bytes(folder / CHECKSUM_FILE, format_checksums(sums).encode())
    return sums


def verify_checksums(folder: Path) -> dict[str, str]:
    """Check every file listed in ``SHA256SUMS``; StorageError names the first bad one."""
    folder = Path(folder)
    sums_path = folder / CHECKSUM_FILE
    if not sums_path.is_file():
        raise StorageError(f"{folder}: no {CHECKSUM_FILE}: not a complete package")
    sums = parse_checksums(sums_path.read_text())
    for rel, digest in sums.items():
        path = folder / rel
        if not path.is_file():
            raise StorageError(f"{folder}: {rel} is listed in {CHECKSUM_FILE} but missing")
        if sha256_file(path) != digest:
            raise StorageError(f"{folder}: {rel} does not match its checksum (corrupt)")
    return sums


def _safe_relpath(rel: str) -> str:
    """Reject keys that would escape the destination folder on download."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise StorageError(f"refusing unsafe object path {rel!r}")
    return str(p)


class ObjectStore(ABC):
    """Primitives every backend implements; directory logic is shared on top of them."""

    description: str

    @abstractmethod
    def put_file(self, local: Path, key: str, sha256: str | None = None) -> ObjectInfo: ...

    @abstractmethod
    def get_file(self, key: str, local: Path, expected_sha256: str | None = None) -> str:
        """Download to `local` atomically; return the sha256 of what arrived."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]: ...

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None: ...

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    def read_bytes(self, key: str) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            target = Path(d) / "obj"
            self.get_file(key, target)
            return target.read_bytes()

    def write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "obj"
            src.write_bytes(data)
            return self.put_file(src, key)

    def exists(self, key: str) -> bool:
        return any(o.key == key for o in self.list(key))


# --------------------------------------------------------------------------- local folder


class LocalStore(ObjectStore):
    """A folder that behaves like a bucket: keys are relative paths under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.description = f"local folder {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / _safe_relpath(key)

    def put_file(self, local: Path, key: str, sha256: str | None = None) -> ObjectInfo:
        dst = self._path(key)
        digest = sha256_file(local)
        if sha256 and digest != sha256:
            raise ChecksumMismatch(f"{local}: sha256 {digest} != expected {sha256}")
        atomic_write(dst, lambda tmp: shutil.copyfile(local, tmp))
        return ObjectInfo(key, dst.stat().st_size, digest, digest)

    def get_file(self, key: str, local: Path, expected_sha256: str | None = None) -> str:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(f"{self.description}: no object {key!r}")
        return _verified_copy(lambda tmp: shutil.copyfile(src, tmp), local, expected_sha256, key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        if not self.root.exists():
            return out
        for p in sorted(self.root.rglob("*")):
            key = p.relative_to(self.root).as_posix()
            if p.is_file() and key.startswith(prefix) and not p.name.endswith(".tmp"):
                st = p.stat()
                out.append(ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}"))
        return out

    def copy(self, src_key: str, dst_key: str) -> None:
        self.put_file(self._path(src_key), dst_key)

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            self._path(k).unlink(missing_ok=True)


def _verified_copy(
    fetch: Callable[[Path], object], local: Path, expected: str | None, key: str
) -> str:
    """Run `fetch(tmp)`, check sha256, then rename into `local`: never a half file in place."""
    digest = ""

    def write(tmp: Path) -> None:
        nonlocal digest
        fetch(tmp)
        digest = sha256_file(tmp)
        if expected and digest != expected:
            raise ChecksumMismatch(f"{key}: downloaded sha256 {digest} != published {expected}")

    atomic_write(local, write)
    return digest


# --------------------------------------------------------------------------- S3 / MinIO


def _is_transient(exc: BaseException) -> bool:
    from minio.error import S3Error, ServerError

    if isinstance(exc, S3Error):
        return exc.code in {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"}
    return isinstance(
        exc, ServerError | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError
    )


class S3Store(ObjectStore):
    """Any S3-compatible endpoint through the `minio` client, with bounded retries."""

    def __init__(self, bucket: str, settings: StorageSettings):
        from minio import Minio

        self.bucket = bucket
        self.settings = settings
        endpoint = settings.resolved_endpoint() or "s3.amazonaws.com"
        parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
        secure = parsed.scheme == "https" if parsed.scheme else settings.secure
        self.endpoint = parsed.netloc
        self.description = f"s3://{bucket} at {self.endpoint}"
        access, secret = settings.credentials()
        # One attempt per call at the HTTP layer: tenacity owns retrying, so a dead endpoint
        # fails in seconds with our message instead of minio's default multi-minute loop.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s),
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=2),
            maxsize=8,
        )
        self.client = Minio(
            self.endpoint,
            access_key=access.get_secret_value() or None,
            secret_key=secret.get_secret_value() or None,
            secure=secure,
            region=settings.region,
            http_client=http,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.retries),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            retry=retry_if_exception(_is_transient),
            reraise=False,
        )
        try:
            return retrying(fn)
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise StoreUnavailable(
                f"{self.description} unreachable: {what} failed after "
                f"{self.settings.retries} attempts ({type(cause).__name__}: {cause})"
            ) from None
        except Exception as err:
            from minio.error import S3Error

            if isinstance(err, S3Error):
                kind = ObjectNotFound if err.code in ("NoSuchKey", "NoSuchBucket") else StorageError
                raise kind(f"{self.description}: {what}: {err.code}: {err.message}") from None
            raise

    def ensure_bucket(self) -> None:
        if not self._call("bucket_exists", lambda: self.client.bucket_exists(self.bucket)):
            self._call("make_bucket", lambda: self.client.make_bucket(self.bucket))

    def put_file(self, local: Path, key: str, sha256: str | None = None) -> ObjectInfo:
        digest = sha256_file(local)
        if sha256 and digest != sha256:
            raise ChecksumMismatch(f"{local}: sha256 {digest} != expected {sha256}")
        res = self._call(
            f"upload {key}",
            lambda: self.client.fput_object(
                self.bucket, key, str(local), metadata={"sha256": digest}
            ),
        )
        return ObjectInfo(key, local.stat().st_size, res.etag or "", digest)

    def get_file(self, key: str, local: Path, expected_sha256: str | None = None) -> str:
        def fetch(tmp: Path) -> None:
            self._call(
                f"download {key}", lambda: self.client.fget_object(self.bucket, key, str(tmp))
            )

        return _verified_copy(fetch, local, expected_sha256, key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        objs = self._call(
            f"list {prefix!r}",
            lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True)),
        )
        return [ObjectInfo(o.object_name, o.size or 0, (o.etag or "").strip('"')) for o in objs]

    def copy(self, src_key: str, dst_key: str) -> None:
        from minio.commonconfig import CopySource

        self._call(
            f"copy {src_key} -> {dst_key}",
            lambda: self.client.copy_object(self.bucket, dst_key, CopySource(self.bucket, src_key)),
        )

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            self._call(f"delete {k}", lambda k=k: self.client.remove_object(self.bucket, k))


# --------------------------------------------------------------------------- URIs & dirs


def open_store(uri: str, settings: StorageSettings) -> tuple[ObjectStore, str]:
    """Split ``s3://bucket/prefix`` or a local path into (store, key prefix)."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"{uri!r} has no bucket")
        return S3Store(parsed.netloc, settings), parsed.path.lstrip("/").rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported storage URI {uri!r}: use s3://bucket/prefix or a path")
    return LocalStore(Path(uri.removeprefix("file://"))), ""


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _iter_files(local_dir: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and p.name != CHECKSUM_FILE:
            yield p.relative_to(local_dir).as_posix(), p


def put_dir(store: ObjectStore, local_dir: Path, prefix: str) -> dict[str, str]:
    """Publish a folder atomically: staged upload, server-side copy, checksum file last."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"{local_dir} is not a directory")
    if isinstance(store, S3Store):
        store.ensure_bucket()
    staging = _join(prefix, f".staging-{uuid.uuid4().hex[:12]}")
    checksums: dict[str, str] = {}
    staged: list[str] = []
    try:
        for rel, path in _iter_files(local_dir):
            info = store.put_file(path, _join(staging, rel))
            checksums[rel] = info.sha256 or sha256_file(path)
            staged.append(info.key)
        for rel in checksums:
            store.copy(_join(staging, rel), _join(prefix, rel))
        store.write_bytes(_join(prefix, CHECKSUM_FILE), format_checksums(checksums).encode())
    finally:
        try:
            store.delete(staged)
        except StorageError as err:  # leftovers under .staging-* are harmless, report only
            log.warning("could not clean staging prefix %s: %s", staging, err)
    return checksums


def get_dir(store: ObjectStore, prefix: str, local_dir: Path) -> dict[str, str]:
    """Download a published folder, verifying every file against its ``SHA256SUMS``."""
    sums_key = _join(prefix, CHECKSUM_FILE)
    if not store.exists(sums_key):
        raise ObjectNotFound(
            f"{store.description}: {prefix!r} has no {CHECKSUM_FILE}: not published "
            "(or the upload did not finish)"
        )
    checksums = parse_checksums(store.read_bytes(sums_key).decode())
    for rel, digest in checksums.items():
        store.get_file(_join(prefix, rel), Path(local_dir) / rel, expected_sha256=digest)
    atomic_write_bytes(Path(local_dir) / CHECKSUM_FILE, format_checksums(checksums).encode())
    return checksums


def fetch_dir_cached(uri: str, settings: StorageSettings) -> Path:
    """A verified local copy of a remote folder, reused while the remote is unchanged.

    Works for folders published by `put_dir` (checksums from ``SHA256SUMS``) and for plain
    mirrors (e.g. ``aws s3 sync`` of a Hugging Face snapshot): their sha256 is computed on
    arrival and recorded. A cache hit re-hashes local files, so a corrupted cache is refetched.
    When the store is down and a verified cache exists, the cache is used (with a warning).
    """
    store, prefix = open_store(uri, settings)
    if isinstance(store, LocalStore):
        return store.root
    dest = Path(settings.cache_dir) / "dirs" / hashlib.sha256(uri.encode()).hexdigest()[:32]
    record_path = dest / CACHE_RECORD
    cached = _read_cache_record(record_path)
    try:
        remote = {
            o.key[len(prefix) :].lstrip("/"): o
            for o in store.list(f"{prefix}/" if prefix else "")
            if "/.staging-" not in f"/{o.key}"
        }
    except StoreUnavailable:
        if cached and _cache_intact(dest, cached):
            log.warning("%s unreachable; using verified cache at %s", uri, dest)
            return dest
        raise
    if not remote:
        raise ObjectNotFound(f"nothing under {uri}")
    fingerprint = {rel: o.etag for rel, o in remote.items()}
    if cached and cached.get("fingerprint") == fingerprint and _cache_intact(dest, cached):
        return dest

    published = (
        parse_checksums(store.read_bytes(_join(prefix, CHECKSUM_FILE)).decode())
        if CHECKSUM_FILE in remote
        else None
    )
    wanted = sorted(published) if published is not None else sorted(remote)
    with atomic_dir(dest) as staging:
        files = {
            rel: store.get_file(
                _join(prefix, rel), staging / _safe_relpath(rel), (published or {}).get(rel)
            )
            for rel in wanted
        }
        record = {"uri": uri, "fingerprint": fingerprint, "files": files}
        (staging / CACHE_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
    return dest


def _read_cache_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cache_intact(dest: Path, record: dict) -> bool:
    files: dict[str, str] = record.get("files", {})
    return bool(files) and all(
        (dest / rel).is_file() and sha256_file(dest / rel) == digest
        for rel, digest in files.items()
    )
