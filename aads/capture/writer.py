"""`CaptureWriter`: what the router calls for every answer; it never delays or fails a request.

``offer(image, answer, ...)`` does only what decides whether to keep the image (the answer's
verdict, the image's sha256 for the sample and the repeat check) and puts it on a bounded
queue; writer threads do the rest (re-encode without metadata, write image then record). The
queue is bounded in items and in bytes. When it is full, or the store is failing, images are
dropped and counted by reason: answers never wait for the store.

Because `offer` is a plain non-blocking call and the writing happens on its own threads, the
same writer serves an asyncio server (call `offer` from the event loop, ``await aclose()`` on
shutdown) and threaded code alike.

After a store failure (the store's own bounded retries exhausted), the writer stops trying for
``retry_after_s`` and drops what arrives as ``store_unavailable``, so a dead store costs one
timeout, not one per image. Counters for monitoring are plain attributes (`stats()` returns a
consistent snapshot): ``offered``, ``queued``, ``written``, ``dropped[reason]``,
``skipped[reason]`` and the queue's depth and bytes.

Wiring in a server (the router): build one writer at load,
``CaptureWriter.from_settings(spec.serving.capture, spec.storage)``; after answering an image,
``offer(image_bytes, answer, request_id=..., sha256=...)`` (pass the hash the canary split
already computed, so the image is hashed once); on shutdown ``await writer.aclose()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aads.capture.images import CaptureImageError, CaptureImageTooLarge, pixels_only_jpeg
from aads.capture.records import (
    UNKNOWN_CROP,
    CapturedImage,
    CaptureRecord,
    CaptureStore,
    answer_verdict,
    in_sample,
    keep_reason,
    open_capture_store,
    variant_of,
)
from aads.capture.settings import CaptureSettings
from aads.config import SLUG, StorageSettings
from aads.storage import StorageError, StoreUnavailable

log = logging.getLogger(__name__)

DROP_REASONS = (
    "queue_full",  # the queue (items or bytes) is full: the store is slower than the traffic
    "store_unavailable",  # the store did not answer (or did not, less than retry_after_s ago)
    "store_error",  # the store refused the write (permissions, no bucket ...)
    "undecodable",  # the bytes are not an image capture can decode
    "too_large",  # more pixels than max_pixels
    "shutdown",  # still queued when close() ran out of time
    "invalid",  # an offer the writer cannot use (not bytes, a crop name that is no slug)
    "internal",  # a bug: logged with its traceback
)
SKIP_REASONS = (
    "not_sampled",  # answered by name and not in the sampled share
    "duplicate",  # the same image was captured recently (memory) or today (store)
    "no_verdict",  # an error entry or a scouting answer: nothing to learn from
    "closed",  # offered after close()
    "disabled",  # serving.capture.enabled is false: the writer keeps nothing, runs no thread
)
_SLUG = re.compile(SLUG)


@dataclass(frozen=True)
class CaptureStats:
    """A consistent snapshot of the writer's counters (what `/metrics` will export)."""

    offered: int
    queued: int
    written: int
    dropped: dict[str, int]
    skipped: dict[str, int]
    queue_depth: int
    queue_bytes: int
    store_down: bool


