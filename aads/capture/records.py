"""The capture store's layout and records: what is kept, where it goes, and reading it back.

Layout, under the store's root (`CaptureSettings.store`, else the spec's bucket)::

    <prefix>/<crop>/<YYYY-MM-DD>/<sha256>.jpg    the image, pixels only (see `images`)
    <prefix>/<crop>/<YYYY-MM-DD>/<sha256>.json   its `CaptureRecord`, written after the image

``<sha256>`` is the hash of the bytes the client sent (the router's canary split hashes the
same bytes); ``<YYYY-MM-DD>`` is the UTC day of the answer. Images the router itself rejects
("not one of the known crops") have no crop: they go under `UNKNOWN_CROP`, a name no crop can
have (crop names start with a letter). A reader trusts an image only once its record exists.

Which answers are kept (`keep_reason`): every ``unknown``, always; of the answers given by
name, those whose hash falls under ``sample_rate`` (`in_sample`). Because that choice depends on
the hash alone, the records marked ``in_sample`` are an unbiased sample of all the traffic
(unknown or not): drift statistics compare those, and the unknown rate is estimated from the
kept unknowns and the sampled knowns with the sample rate recorded in each record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aads.answer import Verdict, answer_field, verdict_of
from aads.capture.settings import CaptureSettings
from aads.config import StorageSettings
from aads.errors import BadInput
from aads.progress import Progress
from aads.storage import LocalStore, ObjectStore, S3Store, StorageError, open_store

FORMAT = "aads-capture/1"
UNKNOWN_CROP = "_unknown_crop"
"""Folder of images the router answered "not one of the known crops" (they have no crop)."""
IMAGE_SUFFIX, RECORD_SUFFIX = ".jpg", ".json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FOLDER = re.compile(r"[a-z][a-z0-9_]*|" + re.escape(UNKNOWN_CROP))
_READERS = 8
MAX_DAY_LISTINGS = 31

KeepReason = Literal["unknown", "not_a_known_crop", "sampled"]
Variant = Literal["champion", "canary"]


class CaptureError(BadInput):
    """A capture store or record that cannot be read as asked."""


answer_verdict = verdict_of
"""`aads.answer.verdict_of`, under the name capture's readers have used."""


def in_sample(sha256: str, rate: float) -> bool:
    """Whether an image hash falls in the sampled share `rate` (deterministic per image).

    Uses bytes 8..16 of the hash: the canary split uses bytes 0..8, so which images are sampled
    does not depend on which model answered them.
    """
    return int(sha256[16:32], 16) < rate * 2**64


def keep_reason(verdict: Verdict, sampled: bool) -> KeepReason | None:
    """Why an answer is kept, or None when it is not."""
    if verdict in ("unknown", "not_a_known_crop"):
        return verdict
    if verdict == "known" and sampled:
        return "sampled"
    return None


def variant_of(answer: Mapping[str, Any] | Any) -> Variant:
    """``canary`` when the router sent the image to the crop's canary, else ``champion``."""
    routing = answer_field(answer, "routing")
    return "canary" if routing and answer_field(routing, "variant") == "canary" else "champion"


class CapturedImage(BaseModel):
    """The stored image (not the upload): its key, hash and size."""

    key: str
    sha256: str
    width: int
    height: int
    bytes: int
    source_format: str = Field("", description="format of the upload: JPEG, PNG, WEBP")


class CaptureRecord(BaseModel):
    """``<sha256>.json``: the answer an image got and the context needed to use it later.

    Never holds request headers, and holds the client's address only when
    ``record_client`` is on. Unknown fields are ignored on read, so an older monitor reads
    records of a newer writer.
    """

    model_config = ConfigDict(extra="ignore")

    format: Literal["aads-capture/1"] = FORMAT
    sha256: str = Field(description="sha256 of the bytes the client sent")
    crop: str | None = Field(description="routed crop; None when not a known crop")
    verdict: Literal["known", "unknown", "not_a_known_crop"]
    reason: KeepReason
    in_sample: bool = Field(description="the hash is under sample_rate: an unbiased sample")
    sample_rate: float = Field(ge=0, le=1)
    time: datetime
    request_id: str = ""
    variant: Variant = "champion"
    model: dict[str, str] = Field(default_factory=dict, description="name and version")
    answer: dict[str, Any]
    image: CapturedImage | None = None
    client: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.fullmatch(v):
            raise ValueError("not a lowercase hex sha256")
        return v

    @field_validator("time")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @property
    def folder(self) -> str:
        return self.crop or UNKNOWN_CROP

    @property
    def domain(self) -> str | None:
        """The CONEC domain the adapter's selector picked, when the answer carries it."""
        value = self.answer.get("domain")
        return value if isinstance(value, str) and value else None

    @property
    def nearest_class(self) -> str | None:
        ood = self.answer.get("ood") or {}
        value = ood.get("nearest_class") if isinstance(ood, Mapping) else None
        return value if isinstance(value, str) else None


