"""The `aads` command keeps the README's word: every error is one `error:` line with exit 2
(bad input) or 3 (a store or server that is down), `--version`, a spec found from any
directory, help on every option, tables whose key column is never cut, JSON for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

import aads.config
from aads.cli import app
from aads.config import load_config, parse_config

from .conftest import ROOT, free_port

runner = CliRunner()


def invoke(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def error_lines(result) -> list[str]:
    """Every non-blank line the command wrote to stderr, except `warning:` lines."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("warning:")
    ]


def assert_one_error_line(result, code: int, *needles: str) -> str:
    """Exit `code`, stderr is one `error:` line holding every needle (after any `warning:`
    lines), no traceback."""
    lines = error_lines(result)
    assert result.exit_code == code, result.output
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def no_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside the repository, with no AADS_CONFIG set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AADS_CONFIG", raising=False)
    return tmp_path


def _commands(group, path=()):  # noqa: ANN001, ANN202 - click objects
    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, (*path, name))


# --------------------------------------------------------------------------- errors


def test_an_unknown_option_is_one_error_line_with_exit_2():
    result = invoke("backbone", "info", "--colour")
    assert_one_error_line(result, 2, "--colour", "aads backbone info --help")
    assert "Usage" not in result.output and "╭" not in result.output


def test_a_missing_option_is_one_error_line_with_exit_2():
    assert_one_error_line(invoke("train", "phase1"), 2, "--crop")


def test_a_bad_choice_names_the_option_and_the_choices():
    result = invoke("data", "ingest", ".", "--layout", "flat")
    line = assert_one_error_line(result, 2, "--layout", "'flat'", "plantvillage")
    assert "Value error" not in line


def test_a_config_with_several_bad_fields_is_still_one_line_naming_each(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "crops": [{"name": "Tomato", "phase1_classes": ["a"]}],
                "router": {"source": "random:tiny", "image_size": 30},
                "adapter": {"backbone": {"source": "random:tiny"}},
            }
        )
    )
    result = invoke("config", "validate", bad)
    assert_one_error_line(result, 2, "crops.0.name", "crops.0.phase1_classes", "router.image_size")


def test_a_missing_image_folder_is_exit_2():
    assert_one_error_line(invoke("data", "ingest", "/no/such/folder"), 2, "/no/such/folder")


