"""A local MLflow tracking server (sqlite + local artifacts) for runs without a tracking URI.

`aads pipeline run --local` and `make demo` use it so a laptop run registers real model
versions that `mlflow ui`-style browsing, aliases and serving can use, exactly as against the
cluster's MLflow. The server runs as a child process on 127.0.0.1 and is stopped afterwards;
its database and artifacts stay under the given folder, so later runs add versions to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aads.errors import Unavailable

START_TIMEOUT_S = 90.0


class MLflowServerError(Unavailable):
    """The local MLflow server did not come up; the message carries its last log lines."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_executable() -> str:
    return str(Path(sys.executable).parent / "mlflow")


def server_command(root: Path, port: int, artifacts: str | None = None) -> list[str]:
    """sqlite backend; artifacts proxied by the server (``--serve-artifacts``), so clients
    need no access to the store and downloads work over HTTP like on a cluster. `artifacts`
    may be ``s3://bucket/prefix`` (credentials and ``MLFLOW_S3_ENDPOINT_URL`` from the env)."""
    root = Path(root).resolve()
    return [
        mlflow_executable(),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts or str(root / "artifacts"),
        "--workers",
        "1",
    ]


@contextmanager
def local_mlflow_server(
    root: Path,
    port: int | None = None,
    *,
    artifacts: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start ``mlflow server`` under `root`, yield its ``http://127.0.0.1:PORT``, stop it.

    Job execution (a pool of huey consumer processes MLflow 3 starts by default) is off: the
    registry does not use it and it costs several processes on a small machine. So is MLflow's
    telemetry (usage reports sent to MLflow's servers): nothing here calls out at run time.
    The server gets its own process group so its uvicorn workers stop with it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = root / "server.log"
    environment = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",  # no usage reports from a local server
        **(env or {}),
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            server_command(root, port, artifacts),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=environment,
            start_new_session=True,
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(uri, proc, log_path)
            yield uri
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_healthy(uri: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MLflowServerError(f"mlflow server exited ({proc.returncode}): {_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise MLflowServerError(
        f"mlflow server at {uri} not healthy after {START_TIMEOUT_S:.0f}s: {_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
