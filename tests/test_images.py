"""The two images, as far as a machine without a Docker daemon can check them: each installs
what its lock file pins (the serving image no kfp, the component image no KServe), carries OCI
labels and a torch layer of its own before any source is copied, and the serving image's
default command serves the packages mounted at /mnt/models."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.request

import pytest

from tests.conftest import ROOT, free_port

IMAGES = {
    "serving": ROOT / "serving" / "Dockerfile",
    "components": ROOT / "components" / "Dockerfile",
}
LOCKS = {name: ROOT / "requirements" / f"{name}.txt" for name in IMAGES}


def pins(image: str) -> dict[str, str]:
    lines = LOCKS[image].read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_names(image: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {"serving": "serving", "components": "pipelines"}[image]
    specs = project["dependencies"] + project["optional-dependencies"][extra]
    return {normalise(re.split(r"[<>=!~\[ ;]", s, maxsplit=1)[0]) for s in specs} - {"torch"}


@pytest.mark.parametrize("image", list(IMAGES))
def test_every_dependency_of_the_image_is_pinned(image):
    pinned = {normalise(n): v for n, v in pins(image).items()}
    assert dependency_names(image) <= set(pinned), dependency_names(image) - set(pinned)
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pinned.values())
    assert "torch" not in pinned  # its own layer, from its own index


def test_the_serving_image_has_no_kfp_and_the_component_image_no_kserve():
    serving, components = (
        set(map(normalise, pins("serving"))),
        set(map(normalise, pins("components"))),
    )
    assert "kserve" in serving and not {"kfp", "kfp-kubernetes"} & serving
    assert {"kfp", "kfp-kubernetes", "psycopg2-binary"} <= components and "kserve" not in components


@pytest.mark.parametrize("image", list(IMAGES))
def test_the_dockerfile_installs_torch_alone_then_the_lock_then_aads_without_resolving(image):
    text = IMAGES[image].read_text()
    final = text[text.rindex("\nFROM ") :]
    torch = final.index("torch==${TORCH_VERSION}")
    lock = final.index(f"requirements/{image}.txt")
    app = final.index("pip install --no-cache-dir --no-deps /wheels/*.whl")
    assert torch < lock < app, "torch's layer must come before anything that changes more often"
    assert "pip check" in final[app:]
    for label in ("version", "revision", "created", "source", "licenses", "title"):
        assert f"org.opencontainers.image.{label}=" in final, label


def default_command() -> list[str]:
    text = IMAGES["serving"].read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return entry + cmd


def test_the_serving_images_default_command_names_files_the_image_has():
    command = default_command()
    assert command[:3] == ["python", "-m", "serving.predictor"]
    spec = command[command.index("--spec") + 1]
    assert spec == "/opt/aads/config/demo.yaml" and "COPY config /opt/aads/config" in (
        IMAGES["serving"].read_text()
    )
    assert "--host=0.0.0.0" in command  # reachable from outside the container


@pytest.mark.slow
def test_the_serving_images_default_command_serves_a_mounted_package(tmp_path):
    """The image's command, run here with /mnt/models and /opt/aads/config mapped to local
    folders (and the host to loopback), serves a real package."""
    from aads.adapters.phases.phase1 import train_phase1
    from aads.config import SynthSettings, parse_config
    from aads.data.ingest import ingest
    from aads.data.synth import synthesize
    from aads.ood.calibrate import calibrate_package
    from serving.local import ServerProcess, wait_ready

    spec = {
        "crops": [{"name": "tomato", "phase1_classes": ["healthy", "early_blight"]}],
        "router": {"source": "random:tiny", "image_size": 32},
        "adapter": {
            "backbone": {"source": "random:tiny", "image_size": 32},
            "ood": {"threshold": {"min_samples": 2}},
        },
        "training": {"phase1": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None}},
        "storage": {"cache_dir": str(tmp_path / "cache")},
    }
    config = parse_config(spec)
    synthesize(config, tmp_path / "data", settings=SynthSettings(images_per_class=4, image_size=32))
    rows = ingest(tmp_path / "data", config=config).rows
    package = train_phase1(
        config, "tomato", rows, tmp_path / "data", tmp_path / "models" / "tomato"
    )
    calibrate_package(config, package, rows, tmp_path / "data", loco=False)
    port = free_port()
    command = [
        arg.replace("/mnt/models", str(tmp_path / "models"))
        .replace("/opt/aads/config", str(ROOT / "config"))
        .replace("--host=0.0.0.0", "--host=127.0.0.1")
        .replace("8080", str(port))
        for arg in default_command()
    ]
    command[0] = sys.executable
    log = tmp_path / "predictor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ServerProcess("predictor", f"http://127.0.0.1:{port}", proc, log), 180)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/tomato", timeout=30) as r:
            assert json.load(r)["name"] == "tomato"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert shlex.join(command)  # the command ran as written, not a stand-in