def test_an_output_path_under_a_file_is_exit_2_in_words(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("data", "stats", blocker / "manifest.csv")
    assert_one_error_line(result, 2, str(blocker / "manifest.csv"))
    assert "[Errno" not in result.output


def test_an_unreachable_object_store_is_exit_3(tmp_path, monkeypatch):
    spec = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    spec["storage"] = {
        "endpoint": f"127.0.0.1:{free_port()}",
        "secure": False,
        "retries": 1,
        "timeout_s": 1.0,
        "bucket": "aads",
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    result = invoke("storage", "ensure-bucket", "--spec", path)
    assert_one_error_line(result, 3, "127.0.0.1")


@pytest.mark.slow
def test_an_unreachable_kfp_is_exit_3_naming_the_host():
    host = f"http://127.0.0.1:{free_port()}"
    result = invoke("pipeline", "upload", "--host", host, "--version-name", "v1")
    assert_one_error_line(result, 3, host)


def test_ingest_that_keeps_nothing_exits_2_and_still_writes_its_reports(tmp_path):
    from .test_data_ingest import jpeg_bytes, put

    for i in range(3):
        put(tmp_path / "data", f"wheat/rust/{i}.jpg", jpeg_bytes(i))
    out = tmp_path / "out"
    result = invoke(
        "data", "ingest", tmp_path / "data", "--out", out, "-c", ROOT / "config/demo.yaml"
    )
    assert_one_error_line(result, 2, "no image kept", "3 of crops, classes or domains")
    assert "wheat" in (out / "unused.csv").read_text()
    assert json.loads((out / "ingest.json").read_text())["unused"][0]["crop"] == "wheat"


# --------------------------------------------------------------------------- --version, --config


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"aads {version('aads')}"


def test_python_dash_m_aads_runs_the_same_command():
    """Where the console script is not on PATH (a bare venv, a container's `python -m`)."""
    import subprocess
    import sys
    from importlib.metadata import version

    done = subprocess.run(
        [sys.executable, "-m", "aads", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"aads {version('aads')}"


def test_outside_the_repository_the_packaged_demo_spec_is_used(no_config_dir):
    result = invoke("config", "validate")
    assert result.exit_code == 0, result.output
    assert "aads/specs/demo.yaml" in result.stdout and "tomato" in result.stdout


def test_a_local_config_folder_wins_over_the_packaged_spec(no_config_dir):
    (no_config_dir / "config").mkdir()
    spec = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    spec["crops"] = spec["crops"][:1]
    (no_config_dir / "config" / "demo.yaml").write_text(yaml.safe_dump(spec))
    result = invoke("config", "validate")
    assert result.exit_code == 0 and "1 crop(s): tomato" in result.stdout


def test_aads_config_wins_over_the_working_directory(no_config_dir):
    env = {"AADS_CONFIG": str(ROOT / "config" / "plantvillage.yaml")}
    result = invoke("config", "validate", env=env)
    assert result.exit_code == 0 and "potato" in result.stdout


def test_the_flag_wins_over_aads_config(no_config_dir):
    from .test_data_ingest import jpeg_bytes, put

    for i in range(3):
        put(no_config_dir / "pv", f"Pepper,_bell___healthy/{i}.jpg", jpeg_bytes(i))
    env = {"AADS_CONFIG": str(ROOT / "config" / "plantvillage.yaml")}
    assert invoke("data", "ingest", "pv", env=env).exit_code == 0  # pepper aliases Pepper,_bell
    result = invoke("data", "ingest", "pv", "-c", ROOT / "config" / "demo.yaml", env=env)
    assert_one_error_line(result, 2, "no image kept")


def test_a_named_config_that_is_missing_is_never_replaced_by_a_default(no_config_dir):
    assert_one_error_line(
        invoke("data", "ingest", ".", "--config", "nope.yaml"), 2, "--config nope.yaml"
    )
    result = invoke("data", "ingest", ".", env={"AADS_CONFIG": "/no/spec.yaml"})
    assert_one_error_line(result, 2, "$AADS_CONFIG=/no/spec.yaml")


def test_no_spec_anywhere_names_every_place_tried(no_config_dir, monkeypatch):
    monkeypatch.setattr(aads.config, "PACKAGED_SPECS", no_config_dir / "nothing")
    line = assert_one_error_line(invoke("config", "validate"), 2, "--config", "$AADS_CONFIG")
    assert str(no_config_dir / "config" / "demo.yaml") in line and "packaged demo.yaml" in line


# --------------------------------------------------------------------------- help, output


def test_every_option_and_argument_of_every_command_has_help():
    missing = [
        f"{' '.join(path)} {param.name}"
        for path, cmd in _commands(typer.main.get_command(app))
        for param in cmd.params
        if param.name != "help" and not (getattr(param, "help", None) or "").strip()
    ]
    assert missing == []


def test_a_table_piped_to_another_program_keeps_every_model_id_whole():
    from aads.backbone import VARIANTS

    result = invoke("backbone", "info")
    assert result.exit_code == 0
    assert "…" not in result.stdout
    lines = result.stdout.splitlines()
    for v in VARIANTS:
        assert any(v.hf_id in line and v.licence in line for line in lines), v.hf_id


def test_output_json_is_one_document_on_stdout():
    result = invoke("backbone", "info", "--output", "json")
    data = json.loads(result.stdout)
    assert {v["hf_id"] for v in data["variants"]} >= {"facebook/dinov3-vitl16-pretrain-lvd1689m"}


def test_config_show_prints_yaml_that_loads_back_to_the_same_spec():
    result = invoke("config", "show", ROOT / "config" / "demo.yaml")
    assert result.exit_code == 0
    shown = parse_config(yaml.safe_load(result.stdout))
    assert shown == load_config(ROOT / "config" / "demo.yaml")


def test_config_show_as_json():
    result = invoke("config", "show", ROOT / "config" / "demo.yaml", "--output", "json")
    assert json.loads(result.stdout)["crops"][0]["name"] == "tomato"


@pytest.mark.parametrize("module", ["pipelines.cli", "serving.cli"])
def test_a_plugged_in_command_group_imports_on_its_own(module):
    """`aads.cli` loads the command groups other packages plug in when it is imported; a group
    that imported `aads.cli` for the shared option and error handling used to find itself half
    initialised when imported first (`import pipelines.cli`: AttributeError, no `app`)."""
    import subprocess
    import sys

    code = f"import {module}; from aads.cli import app; import typer.main as m; "
    code += "print(sorted(m.get_command(app).commands))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'pipeline'" in done.stdout and "'serve'" in done.stdout
