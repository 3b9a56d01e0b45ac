"""The `aads` command line: a thin typer shell over the package, with rich tables and progress.

Every error is one `error:` line on stderr and an exit code chosen by its kind
(`aads.errors`): 2 for bad input, a bad config or something that does not exist, 3 for a store
or server that is down; a mistyped option or a missing argument is an `error:` line with exit 2
too. Tracebacks are for bugs only.

Which spec a command reads: ``--config``, else ``$AADS_CONFIG``, else ``./config/demo.yaml``
(``production.yaml`` for promotion), else the spec shipped inside the package, so `aads` works
from any directory (`aads.config.locate_config`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as ProgressDisplay
from rich.table import Table

from aads.cli_common import ConfigOpt, config_option, config_path, print_error, reports_errors
from aads.cli_output import Output, OutputOpt, emit, key_table, print_json
from aads.config import ConfigError, PlatformConfig, load_config
from aads.phases import PHASES, Phase
from aads.progress import Progress

# PEFT 0.21 calls a transformers API renamed in 5.x; harmless until transformers 6.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")


_click = sys.modules[typer.BadParameter.__module__]
"""click's exceptions module as typer uses it (typer >= 0.20 vendors its own click)."""
_Abort = getattr(_click, "Abort", KeyboardInterrupt)
"""Ctrl-C as click reports it; typer's vendored click has no `Abort` (it raises the interrupt)."""


