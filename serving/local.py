"""Serve on this machine: a router and one multi-adapter predictor as local processes.

What `aads serve` and the end of `make demo` run: the same `python -m serving.predictor` /
`python -m serving.router` entry points a cluster runs in the serving image, on free ports of
127.0.0.1, each waited for until ``/v2/health/ready`` answers, stopped on exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from aads.errors import Unavailable
from aads.mlflow_server import free_port

READY_TIMEOUT_S = 180.0


class ServingFailed(Unavailable):
    """A server process did not start; the message carries the end of its log."""


@dataclass(frozen=True)
class LocalServing:
    router_url: str
    predictor_url: str
    crops: list[str]
    log_dir: Path


def wait_ready(
    url: str, proc: subprocess.Popen, log: Path, timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise ServingFailed(f"{url}: server exited ({proc.returncode}): {tail}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise ServingFailed(f"{url} not ready after {timeout_s:.0f} s (log: {log})")


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def serve_locally(
    spec_text: str,
    router: str,
    adapters: dict[str, str],
    workdir: Path,
    *,
    tracking_uri: str | None = None,
) -> Iterator[LocalServing]:
    """Start the predictor (every crop in `adapters`: crop -> folder, s3:// or models:/ URI)
    and the router in front of it; yield their URLs; stop both afterwards."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {"router": free_port(), "predictor": free_port()}
    predictor_url = f"http://127.0.0.1:{ports['predictor']}"
    spec = yaml.safe_load(spec_text)
    serving = spec.setdefault("serving", {})
    serving["predictor_urls"] = {crop: predictor_url for crop in adapters}
    serving["predictor_url_template"] = ""  # crops without an adapter get a clear per-image error
    spec_path = workdir / "serving-spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    common = ["--spec", str(spec_path)] + (["--tracking-uri", tracking_uri] if tracking_uri else [])
    commands = {
        "predictor": [
            "serving.predictor",
            *(x for crop, src in adapters.items() for x in ("--adapter", f"{crop}={src}")),
        ],
        "router": ["serving.router", "--router", router],
    }
    procs: list[subprocess.Popen] = []
    try:
        for role in ("predictor", "router"):
            log = workdir / f"{role}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        *commands[role],
                        *common,
                        "--http_port",
                        str(ports[role]),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{ports[role]}", proc, log)
        yield LocalServing(
            f"http://127.0.0.1:{ports['router']}", predictor_url, list(adapters), workdir
        )
    finally:
        _stop(procs)


def predict_files(router_url: str, images: list[Path], crop_hint: str | None = None) -> list[dict]:
    """Send image files to the router (V1) and return its answers, in order."""
    import base64

    instances = [
        {"image": {"b64": base64.b64encode(Path(p).read_bytes()).decode()}}
        | ({"crop_hint": crop_hint} if crop_hint else {})
        for p in images
    ]
    request = urllib.request.Request(
        f"{router_url}/v1/models/aads:predict",
        json.dumps({"instances": instances}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as err:
        detail = json.loads(err.read() or b"{}").get("error", err.reason)
        raise ServingFailed(f"{router_url} answered {err.code}: {detail}") from None
