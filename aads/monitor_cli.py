"""`aads monitor` and `aads feedback`: the offline half of closing the loop.

``aads monitor --crop C --since 7d`` reads the capture store and reports drift (exit 0: none;
4: significant drift, so a CronJob or a KFP recurring run can trigger on it; 2: bad input;
3: a store or the registry is down). ``aads feedback review`` clusters a crop's captured
unknowns for labelling; ``aads feedback import`` turns the labels into the next training
task's data batch. A thin shell: parsing, one call into `aads.drift` / `aads.feedback`, tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aads.cli import ConfigOpt, CropOpt, console, progress_bar, reports_errors
from aads.config import load_config

StoreOpt = Annotated[
    str | None,
    typer.Option(
        help="capture store: s3://BUCKET, s3://BUCKET/BASE or a folder (default: the spec's "
        "serving.capture.store, else its storage bucket)"
    ),
]
PrefixOpt = Annotated[
    str | None, typer.Option(help="key prefix of captures (default: serving.capture.prefix)")
]
SinceOpt = Annotated[
    str, typer.Option(help="window: a length (7d, 24h, 90m, 2w) before now, or an ISO date")
]
PackageSourceOpt = Annotated[
    str | None,
    typer.Option(
        help="the adapter that answered: a folder, s3:// or models:/ (default: "
        "models:/aads-adapter-<crop>@champion)"
    ),
]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI for models:/ sources")]


@reports_errors
def monitor(
    crop: CropOpt,
    since: SinceOpt = "7d",
    config: ConfigOpt = Path("config/demo.yaml"),
    package: PackageSourceOpt = None,
    store: StoreOpt = None,
    prefix: PrefixOpt = None,
    variant: Annotated[
        str, typer.Option(help="answers of the champion, the canary, or all")
    ] = "champion",
    out: Annotated[Path | None, typer.Option(help="report folder")] = None,
    alpha: Annotated[float, typer.Option(help="significance level of each check")] = 0.01,
    max_images: Annotated[
        int, typer.Option(help="recent images compared with the calibration images, at most")
    ] = 512,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Report drift of a crop's field traffic from its adapter's calibration: unknown rate,
    domain mix, feature MMD. Writes monitor.{json,png,html}; exits 4 when drift is significant."""
    from aads.drift.monitor import run_monitor
    from aads.drift.report import write_report
    from aads.drift.stats import DriftInputError, parse_since

    if variant not in ("champion", "canary", "all"):
        raise DriftInputError(f"--variant {variant!r}: use champion, canary or all")
    if not 0 < alpha < 1:
        raise DriftInputError(f"--alpha {alpha}: a significance level is between 0 and 1")
    if max_images < 20:
        raise DriftInputError(f"--max-images {max_images}: at least 20")
    cfg = load_config(config)
    with progress_bar("recent images") as progress:
        report = run_monitor(
            cfg,
            crop,
            parse_since(since),
            package=package,
            store=store,
            prefix=prefix,
            variant=variant,  # type: ignore[arg-type]
            alpha=alpha,
            max_images=max_images,
            tracking_uri=tracking_uri,
            progress=progress,
        )
    paths = write_report(report, out or Path(".aads/monitor") / crop)
    table = Table("check", "status", "p-value", "finding", title=f"drift of {crop}")
    for c in report.checks:
        status = (
            "[bold red]DRIFT[/]"
            if c.significant
            else ("[green]ok[/]" if c.measured else "[dim]not measured[/]")
        )
        p = "-" if c.p_value is None else f"{c.p_value:.3g}"
        table.add_row(c.name, status, p, c.message)
    console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report: {paths['html']}")
    if report.drifted:
        raise typer.Exit(report.exit_code)


feedback_app = typer.Typer(
    help="Curate captured unknowns into the next training task.", no_args_is_help=True
)
