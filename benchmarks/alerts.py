"""The unknown-rate alert's thresholds: how often the shipped rule fires with no drift (false
alarms) and how fast it fires when the field drifts (power), for the defaults in
``charts/values.yaml`` (``monitoring.rules.unknownRate``; read from the file, so this measures
what the chart ships).

Reproduce with ``.venv/bin/python benchmarks/alerts.py [--quick]``; writes
``benchmarks/results/alerts.json`` and ``alerts.md``.

Two views of the same rule, "over `window`, unknowns / answers > `factor` x the calibrated rate
(floored at `minBaseline`) and at least `minUnknowns` unknowns, for `for`":

- exact, one evaluation: with n answers in the window and each unknown with probability p, the
  number of unknowns is binomial; the rule's condition holds when it reaches
  max(minUnknowns, floor(factor p0 n) + 1). Reported for p = p0 (false alarm) and p = 1.2, 1.5,
  2 and 3 x p0 (power), and for three answers at night.
- simulated, as Prometheus evaluates it: answers arrive per minute (Poisson) at a steady rate or
  on a day/night cycle, each unknown with probability p; the condition is evaluated every minute
  on the sliding window and must hold for `for` before the alert fires (`increase()`'s
  extrapolation and scrape jitter are left out: at one-minute resolution they move the window
  sums by less than one answer's worth). Reported: alert episodes per 30 days of quiet traffic
  (p = p0), and with drift the share of minutes firing and the minutes to the first firing.

The not-a-known-crop rule is the same arithmetic with its own ratio and floor against the
router's design rejection rate (5 %), reported in the exact view.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from machine import load_average, machine
from scipy.stats import binom

from aads.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
P0 = 0.05
"""The calibrated rejection rate of a 95th-percentile threshold (the OOD default)."""
DRIFTS = (1.2, 1.5, 2.0, 3.0)
ANSWERS_PER_WINDOW = (3, 10, 20, 50, 100, 200, 400, 1000, 2000, 5000, 10_000)
RATES_PER_HOUR = (20, 50, 100, 200, 300, 400, 1000, 5000)
DAY = 1440


def minutes(text: str) -> int:
    units = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440, "w": 10080}
    return int(round(float(text[:-1]) * units[text[-1]]))


def shipped_rules() -> dict[str, Any]:
    values = yaml.safe_load((ROOT / "charts" / "values.yaml").read_text())
    return values["monitoring"]["rules"]


def first_firing_count(n: int, p0: float, factor: float, floor: float, minimum: int) -> int:
    """The fewest unknowns among n answers for which the rule's condition holds."""
    ratio_needed = math.floor(factor * max(p0, floor) * n) + 1  # strictly above
    return max(minimum, ratio_needed)


def exact_rows(p0: float, factor: float, floor: float, minimum: int) -> list[dict[str, Any]]:
    rows = []
    for n in ANSWERS_PER_WINDOW:
        k = first_firing_count(n, p0, factor, floor, minimum)
        row: dict[str, Any] = {"answers": n, "unknowns_needed": k}
        row["false_alarm"] = float(binom.sf(k - 1, n, p0)) if k <= n else 0.0
        for r in DRIFTS:
            row[f"power_{r:g}x"] = float(binom.sf(k - 1, n, min(1.0, r * p0))) if k <= n else 0.0
        rows.append(row)
    return rows


def worst_false_alarm(p0: float, factor: float, floor: float, minimum: int) -> dict[str, Any]:
    """The traffic (answers per window, 1 to 20,000) at which one evaluation is most likely to
    fire with no drift, and that probability: where the count floor and the ratio meet."""
    n = np.arange(1, 20_001)
    k = np.maximum(minimum, np.floor(factor * max(p0, floor) * n) + 1)
    p = np.where(k <= n, binom.sf(k - 1, n, p0), 0.0)
    i = int(np.argmax(p))
    return {"answers": int(n[i]), "unknowns_needed": int(k[i]), "false_alarm": float(p[i])}