@dataclass(frozen=True)
class _Item:
    image: bytes
    sha256: str
    folder: str
    crop: str | None
    verdict: str
    reason: str
    in_sample: bool
    time: datetime
    request_id: str
    variant: str
    answer: dict[str, Any]
    client: str | None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CaptureWriter:
    """Keeps unknowns and a hash-chosen sample of the other answers in a `CaptureStore`."""

    def __init__(
        self,
        settings: CaptureSettings,
        target: CaptureStore,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.settings = settings
        self.target = target
        self.clock = clock
        self.offered = self.queued = self.written = 0
        self.dropped: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._queue: queue.Queue[_Item | None] = queue.Queue(settings.queue_size)
        self._bytes = 0
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._closed = False
        self._abandon = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"aads-capture-{i}", daemon=True)
            for i in range(settings.writers if settings.enabled else 0)
        ]
        for t in self._threads:
            t.start()

    @classmethod
    def from_settings(
        cls, settings: CaptureSettings, storage: StorageSettings, **kwargs: Any
    ) -> CaptureWriter:
        """A writer on the spec's capture store, with capture's short timeouts and retries
        (a request's image is worth one quick try, not the minutes a model download gets)."""
        quick = storage.model_copy(
            update={"retries": settings.store_retries, "timeout_s": settings.store_timeout_s}
        )
        return cls(settings, open_capture_store(settings, quick), **kwargs)

    # ------------------------------------------------------------------ the request path

    def offer(
        self,
        image: bytes,
        answer: Mapping[str, Any] | Any,
        *,
        crop: str | None = None,
        request_id: str = "",
        variant: str | None = None,
        sha256: str | None = None,
        client: str | None = None,
    ) -> str:
        """Consider one answered image; returns what happened (``queued`` or the reason it
        was skipped or dropped). Never raises and never waits on the store.

        `answer` is the answer as sent to the client (a dict, or a pydantic model); `crop`
        defaults to the answer's; `variant` (``champion``/``canary``) to the answer's
        ``routing.variant``; `sha256` may pass the hash the router already computed for the
        canary split; `client` is stored only when ``record_client`` is on.
        """
        try:
            return self._offer(image, answer, crop, request_id, variant, sha256, client)
        except Exception:  # noqa: BLE001 - capture must never fail the request it rides on
            log.exception("capture offer failed")
            return self._drop("internal")

    def _offer(
        self,
        image: bytes,
        answer: Mapping[str, Any] | Any,
        crop: str | None,
        request_id: str,
        variant: str | None,
        sha256: str | None,
        client: str | None,
    ) -> str:
        with self._lock:
            self.offered += 1
            if self._closed:
                return self._skip_locked("closed")
            if not self.settings.enabled:
                return self._skip_locked("disabled")
        is_model = hasattr(answer, "model_dump")
        if not isinstance(image, bytes | bytearray | memoryview) or not (
            is_model or isinstance(answer, Mapping)
        ):
            return self._drop("invalid")
        verdict = answer_verdict(answer)
        if verdict == "none":
            return self._skip("no_verdict")
        digest = sha256 or hashlib.sha256(image).hexdigest()
        sampled = in_sample(digest, self.settings.sample_rate)
        reason = keep_reason(verdict, sampled)
        if reason is None:
            return self._skip("not_sampled")
        # Serialised only when kept: the wire form, as the client got it.
        answer = answer.model_dump(mode="json", exclude_none=True) if is_model else answer
        if not isinstance(answer, Mapping):
            return self._drop("invalid")
        crop = None if verdict == "not_a_known_crop" else (crop or answer.get("crop"))
        if crop is not None and (not isinstance(crop, str) or not _SLUG.fullmatch(crop)):
            return self._drop("invalid")
        item = _Item(
            image=bytes(image),
            sha256=digest,
            folder=crop or UNKNOWN_CROP,
            crop=crop,
            verdict=verdict,
            reason=reason,
            in_sample=sampled,
            time=self.clock(),
            request_id=str(request_id)[:256],
            variant=variant if variant in ("champion", "canary") else variant_of(answer),
            answer=dict(answer),
            client=client if self.settings.record_client else None,
        )
        with self._lock:
            if digest in self._recent:
                self._recent.move_to_end(digest)
                return self._skip_locked("duplicate")
            if self._bytes + len(item.image) > self.settings.queue_bytes:
                return self._drop_locked("queue_full")
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                return self._drop_locked("queue_full")
            self._bytes += len(item.image)
            self.queued += 1
            self._remember_locked(digest)
        return "queued"

    # ------------------------------------------------------------------ the writer threads

    def _run(self) -> None:
        _yield_cpu()
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(item)
            except Exception:  # noqa: BLE001 - a writer thread must survive anything
                log.exception("capture write failed")
                self._drop("internal", item)
            finally:
                if item is not None:
                    with self._lock:
                        self._bytes -= len(item.image)
                self._queue.task_done()

    def _write(self, item: _Item) -> None:
        if self._abandon.is_set():
            self._drop("shutdown", item)
            return
        if time.monotonic() < self._retry_at:
            self._drop("store_unavailable", item)
            return
        day = item.time.astimezone(UTC).date()
        image_key, record_key = self.target.keys(item.folder, day, item.sha256)
        try:
            if self.target.store.exists(record_key):
                self._skip("duplicate")
                return
            clean = pixels_only_jpeg(
                item.image,
                max_side=self.settings.max_side,
                max_pixels=self.settings.max_pixels,
                quality=self.settings.jpeg_quality,
            )
            stored = self.target.store.write_bytes(image_key, clean.jpeg)
            record = CaptureRecord(
                sha256=item.sha256,
                crop=item.crop,
                verdict=item.verdict,
                reason=item.reason,
                in_sample=item.in_sample,
                sample_rate=self.settings.sample_rate,
                time=item.time,
                request_id=item.request_id,
                variant=item.variant,
                model=_model_of(item.answer),
                answer=item.answer,
                image=CapturedImage(
                    key=image_key,
                    sha256=stored.sha256 or hashlib.sha256(clean.jpeg).hexdigest(),
                    width=clean.width,
                    height=clean.height,
                    bytes=len(clean.jpeg),
                    source_format=clean.source_format,
                ),
                client=item.client,
            )
            self.target.store.write_bytes(record_key, record.model_dump_json(indent=1).encode())
        except CaptureImageTooLarge:
            self._drop("too_large", item)
            return
        except CaptureImageError:
            self._drop("undecodable", item)
            return
        except StoreUnavailable as err:
            self._store_down(err)
            self._drop("store_unavailable", item)
            return
        except StorageError as err:
            log.warning("capture store refused %s: %s", record_key, err)
            self._drop("store_error", item)
            return
        with self._lock:
            self.written += 1
            if self._retry_at:
                log.info("capture store %s is answering again", self.target.description)
                self._retry_at = 0.0

    def _store_down(self, err: Exception) -> None:
        with self._lock:
            first = self._retry_at == 0.0
            self._retry_at = time.monotonic() + self.settings.retry_after_s
        if first:
            log.warning(
                "capture store down, dropping captures for %.0f s at a time: %s",
                self.settings.retry_after_s,
                err,
            )

    # ------------------------------------------------------------------ counters

    def _skip(self, reason: str) -> str:
        with self._lock:
            return self._skip_locked(reason)

    def _skip_locked(self, reason: str) -> str:
        self.skipped[reason] += 1
        return reason

    def _drop(self, reason: str, item: _Item | None = None) -> str:
        with self._lock:
            return self._drop_locked(reason, item)

    def _drop_locked(self, reason: str, item: _Item | None = None) -> str:
        self.dropped[reason] += 1
        if item is not None:  # not stored: the image may be captured when it comes again
            self._recent.pop(item.sha256, None)
        return reason

    def _remember_locked(self, digest: str) -> None:
        if self.settings.dedupe_memory == 0:
            return
        self._recent[digest] = None
        while len(self._recent) > self.settings.dedupe_memory:
            self._recent.popitem(last=False)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def stats(self) -> CaptureStats:
        with self._lock:
            return CaptureStats(
                offered=self.offered,
                queued=self.queued,
                written=self.written,
                dropped=dict(self.dropped),
                skipped=dict(self.skipped),
                queue_depth=self._queue.qsize(),
                queue_bytes=self._bytes,
                store_down=time.monotonic() < self._retry_at,
            )

    # ------------------------------------------------------------------ lifecycle

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written or dropped; False on timeout."""
        done = self._queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking offers, write what is queued (for up to `timeout` seconds: the rest is
        dropped as ``shutdown``), stop the threads. True when nothing was left behind."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        flushed = self.flush(timeout)
        if not flushed:
            self._abandon.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=max(timeout, self.settings.store_timeout_s + 1))
        return flushed

    async def aclose(self, timeout: float = 10.0) -> bool:
        """`close` for an asyncio server's shutdown hook, off the event loop."""
        return await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _yield_cpu() -> None:
    """Lower this writer thread's CPU priority (Linux: per-thread nice +10), so when the
    cores are busy the threads answering requests are scheduled first; a no-op elsewhere."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _model_of(answer: Mapping[str, Any]) -> dict[str, str]:
    model = answer.get("model")
    if not isinstance(model, Mapping):
        return {}
    return {k: str(model[k]) for k in ("name", "version") if model.get(k) not in (None, "")}
