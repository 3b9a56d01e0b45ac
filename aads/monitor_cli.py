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

from aads.cli import ConfigOpt, CropOpt, _config, console, progress_bar, reports_errors

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
    config: ConfigOpt = None,
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
    cfg = _config(config)
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


@feedback_app.command("review")
@reports_errors
def feedback_review(
    crop: CropOpt,
    since: SinceOpt = "30d",
    config: ConfigOpt = None,
    package: PackageSourceOpt = None,
    store: StoreOpt = None,
    prefix: PrefixOpt = None,
    out: Annotated[Path | None, typer.Option(help="review folder")] = None,
    max_images: Annotated[int, typer.Option(help="most recent unknowns reviewed, at most")] = 2000,
    max_clusters: Annotated[int, typer.Option(help="clusters tried, at most")] = 10,
    new_class: Annotated[
        list[str] | None, typer.Option(help="offer this new class name as a choice (repeat)")
    ] = None,
    presign_hours: Annotated[
        float | None,
        typer.Option(help="S3 stores: presigned HTTPS image URLs valid this long, not s3://"),
    ] = None,
    url_prefix: Annotated[
        str | None, typer.Option(help="image URLs are this prefix + the object key")
    ] = None,
    images: Annotated[
        bool, typer.Option("--images/--no-images", help="copy the images, one folder per cluster")
    ] = True,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Cluster a crop's captured unknowns; write a contact sheet per cluster and a Label Studio
    project (tasks pre-annotated with the cluster and the nearest known class)."""
    from datetime import timedelta

    from aads.drift.stats import DriftInputError, parse_since
    from aads.feedback.review import review_unknowns
    from aads.feedback.sheets import MAX_THUMBNAILS

    if presign_hours is not None and not 0 < presign_hours <= 168:
        raise DriftInputError("--presign-hours: S3 presigned URLs last at most 168 hours (7 days)")
    new = tuple(_class_names(new_class or []))
    with progress_bar("unknown images") as progress:
        review = review_unknowns(
            _config(config),
            crop,
            parse_since(since),
            out or Path(".aads/review") / crop,
            package=package,
            store=store,
            prefix=prefix,
            max_images=max_images,
            max_clusters=max_clusters,
            new_classes=new,
            presign=timedelta(hours=presign_hours) if presign_hours else None,
            url_prefix=url_prefix,
            copy_images=images,
            tracking_uri=tracking_uri,
            progress=progress,
        )
    table = Table(
        "cluster",
        "images",
        "nearest known class",
        "distance / threshold",
        "contact sheet",
        title=f"{review.images} unknown image(s) of {crop}: {review.reason}",
    )
    for c in review.clusters:
        ratio = "-" if c.median_distance_ratio is None else f"{c.median_distance_ratio:.2f}"
        nearest = f"{c.nearest_class or '?'} ({c.nearest_votes}/{c.size})"
        table.add_row(c.name, str(c.size), nearest, ratio, str(review.out / c.sheet))
    console.print(table)
    for reason, n in review.left_out.items():
        console.print(f"[yellow]left out:[/] {n} ({reason})")
    console.print(
        f"Label Studio: create an image classification project with "
        f"{review.out}/labelstudio/labeling-config.xml, import "
        f"{review.out}/labelstudio/tasks.json (connect the capture bucket as S3 source storage "
        f"for s3:// URLs); max {MAX_THUMBNAILS} thumbnails per contact sheet"
    )


@feedback_app.command("import")
@reports_errors
def feedback_import(
    crop: CropOpt,
    out: Annotated[Path, typer.Option(help="the data batch folder to write (must be new)")],
    labelstudio: Annotated[
        Path | None, typer.Option(help="Label Studio JSON export of the review's project")
    ] = None,
    folder: Annotated[
        Path | None, typer.Option(help="images sorted by hand into <class>/<image> folders")
    ] = None,
    domain: Annotated[
        str | None, typer.Option(help="name of the new condition, for images of known classes")
    ] = None,
    drop_known: Annotated[
        bool, typer.Option(help="leave images of known classes out instead of a domain task")
    ] = False,
    config: ConfigOpt = None,
    package: Annotated[
        str | None,
        typer.Option(
            help="the model the task continues (folder, s3://, models:/): its classes are the "
            "known ones (default: the spec's classes of the crop)"
        ),
    ] = None,
    store: StoreOpt = None,
    prefix: PrefixOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Turn labels (a Label Studio export, or hand-sorted folders) into the next training
    task's data batch: <out>/<crop>/<class>/ images + task.json (classes or domain task)."""
    from aads.adapters.package import read_meta
    from aads.capture.records import open_capture_store
    from aads.feedback.batch import (
        BatchError,
        build_batches,
        labels_from_export,
        labels_from_folder,
    )
    from aads.inference import resolve_model

    if (labelstudio is None) == (folder is None):
        raise BatchError("give exactly one of --labelstudio EXPORT.json or --folder DIR")
    cfg = _config(config)
    spec = cfg.crop(crop)
    if package:
        resolved = resolve_model(package, cfg.storage, cfg.registry, tracking_uri=tracking_uri)
        known = read_meta(resolved.path).classes
    else:
        known = spec.known_classes
    if labelstudio is not None:
        target = open_capture_store(cfg.serving.capture, cfg.storage, store, prefix)
        items, left_out = labels_from_export(labelstudio, target, cfg.storage)
        source = f"Label Studio export {labelstudio.name}"
    else:
        assert folder is not None
        items, left_out = labels_from_folder(folder)
        source = f"folder {folder}"
    result = build_batches(
        crop, items, left_out, known, out, domain=domain, drop_known=drop_known, source=source
    )
    table = Table("batch", "task", "classes", "images", title=f"data batch(es) for {crop}")
    for task, path in result.batches:
        what = task.kind + (f" ({task.domain})" if task.domain else "")
        table.add_row(str(path), what, ", ".join(task.classes), str(sum(task.images.values())))
    console.print(table)
    for reason, n in sorted(result.left_out.items()):
        console.print(f"[yellow]left out:[/] {n} ({reason})")
    for message in result.messages:
        console.print(f"[bold]note:[/] {message}")


def _class_names(names: list[str]) -> list[str]:
    from aads.data.layout import slugify

    return [slugify(n) for n in names]
