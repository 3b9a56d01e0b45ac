"""checkov's Kubernetes policies on every rendered charts/ci scenario: no failed check is left
without a written reason (charts/checkov-skips.yaml), and no reason outlives its check.

checkov runs on the rendered YAML (``--framework kubernetes``): its helm framework would need
a helm binary, and Helm's own engine (helm-python-sdk) renders here instead."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.charts import CHART, SCENARIOS, load_scenario, render
from tests.tools import tool

pytestmark = pytest.mark.slow  # Helm renders and checkov lints

SKIPS_FILE = CHART / "checkov-skips.yaml"


def skips() -> dict[str, str]:
    return yaml.safe_load(SKIPS_FILE.read_text())


def run_checkov(folder: Path, skip: list[str]) -> list[dict]:
    """checkov's result blocks (one per framework it ran)."""
    command = [tool("checkov"), "--framework", "kubernetes", "-d", str(folder), "--quiet"]
    command += ["--compact", "--output", "json", "--skip-download"]
    if skip:
        command += ["--skip-check", ",".join(skip)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), out.stderr[-2000:]  # 1: some check failed
    blocks = json.loads(out.stdout)
    return blocks if isinstance(blocks, list) else [blocks]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rendered")
    for scenario in SCENARIOS:
        docs = render(load_scenario(scenario))
        (folder / f"{scenario.stem}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return folder


def failed(blocks: list[dict]) -> Counter:
    return Counter(
        f"{f['check_id']} {f['resource']} ({f['file_path']})"
        for block in blocks
        for f in block.get("results", {}).get("failed_checks", [])
    )


def test_every_skipped_check_has_a_written_reason():
    for check, reason in skips().items():
        assert check.startswith("CKV_K8S_") and len(str(reason).split()) >= 8, check


def test_checkov_finds_nothing_without_a_written_reason(rendered):
    blocks = run_checkov(rendered, sorted(skips()))
    summary = [b["summary"] for b in blocks if "summary" in b]
    assert sum(s["resource_count"] for s in summary) >= 100, summary  # it really scanned
    assert sum(s["parsing_errors"] for s in summary) == 0, summary
    assert not failed(blocks), "\n".join(sorted(failed(blocks)))


def test_every_written_reason_is_still_needed(rendered):
    blocks = run_checkov(rendered, [])
    failing = {key.split()[0] for key in failed(blocks)}
    assert set(skips()) <= failing, f"stale skips: {sorted(set(skips()) - failing)}"
