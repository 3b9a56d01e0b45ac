"""Connection hygiene for the KServe servers: what uvicorn (0.55) and KServe leave open.

- `GuardedHttpToolsProtocol`, uvicorn's httptools protocol plus read deadlines it lacks: a
  request's headers must arrive within ``serving.header_timeout_s`` of its first byte (of the
  connection, for its first request) and its body within ``body_timeout_s`` of its headers;
  otherwise 408 and the connection is closed (a silent close when nothing was sent). uvicorn's
  own keep-alive timeout (``keep_alive_timeout_s``) covers idle connections between requests.
  The request line and headers are held to ``max_header_bytes`` (431, closed): llhttp sets no
  limit and uvicorn keeps them in memory until they end.
- `ConnectionGuard`: at most ``max_connections`` open connections (default: the file-descriptor
  limit less a reserve, after `raise_fd_limit`). At the limit a new connection closes the
  connection that has been idle longest (no request in progress); if every connection is busy,
  the new one is closed. So idle or slow clients can never lock everyone else out by holding
  every descriptor, and ``accept`` never meets EMFILE.
- `RequestGuard`, an ASGI middleware: requests in flight (``max_concurrent_requests``, health
  and metrics exempt) and request body bytes in flight (``max_inflight_request_bytes``) are
  bounded, both answered 503 with ``Retry-After`` beyond; ``max_request_bytes`` is enforced as
  the body streams in, chunked or not (413, connection closed, before the body is read when its
  declared length is already too large); an exception no handler mapped becomes a 500 whose
  connection is closed (``Connection: close``), logged once per kind and rate-limited, never
  echoing the request.
- `RepeatFilter`: repeated warnings and errors (the same message from the same place) are
  logged at most once per interval, with a count of those dropped.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aads.config import ServingSettings
from aads.errors import AADSError, BadInput, TooLarge, Unavailable, http_status
from aads.telemetry import observe_request
from serving.routes import PROBE_PATHS, inference_protocol

log = logging.getLogger("aads.serving.http")

FD_RESERVE = 256
"""Descriptors kept free of client connections: model files, sockets to predictors, logs."""


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(settings: ServingSettings, fd_limit: int) -> int:
    """``max_connections``, or the descriptor limit less `FD_RESERVE` (at least 16)."""
    derived = max(16, fd_limit - FD_RESERVE)
    return min(settings.max_connections, derived) if settings.max_connections else derived


# --------------------------------------------------------------------------- connections


class ConnectionGuard:
    """Counts a server's connections and knows which are idle, oldest first."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open = 0
        self.idle: dict[GuardedHttpToolsProtocol, None] = {}  # insertion order = idle since
        self.evicted = 0
        self.refused = 0

    def opened(self, conn: GuardedHttpToolsProtocol) -> bool:
        """Admit a new connection, closing the longest-idle ones to stay within the limit;
        False (and the new one closed) when every open connection is busy."""
        self.open += 1
        while self.open > self.max_connections:
            victim = next(iter(self.idle), None)
            if victim is None:
                self.refused += 1
                log.warning("connection limit %d reached, all busy: refusing", self.max_connections)
                self.closed(conn)
                conn.transport.close()
                return False
            self.evicted += 1
            self.closed(victim)
            victim.transport.close()
        return True

    def mark_idle(self, conn: GuardedHttpToolsProtocol) -> None:
        self.idle.pop(conn, None)
        self.idle[conn] = None

    def mark_busy(self, conn: GuardedHttpToolsProtocol) -> None:
        self.idle.pop(conn, None)

    def closed(self, conn: GuardedHttpToolsProtocol) -> None:
        """Forget a connection (once, however often it is reported)."""
        if not conn.counted:
            return
        conn.counted = False
        self.open -= 1
        self.idle.pop(conn, None)


