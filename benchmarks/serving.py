"""Serving: latency, throughput and resident memory of the KServe predictor and router.

Reproduce with ``.venv/bin/python benchmarks/serving.py [--quick] [--rebuild]
[--sections latency,memory,hostile,telemetry]``; writes
``benchmarks/results/serving.json`` and ``serving.md`` (``--quick`` prints only, unless
``--out`` is given). Backbone ``random:small`` (ViT-S/16-shaped DINOv3, random weights: the
cost is that of real weights) at 224 px, float32 on CPU, for the router and every adapter.

1. Setup, cached under ``.aads/bench/serving/`` (``--rebuild`` redoes it): a spec with 8 crops
   of 2 phase-1 classes each, `synthesize` (images_per_class 6, 224 px), `ingest`, the router
   (1 epoch) and each crop's phase-1 adapter (DoRA r=4 on q/v, 1 epoch, batch 8), calibrated
   with ``calibrate_package(..., loco=False)``.
2. Latency and throughput, one JPEG per request (V2 JSON, base64 ``BYTES``), N requests per
   setting sent by asyncio + httpx at concurrency 1, 8, 32 after an untimed warm-up of
   max(4, concurrency) requests; latency = request sent to answer read (p50 / p99, numpy
   linear percentile), images/s = N / wall time of the N requests.
   (a) in process: `Diagnoser.prepare` (checked JPEG decode) + `diagnose_pixels` on the
   benchmark's own thread, sequential batch 1 and batch 8 (no HTTP, no batcher); the router's
   `prepare` + `route_pixels` at batch 1 is timed too, to split the chain's cost;
   (b) predictor: ``POST /v2/models/tomato/infer`` to a ``serving.predictor`` process serving
   all 8 crops (``--model-root``, dynamic batching max_batch_size 16, max_wait_ms 5);
   (c) chain: ``POST /v2/models/aads/infer`` to a ``serving.router`` process (no crop hint:
   the router's own forward pass routes each image) whose ``serving.predictor_urls`` point every
   crop at (b). The router answers an image its crop-level OOD check rejects by itself, so the
   chain is timed on the tomato images it forwards (found by one request each first). Its weights
   are random, so it may send a tomato image to another crop's adapter in the same predictor;
   that costs the same forward pass.
   Dynamic batching gain: images/s of (b) at concurrency 32 vs the same predictor started with
   ``max_batch_size: 1``.
   Everything in 2. is measured twice: as is, and with numpy's OpenBLAS held to one thread
   (``OPENBLAS_NUM_THREADS=1`` for the servers, threadpoolctl in process). On 2 cores the
   OpenBLAS threads that score OOD after each forward pass and torch's OpenMP threads get in
   each other's way (the spinning of one pool delays the other).
3. Resident memory: VmRSS (and VmHWM, the peak, and Pss) from ``/proc/<pid>/status`` of a
   predictor after one warm-up request per crop it serves, for ONE multi-adapter process with
   1, 2, 4, 8 crops (``--model-root`` of symlinked packages) vs the SUM of single-adapter
   processes (``--adapter crop=dir``), each started, measured and stopped in turn (RSS does not
   depend on what else runs; separate pods share nothing). ``--quick`` measures 1 and 2 and
   extrapolates 4 and 8 from the single-process mean (``separate_measured: false``). A fresh
   process also loads n adapters and records RSS after loading, after
   `share_identical_parameters` (what the multi-adapter predictor does) and after glibc's
   ``malloc_trim(0)``: the tensors sharing frees go back to malloc, not to the OS.

4. Telemetry and capture (``--sections telemetry``): the chain with ``serving.metrics`` off and
   no capture against the chain with every metric counted and capture on (``sample_rate``
   0.05, unknowns always) to moto's S3 server, in alternating rounds of N requests at
   concurrency 1 and 8 (p50/p99 over all rounds; the goal is p50 within 3 %); then a router
   capturing to a closed port (the store down): every request must still be answered (failed
   requests counted), the drops read from its ``/metrics``. See `telemetry_overhead`.

Setup runs with one torch thread (two OpenMP threads stall for seconds when other work holds
a core); the measurements use torch's default (one thread per core, as a pod would) unless
``--threads N`` is given. The load generator shares the 2 CPU cores with the servers it
measures; every server process runs alone (the others idle) while it is timed. Every process
started is stopped on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from machine import load_average, machine

from aads.atomic import atomic_write_text
from aads.config import PlatformConfig, SynthSettings, parse_config

# Run as a script, this file is on sys.path[0] as "serving": put the package first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving.local import ServerProcess, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CROPS = {
    "tomato": ["healthy", "early_blight"],
    "pepper": ["healthy", "bacterial_spot"],
    "corn": ["healthy", "common_rust"],
    "potato": ["healthy", "late_blight"],
    "apple": ["healthy", "apple_scab"],
    "grape": ["healthy", "black_rot"],
    "wheat": ["healthy", "leaf_rust"],
    "rice": ["healthy", "brown_spot"],
}
TARGET = "tomato"
BACKBONE = {"source": "random:small", "image_size": 224, "device": "cpu", "dtype": "float32"}
SYNTH = {"images_per_class": 6, "images_per_domain_class": 0, "image_size": 224, "seed": 0}
TRAIN = {"epochs": 1, "batch_size": 8, "early_stopping_patience": None}
BATCHING = {"max_batch_size": 16, "max_wait_ms": 5.0}
CONCURRENCY = (1, 8, 32)
CROP_COUNTS = (1, 2, 4, 8)
READY_TIMEOUT_S = 600
VARIANTS = ("default", "openblas1")


def base_spec() -> dict[str, Any]:
    return {
        "name": "aads_bench_serving",
        "crops": [{"name": c, "phase1_classes": k} for c, k in CROPS.items()],
        "router": BACKBONE,
        "adapter": {
            "backbone": BACKBONE,
            "dora": {"r": 4, "alpha": 8, "dropout": 0.0, "modules": ["q_proj", "v_proj"]},
            "ood": {"threshold": {"min_samples": 2}},
        },
        "training": {"router": TRAIN, "phase1": TRAIN},
        "data": {"synth": SYNTH},
        "serving": {**BATCHING, "predictor_timeout_s": 300, "predictor_retries": 0},
    }


# --------------------------------------------------------------------------- setup


def setup(workdir: Path, rebuild: bool) -> dict[str, Any]:
    """Data, router and calibrated adapters under `workdir`, reused when the spec is unchanged."""
    spec = base_spec()
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    stamp = workdir / "setup.json"
    if not rebuild and stamp.is_file():
        done = json.loads(stamp.read_text())
        complete = (workdir / "router").is_dir() and all(
            (workdir / "adapters" / c / "adapter.json").is_file() for c in CROPS
        )
        if done.get("key") == key and complete:
            print(f"setup: reusing {workdir} (built in {done['seconds']:.0f} s)", flush=True)
            return {**done, "cached": True}
    import torch

    stamp.unlink(missing_ok=True)
    config = parse_config(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # other work on the 2 cores stalls 2 OpenMP threads badly
    try:
        done = _build(config, workdir, key)
    finally:
        torch.set_num_threads(threads)
    atomic_write_text(stamp, json.dumps(done, indent=2) + "\n")
    return {**done, "cached": False}


def _build(config: PlatformConfig, workdir: Path, key: str) -> dict[str, Any]:
    from aads.adapters.phases.phase1 import train_phase1
    from aads.data.ingest import ingest
    from aads.data.synth import synthesize
    from aads.ood.calibrate import calibrate_package
    from aads.router import train_router

    steps: dict[str, float] = {}
    began = time.perf_counter()

    def step(name: str, start: float) -> None:
        steps[name] = round(time.perf_counter() - start, 2)
        print(f"setup: {name} {steps[name]:.1f} s", flush=True)

    t = time.perf_counter()
    synthesize(config, workdir / "data", settings=SynthSettings(**SYNTH))
    rows = ingest(workdir / "data", config=config).rows
    step("synthesize_ingest", t)
    t = time.perf_counter()
    train_router(config, rows, workdir / "data", workdir / "router")
    step("router", t)
    for crop in CROPS:
        t = time.perf_counter()
        pkg = train_phase1(config, crop, rows, workdir / "data", workdir / "adapters" / crop)
        calibrate_package(config, pkg, rows, workdir / "data", loco=False)
        step(f"adapter_{crop}", t)
    return {
        "key": key,
        "seconds": round(time.perf_counter() - began, 1),
        "steps": steps,
        "images": len(rows),
        "torch_threads": 1,
    }


def crop_images(workdir: Path, crop: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((workdir / "data" / "base" / crop).rglob("*.jpg"))]


# --------------------------------------------------------------------------- statistics


def summary(latencies_s: list[float], wall_s: float, images: int) -> dict[str, Any]:
    ms = np.asarray(latencies_s) * 1000
    return {
        "requests": len(latencies_s),
        "images": images,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
        "wall_s": round(wall_s, 3),
        "images_per_s": round(images / wall_s, 2),
    }


# --------------------------------------------------------------------------- in process


def in_process(workdir: Path, config: PlatformConfig, images: list[bytes], n: int) -> dict:
    """Decode + diagnose on this thread, batch 1 (n calls) and batch 8, and the router at batch
    1; as is, and with numpy's OpenBLAS held to one thread (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    from aads.inference import Diagnoser
    from aads.router import load_router

    diagnoser = Diagnoser.from_dir(
        workdir / "adapters" / TARGET, config.storage, device="cpu", dtype="float32"
    )
    router = load_router(workdir / "router", config.storage, device="cpu", dtype="float32")

    def diagnose(batch: list[bytes]) -> None:
        pixels = [diagnoser.prepare(b, "image", config.serving) for b in batch]
        answers = diagnoser.diagnose_pixels(pixels)
        assert len(answers) == len(batch) and answers[0].label

    def route(batch: list[bytes]) -> None:
        pixels = [router.prepare(b, "image", config.serving) for b in batch]
        assert len(router.route_pixels(pixels)) == len(batch)

    def run(fn, batch_size: int, calls: int) -> dict[str, Any]:
        def batch(i: int) -> list[bytes]:
            return [images[(i * batch_size + j) % len(images)] for j in range(batch_size)]

        for i in range(3):
            fn(batch(i))
        times = []
        start = time.perf_counter()
        for i in range(calls):
            t = time.perf_counter()
            fn(batch(i))
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        return {"batch_size": batch_size, **summary(times, wall, calls * batch_size)}

    def runs() -> dict[str, Any]:
        return {
            "batch1": run(diagnose, 1, n),
            "batch8": run(diagnose, 8, max(4, n // 8)),
            "router_batch1": run(route, 1, n),
        }

    out = {"default": runs()}
    with threadpool_limits(1, user_api="blas"):
        out["openblas1"] = runs()
    for variant, rows in out.items():
        for name, r in rows.items():
            print(
                f"in-process {variant} {name}: p50 {r['p50_ms']:.1f} ms, "
                f"{r['images_per_s']:.1f} img/s",
                flush=True,
            )
    return out


# --------------------------------------------------------------------------- processes


class Servers:
    """Server processes (`serving.local.start_server`), each stopped on `close` (and so on any
    exit of `main`)."""

    def __init__(self, logdir: Path, threads: int | None = None):
        self.logdir = logdir
        self.env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        self.procs: dict[str, ServerProcess] = {}
        logdir.mkdir(parents=True, exist_ok=True)

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen, int, float]:
        began = time.perf_counter()
        module, *rest = args
        server = start_server(
            module,
            rest,
            self.logdir / f"{name}.log",
            env={**self.env, **(env or {})},
            cwd=ROOT,
            timeout_s=READY_TIMEOUT_S,
        )
        self.procs[name] = server
        seconds = time.perf_counter() - began
        port = int(server.url.rsplit(":", 1)[1])
        print(f"{name}: ready on :{port} in {seconds:.1f} s", flush=True)
        return server.proc, port, seconds

    def stop(self, name: str) -> None:
        server = self.procs.pop(name, None)
        if server is not None:
            server.stop(timeout_s=20)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@contextmanager
def servers(logdir: Path, threads: int | None) -> Iterator[Servers]:
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    group = Servers(logdir, threads)
    try:
        yield group
    finally:
        group.close()
        signal.signal(signal.SIGTERM, previous)


def write_spec(path: Path, serving: dict[str, Any], storage: dict[str, Any] | None = None) -> Path:
    spec = base_spec()
    spec["serving"] = {**spec["serving"], **serving}
    if storage is not None:
        spec["storage"] = storage
    atomic_write_text(path, yaml.safe_dump(spec))
    return path


def model_root(workdir: Path, crops: list[str]) -> Path:
    """A folder of symlinks to the first `crops` packages (what ``--model-root`` scans)."""
    root = workdir / "run" / f"root-{len(crops)}"
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        entry.unlink()
    for crop in crops:
        (root / crop).symlink_to(workdir / "adapters" / crop, target_is_directory=True)
    return root


# --------------------------------------------------------------------------- HTTP load


def v2_body(image: bytes) -> bytes:
    data = [base64.b64encode(image).decode()]
    return json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": data}]}
    ).encode()


