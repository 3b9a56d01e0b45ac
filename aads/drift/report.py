"""What `aads monitor` writes: ``monitor.json`` (for machines), ``monitor.png`` (four panels a
person reads at a glance) and ``monitor.html`` (the verdicts, the numbers and the picture,
self-contained so a CI artifact viewer or the KFP UI shows it without fetching anything)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from aads.atomic import atomic_write, atomic_write_text
from aads.drift.monitor import DriftReport
from aads.drift.stats import DriftCheck

JSON_NAME, PNG_NAME, HTML_NAME = "monitor.json", "monitor.png", "monitor.html"
_RED, _GREEN, _GREY = "#b00020", "#1b7f3b", "#777777"


def write_report(report: DriftReport, out_dir: Path) -> dict[str, Path]:
    """The three files under `out_dir` (each written atomically); returns their paths."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / JSON_NAME, "png": out_dir / PNG_NAME, "html": out_dir / HTML_NAME}
    atomic_write_text(paths["json"], json.dumps(_finite(report.as_dict()), indent=2) + "\n")
    atomic_write(paths["png"], lambda tmp: _plot(report, tmp))
    atomic_write_text(paths["html"], _html(report, paths["png"].read_bytes()))
    return paths


def _finite(value: object) -> object:
    """JSON has no inf or NaN: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _colour(check: DriftCheck) -> str:
    return _RED if check.significant else (_GREEN if check.measured else _GREY)


def _status(check: DriftCheck) -> str:
    return "DRIFT" if check.significant else ("ok" if check.measured else "not measured")


def _plot(report: DriftReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), dpi=100)
    try:
        fig.suptitle(
            f"{report.crop}: drift since {report.since:%Y-%m-%d %H:%M} UTC — "
            + ("DRIFT" if report.drifted else "no significant drift"),
            fontsize=14,
            color=_RED if report.drifted else _GREEN,
        )
        _plot_rate(axes[0][0], report)
        _plot_volume(axes[0][1], report)
        _plot_mix(axes[1][0], report.check("domain mix"))
        _plot_mmd(axes[1][1], report.check("feature drift"))
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _title(ax, check: DriftCheck, text: str) -> None:  # noqa: ANN001 - matplotlib Axes
    ax.set_title(f"{text}: {_status(check)}", color=_colour(check), fontsize=11)


def _not_measured(ax, check: DriftCheck) -> None:  # noqa: ANN001
    ax.text(0.5, 0.5, check.message, ha="center", va="center", wrap=True, fontsize=9)
    ax.set_axis_off()


def _plot_rate(ax, report: DriftReport) -> None:  # noqa: ANN001
    check = report.check("unknown rate")
    _title(ax, check, "unknown rate per day")
    days = [d for d in report.daily if d["estimated_rate"] is not None]
    if not check.measured or not days:
        _not_measured(ax, check)
        return
    x = list(range(len(days)))
    ax.bar(x, [100 * d["estimated_rate"] for d in days], color="#4c72b0", label="estimated")
    ax.axhline(100 * check.detail["calibrated_rate"], color=_RED, ls="--", label="calibrated")
    interval = check.detail.get("interval_95")
    if interval:
        ax.axhspan(
            100 * interval[0],
            100 * interval[1],
            color="#4c72b0",
            alpha=0.15,
            label="window's 95% interval",
        )
    ax.set_xticks(x, [d["day"][5:] for d in days], rotation=45, fontsize=8)
    ax.set_ylabel("answered unknown (%)")
    ax.legend(fontsize=8)


def _plot_volume(ax, report: DriftReport) -> None:  # noqa: ANN001
    ax.set_title("captured records per day", fontsize=11)
    if not report.daily:
        ax.text(0.5, 0.5, "no captured records in the window", ha="center", va="center")
        ax.set_axis_off()
        return
    x = list(range(len(report.daily)))
    known = [d["known_sampled"] for d in report.daily]
    ax.bar(x, known, color="#55a868", label="answered by name (sampled)")
    ax.bar(
        x,
        [d["unknown"] for d in report.daily],
        bottom=known,
        color="#c44e52",
        label="unknown (all kept)",
    )
    ax.set_xticks(x, [d["day"][5:] for d in report.daily], rotation=45, fontsize=8)
    ax.set_ylabel("records")
    ax.legend(fontsize=8)


def _plot_mix(ax, check: DriftCheck) -> None:  # noqa: ANN001
    _title(ax, check, "domain mix vs training")
    if not check.measured or "observed_share" not in check.detail:
        _not_measured(ax, check)
        return
    names = list(check.detail["training_share"])
    x = range(len(names))
    ax.bar(
        [i - 0.2 for i in x],
        [100 * check.detail["training_share"][n] for n in names],
        width=0.4,
        color="#8172b3",
        label="training",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [100 * check.detail["observed_share"][n] for n in names],
        width=0.4,
        color="#ccb974",
        label="recent",
    )
    ax.set_xticks(list(x), names)
    ax.set_ylabel("share of images (%)")
    ax.legend(fontsize=8)


def _plot_mmd(ax, check: DriftCheck) -> None:  # noqa: ANN001
    _title(ax, check, "feature drift (MMD² vs permutation null)")
    if not check.measured:
        _not_measured(ax, check)
        return
    ax.hist(check.detail["null"], bins=30, color="#999999", label="null (permuted)")
    ax.axvline(
        check.statistic,
        color=_colour(check),
        lw=2,
        label=f"recent vs calibration (p = {check.p_value:.2g})",
    )
    ax.set_xlabel("MMD²")
    ax.set_ylabel("permutations")
    ax.legend(fontsize=8)


def _html(report: DriftReport, png: bytes) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(c.name)}</td><td style='color:{_colour(c)}'>{_status(c)}</td>"
        f"<td>{'' if c.p_value is None else f'{c.p_value:.3g}'}</td><td>{esc(c.message)}</td></tr>"
        for c in report.checks
    )
    counts = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in report.records.items())
    versions = ", ".join(f"v{esc(k)}: {v}" for k, v in report.model_versions.items()) or "none"
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    verdict = "Drift" if report.drifted else "No significant drift"
    return (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>AADS drift: {esc(report.crop)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "img{max-width:100%}</style>"
        f"<h1 style='color:{_RED if report.drifted else _GREEN}'>{verdict}: "
        f"{esc(report.crop)}</h1>"
        f"<p>window {report.since:%Y-%m-%d %H:%M} — {report.until:%Y-%m-%d %H:%M} UTC<br>"
        f"store: {esc(report.store)}<br>package: {esc(report.package)}<br>"
        f"answers by model version: {versions}<br>"
        f"significance level per check: {report.alpha:g}; exit code {report.exit_code}</p>"
        "<table><tr><th>check</th><th>status</th><th>p-value</th><th>finding</th></tr>"
        f"{rows}</table>"
        f"<h2>Records</h2><table>{counts}</table>"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + f"<img alt='drift panels' src='data:image/png;base64,{base64.b64encode(png).decode()}'>\n"
    )