class GuardedConfig(uvicorn.Config):
    """uvicorn's settings plus what `GuardedHttpToolsProtocol` reads."""

    def __init__(self, *args: Any, guard: ConnectionGuard, settings: ServingSettings, **kw: Any):
        super().__init__(*args, http=GuardedHttpToolsProtocol, **kw)
        self.guard = guard
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.max_header_bytes = settings.max_header_bytes


_TIMEOUT_BODY = orjson.dumps({"error": "request not received in time; connection closed"})
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n"
) + _TIMEOUT_BODY


LINGER_S = 2.0
LINGER_BYTES = 64 * 2**20
"""After answering a request whose body is still arriving (a 413), keep reading and dropping
it for this long (or this many bytes) before closing, so the client reads the answer instead
of a connection reset (what nginx calls a lingering close)."""


class _LingeringTransport:
    """The request cycle's view of the transport: closing it lingers (see `LINGER_S`)."""

    def __init__(self, transport: asyncio.Transport, conn: GuardedHttpToolsProtocol) -> None:
        self._transport, self._conn = transport, conn

    def close(self) -> None:
        self._conn.linger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read deadlines, lingering close and
    the connection guard (see the module docstring)."""

    def __init__(self, config: GuardedConfig, *args: Any, **kw: Any) -> None:
        super().__init__(config, *args, **kw)
        self.guard = config.guard
        self.header_timeout_s = config.header_timeout_s
        self.body_timeout_s = config.body_timeout_s
        self.max_header_bytes = config.max_header_bytes
        self.header_bytes = 0  # of the current request's line and headers
        self.headers_too_large = False
        self.deadline: asyncio.TimerHandle | None = None
        self.counted = False
        self.started = False  # bytes of the current request have arrived
        self.lingering = False
        self.dropped = 0  # bytes dropped while lingering

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)

    def linger(self) -> None:
        """Close now if the request was read whole; else half-close, drop what still
        arrives for `LINGER_S`, then close."""
        transport = self.transport
        if not self.started or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        self._disarm()
        self.lingering = True
        transport.write_eof()
        transport.resume_reading()
        self.loop.call_later(LINGER_S, transport.close)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.counted = True
        if self.guard.opened(self):
            self.guard.mark_idle(self)
            self._arm(self.header_timeout_s)  # the first request's headers, from connect

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.closed(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.started = True
        self.header_bytes = 0
        self.guard.mark_busy(self)
        if self.deadline is None:
            self._arm(self.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header_bytes(self, n: int) -> None:
        """Headers are held in memory until they end: refuse them past the limit (raising
        here stops the parser, and uvicorn answers through `send_400_response`)."""
        self.header_bytes += n
        if self.header_bytes > self.max_header_bytes:
            self.headers_too_large = True
            raise ValueError("request headers over the limit")

    def send_400_response(self, msg: str) -> None:
        if not self.headers_too_large:
            super().send_400_response(msg)
            return
        body = orjson.dumps(
            {"error": f"request line and headers over {self.max_header_bytes} bytes"}
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.linger()  # the rest of the headers is still arriving

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _LingeringTransport(self.transport, self)  # type: ignore[assignment]
        self._arm(self.body_timeout_s)

    def on_message_complete(self) -> None:
        self._disarm()
        self.started = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self._disarm()
            self.guard.mark_idle(self)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if self.started and not answered:
            self.transport.write(_REQUEST_TIMEOUT)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application's receive() sees a disconnect
            cycle.message_event.set()
        self.transport.close()


# --------------------------------------------------------------------------- requests


class RequestTooLarge(TooLarge):
    """A request body over ``serving.max_request_bytes`` (413)."""


class ServerBusy(Unavailable):
    """Too many requests, or too many request bytes, in flight (503 with Retry-After)."""


class BadContentLength(BadInput):
    """A Content-Length header that is not a number (400)."""


class RequestGuard:
    """ASGI middleware: in-flight limits, streaming body limit, closed 500s."""

    def __init__(self, app: Callable, settings: Callable[[], ServingSettings]) -> None:
        self.app = app
        self.settings = settings
        self.requests = 0
        self.body_bytes = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.settings()
        exempt = scope["path"] in PROBE_PATHS
        try:
            declared = _declared_length(scope, limits)
            if not exempt and self.requests >= limits.max_concurrent_requests:
                raise ServerBusy("server busy: too many requests in flight, retry shortly")
            reserved = declared or 0
            if reserved and self.body_bytes + reserved > limits.max_inflight_request_bytes:
                raise ServerBusy("server busy: too many large requests in flight, retry shortly")
        except AADSError as refused:
            status = http_status(refused)
            await _send_error(send, status, str(refused), close=True)
            _count_refusal(scope["path"], status, limits)
            return
        counted = not exempt
        self.requests += counted
        self.body_bytes += reserved
        state = {"received": 0, "reserved": reserved, "started": False, "status": 0}

        async def guarded_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limits.max_request_bytes:
                    raise RequestTooLarge(_too_large(limits))
                grow = state["received"] - state["reserved"]
                if grow > 0:  # chunked: reserve as it arrives
                    if self.body_bytes + grow > limits.max_inflight_request_bytes:
                        raise ServerBusy("server busy: too many large requests in flight")
                    self.body_bytes += grow
                    state["reserved"] += grow
            return message

        async def guarded_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except AADSError as refused:  # refused here, or a limit the app did not answer
            if not state["started"]:
                await _send_error(send, http_status(refused), str(refused), close=True)
        except Exception as err:  # noqa: BLE001 - the last line: nothing may leave unmapped
            log.error(
                "unhandled %s on %s %s",
                type(err).__name__,
                scope["method"],
                scope["path"],
                exc_info=err,
            )
            if not state["started"]:
                await _send_error(send, 500, "internal error", close=True)
        finally:
            self.requests -= counted
            self.body_bytes -= state["reserved"]


def _count_refusal(path: str, status: int, limits: ServingSettings) -> None:
    """An inference request refused here never reaches its route, which counts the others:
    count it as the route would (a shed 503 is what a busy-server alert needs to see)."""
    protocol = inference_protocol(path)
    if protocol is not None and limits.metrics:
        observe_request(protocol, status, 0.0)


def _declared_length(scope: dict, limits: ServingSettings) -> int | None:
    """The Content-Length header, refused at once when over the limit (413)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadContentLength("Content-Length is not a number") from None
            if length > limits.max_request_bytes:
                raise RequestTooLarge(_too_large(limits, length))
            return length
    return None