async def _load(
    url: str,
    bodies: list[bytes],
    n: int,
    concurrency: int,
    failures: list[str] | None = None,
    *,
    keep: bool = False,
) -> dict[str, Any]:
    """`n` requests at `concurrency` after a warm-up; a failed request (not 200, or an error
    entry) raises, or with `failures` given is listed there and not timed. `keep`: the
    latencies too (``latencies_s``), to pool several rounds."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    routed: Counter[str] = Counter()
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:

        async def one(i: int, record: list[float] | None) -> None:
            start = time.perf_counter()
            resp = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
            elapsed = time.perf_counter() - start
            problem = ""
            if resp.status_code != 200:
                problem = f"{url}: HTTP {resp.status_code}: {resp.text[:500]}"
            else:
                out = next(o for o in resp.json()["outputs"] if o["name"] == "diagnosis")
                answer = json.loads(out["data"][0])
                if "error" in answer:
                    problem = f"{url}: {answer['error']}"
            if problem:
                if failures is None:
                    raise RuntimeError(problem)
                failures.append(problem)
                return
            if record is not None:
                record.append(elapsed)
                routed[answer.get("crop") or "not_a_known_crop"] += 1

        async def burst(count: int, record: list[float] | None) -> float:
            gate = asyncio.Semaphore(concurrency)

            async def gated(i: int) -> None:
                async with gate:
                    await one(i, record)

            start = time.perf_counter()
            await asyncio.gather(*(gated(i) for i in range(count)))
            return time.perf_counter() - start

        await burst(max(4, concurrency), None)
        latencies: list[float] = []
        wall = await burst(n, latencies)
    out = {"concurrency": concurrency, **summary(latencies, wall, n), "crops": dict(routed)}
    return {**out, "latencies_s": latencies} if keep else out


def load(
    name: str,
    url: str,
    bodies: list[bytes],
    n: int,
    concurrency: int,
    failures: list[str] | None = None,
) -> dict[str, Any]:
    result = asyncio.run(_load(url, bodies, n, concurrency, failures))
    print(
        f"{name} c={concurrency}: p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"{result['images_per_s']:.1f} img/s",
        flush=True,
    )
    return result


def answer(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        outputs = json.loads(resp.read())["outputs"]
    return json.loads(next(o for o in outputs if o["name"] == "diagnosis")["data"][0])


def http_latency(
    workdir: Path, group: Servers, images: list[bytes], n: int, variant: str
) -> dict[str, Any]:
    """(b), (c) and the unbatched predictor; `variant` openblas1 starts them all with
    OPENBLAS_NUM_THREADS=1."""
    run = workdir / "run"
    env = {"OPENBLAS_NUM_THREADS": "1"} if variant == "openblas1" else {}
    root = model_root(workdir, list(CROPS))
    bodies = [v2_body(im) for im in images]
    predictor_spec = write_spec(run / "predictor.yaml", {})
    predictor_args = ["serving.predictor", "--model-root", str(root)]
    _, port, _ = group.start(
        f"predictor-{variant}", [*predictor_args, "--spec", str(predictor_spec)], env
    )
    url = f"http://127.0.0.1:{port}"
    router_spec = write_spec(run / "router.yaml", {"predictor_urls": dict.fromkeys(CROPS, url)})
    router_args = ["serving.router", "--router", str(workdir / "router")]
    _, router_port, _ = group.start(
        f"router-{variant}", [*router_args, "--spec", str(router_spec)], env
    )
    chain_url = f"http://127.0.0.1:{router_port}/v2/models/aads/infer"
    # The router answers an image it takes for no known crop itself (no predictor call); the
    # chain is timed on the images it forwards, so every request makes both hops.
    forwarded = [b for b in bodies if answer(chain_url, b).get("crop") is not None]
    out: dict[str, Any] = {
        "predictor": {},
        "chain": {},
        "chain_images_forwarded": len(forwarded),
        "chain_images_tried": len(bodies),
    }
    if not forwarded:
        raise RuntimeError(f"the router took none of the {len(bodies)} {TARGET} images for a crop")
    for c in CONCURRENCY:
        out["predictor"][str(c)] = load(
            f"predictor {variant}", f"{url}/v2/models/{TARGET}/infer", bodies, n, c
        )
    for c in CONCURRENCY:
        out["chain"][str(c)] = load(f"router->predictor {variant}", chain_url, forwarded, n, c)
    group.stop(f"router-{variant}")
    group.stop(f"predictor-{variant}")
    unbatched_spec = write_spec(run / "unbatched.yaml", {"max_batch_size": 1})
    _, port, _ = group.start(
        f"predictor-unbatched-{variant}", [*predictor_args, "--spec", str(unbatched_spec)], env
    )
    c = max(CONCURRENCY)
    out["predictor_unbatched"] = {
        str(c): load(
            f"predictor max_batch_size=1 {variant}",
            f"http://127.0.0.1:{port}/v2/models/{TARGET}/infer",
            bodies,
            n,
            c,
        )
    }
    group.stop(f"predictor-unbatched-{variant}")
    return out


# --------------------------------------------------------------------------- telemetry


TELEMETRY = {"rounds": 10, "quick_rounds": 3, "concurrency": (1, 8), "sample_rate": 0.05}


def metric_total(port: int, name: str, **labels: str) -> float:
    """Sum of one metric's samples on a server's ``/metrics`` (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def telemetry_overhead(
    workdir: Path, group: Servers, images: list[bytes], n: int, quick: bool
) -> dict[str, Any]:
    """Telemetry and capture on vs off, through the whole chain (router -> predictor).

    Two chains run side by side, each a router and a multi-adapter predictor over the same
    packages: "off" with ``serving.metrics: false`` and capture off, "on" with metrics and
    capture (``sample_rate`` 0.05, every unknown kept) to a real S3 protocol server (moto, in
    this process). Rounds alternate off, on, off, on ... (`TELEMETRY` rounds of `n` requests
    per concurrency), so both see the same machine; p50 and p99 are over all rounds' requests.
    Then a third router, capture on to a store nobody answers (a closed port), with the "on"
    predictor: every request must be answered (failures counted, not raised), and the drops
    are read from its ``/metrics``.
    """
    from moto.server import ThreadedMotoServer

    from aads.mlflow_server import free_port

    run = workdir / "run"
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
    os.environ.update(credentials)
    moto_port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per capture write
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    common = {"secure": False, "region": "us-east-1", "retries": 1, "timeout_s": 5}
    up = {**common, "endpoint": f"127.0.0.1:{moto_port}", "bucket": "capture-bench"}
    down = {**common, "endpoint": f"127.0.0.1:{free_port()}", "bucket": "capture-bench"}
    capture = {"enabled": True, "sample_rate": TELEMETRY["sample_rate"]}
    root = model_root(workdir, list(CROPS))
    bodies = [v2_body(im) for im in images]
    rounds = TELEMETRY["quick_rounds"] if quick else TELEMETRY["rounds"]
    try:
        from aads.config import StorageSettings
        from aads.storage import S3Store

        S3Store("capture-bench", StorageSettings(**up)).ensure_bucket()
        chains: dict[str, int] = {}
        predictors: dict[str, int] = {}
        for name, metrics in (("off", False), ("on", True)):
            spec = write_spec(run / f"predictor-{name}.yaml", {"metrics": metrics})
            _, port, _ = group.start(
                f"predictor-telemetry-{name}",
                ["serving.predictor", "--model-root", str(root), "--spec", str(spec)],
            )
            predictors[name] = port
            router_serving: dict[str, Any] = {
                "metrics": metrics,
                "predictor_urls": dict.fromkeys(CROPS, f"http://127.0.0.1:{port}"),
            }
            if metrics:
                router_serving["capture"] = capture
            spec = write_spec(run / f"router-{name}.yaml", router_serving, up)
            _, port, _ = group.start(
                f"router-telemetry-{name}",
                ["serving.router", "--router", str(workdir / "router"), "--spec", str(spec)],
                credentials,
            )
            chains[name] = port

        def url(port: int) -> str:
            return f"http://127.0.0.1:{port}/v2/models/aads/infer"

        forwarded = [b for b in bodies if answer(url(chains["off"]), b).get("crop") is not None]
        if not forwarded:
            raise RuntimeError("the router took none of the images for a crop")
        out: dict[str, Any] = {"rounds": rounds, "requests_per_round": n, "by_concurrency": {}}
        for c in TELEMETRY["concurrency"]:
            latencies: dict[str, list[float]] = {"off": [], "on": []}
            rounds_out: dict[str, list[dict]] = {"off": [], "on": []}
            for _ in range(rounds):
                for name in ("off", "on"):
                    r = asyncio.run(_load(url(chains[name]), forwarded, n, c, keep=True))
                    latencies[name] += r.pop("latencies_s")
                    rounds_out[name].append(r)
            off, on = (summary(latencies[k], 1.0, len(latencies[k])) for k in ("off", "on"))
            out["by_concurrency"][str(c)] = {
                "off": {k: off[k] for k in ("requests", "p50_ms", "p99_ms", "mean_ms")},
                "on": {k: on[k] for k in ("requests", "p50_ms", "p99_ms", "mean_ms")},
                "p50_overhead_pct": round((on["p50_ms"] / off["p50_ms"] - 1) * 100, 2),
                "p99_overhead_pct": round((on["p99_ms"] / off["p99_ms"] - 1) * 100, 2),
                "per_round_p50_ms": {
                    k: [r["p50_ms"] for r in rounds_out[k]] for k in ("off", "on")
                },
            }
            # Robust to a round disturbed by other work on the machine: the median over rounds.
            medians = {
                k: statistics.median(r["p50_ms"] for r in rounds_out[k]) for k in ("off", "on")
            }
            out["by_concurrency"][str(c)]["median_round_p50_overhead_pct"] = round(
                (medians["on"] / medians["off"] - 1) * 100, 2
            )
            print(f"telemetry c={c}: {json.dumps(out['by_concurrency'][str(c)])}", flush=True)
        on_router = chains["on"]
        out["capture_up"] = {
            "offered": metric_total(on_router, "aads_capture_offered_total"),
            "written": metric_total(on_router, "aads_capture_written_total"),
            "dropped": metric_total(on_router, "aads_capture_dropped_total"),
            "answers_counted": metric_total(on_router, "aads_answers_total"),
        }
        group.stop("router-telemetry-off")
        group.stop("predictor-telemetry-off")
        spec = write_spec(
            run / "router-down.yaml",
            {
                "predictor_urls": dict.fromkeys(CROPS, f"http://127.0.0.1:{predictors['on']}"),
                "capture": {**capture, "retry_after_s": 5, "store_timeout_s": 2},
            },
            down,
        )
        _, port, _ = group.start(
            "router-store-down",
            ["serving.router", "--router", str(workdir / "router"), "--spec", str(spec)],
            credentials,
        )
        failures: list[str] = []
        c = max(TELEMETRY["concurrency"])
        # Every image, not only the forwarded ones: the router's own unknowns are captured too.
        down_result = load("store down", url(port), bodies, n * rounds, c, failures)
        out["store_down"] = {
            "concurrency": c,
            "requests": n * rounds,
            "failed_requests": len(failures),
            "failures": failures[:5],
            "p50_ms": down_result["p50_ms"],
            "p99_ms": down_result["p99_ms"],
            "capture_offered": metric_total(port, "aads_capture_offered_total"),
            "capture_written": metric_total(port, "aads_capture_written_total"),
            "capture_dropped_store_unavailable": metric_total(
                port, "aads_capture_dropped_total", reason="store_unavailable"
            ),
            "capture_store_up": metric_total(port, "aads_capture_store_up"),
        }
        print(f"store down: {json.dumps(out['store_down'])}", flush=True)
        for name in ("router-store-down", "router-telemetry-on", "predictor-telemetry-on"):
            group.stop(name)
    finally:
        moto.stop()
    return out


def telemetry_report(t: dict[str, Any]) -> list[str]:
    lines = [
        "## Telemetry and capture: on vs off",
        "",
        f"Router -> predictor chain, {t['rounds']} alternating rounds of "
        f"{t['requests_per_round']} requests per setting (off, on, off, on ...), p50/p99 over "
        "all rounds. Off: `serving.metrics: false`, no capture. On: every metric counted, "
        f"capture on (sample_rate {TELEMETRY['sample_rate']}, unknowns always) to moto S3.",
        "",
        "| concurrency | off p50 ms | on p50 ms | p50 overhead | median-round p50 overhead | "
        "off p99 ms | on p99 ms | p99 overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, r in t["by_concurrency"].items():
        lines.append(
            f"| {c} | {r['off']['p50_ms']} | {r['on']['p50_ms']} | {r['p50_overhead_pct']} % | "
            f"{r['median_round_p50_overhead_pct']} % | {r['off']['p99_ms']} | "
            f"{r['on']['p99_ms']} | {r['p99_overhead_pct']} % |"
        )
    up, down = t["capture_up"], t["store_down"]
    spread = "; ".join(
        f"c={c}: off {min(r['per_round_p50_ms']['off'])}-{max(r['per_round_p50_ms']['off'])} "
        f"ms, on {min(r['per_round_p50_ms']['on'])}-{max(r['per_round_p50_ms']['on'])} ms"
        for c, r in t["by_concurrency"].items()
    )
    lines += [
        "",
        f"Round-to-round spread of p50 ({spread}): a difference smaller than that spread is "
        "the machine's other work, not telemetry; read the overheads against it.",
        "",
        f"Capture (store up): {up['offered']:.0f} offered, {up['written']:.0f} written, "
        f"{up['dropped']:.0f} dropped; {up['answers_counted']:.0f} answers counted.",
        "",
        f"Store down (capture to a closed port), {down['requests']} requests at concurrency "
        f"{down['concurrency']}: **{down['failed_requests']} failed**, p50 {down['p50_ms']} ms, "
        f"p99 {down['p99_ms']} ms; capture offered {down['capture_offered']:.0f}, written "
        f"{down['capture_written']:.0f}, dropped as store_unavailable "
        f"{down['capture_dropped_store_unavailable']:.0f} (`aads_capture_store_up` "
        f"{down['capture_store_up']:.0f}).",
    ]
    return lines


# --------------------------------------------------------------------------- memory


def process_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (MiB) from /proc/<pid>/status, Pss from smaps_rollup."""
    mem: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[f"{key[2:].lower()}_mib"] = round(int(value.split()[0]) / 1024, 1)
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                mem["pss_mib"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.is_file() and children.read_text().split():
        mem["child_pids"] = len(children.read_text().split())
    return mem


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS in /proc/self/status")


def sharing_probe(workdir: Path, n: int) -> dict[str, Any]:
    """What `build_predictors` does to memory, step by step, in this (fresh) process: load n
    adapters, `share_identical_parameters`, then glibc's malloc_trim(0) (which the predictor
    does not call)."""
    import ctypes
    import gc

    from aads.inference import Diagnoser, share_identical_parameters

    out: dict[str, Any] = {"crops": n, "rss_start_mib": rss_mib()}
    diagnosers = [
        Diagnoser.from_dir(workdir / "adapters" / c, device="cpu", dtype="float32")
        for c in list(CROPS)[:n]
    ]
    out["rss_loaded_mib"] = rss_mib()
    freed = share_identical_parameters([d.adapter.network for d in diagnosers])
    gc.collect()
    out["freed_by_sharing_mib"] = round(freed / 2**20, 1)
    out["rss_shared_mib"] = rss_mib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    out["rss_shared_trimmed_mib"] = rss_mib()
    return out


def run_sharing_probe(workdir: Path, n: int, threads: int | None) -> dict[str, Any]:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, __file__, "--sharing-probe", str(n), "--workdir", str(workdir)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"sharing probe {n}: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"sharing probe {n}: RSS loaded {result['rss_loaded_mib']:.0f}, shared "
        f"{result['rss_shared_mib']:.0f}, trimmed {result['rss_shared_trimmed_mib']:.0f} MiB "
        f"({result['freed_by_sharing_mib']:.0f} MiB freed by sharing)",
        flush=True,
    )
    return result


def warm(port: int, crops: list[str], images: dict[str, bytes]) -> None:
    for crop in crops:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/{crop}/infer",
            v2_body(images[crop]),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            assert resp.status == 200


def measured_process(group: Servers, name: str, args: list[str], crops, images) -> dict:
    proc, port, seconds = group.start(name, args)
    warm(port, crops, images)
    time.sleep(0.5)
    mem = {"crops": len(crops), "startup_s": round(seconds, 1), **process_memory(proc.pid)}
    group.stop(name)
    print(f"{name}: RSS {mem['rss_mib']:.0f} MiB (peak {mem['hwm_mib']:.0f})", flush=True)
    return mem


def memory(workdir: Path, group: Servers, quick: bool, threads: int | None) -> dict[str, Any]:
    spec = str(write_spec(workdir / "run" / "memory.yaml", {}))
    names = list(CROPS)
    images = {c: crop_images(workdir, c)[0] for c in names}
    counts = [n for n in CROP_COUNTS if not quick or n <= 2]
    multi = {}
    for n in counts:
        root = model_root(workdir, names[:n])
        args = ["serving.predictor", "--model-root", str(root), "--spec", spec]
        multi[str(n)] = measured_process(group, f"multi-{n}", args, names[:n], images)
    singles = {}
    for crop in names[: max(counts)]:
        args = ["serving.predictor", "--adapter", f"{crop}={workdir / 'adapters' / crop}"]
        singles[crop] = measured_process(
            group, f"single-{crop}", [*args, "--spec", spec], [crop], images
        )
    mean_single = statistics.mean(s["rss_mib"] for s in singles.values())
    table = []
    for n in CROP_COUNTS:
        measured = n <= len(singles)
        total = sum(singles[c]["rss_mib"] for c in names[:n]) if measured else n * mean_single
        row: dict[str, Any] = {
            "crops": n,
            "separate_sum_rss_mib": round(total, 1),
            "separate_measured": measured,
        }
        if str(n) in multi:
            row["multi_rss_mib"] = multi[str(n)]["rss_mib"]
            row["multi_hwm_mib"] = multi[str(n)]["hwm_mib"]
            row["saving_ratio"] = round(total / multi[str(n)]["rss_mib"], 2)
        table.append(row)
    probes = {str(n): run_sharing_probe(workdir, n, threads) for n in counts if n > 1}
    note = (
        "separate processes: each single-adapter predictor started, warmed, measured and stopped "
        "in turn, RSS summed"
        + ("" if not quick else "; 4 and 8 extrapolated as n x the mean of the measured ones")
    )
    return {
        "multi": multi,
        "single": singles,
        "table": table,
        "sharing_probe": probes,
        "note": note,
    }


# --------------------------------------------------------------------------- hostile

HOSTILE = {"concurrency": 32, "phase_s": 60, "quick_phase_s": 15, "idle_connections": 20_000}
PLANTVILLAGE = ROOT.parent / "shared" / "data" / "plantvillage"


def poisoned_jpeg(fallback: bytes) -> bytes:
    """The issue's poisoned photo: a real PlantVillage JPEG (synthetic if the sample is absent)
    shrunk, with a big-endian EXIF block whose TIFF magic MM\\0* is changed to MM^*."""
    import io

    from PIL import Image

    folder = Path(os.environ.get("AADS_PLANTVILLAGE_DIR", PLANTVILLAGE))
    photos = sorted(folder.rglob("*.JPG")) if folder.is_dir() else []
    photo = Image.open(io.BytesIO(photos[0].read_bytes() if photos else fallback)).resize((16, 16))
    exif = Image.Exif()
    exif.endian = ">"
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo.save(buf, "JPEG", exif=exif.tobytes(), quality=50)
    return buf.getvalue().replace(b"MM\x00*", b"MM^*", 1)


def pixel_budget_body() -> bytes:
    """The issue's 0.3 MB request: 64 one-bit PNGs of 6300 x 6300 (2.5 gigapixels)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (6300, 6300), 0).save(buf, "PNG", optimize=True)
    image = {"image": {"b64": base64.b64encode(buf.getvalue()).decode()}}
    return json.dumps({"instances": [image] * 64}).encode()


DECODE_CASES = {
    "RGBA PNG": ("RGBA", (10, 200, 30, 128), "PNG"),
    "RGB PNG": ("RGB", (10, 200, 30), "PNG"),
    "16-bit PNG": ("I;16", 30_000, "PNG"),
    "palette PNG": ("P", 1, "PNG"),
    "1-bit PNG": ("1", 1, "PNG"),
    "RGB JPEG": ("RGB", (10, 200, 30), "JPEG"),
    "RGBA WebP (at its 10 MP limit)": ("RGBA", (10, 200, 30, 128), "WEBP"),
}


def decode_probe(path: Path) -> dict:
    """In this process: the peak-RSS growth of `decode_upload` on one file, shrunk for a 224
    px model, under the default limits (VmHWM reset to VmRSS first)."""
    from aads.config import ServingSettings
    from aads.uploads import decode_upload

    data = path.read_bytes()
    pid = os.getpid()
    reset_peak(pid)
    before = process_memory(pid)["rss_mib"]
    image = decode_upload(data, "image 0", ServingSettings(), 224)
    grown = process_memory(pid)["hwm_mib"] - before
    return {"bytes": len(data), "shrunk_to": list(image.size), "peak_growth_mib": round(grown, 1)}


def decode_memory(workdir: Path) -> dict[str, Any]:
    """Peak memory of decoding one image at the pixel limit (40 MP; WebP 10 MP), per format,
    each in a fresh process."""
    from PIL import Image

    folder = workdir / "run" / "decode"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (mode, color, fmt) in DECODE_CASES.items():
        side = 3160 if fmt == "WEBP" else 6320  # 10.0 MP / 39.9 MP
        image = Image.new(mode, (side, side), color)
        path = folder / f"{name.split()[0]}-{mode}.{fmt.lower()}"
        if mode == "P":
            image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
            image.save(path, fmt, transparency=0)
        else:
            image.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        del image
        done = subprocess.run(
            [sys.executable, __file__, "--decode-probe", str(path)],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"decode probe {name}: {done.stderr[-2000:]}")
        out[name] = {
            "megapixels": round(side * side / 1e6, 1),
            **json.loads(done.stdout.splitlines()[-1]),
        }
        print(f"decode {name}: peak +{out[name]['peak_growth_mib']} MiB", flush=True)
        path.unlink()
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


async def _closed_loop(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict:
    """`concurrency` clients, each sending its next request as soon as the last is answered,
    for `seconds`; a request failed when it is not a 200 or its answer carries an error."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    resp = await client.post(url, content=bodies[i % len(bodies)])
                    status = resp.status_code
                    answer = (
                        json.loads(
                            next(o for o in resp.json()["outputs"] if o["name"] == "diagnosis")[
                                "data"
                            ][0]
                        )
                        if status == 200
                        else {}
                    )
                except (httpx.HTTPError, ValueError, StopIteration) as err:
                    failures[type(err).__name__] += 1
                    continue
                finally:
                    i += concurrency
                if status != 200 or "error" in answer:
                    failures[f"HTTP {status}" if status != 200 else "error entry"] += 1
                else:
                    latencies.append(time.perf_counter() - began)

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - start
    out = summary(latencies, wall, len(latencies)) if latencies else {"requests": 0}
    return {**out, "failed": sum(failures.values()), "failures": dict(failures)}


async def _attack(url: str, body: bytes, seconds: float, per_s: float = 1.0) -> dict:
    """`per_s` requests a second for `seconds`; the statuses they got."""
    statuses: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=120) as client:
        pending = []

        async def one() -> None:
            try:
                resp = await client.post(url, content=body)
                statuses[str(resp.status_code)] += 1
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1

        while time.perf_counter() < deadline:
            pending.append(asyncio.create_task(one()))
            await asyncio.sleep(1 / per_s)
        await asyncio.gather(*pending)
    return dict(statuses)


def _phase(
    group: Servers, good_url: str, bodies: list[bytes], seconds: float, attacks: dict
) -> dict:
    """Good load plus `attacks` ({name: (url, body)}, one a second each), with the peak RSS of
    every server process over the phase."""
    pids = {name: server.proc.pid for name, server in group.procs.items()}
    for pid in pids.values():
        reset_peak(pid)

    async def run() -> tuple[dict, list[dict]]:
        good = _closed_loop(good_url, bodies, seconds, HOSTILE["concurrency"])
        bad = [_attack(url, body, seconds) for url, body in attacks.values()]
        results = await asyncio.gather(good, *bad)
        return results[0], list(results[1:])

    good, bad = asyncio.run(run())
    memory = {name: process_memory(pid) for name, pid in pids.items()}
    return {
        "good": good,
        "attacks": dict(zip(attacks, bad, strict=True)),
        "peak_rss_mib": {name: m["hwm_mib"] for name, m in memory.items()},
        "rss_mib": {name: m["rss_mib"] for name, m in memory.items()},
    }


def worst_decode(group: Servers, predictor: str, requests: int = 4) -> dict[str, Any]:
    """`requests` concurrent requests, each one 40 MP RGBA PNG (the costliest format at the
    limit), to the predictor: its peak RSS growth, against the bound max_concurrent_decodes
    (2) frames."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (6320, 6320), (10, 200, 30, 128)).save(buf, "PNG")
    body = json.dumps(
        {"instances": [{"image": {"b64": base64.b64encode(buf.getvalue()).decode()}}]}
    ).encode()
    pid = group.procs["hostile-predictor"].proc.pid
    before = process_memory(pid)["rss_mib"]
    reset_peak(pid)

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=300) as client:
            url = f"{predictor}/v1/models/{TARGET}:predict"
            responses = await asyncio.gather(
                *(client.post(url, content=body) for _ in range(requests))
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(run())
    peak = process_memory(pid)["hwm_mib"]
    print(
        f"worst decode: {requests} x 40 MP RGBA PNG -> {statuses}, peak +{peak - before:.0f} MiB",
        flush=True,
    )
    return {
        "requests": requests,
        "statuses": statuses,
        "rss_before_mib": before,
        "peak_mib": peak,
        "peak_growth_mib": round(peak - before, 1),
    }


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def idle_flood(
    group: Servers, router_port: int, good_url: str, bodies: list[bytes], seconds: float
) -> dict:
    """`HOSTILE["idle_connections"]` idle connections held by two `idle_connections.py`
    processes (reopened whenever the server closes one) while the good load runs."""
    total = HOSTILE["idle_connections"]
    script = Path(__file__).with_name("idle_connections.py")
    holders = [
        subprocess.Popen(
            [sys.executable, str(script), "--port", str(router_port),
             "--connections", str(total // 2), "--seconds", str(seconds + 180)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    router_pid = group.procs["hostile-router"].proc.pid
    ramp_s = 20.0  # the holders connect about 1,000 a second each when the server keeps up
    time.sleep(ramp_s)
    fds = [open_fds(router_pid)]
    sampler_stop = threading.Event()

    def sample() -> None:
        while not sampler_stop.wait(0.5):
            fds.append(open_fds(router_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    good = asyncio.run(_closed_loop(good_url, bodies, seconds, HOSTILE["concurrency"]))
    sampler_stop.set()
    sampler.join()
    held = [json.loads(h.communicate(input="", timeout=120)[0].splitlines()[-1]) for h in holders]
    return {
        "idle_connections": total,
        "ramp_s": ramp_s,
        "holders": held,
        "router_open_fds_max": max(fds),
        "router_open_fds_median": int(statistics.median(fds)),
        "good": good,
    }


def hostile(workdir: Path, group: Servers, images: list[bytes], quick: bool) -> dict[str, Any]:
    """Concurrency-32 good traffic through router -> predictor: clean, then with one poisoned
    image and one pixel-budget request a second (to the router and to the predictor), then
    next to 20,000 idle connections. Peak RSS of both servers per phase."""
    seconds = HOSTILE["quick_phase_s" if quick else "phase_s"]
    run = workdir / "run"
    root = model_root(workdir, list(CROPS))
    bodies = [v2_body(im) for im in images]
    _, pport, _ = group.start(
        "hostile-predictor",
        [
            "serving.predictor",
            "--model-root",
            str(root),
            "--spec",
            str(write_spec(run / "hp.yaml", {})),
        ],
    )
    predictor = f"http://127.0.0.1:{pport}"
    spec = write_spec(run / "hr.yaml", {"predictor_urls": dict.fromkeys(CROPS, predictor)})
    _, rport, _ = group.start(
        "hostile-router",
        ["serving.router", "--router", str(workdir / "router"), "--spec", str(spec)],
    )
    router = f"http://127.0.0.1:{rport}"
    good_url = f"{router}/v2/models/aads/infer"
    forwarded = [b for b in bodies if answer(good_url, b).get("crop") is not None] or bodies
    poisoned = json.dumps(
        {"instances": [{"image": {"b64": base64.b64encode(poisoned_jpeg(images[0])).decode()}}]}
    ).encode()
    budget = pixel_budget_body()
    attacks = {
        "poisoned_jpeg_router": (f"{router}/v1/models/aads:predict", poisoned),
        "pixel_budget_router": (f"{router}/v1/models/aads:predict", budget),
        "pixel_budget_predictor": (f"{predictor}/v1/models/{TARGET}:predict", budget),
    }
    asyncio.run(_closed_loop(good_url, forwarded, 3, HOSTILE["concurrency"]))  # warm-up
    idle = {n: process_memory(server.proc.pid) for n, server in group.procs.items()}
    out: dict[str, Any] = {"phase_s": seconds, "concurrency": HOSTILE["concurrency"]}
    out["rss_idle_mib"] = {n: m["rss_mib"] for n, m in idle.items()}
    for name, phase_attacks in (("clean", {}), ("hostile", attacks)):
        out[name] = _phase(group, good_url, forwarded, seconds, phase_attacks)
        g = out[name]["good"]
        print(
            f"hostile/{name}: {g['requests']} good requests, {g['failed']} failed, p50 "
            f"{g.get('p50_ms', 0):.0f} ms, p99 {g.get('p99_ms', 0):.0f} ms; peak RSS "
            f"{out[name]['peak_rss_mib']}; attacks {out[name]['attacks']}",
            flush=True,
        )
    clean, hot = out["clean"]["good"], out["hostile"]["good"]
    out["p99_ratio_hostile_over_clean"] = round(hot["p99_ms"] / clean["p99_ms"], 2)
    out["decode_peak"] = decode_memory(workdir)
    out["server_worst_decode"] = worst_decode(group, predictor)
    out["idle_flood"] = idle_flood(group, rport, good_url, forwarded, seconds)
    flood = out["idle_flood"]
    print(
        f"hostile/idle flood: {flood['good']['requests']} good requests, "
        f"{flood['good']['failed']} failed, p99 {flood['good'].get('p99_ms', 0):.0f} ms; "
        f"router fds max {flood['router_open_fds_max']}; holders {flood['holders']}",
        flush=True,
    )
    group.stop("hostile-router")
    group.stop("hostile-predictor")
    return out


# --------------------------------------------------------------------------- report


VARIANT_LABELS = {"default": "as is", "openblas1": "OPENBLAS_NUM_THREADS=1"}


def derived(result: dict[str, Any]) -> dict[str, Any]:
    c_max = str(max(CONCURRENCY))
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        inproc = result["in_process"][variant]["batch1"]
        http = result["http"][variant]
        d: dict[str, Any] = {}
        for name in ("predictor", "chain"):
            p50 = http[name]["1"]["p50_ms"]
            d[f"{name}_over_in_process_c1"] = {
                "in_process_p50_ms": inproc["p50_ms"],
                f"{name}_p50_ms": p50,
                "difference_ms": round(p50 - inproc["p50_ms"], 2),
                "ratio": round(p50 / inproc["p50_ms"], 2),
            }
        batched = http["predictor"][c_max]["images_per_s"]
        unbatched = http["predictor_unbatched"][c_max]["images_per_s"]
        d["batching_gain"] = {
            "concurrency": int(c_max),
            "batched_images_per_s": batched,
            "unbatched_images_per_s": unbatched,
            "ratio": round(batched / unbatched, 2),
        }
        routes: Counter[str] = Counter()
        for r in http["chain"].values():
            routes.update(r["crops"])
        d["chain_routes"] = dict(routes)
        out[variant] = d
    base, one = result["in_process"]["default"], result["in_process"]["openblas1"]
    hb, h1 = result["http"]["default"], result["http"]["openblas1"]
    out["openblas1_speedup_p50"] = {
        "in_process_batch1": round(base["batch1"]["p50_ms"] / one["batch1"]["p50_ms"], 2),
        "in_process_router_batch1": round(
            base["router_batch1"]["p50_ms"] / one["router_batch1"]["p50_ms"], 2
        ),
        "predictor_c1": round(hb["predictor"]["1"]["p50_ms"] / h1["predictor"]["1"]["p50_ms"], 2),
        "chain_c1": round(hb["chain"]["1"]["p50_ms"] / h1["chain"]["1"]["p50_ms"], 2),
    }
    return out


def report(result: dict[str, Any]) -> str:
    """The markdown report of the sections that ran."""
    m, s = result["machine"], result["setup"]
    lines = [
        f"# Serving benchmark ({result['mode']})",
        "",
        f"Backbone random:small (ViT-S/16 shape) at 224 px, float32, CPU ({m['cpu_model']}, "
        f"{m['cpu_count']} cores, {m['torch_threads']} torch threads). Load average "
        f"{result['load_average_before']} before, {result['load_average_after']} after. "
        f"Setup {s['seconds']:.0f} s ({'cached' if s['cached'] else 'built this run'}); "
        f"run {result['run_seconds']:.0f} s. {result['requests']} requests per setting, one "
        "224 px JPEG each. Variant OPENBLAS_NUM_THREADS=1: numpy's OpenBLAS (the OOD scoring "
        "after each forward pass) held to one thread, in process with threadpoolctl, in the "
        "servers through the environment.",
        "",
    ]
    if "http" in result:
        lines += latency_report(result)
    if "memory" in result:
        lines += memory_report(result)
    if "hostile" in result:
        lines += ["", *hostile_report(result["hostile"])]
    if "telemetry" in result:
        lines += ["", *telemetry_report(result["telemetry"])]
    return "\n".join(lines) + "\n"


def latency_report(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Latency and throughput",
        "",
        "| path | variant | concurrency | p50 ms | p99 ms | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        for name, label in (
            ("batch1", "in process, batch 1 (decode + diagnose)"),
            ("batch8", "in process, batch 8 (latency per batch)"),
            ("router_batch1", "in process, router only, batch 1"),
        ):
            r = result["in_process"][variant][name]
            lines.append(
                f"| {label} | {VARIANT_LABELS[variant]} | 1 | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['images_per_s']:.1f} |"
            )
    for name, label in (
        ("predictor", "predictor (HTTP, batching 16 / 5 ms)"),
        ("chain", "router -> predictor (HTTP)"),
        ("predictor_unbatched", "predictor, max_batch_size 1"),
    ):
        for variant in VARIANTS:
            for c, r in result["http"][variant][name].items():
                lines.append(
                    f"| {label} | {VARIANT_LABELS[variant]} | {c} | {r['p50_ms']:.1f} | "
                    f"{r['p99_ms']:.1f} | {r['images_per_s']:.1f} |"
                )
    lines.append("")
    for variant in VARIANTS:
        d = result["derived"][variant]
        pc, ch, bg = (
            d["predictor_over_in_process_c1"],
            d["chain_over_in_process_c1"],
            d["batching_gain"],
        )
        router_ms = result["in_process"][variant]["router_batch1"]["p50_ms"]
        http = result["http"][variant]
        lines += [
            f"{VARIANT_LABELS[variant]}:",
            "",
            f"- Predictor over in-process batch 1 (p50, concurrency 1): "
            f"{pc['difference_ms']:+.1f} ms (x{pc['ratio']:.2f}).",
            f"- Router -> predictor chain over in-process batch 1 (p50, concurrency 1): "
            f"{ch['difference_ms']:+.1f} ms (x{ch['ratio']:.2f}); the router's own forward "
            f"pass and crop OOD check (in process, p50) is {router_ms:.1f} ms of that.",
            f"- Dynamic batching at concurrency {bg['concurrency']}: "
            f"{bg['batched_images_per_s']:.1f} vs {bg['unbatched_images_per_s']:.1f} images/s "
            f"with max_batch_size 1 (x{bg['ratio']:.2f}).",
            f"- Chain requests use the {http['chain_images_forwarded']} of "
            f"{http['chain_images_tried']} {TARGET} images that the router (random weights) "
            f"forwards to an adapter; the adapters it picked: {d['chain_routes']}.",
            "",
        ]
    sp = result["derived"]["openblas1_speedup_p50"]
    lines += [
        f"OPENBLAS_NUM_THREADS=1 speed-up of p50 latency: in-process diagnose "
        f"x{sp['in_process_batch1']:.2f}, in-process router x{sp['in_process_router_batch1']:.2f}, "
        f"predictor x{sp['predictor_c1']:.2f}, chain x{sp['chain_c1']:.2f} (concurrency 1).",
        "",
    ]
    return lines


def memory_report(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Resident memory (predictor, after one warm-up request per crop)",
        "",
        "| crops | one multi-adapter process RSS MiB (peak) | separate processes, sum RSS MiB "
        "| separate / multi |",
        "|---|---|---|---|",
    ]
    for r in result["memory"]["table"]:
        multi = (
            f"{r['multi_rss_mib']:.0f} ({r['multi_hwm_mib']:.0f})" if "multi_rss_mib" in r else "-"
        )
        sep = f"{r['separate_sum_rss_mib']:.0f}" + ("" if r["separate_measured"] else " (extrap.)")
        ratio = f"{r['saving_ratio']:.2f}" if "saving_ratio" in r else "-"
        lines.append(f"| {r['crops']} | {multi} | {sep} | {ratio} |")
    lines += ["", f"{result['memory']['note']}.", ""]
    probes = result["memory"]["sharing_probe"]
    if probes:
        lines += [
            "What sharing does to RSS, in a fresh process (`share_identical_parameters` as in "
            "`build_predictors`, then glibc `malloc_trim(0)`, which `build_predictors` "
            "now calls too):",
            "",
            "| crops | RSS loaded MiB | freed by sharing MiB | RSS after sharing | "
            "after malloc_trim |",
            "|---|---|---|---|---|",
        ]
        for p in probes.values():
            lines.append(
                f"| {p['crops']} | {p['rss_loaded_mib']:.0f} | {p['freed_by_sharing_mib']:.0f} | "
                f"{p['rss_shared_mib']:.0f} | {p['rss_shared_trimmed_mib']:.0f} |"
            )
    return lines


def hostile_report(h: dict[str, Any]) -> list[str]:
    clean, hot, flood = h["clean"], h["hostile"], h["idle_flood"]
    flood_phase = {"good": flood["good"], "peak_rss_mib": {}, "attacks": {}}
    lines = [
        "## Hostile traffic",
        "",
        f"Router -> predictor (every crop's adapter), {h['concurrency']} clients sending good "
        f"V2 requests back to back for {h['phase_s']} s per phase. Hostile phase: at the same "
        "time one request a second carrying the corrupt-EXIF JPEG (TIFF magic MM^* from a real "
        "PlantVillage photo) to the router, and one pixel-budget request a second (64 one-bit "
        "PNGs of 6300 x 6300, 0.3 MB, 2.5 gigapixels) to the router and one to the predictor. "
        "Idle flood: 20,000 connections opened by two helper processes and held idle (reopened "
        "after 0 to 2 s when the server closes them) while the good load runs. Failed = not a "
        "200, or an "
        "answer with an error entry. Peak RSS: VmHWM over the phase (reset at its start).",
        "",
        "| phase | good requests | failed | p50 ms | p99 ms | peak RSS router MiB "
        "| peak RSS predictor MiB | attack responses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, phase in (
        ("clean", clean),
        ("hostile", hot),
        ("20,000 idle connections", flood_phase),
    ):
        g, peak = phase["good"], phase["peak_rss_mib"]
        lines.append(
            f"| {name} | {g['requests']} | {g['failed']} | {g.get('p50_ms', 0):.0f} | "
            f"{g.get('p99_ms', 0):.0f} | {peak.get('hostile-router', '-')} | "
            f"{peak.get('hostile-predictor', '-')} | {phase['attacks'] or '-'} |"
        )
    held = flood["holders"]
    lines += [
        "",
        f"p99 hostile / clean: x{h['p99_ratio_hostile_over_clean']:.2f}. RSS idle before the "
        f"phases: {h['rss_idle_mib']} MiB.",
        "",
        f"Idle flood: two helpers kept trying to hold {flood['idle_connections']} connections "
        f"({flood['ramp_s']:.0f} s of ramp-up before the good load); they opened "
        f"{sum(x.get('opened', 0) for x in held)} in all "
        f"(at most {sum(x.get('max_open', 0) for x in held)} open at once; the server closed "
        f"{sum(x.get('closed_by_server', 0) for x in held)} of them: longest-idle first at the "
        f"connection cap, and every one after header_timeout_s); the router's open file "
        f"descriptors peaked at {flood['router_open_fds_max']} (median "
        f"{flood['router_open_fds_median']}); good requests during it: "
        f"{flood['good']['requests']}, {flood['good']['failed']} failed.",
        "",
        "Decoding one image at the pixel limit, shrunk for a 224 px model, peak RSS growth of a "
        "fresh process (`aads.uploads.decode_upload`):",
        "",
        "| format | megapixels | bytes on the wire | peak growth MiB |",
        "|---|---|---|---|",
    ]
    for name, d in h["decode_peak"].items():
        lines.append(f"| {name} | {d['megapixels']} | {d['bytes']} | {d['peak_growth_mib']} |")
    w = h["server_worst_decode"]
    lines += [
        "",
        f"Worst case at the predictor: {w['requests']} concurrent requests of one 40 MP RGBA "
        f"PNG each (statuses {w['statuses']}): peak RSS {w['peak_mib']:.0f} MiB, "
        f"{w['peak_growth_mib']:+.0f} MiB over its {w['rss_before_mib']:.0f} MiB before "
        "(max_concurrent_decodes = 2 frames decode at once).",
        "",
    ]
    return lines


SECTIONS = ("latency", "memory", "hostile", "telemetry")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="16 requests, memory for 1-2 crops, 15 s hostile phases (prints only unless --out)",
    )
    parser.add_argument("--rebuild", action="store_true", help="redo the cached setup")
    parser.add_argument("--requests", type=int, default=None, help="per setting (64; quick 16)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".aads" / "bench" / "serving")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads everywhere (default: torch's)"
    )
    parser.add_argument("--sharing-probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--decode-probe", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sharing_probe:
        print(json.dumps(sharing_probe(args.workdir, args.sharing_probe)))
        return
    if args.decode_probe:
        print(json.dumps(decode_probe(args.decode_probe)))
        return
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {SECTIONS}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    n = args.requests or (16 if args.quick else 64)
    began = time.perf_counter()
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "sections": sections,
        "machine": machine(),
        "load_average_before": load_average(),
        "requests": n,
        "settings": {
            "backbone": BACKBONE,
            "crops": CROPS,
            "target_crop": TARGET,
            "synth": SYNTH,
            "training": TRAIN,
            "batching": BATCHING,
            "concurrency": list(CONCURRENCY),
            "hostile": HOSTILE,
            "torch_threads": args.threads or "torch default",
        },
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    result["setup"] = setup(args.workdir, args.rebuild)
    run_began = time.perf_counter()
    config = parse_config(base_spec())
    images = crop_images(args.workdir, TARGET)
    if "latency" in sections:
        result["in_process"] = in_process(args.workdir, config, images, n)
    with servers(args.workdir / "run" / "logs", args.threads) as group:
        if "latency" in sections:
            result["http"] = {
                variant: http_latency(args.workdir, group, images, n, variant)
                for variant in VARIANTS
            }
        if "memory" in sections:
            result["memory"] = memory(args.workdir, group, args.quick, args.threads)
        if "hostile" in sections:
            result["hostile"] = hostile(args.workdir, group, images, args.quick)
        if "telemetry" in sections:
            result["telemetry"] = telemetry_overhead(args.workdir, group, images, n, args.quick)
    if "latency" in sections:
        result["derived"] = derived(result)
    result["run_seconds"] = round(time.perf_counter() - run_began, 1)
    result["total_seconds"] = round(time.perf_counter() - began, 1)
    result["load_average_after"] = load_average()
    result["load_average_after_5_15m"] = [round(x, 2) for x in os.getloadavg()[1:]]
    text = report(result)
    print(text)
    # A run of some sections never overwrites the full run's results.
    name = "serving" if set(sections) == set(SECTIONS) else "serving-" + "-".join(sections)
    out = args.out or (None if args.quick else RESULTS / f"{name}.json")
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), text)
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