def condition(
    answers: np.ndarray, unknowns: np.ndarray, window: int, p0: float, rule: dict
) -> np.ndarray:
    """Per minute (rows: runs), whether the rule's expression returns a series."""

    def rolling(x: np.ndarray) -> np.ndarray:
        c = np.cumsum(x, axis=1)
        c[:, window:] = c[:, window:] - c[:, :-window]
        return c

    n, u = rolling(answers), rolling(unknowns)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, u / np.maximum(n, 1), np.nan)
    threshold = rule["factor"] * max(p0, rule["minBaseline"])
    return (rate > threshold) & (u >= rule["minUnknowns"])


def firing(cond: np.ndarray, hold: int) -> np.ndarray:
    """An alert with ``for: hold`` minutes: firing where the condition held for the last
    `hold` + 1 evaluations (pending at the first, firing `hold` minutes later)."""
    run = np.zeros_like(cond, dtype=np.int64)
    for t in range(cond.shape[1]):
        prev = run[:, t - 1] if t else 0
        run[:, t] = np.where(cond[:, t], prev + 1, 0)
    return run > hold


def episodes(fire: np.ndarray) -> np.ndarray:
    starts = fire[:, 1:] & ~fire[:, :-1]
    return starts.sum(axis=1) + fire[:, 0]


def traffic(rng: np.random.Generator, runs: int, per_hour: np.ndarray, p: float):
    answers = rng.poisson(np.broadcast_to(per_hour / 60.0, (runs, per_hour.size)))
    return answers, rng.binomial(answers, p)


