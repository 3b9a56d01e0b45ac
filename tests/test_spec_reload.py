"""The router follows its mounted spec while serving (`aads.specwatch`): a ConfigMap update,
written as the kubelet's AtomicWriter writes it, reaches a running router process within a few
seconds; a broken spec is ignored with one log line and the last good one keeps serving."""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from aads.config import ConfigError
from aads.specwatch import SpecWatcher
from serving.local import ServerProcess, start_server
from serving.router import canary_bucket
from tests.conftest import free_port
from tests.serving_models import SPEC, crop_images, trained_models


def kubelet_write(volume: Path, files: dict[str, str]) -> None:
    """Update a ConfigMap volume as the kubelet's AtomicWriter does
    (kubernetes pkg/volume/util/atomic_writer.go): the payload goes into a new
    ``..<UTC timestamp>.<random>`` folder, a ``..data_tmp`` symlink to it is renamed over
    ``..data`` (the one atomic step), each file is a symlink ``<name> -> ..data/<name>`` created
    once, and the previous timestamped folder is removed."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    ts_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=volume))
    for name, text in files.items():
        (ts_dir / name).write_text(text)
    tmp_link = volume / "..data_tmp"
    tmp_link.symlink_to(ts_dir.name)
    os.rename(tmp_link, data)
    for name in files:
        visible = volume / name
        if not visible.is_symlink():
            visible.symlink_to(Path("..data") / name)
    if old is not None:
        for path in sorted((volume / old).iterdir()):
            path.unlink()
        (volume / old).rmdir()


def spec_text(serving: dict) -> str:
    return yaml.safe_dump({**SPEC, "serving": {**SPEC["serving"], **serving}})


# --------------------------------------------------------------------------- in process


def test_a_kubelet_swap_is_picked_up_and_validated_before_it_switches(tmp_path, caplog):
    volume = tmp_path / "spec"
    kubelet_write(volume, {"spec.yaml": spec_text({"max_wait_ms": 2})})
    watcher = SpecWatcher(volume / "spec.yaml", interval_s=0.05)
    first = watcher.current
    assert not watcher.poll()  # nothing changed
    kubelet_write(volume, {"spec.yaml": spec_text({"max_wait_ms": 7})})
    assert watcher.poll() and watcher.current.serving.max_wait_ms == 7
    with caplog.at_level(logging.ERROR, logger="aads.specwatch"):
        kubelet_write(volume, {"spec.yaml": spec_text({"max_wait_ms": -1})})
        assert not watcher.poll() and not watcher.poll()  # refused, and said once
    assert watcher.current.serving.max_wait_ms == 7 and first.serving.max_wait_ms == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "not valid; still serving the previous one" in lines[0]
    assert "serving.max_wait_ms" in lines[0] and "\n" not in lines[0]
    kubelet_write(volume, {"spec.yaml": spec_text({"max_wait_ms": 3})})
    assert watcher.poll() and watcher.current.serving.max_wait_ms == 3
    assert watcher.reloads == 2


def test_a_file_rewritten_in_place_is_picked_up_too(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text({"top_k": 3}))
    watcher = SpecWatcher(path)
    path.write_text(spec_text({"top_k": 2}) + "\n# edited\n")
    assert watcher.poll() and watcher.current.serving.top_k == 2


def test_a_spec_that_is_bad_from_the_start_is_an_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text({"top_k": 0}))
    with pytest.raises(ConfigError, match="serving.top_k"):
        SpecWatcher(path)


# --------------------------------------------------------------------------- real router


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict]:
    """A router whose spec is a ConfigMap volume, a tomato+corn predictor, and a second corn
    predictor to become the canary."""
    models = trained_models(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("reload")
    ports = {name: free_port() for name in ("router", "stable", "canary")}
    stable = f"http://127.0.0.1:{ports['stable']}"
    base = {"predictor_urls": {"tomato": stable, "corn": stable}}
    volume = tmp / "etc-aads"
    kubelet_write(volume, {"spec.yaml": spec_text(base)})
    fixed = tmp / "predictors.yaml"
    fixed.write_text(spec_text({}))
    corn = f"corn={models / 'adapters' / 'corn'}"
    started: list[ServerProcess] = []
    try:
        for name, module, args in (
            ("stable", "serving.predictor", ["--model-root", str(models / "adapters")]),
            ("canary", "serving.predictor", ["--adapter", corn]),
        ):
            started.append(
                start_server(
                    module, [*args, "--spec", str(fixed)], tmp / f"{name}.log", port=ports[name]
                )
            )
        router = start_server(
            "serving.router",
            ["--router", str(models / "router"), "--spec", str(volume / "spec.yaml")],
            tmp / "router.log",
            port=ports["router"],
        )
        started.append(router)
        yield {
            "router": router,
            "volume": volume,
            "base": base,
            "canary_url": f"http://127.0.0.1:{ports['canary']}",
            "corn": [p.read_bytes() for p in crop_images(models, "corn", 10)],
        }
    finally:
        for server in started:
            server.stop()


def variants(cluster: dict) -> list[str]:
    body = {
        "instances": [
            {"image": {"b64": base64.b64encode(im).decode()}, "crop_hint": "corn"}
            for im in cluster["corn"]
        ]
    }
    response = httpx.post(cluster["router"].url + "/v1/models/aads:predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert all(a["label"] and "error" not in a for a in answers), answers
    return [a["routing"].get("variant", "stable") for a in answers]


def wait_for(cluster: dict, expected: list[str], timeout_s: float = 10) -> float:
    began = time.monotonic()
    while variants(cluster) != expected:
        assert time.monotonic() - began < timeout_s, f"spec not followed in {timeout_s} s"
        time.sleep(0.2)
    return time.monotonic() - began


@pytest.mark.slow
def test_a_running_router_follows_a_configmap_update_and_ignores_a_broken_one(cluster):
    everyone_stable = ["stable"] * len(cluster["corn"])
    assert variants(cluster) == everyone_stable
    canary = {"url": cluster["canary_url"], "percent": 50, "version": "2"}
    split = ["canary" if canary_bucket(im) < 50 else "stable" for im in cluster["corn"]]
    assert "canary" in split and "stable" in split

    kubelet_write(
        cluster["volume"],
        {"spec.yaml": spec_text({**cluster["base"], "canaries": {"corn": canary}})},
    )
    took = wait_for(cluster, split)
    assert took < 5  # the watcher polls every 2 s

    log = cluster["router"].log
    kubelet_write(cluster["volume"], {"spec.yaml": "serving: {max_wait_ms: -1}\ncrops: []\n"})
    time.sleep(5)  # two polls and more
    assert variants(cluster) == split  # the last good spec keeps serving
    refusals = [line for line in log.read_text().splitlines() if "is not valid" in line]
    assert len(refusals) == 1 and "still serving the previous one" in refusals[0]

    kubelet_write(cluster["volume"], {"spec.yaml": spec_text(cluster["base"])})  # canary ended
    wait_for(cluster, everyone_stable)
