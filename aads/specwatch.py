"""Follow a mounted platform spec while serving: the router and the scouting service pick up a
new canary, predictor URL or crop without a restart.

A ConfigMap volume is updated by the kubelet's atomic writer: the new files go into a fresh
``..<timestamp>/`` folder, a ``..data_tmp`` symlink to it is renamed over ``..data`` (one
atomic rename), and the old folder is removed; the file the server opens (``spec.yaml``) is a
symlink to ``..data/spec.yaml`` and never changes itself. So `SpecWatcher` polls the file's
resolved path and that file's inode, size and mtime (a plain file edited in place changes the
last three) every `interval_s` seconds: a few syscalls, no inotify, no dependency.

When they change, the new spec is read and validated (`aads.config.load_config`, plus the
caller's `adjust`, e.g. command-line overrides) before anything switches; `current` is then
replaced in one assignment, so each request, which reads `current` once, is answered wholly
under the old spec or wholly under the new one. A spec that does not validate is not used: the
old one keeps serving, and one clear line is logged per bad version (not per poll).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from aads.config import ConfigError, PlatformConfig, load_config

log = logging.getLogger("aads.specwatch")

Stamp = tuple[str, int, int, int]


class SpecWatcher:
    """The last valid spec at `path`, kept current by a polling thread (`start`)."""

    def __init__(
        self,
        path: Path,
        *,
        interval_s: float = 2.0,
        adjust: Callable[[PlatformConfig], PlatformConfig] = lambda config: config,
        on_change: Callable[[PlatformConfig], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.adjust = adjust
        self.on_change = on_change
        self._stamp = self._read_stamp()
        self.current: PlatformConfig = adjust(load_config(self.path))
        self.reloads = 0
        self._rejected: Stamp | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read_stamp(self) -> Stamp:
        target = os.path.realpath(self.path)
        st = os.stat(target)
        return (target, st.st_ino, st.st_size, st.st_mtime_ns)

    def poll(self) -> bool:
        """Reload if the file changed and the new spec is valid; True when it switched."""
        try:
            stamp = self._read_stamp()
        except OSError:
            return False  # mid-swap or briefly absent: the next poll sees the new one
        if stamp == self._stamp or stamp == self._rejected:
            return False
        try:
            config = self.adjust(load_config(self.path))
        except ConfigError as err:
            self._rejected = stamp
            log.error(
                "spec %s changed but is not valid; still serving the previous one: %s",
                self.path,
                " ".join(str(err).split()),
            )
            return False
        self.current, self._stamp, self._rejected = config, stamp, None
        self.reloads += 1
        log.info("spec %s reloaded (%s)", self.path, stamp[0])
        if self.on_change is not None:
            self.on_change(config)
        return True

    def start(self) -> SpecWatcher:
        """Poll in a daemon thread until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aads-specwatch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad read
                log.exception("spec %s: reload failed; still serving the previous one", self.path)