def _too_large(limits: ServingSettings, length: int | None = None) -> str:
    size = f"{length} bytes" if length is not None else "the request body"
    return (
        f"{size} is over the {limits.max_request_bytes} byte limit "
        "(serving.max_request_bytes): send fewer or smaller images per request"
    )


async def _send_error(send: Callable, status: int, message: str, *, close: bool) -> None:
    body = orjson.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --------------------------------------------------------------------------- logs


class RepeatFilter(logging.Filter):
    """Warnings and errors: the same message from the same place at most once per
    `interval_s` (the next one says how many were dropped); lower levels pass."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.seen: dict[tuple, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.levelno, str(record.msg), exc, record.pathname, record.lineno)
        now = time.monotonic()
        last, dropped = self.seen.get(key, (-float("inf"), 0))
        if now - last < self.interval_s:
            self.seen[key] = (last, dropped + 1)
            return False
        if len(self.seen) > 10_000:  # many distinct messages: start over rather than grow
            self.seen.clear()
        self.seen[key] = (now, 0)
        if dropped:
            record.msg = (
                f"{record.msg} [{dropped} more like this in the last {self.interval_s:.0f} s]"
            )
        return True


def quiet_repeats(interval_s: float = 10.0) -> None:
    """Put one `RepeatFilter` on every handler configured so far (KServe's and uvicorn's)."""
    repeat = RepeatFilter(interval_s)
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RepeatFilter) for f in handler.filters):
                handler.addFilter(repeat)
