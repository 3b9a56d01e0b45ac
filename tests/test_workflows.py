"""The GitHub Actions workflows: actionlint (offline) finds nothing, CI runs `make test`, and a
release tag builds and pushes both images and the chart to the one configured registry."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.tools import tool

pytestmark = pytest.mark.slow  # actionlint and checkov run

WORKFLOWS = ROOT / ".github" / "workflows"


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_actionlint_finds_nothing(tmp_path):
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    out = subprocess.run(
        [tool("actionlint"), "-color=false", *files], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - run: echo ${{ github.nonexistent_context }}\n"
    )
    out = subprocess.run(
        [tool("actionlint"), "-color=false", str(broken)], capture_output=True, text=True
    )
    assert out.returncode == 1 and "nonexistent_context" in out.stdout


def test_ci_runs_make_test_on_pull_requests():
    ci = workflow("ci.yml")
    assert "pull_request" in ci[True]  # YAML 1.1 reads the key `on` as True
    runs = [step.get("run") for job in ci["jobs"].values() for step in job["steps"]]
    assert "make test" in runs


def test_a_tag_releases_both_images_and_the_chart_to_the_configured_registry():
    release = workflow("release.yml")
    assert release[True]["push"]["tags"] == ["v*"]
    jobs = release["jobs"]
    assert jobs["images"]["strategy"]["matrix"]["image"] == ["serving", "components"]
    image_step = jobs["images"]["steps"][-1]["run"]
    assert image_step.startswith('make "image-$IMAGE"') and "PUSH=1" in image_step
    chart = " ".join(step.get("run", "") for step in jobs["chart"]["steps"])
    assert (
        "make chart" in chart
        and 'helm push "dist/aads-$VERSION.tgz" "oci://$REGISTRY/charts"' in chart
    )
    out = subprocess.run(
        ["make", "-s", "print-registry"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    cluster = yaml.safe_load((ROOT / "config" / "cluster.yaml").read_text())
    assert out.stdout.strip() == cluster["registry"]  # named once, in config/cluster.yaml