class _OneLineErrors(typer.core.TyperGroup):
    """The top-level group: click's usage errors (unknown option, missing argument, bad value)
    become one `error:` line naming the command's --help, instead of a framed help panel."""

    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:  # noqa: ANN401
        standalone = kw.pop("standalone_mode", True)
        try:
            code = super().main(args, *a, standalone_mode=False, **kw)
        except _click.ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `aads data`: its help, no error
                typer.echo(err.ctx.get_help())
                code = 0
            else:
                path = err.ctx.command_path if getattr(err, "ctx", None) else "aads"
                reason = err.format_message().replace("Value error, ", "")
                print_error(f"{reason} (see {path} --help)")
                code = err.exit_code
        except _Abort:
            print_error("aborted")
            code = 130
        if not standalone:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="aads",
    help="AADS: plant-disease diagnosis on DINOv3, from data to served adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_OneLineErrors,
)
data_app = typer.Typer(help="Synthesise, ingest and inspect image data.", no_args_is_help=True)
backbone_app = typer.Typer(help="DINOv3 backbones: variants and features.", no_args_is_help=True)
config_app = typer.Typer(help="Validate and show platform spec files.", no_args_is_help=True)
train_app = typer.Typer(
    help="Train the router and the three adapter phases (DoRA, SD-LoRA, CONEC-LoRA).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(backbone_app, name="backbone")
app.add_typer(config_app, name="config")
ood_app = typer.Typer(
    help="Calibrate and evaluate adapters' out-of-distribution check.", no_args_is_help=True
)
app.add_typer(train_app, name="train")
app.add_typer(ood_app, name="ood")
storage_app = typer.Typer(help="The S3-compatible object store.", no_args_is_help=True)
app.add_typer(storage_app, name="storage")

console = Console(soft_wrap=True)
"""stdout: results. Lines are never wrapped by rich (a pipe gets whole lines for grep)."""
err_console = Console(stderr=True, soft_wrap=True)

ProductionConfigOpt = config_option("production.yaml", "production")


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"aads {version('aads')}")
        except PackageNotFoundError:
            typer.echo("aads (not installed as a package: no version)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """AADS: plant-disease diagnosis on DINOv3, from data to served adapters."""


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    """A rich progress bar exposed as the package's `progress(done, total)` callback."""
    with ProgressDisplay(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _config(path: Path | None, default: str = "demo.yaml") -> PlatformConfig:
    return load_config(config_path(path, default))


# --------------------------------------------------------------------------- config

SpecArg = Annotated[
    Path | None,
    typer.Argument(
        help="spec YAML; default: $AADS_CONFIG, else ./config/demo.yaml, else the packaged demo",
        show_default=False,
    ),
]


class SpecFormat(StrEnum):
    yaml = "yaml"
    json = "json"


@config_app.command("validate")
@reports_errors
def config_validate(path: SpecArg = None) -> None:
    """Check a spec file; an error names every bad field with its dotted path."""
    path = config_path(path, given_as="")
    cfg = load_config(path)
    console.print(f"[green]ok[/] {path}: {len(cfg.crops)} crop(s): {', '.join(cfg.crop_names)}")


@config_app.command("show")
@reports_errors
def config_show(
    path: SpecArg = None,
    output: Annotated[
        SpecFormat, typer.Option("--output", "-o", help="yaml (default) or json")
    ] = SpecFormat.yaml,
) -> None:
    """Print the spec with every default filled in (what the platform will actually use)."""
    data = load_config(config_path(path, given_as="")).model_dump(mode="json")
    if output is SpecFormat.json:
        print_json(data)
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


# --------------------------------------------------------------------------- storage


@storage_app.command("ensure-bucket")
@reports_errors
def storage_ensure_bucket(
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            "--config",
            help="platform spec YAML (its storage block); default as for --config elsewhere",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create the spec's bucket if it is missing (the chart runs this after MinIO starts);
    retried with backoff while the store comes up, then a clear error."""
    from aads.storage import S3Store

    settings = _config(spec, "production.yaml").storage
    S3Store(settings.bucket, settings).ensure_bucket()
    console.print(f"[green]ok[/] s3://{settings.bucket} at {settings.resolved_endpoint()}")


# --------------------------------------------------------------------------- data


@data_app.command("synth")
@reports_errors
def data_synth(
    config: ConfigOpt = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path(".aads/data/synth"),
    seed: Annotated[int | None, typer.Option(help="override data.synth.seed")] = None,
    images_per_class: Annotated[
        int | None, typer.Option(min=1, help="override data.synth.images_per_class")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Draw the deterministic synthetic dataset (crops, parts, diseases, domains)."""
    from aads.data.synth import synthesize

    cfg = _config(config)
    updates = {k: v for k, v in {"seed": seed, "images_per_class": images_per_class}.items() if v}
    settings = cfg.data.synth.model_copy(update=updates)
    with progress_bar("synthesising") as progress:
        report = synthesize(cfg, out, settings=settings, progress=progress)
    table = key_table("domain", "images", title=f"{report.images} images in {report.root}")
    for dom, n in sorted(report.per_domain.items()):
        table.add_row(dom, str(n))
    data = {"root": report.root, "images": report.images, "per_domain": report.per_domain}
    emit(console, output, data, table)


class LayoutChoice(StrEnum):
    auto = "auto"
    plantvillage = "plantvillage"
    crop_class = "crop-class"
    crop_part_class = "crop-part-class"


@data_app.command("ingest")
@reports_errors
def data_ingest(
    root: Annotated[Path, typer.Argument(help="image folder to ingest")],
    config: ConfigOpt = None,
    out: Annotated[
        Path, typer.Option(help="where manifest.csv, rejects.csv, unused.csv, ingest.json go")
    ] = Path(".aads/manifest"),
    layout: Annotated[
        LayoutChoice, typer.Option(help="folder layout; auto detects it", case_sensitive=False)
    ] = LayoutChoice.auto,
    domain_dirs: Annotated[
        bool | None,
        typer.Option(
            "--domain-dirs/--no-domain-dirs",
            help="the top level is one folder per domain (default: detected)",
            show_default=False,
        ),
    ] = None,
    part: Annotated[str, typer.Option(help="plant part when the layout has none")] = "leaf",
    domain: Annotated[str, typer.Option(help="domain when the layout has none")] = "base",
    output: OutputOpt = Output.table,
) -> None:
    """Check every image, split by seed, assign phases; write the manifest and the reports of
    rejected images and of images the config does not use. Exits 2 if no image is kept."""
    from aads.data.ingest import ingest, require_images, write_ingest_outputs

    cfg = _config(config)
    with progress_bar("checking images") as progress:
        result = ingest(
            root,
            config=cfg,
            layout=layout.value,  # type: ignore[arg-type]
            domain_dirs=domain_dirs,
            default_part=part,
            domain=domain,
            progress=progress,
        )
    paths = write_ingest_outputs(result, out)
    s = result.summary
    for warning in s["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    require_images(result, out)
    tables = [key_table("split", "images", title=f"{s['images']} images ({s['layout']} layout)")]
    for split, n in sorted(s["splits"].items()):
        tables[0].add_row(split, str(n))
    if s["rejects_by_reason"]:
        tables.append(key_table("reason", "files", title=f"rejected: {paths['rejects']}"))
        for reason, n in sorted(s["rejects_by_reason"].items()):
            tables[-1].add_row(reason, str(n))
    if s["unused"]:
        tables.append(
            key_table(
                "crop/class (domain)",
                "images",
                "not in the config",
                title=f"not used, the config does not name them: {paths['unused']}",
            )
        )
        for u in s["unused"]:
            name = f"{u['crop']}/{u['label']}" + (
                f" ({u['domain']})" if u["domain"] != "base" else ""
            )
            tables[-1].add_row(name, str(u["images"]), u["not_in_config"])
    emit(console, output, {**s, "outputs": paths}, *tables)
    if output is Output.table:
        console.print(f"manifest {paths['manifest']} sha256 {result.manifest_sha256[:16]}")


@data_app.command("stats")
@reports_errors
def data_stats(
    manifest: Annotated[Path, typer.Argument(help="manifest.csv")],
    output: OutputOpt = Output.table,
) -> None:
    """Images per crop, class, domain and split of a manifest."""
    from collections import Counter

    from aads.data.manifest import read_manifest

    rows = read_manifest(manifest)
    counts = Counter((r.crop, r.domain, r.label, r.phase or "-", r.split) for r in rows)
    table = key_table("crop", "domain", "class", "phase", "train", "val", "test")
    data = []
    for k in sorted({k[:4] for k in counts}):
        per_split = {s: counts[(*k, s)] for s in ("train", "val", "test")}
        table.add_row(*k, *(str(n) for n in per_split.values()))
        data.append(dict(zip(("crop", "domain", "class", "phase"), k, strict=True)) | per_split)
    emit(console, output, data, table)


# --------------------------------------------------------------------------- backbone


@backbone_app.command("info")
@reports_errors
def backbone_info(
    output: OutputOpt = Output.table,
    as_json: Annotated[
        bool, typer.Option("--json", help="same as --output json", hidden=True)
    ] = False,
) -> None:
    """The real DINOv3 and DINOv2 variants (ids, shapes, normalisation, licence) and the random
    presets."""
    from dataclasses import asdict

    from aads.backbone import PRESETS, VARIANTS

    rows = [{**asdict(v), "parameters": v.num_parameters} for v in VARIANTS]
    data = {"variants": rows, "random_presets": sorted(PRESETS)}
    table = key_table(
        "Hugging Face id",
        "family",
        "width",
        "depth",
        "heads",
        "MLP",
        "params",
        "norm",
        "licence",
        title="Backbone variants (DINOv3; DINOv2 is the ungated fallback)",
    )
    for v in VARIANTS:
        mlp = f"{v.mlp} {v.mlp_size}" if v.mlp else "-"
        table.add_row(
            v.hf_id,
            v.family,
            str(v.width),
            str(v.depth),
            str(v.heads or "-"),
            mlp,
            f"{v.num_parameters / 1e6:,.0f}M",
            v.dataset,
            f"{v.licence}{' (gated)' if v.gated else ''}",
        )
    emit(console, Output.json if as_json else output, data, table)
    if not as_json and output is Output.table:
        console.print(f"random presets (random:<name>): {', '.join(sorted(PRESETS))}")


@backbone_app.command("features")
@reports_errors
def backbone_features(
    manifest: Annotated[Path, typer.Option(help="manifest.csv from `aads data ingest`")],
    out: Annotated[Path, typer.Option(help="features .safetensors to write")],
    config: ConfigOpt = None,
    which: Annotated[str, typer.Option(help="router | adapter backbone")] = "router",
    data_root: Annotated[
        Path | None, typer.Option(help="image root; default: the one ingest recorded")
    ] = None,
    split: Annotated[str | None, typer.Option(help="only this split")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward pass")] = 32,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes")] = 0,
) -> None:
    """Extract pooled backbone features for manifest images into a safetensors cache."""
    from aads.backbone import load_backbone
    from aads.data.ingest import load_ingest_summary
    from aads.data.manifest import read_manifest, select
    from aads.features import extract_manifest_features, save_features

    if which not in ("router", "adapter"):
        raise ConfigError(f"--which {which!r}: must be router or adapter")
    cfg = _config(config)
    rows = select(read_manifest(manifest), split=split)
    root = data_root or Path(load_ingest_summary(manifest.parent)["root"])
    settings = cfg.router if which == "router" else cfg.adapter.backbone
    backbone = load_backbone(settings, cfg.storage)
    with progress_bar(f"{which} features") as progress:
        table = extract_manifest_features(
            backbone,
            rows,
            root,
            batch_size=batch_size,
            num_workers=workers,
            progress=progress,
        )
    save_features(table, out)
    console.print(f"{len(rows)} x {backbone.feature_dim} features ({backbone.source}) -> {out}")


# --------------------------------------------------------------------------- train

ManifestOpt = Annotated[Path, typer.Option(help="manifest.csv from `aads data ingest`")]
OutOpt = Annotated[Path, typer.Option(help="output folder (router or adapter package)")]
CropOpt = Annotated[str, typer.Option(help="crop name from the config")]
FromOpt = Annotated[Path, typer.Option("--from", help="the previous phase's adapter package")]
CheckpointOpt = Annotated[
    Path | None, typer.Option(help="resumable checkpoints (re-run to resume)")
]


def _training_inputs(manifest: Path, data_root: Path | None) -> tuple[list, Path, str]:
    from aads.data.ingest import load_ingest_summary
    from aads.data.manifest import read_manifest

    rows = read_manifest(manifest)
    summary = load_ingest_summary(manifest.parent)
    return rows, data_root or Path(summary["root"]), summary.get("manifest_sha256", "")


DataRootOpt = Annotated[
    Path | None, typer.Option(help="image root; default: the one ingest recorded")
]


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = key_table("metric", "value", title=title)
    for k, v in sorted(metrics.items()):
        table.add_row(k, f"{v:.4f}")
    return table


def _report_package(pkg: Path, output: Output) -> None:
    from aads.adapters.package import read_meta

    meta = read_meta(pkg)
    title = f"{meta.crop}: phase {meta.last_phase} -> {pkg}"
    data = {"package": pkg, "crop": meta.crop, "phase": meta.last_phase, "metrics": meta.metrics}
    emit(console, output, data, _metrics_table(title, meta.metrics))


@train_app.command("router")
@reports_errors
def train_router_cmd(
    out: OutOpt = Path(".aads/models/router"),
    config: ConfigOpt = None,
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Fit the crop and part heads on frozen router-backbone features."""
    from aads.runner import ManifestInputs
    from aads.steps import run_router

    cfg = _config(config)
    rows, root, digest = _training_inputs(manifest, data_root)
    inputs = ManifestInputs(rows, root, digest, str(root))
    with progress_bar("router features") as progress:
        outcome = run_router(cfg, inputs, out, progress=progress)
    data = {"router": out, "metrics": outcome.metrics}
    emit(console, output, data, _metrics_table(f"router -> {out}", outcome.metrics))


def _train_phase(
    phase: Phase,
    crop: str,
    from_pkg: Path | None,
    out: Path,
    config: Path | None,
    manifest: Path,
    data_root: Path | None,
    checkpoint_dir: Path | None,
    output: Output,
) -> None:
    from aads.runner import run_phase

    cfg = _config(config)
    rows, root, digest = _training_inputs(manifest, data_root)
    with progress_bar(f"{crop}: {phase.title}") as progress:
        pkg = run_phase(
            cfg,
            phase,
            crop,
            rows,
            root,
            from_pkg,
            out,
            manifest_sha256=digest,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
        )
    _report_package(pkg, output)


def _add_phase_command(phase: Phase) -> None:
    """``aads train phase<N>``, one per phase of the table; a phase that continues the
    previous package takes it as ``--from``."""
    doc = f"Phase {phase.number}: {phase.method}, {phase.purpose}."

    def first(
        crop: CropOpt,
        out: OutOpt,
        config: ConfigOpt = None,
        manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
        data_root: DataRootOpt = None,
        checkpoint_dir: CheckpointOpt = None,
        output: OutputOpt = Output.table,
    ) -> None:
        _train_phase(phase, crop, None, out, config, manifest, data_root, checkpoint_dir, output)

    def continuing(
        crop: CropOpt,
        from_pkg: FromOpt,
        out: OutOpt,
        config: ConfigOpt = None,
        manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
        data_root: DataRootOpt = None,
        checkpoint_dir: CheckpointOpt = None,
        output: OutputOpt = Output.table,
    ) -> None:
        _train_phase(
            phase, crop, from_pkg, out, config, manifest, data_root, checkpoint_dir, output
        )

    command = continuing if phase.needs_previous else first
    command.__doc__ = doc
    command.__name__ = f"train_{phase.name}_cmd"
    train_app.command(phase.name)(reports_errors(command))


for _phase in PHASES:
    _add_phase_command(_phase)


# --------------------------------------------------------------------------- ood

PackageOpt = Annotated[Path, typer.Option("--package", help="adapter package folder")]
LocoOpt = Annotated[
    bool, typer.Option("--loco/--no-loco", help="also leave each class out in turn (near-OOD)")
]


@ood_app.command("calibrate")
@reports_errors
def ood_calibrate(
    package: PackageOpt,
    config: ConfigOpt = None,
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    loco: LocoOpt = True,
    output: OutputOpt = Output.table,
) -> None:
    """Fit the package's OOD check (train split), thresholds (val), evaluate (test); store it."""
    from aads.ood.calibrate import calibrate_package

    rows, root, digest = _training_inputs(manifest, data_root)
    with progress_bar("OOD features") as progress:
        result = calibrate_package(
            _config(config),
            package,
            rows,
            root,
            manifest_sha256=digest,
            loco=loco,
            progress=progress,
        )
    title = f"OOD calibration -> {package}/ood"
    data = {"package": package, "metrics": result.metrics}
    emit(console, output, data, _metrics_table(title, result.metrics))


@ood_app.command("evaluate")
@reports_errors
def ood_evaluate(
    package: PackageOpt,
    out: Annotated[Path, typer.Option(help="report folder")] = Path(".aads/ood-eval"),
    config: ConfigOpt = None,
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    loco: LocoOpt = True,
    compare: Annotated[
        bool, typer.Option("--compare", help="also score every method (method table)")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """AUROC, FPR@95 (both conventions), AUPR-In/Out and ROC curves; the package is unchanged."""
    from aads.ood.report import evaluate_package

    rows, root, digest = _training_inputs(manifest, data_root)
    with progress_bar("OOD features") as progress:
        report = evaluate_package(
            _config(config),
            package,
            rows,
            root,
            out,
            manifest_sha256=digest,
            loco=loco,
            compare=compare,
            progress=progress,
        )
    tables = [_metrics_table(f"OOD evaluation of {package}", report.metrics)]
    if report.methods:
        table = key_table("method", "threshold", "mean AUROC", "balanced acc", title="methods")
        for row in report.methods:
            name = f"{row['covariance']}/{row['feature_space']}" + (
                "/relative" if row["relative"] else ""
            )
            table.add_row(
                name,
                str(row["threshold"]),
                f"{row['mean_auroc']:.4f}",
                f"{row['balanced_operating_accuracy']:.4f}",
            )
        tables.append(table)
    data = {"package": package, "report": out, "metrics": report.metrics, "methods": report.methods}
    emit(console, output, data, *tables)
    if output is Output.table:
        console.print(f"report: {out}")


# --------------------------------------------------------------------------- promotion

RepoOpt = Annotated[Path, typer.Option(help="the GitOps repository (holds charts/ and manifests/)")]
EnvOpt = Annotated[str, typer.Option("--env", help="environment, e.g. staging or production")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI")]
CrdsOpt = Annotated[
    Path | None, typer.Option(help="folder of KServe CRDs to validate InferenceServices against")
]


def _report_promotion(result, output: Output) -> None:  # noqa: ANN001 - promotion.Promotion
    table = key_table("field", "value", title=f"{result.crop} in {result.env}")
    table.add_row("version", f"{result.version} (was {result.previous_version or 'none'})")
    table.add_row("storage URI", result.storage_uri)
    table.add_row("digest", result.digest)
    table.add_row("commit", result.commit or "none (already promoted)")
    data = {
        "crop": result.crop,
        "env": result.env,
        "version": result.version,
        "previous_version": result.previous_version,
        "storage_uri": result.storage_uri,
        "digest": result.digest,
        "commit": result.commit,
    }
    emit(console, output, data, table)


@app.command("promote")
@reports_errors
def promote_cmd(
    crop: CropOpt,
    version: Annotated[str, typer.Option(help="registered version number")],
    env: EnvOpt,
    canary: Annotated[
        int | None,
        typer.Option(help="percent of the crop's traffic for this version, beside the pinned one"),
    ] = None,
    repo: RepoOpt = Path("."),
    config: ProductionConfigOpt = None,
    tracking_uri: TrackingOpt = None,
    crds: CrdsOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Pin a gated, checksum-verified version for an environment and commit it (GitOps);
    with --canary, send only that share of the crop's traffic to it."""
    from aads.promotion import promote

    result = promote(
        _config(config, "production.yaml"),
        repo,
        crop,
        version,
        env,
        canary=canary,
        tracking_uri=tracking_uri,
        crds=crds,
    )
    _report_promotion(result, output)


@app.command("rollback")
@reports_errors
def rollback_cmd(
    crop: CropOpt,
    env: EnvOpt,
    repo: RepoOpt = Path("."),
    config: ProductionConfigOpt = None,
    tracking_uri: TrackingOpt = None,
    crds: CrdsOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """End a running canary, or pin the version the current one replaced, the same way as a
    promotion."""
    from aads.promotion import rollback

    cfg = _config(config, "production.yaml")
    result = rollback(cfg, repo, crop, env, tracking_uri=tracking_uri, crds=crds)
    _report_promotion(result, output)


# --------------------------------------------------------------------------- demo


@app.command("demo")
@reports_errors
def demo(
    config: ConfigOpt = None,
    workdir: Annotated[Path, typer.Option(help="where the demo writes")] = Path(".aads/demo"),
    data: Annotated[
        Path | None,
        typer.Option(
            help="train on this image folder (any layout `aads data ingest` reads) instead of "
            "synthetic data",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Run the main job in one process: data, router, every crop's phases and OOD
    calibration (`make demo` runs the same through the KFP pipeline: `aads pipeline demo`)."""
    from aads.demo import run_demo

    cfg = _config(config)
    step_console = console if output is Output.table else err_console
    summary = run_demo(cfg, workdir, data=data, progress_bar=progress_bar, console=step_console)
    table = key_table("step", "result", "seconds", title="AADS demo")
    for step in summary["steps"]:
        table.add_row(step["name"], step["result"], f"{step['seconds']:.1f}")
    emit(console, output, summary, table)
    if output is Output.table:
        console.print(f"summary: {summary['summary_path']}")


from aads.monitor_cli import feedback_app, monitor  # noqa: E402 - it imports this module's helpers

app.command("monitor")(monitor)
app.add_typer(feedback_app, name="feedback")
import aads.continue_cli  # noqa: E402, F401 - registers `train continue` and `lineage`


def _add_plugins() -> None:
    """Sub-commands other packages register under the ``aads.cli`` entry point (the pipeline
    commands live in ``pipelines/``, which imports `aads`, never the other way round)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="aads.cli"):
        plugin = ep.load()
        if isinstance(plugin, typer.Typer):
            app.add_typer(plugin, name=ep.name)
        else:  # a function that adds top-level commands
            plugin(app)


_add_plugins()


def main() -> None:  # pragma: no cover - console script entry
    app()
