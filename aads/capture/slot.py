"""`CaptureSlot`: the router's one capture writer, kept in step with a spec that is reloaded
while serving (`aads.specwatch`).

The writer is built when the router loads, from ``serving.capture`` and ``storage``. A reloaded
spec is a new `PlatformConfig` object; the first request answered under it asks the slot for
its writer, and when the capture settings or the storage differ the slot builds a new writer
(or none, when capture was switched off), exports it on ``/metrics`` instead of the old one,
and closes the old one on a thread of its own (it flushes what it still holds, for up to
`CLOSE_TIMEOUT_S`): the request that switched never waits for the old store. A spec whose
capture store cannot even be opened (a bad URI) leaves capture off, logged once per spec.
"""

from __future__ import annotations

import logging
import threading

from aads import telemetry
from aads.capture.writer import CaptureWriter
from aads.config import PlatformConfig

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0
"""What a writer that is closed (reload, shutdown) gets to write what it still holds."""


class CaptureSlot:
    """The capture writer for the spec a request is answered under (None: capture is off)."""

    def __init__(self, config: PlatformConfig, *, metrics: bool = True) -> None:
        self.metrics = metrics
        self._config: PlatformConfig | None = None
        self._key: tuple | None = None
        self._writer: CaptureWriter | None = None
        self._lock = threading.Lock()
        self._closers: list[threading.Thread] = []
        self._closed = False
        self.writer_for(config)

    @property
    def writer(self) -> CaptureWriter | None:
        return self._writer

    def writer_for(self, config: PlatformConfig) -> CaptureWriter | None:
        """The writer for `config` (built when its capture settings or storage changed)."""
        if config is self._config:  # the common case: the same spec object as last time
            return self._writer
        with self._lock:
            if config is self._config or self._closed:
                return self._writer
            key = (config.serving.capture, config.storage)
            if key != self._key:
                self._swap(key)
            self._config = config
            return self._writer

    def _swap(self, key: tuple) -> None:
        settings, storage = key
        old, new = self._writer, None
        if settings.enabled:
            try:
                new = CaptureWriter.from_settings(settings, storage)
                log.info("capturing to %s", new.target.description)
            except Exception as err:  # noqa: BLE001 - capture never keeps a router from serving
                log.error("capture is off: its store cannot be opened: %s", err)
        self._writer, self._key = new, key
        if self.metrics:
            telemetry.track_capture(new)
        if old is not None:
            self._close_later(old)

    def _close_later(self, writer: CaptureWriter) -> None:
        # Not a daemon: at interpreter exit Python waits for it, so a writer closed during
        # shutdown still writes what it holds (bounded by CLOSE_TIMEOUT_S).
        thread = threading.Thread(target=_close, args=(writer,), name="aads-capture-close")
        thread.start()
        self._closers.append(thread)

    def close(self) -> None:
        """Close the current writer (in the background) and stop exporting it; from now on
        nothing is captured (a shutting-down router's last requests are still answered)."""
        with self._lock:
            writer, self._writer = self._writer, None
            self._closed = True
        if self.metrics:
            telemetry.track_capture(None)
        if writer is not None:
            self._close_later(writer)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the writers being closed (tests, and a process's last moments)."""
        for thread in self._closers:
            thread.join(timeout)


def _close(writer: CaptureWriter) -> None:
    flushed = writer.close(CLOSE_TIMEOUT_S)
    stats = writer.stats()
    log.info(
        "capture writer for %s closed%s: %d written, %d dropped in all",
        writer.target.description,
        "" if flushed else f" after {CLOSE_TIMEOUT_S:.0f} s, the rest dropped",
        stats.written,
        sum(stats.dropped.values()),
    )
