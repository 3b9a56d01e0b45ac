"""Serve on this machine: a router and one multi-adapter predictor as local processes.

What `aads serve` and the end of `make demo` run: the same ``python -m serving.predictor`` /
``python -m serving.router`` entry points a cluster runs in the serving image, on 127.0.0.1
(or ``host``), each waited for until ``/v2/health/ready`` answers, stopped on exit. The server
processes die with the process that started them, however it ends (Linux ``PR_SET_PDEATHSIG``:
even a ``kill -9`` of `aads serve` leaves no orphan holding a port).

`start_server` / `ServerProcess` are the one way to run a server process (tests and
benchmarks use them too); `predict_files` is the client `aads predict` and the demo use.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from aads.answer import Answer, ErrorEntry
from aads.errors import BadInput, Unavailable
from aads.mlflow_server import free_port

READY_TIMEOUT_S = 180.0
ROUTER_PATHS = ("/v1/models/aads:predict", "/v2/models/aads/infer")
ProgressLine = Callable[[str], None]


class ServingFailed(Unavailable):
    """A server process did not start, or a server could not be reached."""


class BadServerURL(BadInput):
    """A URL that names no AADS router."""


PARENT_ENV = "AADS_DIE_WITH_PARENT"
"""Set by `start_server` to its own pid: the server process then dies with it."""


def die_with_parent() -> None:
    """In a server started by `start_server`: ask Linux for SIGTERM when the starting process
    dies (``PR_SET_PDEATHSIG``), and exit now if it already has. Elsewhere a no-op."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or sys.platform != "linux":
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before the request took effect
        raise SystemExit(f"the process that started this server ({parent}) is gone")


@dataclass
class ServerProcess:
    """One ``python -m serving.<role>`` process and where it answers."""

    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM (KServe's graceful shutdown), then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""


def start_server(
    module: str,
    args: list[str],
    log: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    progress: ProgressLine | None = None,
) -> ServerProcess:
    """Start ``python -m <module> <args> --host --http_port`` and wait until it is ready (a
    `ServingFailed` carrying the end of its log when it exits or times out first)."""
    port = port or free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", module, *args, "--host", host, "--http_port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())},
            cwd=cwd,
        )
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    server = ServerProcess(module.rsplit(".", 1)[-1], f"http://{connect_host}:{port}", proc, log)
    try:
        wait_ready(server, timeout_s, progress)
    except BaseException:
        server.stop(timeout_s=5)
        raise
    return server


def wait_ready(
    server: ServerProcess, timeout_s: float = READY_TIMEOUT_S, progress: ProgressLine | None = None
) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if server.proc.poll() is not None:
            raise ServingFailed(
                f"{server.name} exited ({server.proc.returncode}) before it was ready; "
                f"its log ({server.log}) ends: {server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if progress is not None:
                progress(f"{server.name}: loading ({time.monotonic() - began:.0f} s)")
            time.sleep(0.5)
    raise ServingFailed(
        f"{server.name} at {server.url} not ready after {timeout_s:.0f} s (log: {server.log})"
    )


@dataclass(frozen=True)
class LocalServing:
    router_url: str
    predictor_url: str
    crops: list[str]
    log_dir: Path
    servers: tuple[ServerProcess, ...] = ()

    def wait(self, poll_s: float = 1.0) -> None:
        """Block until a server exits (a `ServingFailed` with its log) or an interrupt."""
        while True:
            for server in self.servers:
                if server.proc.poll() is not None:
                    raise ServingFailed(
                        f"{server.name} stopped ({server.proc.returncode}); its log "
                        f"({server.log}) ends: {server.log_tail()}"
                    )
            time.sleep(poll_s)


@contextmanager
def serve_locally(
    spec_text: str,
    router: str,
    adapters: dict[str, str],
    workdir: Path,
    *,
    tracking_uri: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    progress: ProgressLine | None = None,
) -> Iterator[LocalServing]:
    """Start the predictor (every crop in `adapters`: crop -> folder, s3:// or models:/ URI)
    and the router in front of it (on `port`, default a free one); yield their URLs; stop both
    afterwards."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    predictor_port = free_port()
    predictor_url = f"http://127.0.0.1:{predictor_port}"
    spec = yaml.safe_load(spec_text)
    serving = spec.setdefault("serving", {})
    serving["predictor_urls"] = {crop: predictor_url for crop in adapters}
    serving["predictor_url_template"] = ""  # crops without an adapter get a clear per-image error
    spec_path = workdir / "serving-spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    common = ["--spec", str(spec_path)] + (["--tracking-uri", tracking_uri] if tracking_uri else [])
    adapter_args = [x for crop, src in adapters.items() for x in ("--adapter", f"{crop}={src}")]
    with ExitStack() as stack:
        predictor = start_server(
            "serving.predictor",
            [*adapter_args, *common],
            workdir / "predictor.log",
            port=predictor_port,
            progress=progress,
        )
        stack.callback(predictor.stop)
        routing = start_server(
            "serving.router",
            ["--router", router, *common],
            workdir / "router.log",
            port=port,
            host=host,
            progress=progress,
        )
        stack.callback(routing.stop)
        yield LocalServing(
            routing.url, predictor_url, list(adapters), workdir, (predictor, routing)
        )


# --------------------------------------------------------------------------- client


def router_base_url(url: str) -> str:
    """The router's base URL from what a user may paste: the base itself, or a V1 / V2
    inference URL of the router (`aads serve` prints both)."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BadServerURL(f"{url!r} is not an http(s) URL of an AADS router")
    path = parsed.path.rstrip("/")
    for suffix in ROUTER_PATHS:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def predict_files(
    router_url: str,
    images: list[Path],
    crop_hint: str | None = None,
    *,
    timeout_s: float = 120,
    parallel: int = 4,
) -> list[Answer]:
    """Send each image file to the router (V1, one request per image, a few at a time) and
    return the answers in order. An image the router refuses (too large, not an image) is that
    image's error answer; a router that cannot be reached is a `ServingFailed` naming its URL."""
    base = router_base_url(router_url)
    url = f"{base}{ROUTER_PATHS[0]}"

    def one(path: Path) -> Answer:
        instance = {"image": {"b64": base64.b64encode(Path(path).read_bytes()).decode()}}
        if crop_hint:
            instance["crop_hint"] = crop_hint
        request = urllib.request.Request(
            url,
            json.dumps({"instances": [instance]}).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                (answer,) = json.loads(response.read())["predictions"]
                return Answer.model_validate(answer)
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read() or b"{}").get("error") or err.reason
            except ValueError:
                detail = err.reason
            if err.code >= 500 and err.code != 503:
                raise ServingFailed(f"{url} answered {err.code}: {detail}") from None
            # One image per request: its index says nothing; the caller names the file.
            message = str(detail).removeprefix("image 0: ")
            return Answer.failed(ErrorEntry(code=err.code, message=message))
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServingFailed(f"cannot reach the AADS router at {base}: {reason}") from None

    with ThreadPoolExecutor(max(1, min(parallel, len(images)))) as pool:
        return list(pool.map(one, images))