def diurnal(days: int, day_rate: float, night_rate: float) -> np.ndarray:
    """Answers per hour, minute by minute: `day_rate` from 08:00 to 20:00, else `night_rate`."""
    hour = (np.arange(days * DAY) // 60) % 24
    return np.where((hour >= 8) & (hour < 20), day_rate, night_rate).astype(float)


def simulated_rows(rule: dict, runs: int, days: int, seed: int = 0) -> list[dict[str, Any]]:
    window, hold = minutes(rule["window"]), minutes(rule["for"])
    rng = np.random.default_rng(seed)
    profiles = {f"{r}/h": np.full(days * DAY, float(r)) for r in RATES_PER_HOUR}
    profiles["day 600/h, night 6/h"] = diurnal(days, 600, 6)
    rows = []
    for name, per_hour in profiles.items():
        row: dict[str, Any] = {"traffic": name}
        answers, unknowns = traffic(rng, runs, per_hour, P0)
        fire = firing(condition(answers, unknowns, window, P0, rule), hold)
        fire[:, :window] = False  # the first window is not yet full
        row["false_alarms_per_30_days"] = float(episodes(fire).mean() * 30 / days)
        for r in DRIFTS:
            short = per_hour[: 2 * DAY]
            answers, unknowns = traffic(rng, runs, short, r * P0)
            fire = firing(condition(answers, unknowns, window, P0, rule), hold)
            settled = fire[:, window + hold :]
            row[f"firing_share_{r:g}x"] = float(settled.mean())
            first = np.where(fire.any(axis=1), fire.argmax(axis=1), -1)
            hit = first[first >= 0]
            row[f"minutes_to_fire_{r:g}x"] = float(np.median(hit)) if hit.size else None
        rows.append(row)
    return rows


def percent(x: float | None) -> str:
    if x is None:
        return "never"
    return "0" if x == 0 else (f"{x:.2%}" if x >= 1e-4 else f"{x:.1e}")


def exact_table(rows: list[dict[str, Any]], counted: str) -> list[str]:
    """Markdown lines of an exact view: per traffic, the count needed, false alarm, power."""
    head = f"| answers in the window | {counted} needed | false alarm | "
    lines = [head + " | ".join(f"fires at {r:g}x" for r in DRIFTS) + " |"]
    lines.append("|---" * (3 + len(DRIFTS)) + "|")
    for row in rows:
        cells = [str(row["answers"]), str(row["unknowns_needed"]), percent(row["false_alarm"])]
        cells += [percent(row[f"power_{r:g}x"]) for r in DRIFTS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulated days")
    parser.add_argument("--out", type=Path, default=RESULTS / "alerts.json")
    args = parser.parse_args(argv)
    rules = shipped_rules()
    unknown, not_crop = rules["unknownRate"], rules["notAKnownCrop"]
    runs, days = (4, 30) if args.quick else (10, 90)
    load_before = load_average()
    result = {
        "benchmark": "alerts",
        "machine": machine(),
        "load_average_1m_before": load_before,
        "calibrated_rate": P0,
        "unknown_rate_rule": unknown,
        "not_a_known_crop_rule": not_crop,
        "simulated_days": runs * days,
        "unknown_rate_exact": exact_rows(
            P0, unknown["factor"], unknown["minBaseline"], unknown["minUnknowns"]
        ),
        "unknown_rate_worst": worst_false_alarm(
            P0, unknown["factor"], unknown["minBaseline"], unknown["minUnknowns"]
        ),
        "not_a_known_crop_worst": worst_false_alarm(
            P0, not_crop["ratio"] / P0, 0.0, not_crop["minAnswers"]
        ),
        "not_a_known_crop_exact": exact_rows(
            P0, not_crop["ratio"] / P0, 0.0, not_crop["minAnswers"]
        ),
        "unknown_rate_simulated": simulated_rows(unknown, runs, days),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")

    u = unknown
    lines = [
        "# Alert thresholds: false alarms and power",
        "",
        f"The shipped `monitoring.rules.unknownRate`: window {u['window']}, factor {u['factor']}, "
        f"at least {u['minUnknowns']} unknowns, baseline floor {u['minBaseline']}, for "
        f"{u['for']}; calibrated rate {P0:.0%}. Command: `.venv/bin/python benchmarks/alerts.py`.",
        "",
        "## Unknown rate, one evaluation (exact binomial)",
        "",
        *exact_table(result["unknown_rate_exact"], "unknowns"),
    ]
    worst = result["unknown_rate_worst"]
    lines += [
        "",
        f"Worst traffic for false alarms (1 to 20,000 answers in the window): {worst['answers']} "
        f"answers, {worst['unknowns_needed']} unknowns needed, {percent(worst['false_alarm'])} "
        "per evaluation.",
    ]
    lines += [
        "",
        f"## Unknown rate as Prometheus evaluates it ({result['simulated_days']} simulated "
        "days per traffic level; drift runs: 2 days each)",
        "",
        "| traffic | false alarms per 30 days | "
        + " | ".join(f"share of minutes firing at {r:g}x" for r in DRIFTS)
        + " | "
        + " | ".join(f"minutes to fire at {r:g}x" for r in DRIFTS)
        + " |",
        "|---" * (2 + 2 * len(DRIFTS)) + "|",
    ]
    for row in result["unknown_rate_simulated"]:
        cells = [row["traffic"], f"{row['false_alarms_per_30_days']:.2f}"]
        cells += [percent(row[f"firing_share_{r:g}x"]) for r in DRIFTS]
        cells += [
            "never" if row[f"minutes_to_fire_{r:g}x"] is None
            else f"{row[f'minutes_to_fire_{r:g}x']:.0f}"
            for r in DRIFTS
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    n = not_crop
    lines += [
        "",
        f"## Not a known crop, one evaluation (ratio {n['ratio']}, at least {n['minAnswers']}, "
        f"design rejection rate {P0:.0%})",
        "",
        *exact_table(result["not_a_known_crop_exact"], "rejections"),
    ]
    worst = result["not_a_known_crop_worst"]
    lines += [
        "",
        f"Worst traffic for false alarms: {worst['answers']} answers, "
        f"{percent(worst['false_alarm'])} per evaluation.",
    ]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