@dataclass
class RecordSet:
    """Records read for a crop and a time window, and the keys that could not be read."""

    records: list[CaptureRecord] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CaptureStore:
    """The capture layout on one object store (`open_capture_store` builds it)."""

    store: ObjectStore
    prefix: str

    @property
    def description(self) -> str:
        return f"{self.store.description} under {self.prefix}/"

    def day_prefix(self, folder: str, day: date) -> str:
        if not _FOLDER.fullmatch(folder):
            raise CaptureError(f"{folder!r} is not a crop name")
        return f"{self.prefix}/{folder}/{day.isoformat()}/"

    def keys(self, folder: str, day: date, sha256: str) -> tuple[str, str]:
        """(image key, record key) of one capture."""
        base = self.day_prefix(folder, day) + sha256
        return base + IMAGE_SUFFIX, base + RECORD_SUFFIX

    def records(
        self,
        folder: str,
        since: datetime,
        until: datetime | None = None,
        *,
        progress: Progress | None = None,
    ) -> RecordSet:
        """Every readable record of `folder` answered in [since, until], oldest first.

        Lists one day prefix at a time, so a week costs seven listings whatever the store
        holds (windows over a month list the crop once); records are fetched in parallel. A
        record that is not valid JSON or not a `CaptureRecord` is reported in ``unreadable``,
        never fatal.
        """
        until = until or datetime.now(UTC)
        since, until = since.astimezone(UTC), until.astimezone(UTC)
        if since > until:
            raise CaptureError(f"the window starts ({since:%Y-%m-%d %H:%M}) after it ends")
        keys = self._record_keys(folder, since.date(), until.date())
        out = RecordSet()
        done = 0

        def read(key: str) -> CaptureRecord | str:
            try:
                return CaptureRecord.model_validate_json(self.store.read_bytes(key))
            except (ValidationError, ValueError):
                return key

        with ThreadPoolExecutor(_READERS) as pool:
            for result in pool.map(read, keys):
                done += 1
                if isinstance(result, str):
                    out.unreadable.append(result)
                elif since <= result.time <= until:
                    out.records.append(result)
                if progress:
                    progress(done, len(keys))
        out.records.sort(key=lambda r: (r.time, r.sha256))
        return out

    def download(self, records: list[CaptureRecord], folder: Path) -> list[Path | None]:
        """The stored images of `records` as files ``<folder>/<sha256>.jpg`` (fetched in
        parallel, each checked against the hash recorded when it was written); None where an
        image is missing or does not match. On disk rather than in memory: a review may read
        thousands of photos."""

        def fetch(record: CaptureRecord) -> Path | None:
            if record.image is None:
                return None
            path = Path(folder) / f"{record.sha256}{IMAGE_SUFFIX}"
            try:
                self.store.get_file(record.image.key, path, expected_sha256=record.image.sha256)
            except (StorageError, OSError):
                return None
            return path

        with ThreadPoolExecutor(_READERS) as pool:
            return list(pool.map(fetch, records))

    def _record_keys(self, folder: str, first: date, last: date) -> list[str]:
        """Record keys of `folder` dated first..last: one listing per day for short windows,
        one listing of the crop (filtered by the date in the key) beyond `MAX_DAY_LISTINGS`."""
        days = (last - first).days + 1
        if days <= MAX_DAY_LISTINGS:
            prefixes = [self.day_prefix(folder, first + timedelta(days=d)) for d in range(days)]
        else:
            prefixes = [self.day_prefix(folder, first).rsplit("/", 2)[0] + "/"]
        low, high = first.isoformat(), last.isoformat()
        return [
            o.key
            for prefix in prefixes
            for o in self.store.list(prefix)
            if o.key.endswith(RECORD_SUFFIX) and low <= o.key.rsplit("/", 2)[-2] <= high
        ]

    def image_url(
        self, key: str, *, presign: timedelta | None = None, url_prefix: str | None = None
    ) -> str:
        """Where a labelling tool finds an image.

        ``url_prefix`` + key when given (an HTTP gateway); on S3 a presigned HTTPS URL when
        `presign` is given, else ``s3://bucket/key`` (Label Studio resolves those through a
        connected S3 source storage); in a local folder Label Studio's local-files URL
        relative to the folder (serve it with ``LOCAL_FILES_DOCUMENT_ROOT`` set to it).
        """
        if url_prefix:
            return url_prefix.rstrip("/") + "/" + quote(key)
        if isinstance(self.store, S3Store):
            if presign is not None:
                return self.store.client.presigned_get_object(
                    self.store.bucket, key, expires=presign
                )
            return f"s3://{self.store.bucket}/{key}"
        if isinstance(self.store, LocalStore):
            return f"/data/local-files/?d={quote(key)}"
        raise CaptureError(f"no URL form for {self.store.description}; give a URL prefix")


def open_capture_store(
    settings: CaptureSettings,
    storage: StorageSettings,
    store: str | None = None,
    prefix: str | None = None,
) -> CaptureStore:
    """The capture store: `store` (a CLI override), else ``settings.store``, else the spec's
    bucket (with its ``storage.prefix``); keys under ``<prefix>/`` (``settings.prefix``)."""
    uri = store or settings.store
    if not uri:
        base = storage.prefix.strip("/")
        uri = f"s3://{storage.bucket}" + (f"/{base}" if base else "")
    try:
        obj, root = open_store(uri, storage)
    except StorageError as err:
        raise CaptureError(f"capture store {uri!r}: {err}") from None
    if prefix is not None:
        prefix = CaptureSettings(prefix=prefix).prefix  # the same check as the spec's
    full = "/".join(p for p in (root.strip("/"), prefix or settings.prefix) if p)
    return CaptureStore(obj, full)
