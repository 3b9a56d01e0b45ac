"""`aads serve` and `aads predict` keep the README's word: one `error:` line and exit 2 or 3
for what a user gets wrong or cannot reach, one row per image whatever happens to the others,
the URL `serve` prints is the one `predict` takes, and no server outlives `aads serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from aads.answer import Answer, ErrorEntry, ModelRef, OODVerdict, Routing
from aads.cli import app
from aads.config import RegistrySettings
from aads.errors import NotFound
from tests.conftest import ROOT, free_port
from tests.images import noise_png
from tests.serving_models import SPEC, crop_images, trained_models


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return trained_models(tmp_path_factory)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    import yaml

    path = tmp_path_factory.mktemp("cli") / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "registry": {"experiment": "serving-cli"}}))
    return path


def run(*args: str) -> typer.testing.Result:
    return CliRunner().invoke(app, list(args))


def one_error_line(result: typer.testing.Result, code: int, *words: str) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# --------------------------------------------------------------------------- the table


def test_an_image_of_no_known_crop_is_not_shown_as_routed_to_a_crop():
    from serving.cli import answers_table

    routing = Routing(
        source="router", crop="tomato", crop_confidence=1.0, part="leaf", is_ood=True,
        distance=900.0, threshold=300.0,
    )  # fmt: skip
    diagnosed = Answer(
        label="healthy",
        is_ood=False,
        confidence=0.93,
        crop="corn",
        ood=OODVerdict(distance=10, threshold=40, nearest_class="healthy"),
        model=ModelRef(name="aads-adapter-corn", version="3"),
        routing=Routing(source="router", crop="corn", crop_confidence=0.97, part="leaf"),
    )
    console = Console(record=True, width=200)
    console.print(answers_table(["cat.png", "leaf.jpg"], [Answer.unknown_crop(routing), diagnosed]))
    rows = console.export_text().splitlines()
    cat = next(r for r in rows if "cat.png" in r)
    assert "no known crop (nearest tomato)" in cat and "tomato 1.00" not in cat
    assert "not one of the known crops" in cat
    leaf = next(r for r in rows if "leaf.jpg" in r)
    assert "corn 0.97 (leaf)" in leaf and "healthy" in leaf and "v3" in leaf


def _rendered(table) -> list[str]:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text().splitlines()


def test_an_answer_reads_the_same_in_predict_and_in_the_field_loops_before_and_after():
    from pipelines.field_loop import LoopResult, before_after_table
    from serving.cli import answers_table

    unknown = Answer(
        label="unknown", is_ood=True, confidence=0.4, crop="tomato",
        ood=OODVerdict(distance=90, threshold=40, nearest_class="leaf_mold"),
    )  # fmt: skip
    known = Answer(label="mosaic_virus", is_ood=False, confidence=0.9, crop="tomato")
    loop = LoopResult("tomato", "mosaic_virus", [Path("a.png")], [unknown], [known])
    (row,) = [r for r in _rendered(before_after_table(loop, "1", "2")) if "a.png" in r]
    (served,) = [r for r in _rendered(answers_table(["a.png"], [unknown])) if "a.png" in r]
    assert "unknown (nearest: leaf_mold)" in row and "mosaic_virus" in row
    assert "unknown (nearest: leaf_mold)" in served


def test_an_error_answer_shows_its_message_verbatim_brackets_included():
    from serving.cli import answers_table

    error = Answer.failed(ErrorEntry(code=400, message="field [image]: not a PNG [/]"))
    (row,) = [r for r in _rendered(answers_table(["x.png"], [error])) if "x.png" in r]
    assert "error: field [image]: not a PNG [/]" in row


@pytest.mark.parametrize("command", ["serve", "predict"])
def test_every_option_of_serve_and_predict_has_help(command):
    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    missing = [p.name for p in params if not getattr(p, "help", None)]
    assert params and not missing, f"{command}: options without help: {missing}"


# --------------------------------------------------------------------------- predict


def test_predict_against_a_refused_connection_names_the_url_and_exits_3(tmp_path):
    image = tmp_path / "leaf.png"
    image.write_bytes(noise_png(16))
    url = f"http://127.0.0.1:{free_port()}"
    one_error_line(run("predict", str(image), "--url", url), 3, url, "cannot reach")


def test_predict_with_a_missing_file_or_a_bad_url_is_exit_2(tmp_path):
    one_error_line(run("predict", str(tmp_path / "nope.jpg")), 2, "nope.jpg")
    image = tmp_path / "leaf.png"
    image.write_bytes(noise_png(16))
    one_error_line(run("predict", str(image), "--url", "localhost:8080"), 2, "not an http")


# --------------------------------------------------------------------------- serve


@pytest.mark.slow
def test_serve_with_a_named_crop_that_has_no_registered_version_is_one_error_line(
    mlflow_server, models, spec_file
):
    from aads.registry import Registry

    registry = Registry(RegistrySettings(experiment="serving-cli"), tracking_uri=mlflow_server)
    registry.register_package(
        models / "adapters" / "tomato",
        name="aads-adapter-tomato",
        tags={},
        description="# card",
        metrics={},
        kfp_run_id="run-serving-cli",
    )
    result = run(
        "serve", "--config", str(spec_file), "--alias", "candidate", "--crop", "corn",
        "--tracking-uri", mlflow_server,
    )  # fmt: skip
    one_error_line(result, 2, "corn", "'candidate'")

    # Without --crop: the config's crops that have the alias are served, the others named.
    from serving.cli import alias_sources

    sources, router = alias_sources(spec_file, "candidate", None, "routerdir", mlflow_server)
    assert sources == {"tomato": "models:/aads-adapter-tomato@candidate"} and router == "routerdir"
    with pytest.raises(NotFound, match="no crop has a version with the alias 'champion'"):
        alias_sources(spec_file, "champion", None, "routerdir", mlflow_server)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def port_is_free(port: int) -> bool:
    """Nothing listens on it: a new server can bind it (as servers do, with SO_REUSEADDR:
    connections the old one closed may linger in TIME_WAIT, a listener may not)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def start_serve(models: Path, spec_file: Path, workdir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-c", "from aads.cli import main; main()",  # what `aads` runs
            "serve", "--config", str(spec_file),
            "--adapters", str(models / "adapters"), "--router", str(models / "router"),
            "--port", str(port), "--workdir", str(workdir),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as from a terminal: a shell's background job (`./.ci/run &`) starts with SIGINT
        # ignored, and a Python started so never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def wait_for_lines(proc: subprocess.Popen, until: str, timeout_s: float = 180) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:  # end of output: it exited
            break
        lines.append(line.rstrip())
        if line.startswith(until):
            return lines
    raise AssertionError(f"`aads serve` did not print {until!r}: {lines}")


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "SIGKILL"])
@pytest.mark.slow
def test_serve_prints_the_url_predict_takes_and_leaves_no_server_behind(
    models, spec_file, tmp_path, stop
):
    port = free_port()
    proc = start_serve(models, spec_file, tmp_path / "serve", port)
    try:
        lines = wait_for_lines(proc, "try:")
        url = f"http://127.0.0.1:{port}"
        assert lines[-1].split() == ["try:", "aads", "predict", "--url", url, "IMAGE..."]
        predictor_port = int(
            next(x for x in lines if x.startswith("predictor:")).split(":")[3].split()[0]
        )
        servers = children_of(proc.pid)
        assert len(servers) == 2 and not port_is_free(port) and not port_is_free(predictor_port)

        images = [str(p) for p in crop_images(models, "tomato", 2)]
        for given_url in (url, f"{url}/v1/models/aads:predict", f"{url}/v2/models/aads/infer"):
            result = run("predict", *images, "--url", given_url, "--crop-hint", "tomato")
            assert result.exit_code == 0, result.output
        big = tmp_path / "big.png"
        big.write_bytes(noise_png(400))  # over serving.max_image_bytes (200 kB)
        result = run("predict", images[0], str(big), images[1], "--url", url, "--json")
        assert result.exit_code == 2, result.output  # one image refused: documented exit 2
        answers = json.loads(result.output)
        assert [("error" in a) for a in answers] == [False, True, False]
        assert answers[1]["error"]["code"] == 413
        assert "over the 200000 byte limit" in answers[1]["error"]["message"]
    finally:
        proc.send_signal(getattr(signal, stop))
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(map(alive, servers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in servers if alive(pid)], "orphan servers"
    assert port_is_free(port) and port_is_free(predictor_port)


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped holds no port and runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
