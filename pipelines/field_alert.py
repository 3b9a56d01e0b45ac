"""The field loop's alert: a real Prometheus server, loaded with the chart's rules, watches the
served v1 while the field's photos keep arriving, until the unknown-rate alert fires.

The rule is the chart's ``AADSUnknownRateHigh``, rendered by Helm's engine as a cluster gets it,
with two values shortened so a demo sees it (``monitoring.rules.unknownRate.window`` 30s and
``for`` 2s; the chart's defaults are 1h and 15m) and every other value, the 30-unknown floor
and the factor of 2 over the calibrated rejection rate included, as shipped. The photos are sent
again round after round (a field problem keeps arriving): Prometheus's ``increase`` needs a
counter seen before it grows, and the first round is what creates the crop's series. Capture
deduplicates by image, so the repeats add no captured images.

Where the ``prometheus`` binary is not installed (Debian's package: ``make demo`` and ``make
tools`` install it where apt-get runs as root) or the chart cannot be rendered, the step says so
and the loop goes on: the alert is the loop's signal, not a condition of the rest.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote, urlparse

import yaml
from rich.console import Console

from aads.chart import ChartError, deep_merge
from aads.prometheus_local import (
    LocalPrometheus,
    PrometheusFailed,
    Target,
    chart_rule_groups,
)

CHART_DIR = Path(__file__).resolve().parents[1] / "charts"
ALERT = "AADSUnknownRateHigh"
DEMO_RULES = {"rules": {"interval": "1s", "unknownRate": {"window": "30s", "for": "2s"}}}
"""The values the demo changes: how often rules run, the window and how long it must hold."""
DEADLINE_S = 120.0


def _port(url: str) -> int:
    return int(urlparse(url).port or 80)


def unknown_rate_values(rules: dict) -> dict:
    """``monitoring.rules.unknownRate`` as the chart renders it: its values.yaml, then `rules`."""
    shipped = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["monitoring"]["rules"]
    return deep_merge(shipped["unknownRate"], rules.get("rules", {}).get("unknownRate", {}))


def _calibrated_rate(prometheus: LocalPrometheus, crop: str) -> float | None:
    """The predictor's calibrated rejection rate for `crop` once Prometheus has scraped it."""
    try:
        query = quote(f'aads_calibrated_rejection_ratio{{crop="{crop}"}}')
        found = prometheus.api(f"/api/v1/query?query={query}")
    except (OSError, PrometheusFailed):  # still starting
        return None
    values = [float(r["value"][1]) for r in found["result"]]
    return max(values) if values else None


def watch_unknown_rate(
    router_url: str,
    predictor_url: str,
    crop: str,
    photos: list[Path],
    work: Path,
    console: Console,
    rules: dict | None = None,
    deadline_s: float = DEADLINE_S,
) -> dict | None:
    """Send `photos` to the router round after round until Prometheus fires the chart's
    unknown-rate alert for `crop`; returns the alert (Prometheus's API form), or None when it
    did not fire or could not be watched, with the reason printed. It stops early, saying so,
    when the photos' unknown share is not above the rule's factor times the calibrated rate:
    the rule is designed not to fire then. `rules`: the ``monitoring`` values the chart's rules
    are rendered with (default `DEMO_RULES`)."""
    from serving.local import predict_files

    rules = rules or DEMO_RULES
    targets = [
        Target(_port(router_url), "aads-router", "router"),
        Target(_port(predictor_url), f"aads-{crop}", "adapter-predictor"),
    ]
    try:
        groups = chart_rule_groups(CHART_DIR, rules)
        server = LocalPrometheus(work / "prometheus", targets, groups)
    except (ChartError, PrometheusFailed) as err:
        console.print(f"[yellow]{err}[/]: the unknown-rate alert is not shown")
        return None
    values = unknown_rate_values(rules)
    console.print(
        f"Prometheus (Debian's server, on 127.0.0.1) scrapes the router and the predictor every "
        f"second with the chart's {ALERT} rule (window {values['window']}, for {values['for']}, "
        f"factor {values['factor']}, at least {values['minUnknowns']} unknowns; the chart's "
        "defaults: window 1h, for 15m); the field keeps sending the photos ..."
    )
    began = time.monotonic()
    with server as prometheus:
        rounds, share, checked = 0, 0.0, False
        while time.monotonic() - began < deadline_s:
            answers = predict_files(router_url, photos, crop_hint=crop)
            rounds += 1
            share = sum(a.label == "unknown" for a in answers) / max(len(answers), 1)
            calibrated = None if checked else _calibrated_rate(prometheus, crop)
            if calibrated is not None:
                checked = True
                floor = values["factor"] * max(calibrated, values["minBaseline"])
                if share <= floor:
                    console.print(
                        f"{ALERT} will not fire: {share:.0%} of the photos answered unknown, not "
                        f"above {values['factor']} x the calibrated rejection rate "
                        f"({calibrated:.0%}), as the rule is designed"
                    )
                    return None
            try:
                alert = prometheus.firing().get((ALERT, crop))
            except (OSError, PrometheusFailed):  # still starting
                alert = None
            if alert is not None:
                console.print(
                    f"[bold red]{ALERT} firing[/] after {time.monotonic() - began:.0f} s "
                    f"({rounds} rounds of {len(photos)} photos): {alert_summary(alert)}"
                )
                return alert
            time.sleep(1.0)
        console.print(
            f"[yellow]{ALERT} did not fire within {deadline_s:.0f} s[/] ({share:.0%} unknown; "
            f"Prometheus's log: {prometheus.log})"
        )
    return None


def alert_summary(alert: dict) -> str:
    """The alert's summary and the first sentence of its description, as a page reads."""
    notes = alert["annotations"]
    return f"{notes['summary']}: {notes['description'].split('. ')[0]}."
