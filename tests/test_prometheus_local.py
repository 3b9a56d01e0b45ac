"""`aads.prometheus_local`: the chart's rules as a local Prometheus server loads them, and a
clear error where the server is not installed. (The server itself runs in
`test_prometheus_server.py` and `test_loop_e2e.py`.)"""

from __future__ import annotations

import pytest

from aads.errors import Unavailable
from aads.prometheus_local import LocalPrometheus, Target, chart_rule_groups
from tests.charts import CHART


@pytest.mark.slow
def test_the_rules_are_the_charts_rendered_with_the_values_given():
    groups = chart_rule_groups(CHART, {"rules": {"unknownRate": {"window": "30s", "for": "2s"}}})
    rules = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    unknown = rules["AADSUnknownRateHigh"]
    assert unknown["for"] == "2s"
    assert "[30s]" in unknown["expr"] and 'isvc="aads-router"' in unknown["expr"]
    assert ">= 30" in unknown["expr"]  # the shipped floor, not given here, is kept
    assert {"AADSPredictorErrors", "AADSLatencyP99High"} <= set(rules)


def test_a_target_carries_the_labels_the_charts_pod_monitor_adds():
    config = Target(8080, "aads-tomato", "adapter-predictor").static_config()
    assert config["targets"] == ["127.0.0.1:8080"]
    assert config["labels"] == {
        "namespace": "aads",
        "isvc": "aads-tomato",
        "component": "adapter-predictor",
        "pod": "aads-tomato",
    }


def test_without_the_server_installed_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Unavailable, match="Debian's prometheus package"):
        LocalPrometheus(tmp_path, [], [])


@pytest.mark.slow
def test_the_demo_says_the_alert_step_is_left_out_without_the_server(tmp_path, monkeypatch):
    from rich.console import Console

    from pipelines.field_alert import watch_unknown_rate

    monkeypatch.setenv("PATH", str(tmp_path))
    console = Console(record=True, width=200)
    urls = ("http://127.0.0.1:9", "http://127.0.0.1:9")  # never called
    assert watch_unknown_rate(*urls, "pepper", [], tmp_path, console) is None
    text = console.export_text()
    assert "Debian's prometheus package" in text and "alert is not shown" in text
