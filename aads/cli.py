"""The `aads` command line: a thin typer shell over the package, with rich tables and progress.

Every command turns the package's typed errors into one clear `error:` line on stderr and a
non-zero exit code (2: bad input or config; 3: a store or service is down); tracebacks are for
bugs only.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
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

from aads.config import ConfigError, PlatformConfig, load_config
from aads.errors import AADSError, exit_code
from aads.progress import Progress

# PEFT 0.21 calls a transformers API renamed in 5.x; harmless until transformers 6.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

app = typer.Typer(
    name="aads",
    help="AADS: plant-disease diagnosis on DINOv3, from data to served adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., object])

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="platform spec YAML", show_default=True)
]


def _fail(err: BaseException, code: int) -> NoReturn:
    """Print the reason unwrapped (one line, grep-able) and exit; never a traceback."""
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def reports_errors(fn: F) -> F:
    """Map errors to `error: ...` + the exit code of their kind (`aads.errors`): 2 for bad
    input or something that does not exist, 3 for a store or server that is down."""

    @wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except (AADSError, FileNotFoundError) as err:
            _fail(err, exit_code(err))

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    """A rich progress bar exposed as the package's `progress(done, total)` callback."""
    with ProgressDisplay(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _config(path: Path) -> PlatformConfig:
    return load_config(path)


# --------------------------------------------------------------------------- config


@config_app.command("validate")
@reports_errors
def config_validate(path: Annotated[Path, typer.Argument(help="spec YAML")]) -> None:
    """Check a spec file; print every bad field with its dotted path."""
    cfg = _config(path)
    console.print(f"[green]ok[/] {path}: {len(cfg.crops)} crop(s): {', '.join(cfg.crop_names)}")


@config_app.command("show")
@reports_errors
def config_show(path: Annotated[Path, typer.Argument(help="spec YAML")]) -> None:
    """Print the spec with every default filled in (what the platform will actually use)."""
    console.print_json(_config(path).model_dump_json())


# --------------------------------------------------------------------------- storage


@storage_app.command("ensure-bucket")
@reports_errors
def storage_ensure_bucket(
    spec: Annotated[Path, typer.Option("--spec", help="platform spec YAML (its storage block)")],
) -> None:
    """Create the spec's bucket if it is missing (the chart runs this after MinIO starts);
    retried with backoff while the store comes up, then a clear error."""
    from aads.storage import S3Store

    settings = _config(spec).storage
    S3Store(settings.bucket, settings).ensure_bucket()
    console.print(f"[green]ok[/] s3://{settings.bucket} at {settings.resolved_endpoint()}")


# --------------------------------------------------------------------------- data


@data_app.command("synth")
@reports_errors
def data_synth(
    config: ConfigOpt = Path("config/demo.yaml"),
    out: Annotated[Path, typer.Option(help="output folder")] = Path(".aads/data/synth"),
    seed: Annotated[int | None, typer.Option(help="override data.synth.seed")] = None,
    images_per_class: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Draw the deterministic synthetic dataset (crops, parts, diseases, domains)."""
    from aads.data.synth import synthesize

    cfg = _config(config)
    updates = {k: v for k, v in {"seed": seed, "images_per_class": images_per_class}.items() if v}
    settings = cfg.data.synth.model_copy(update=updates)
    with progress_bar("synthesising") as progress:
        report = synthesize(cfg, out, settings=settings, progress=progress)
    table = Table("domain", "images", title=f"{report.images} images in {report.root}")
    for dom, n in sorted(report.per_domain.items()):
        table.add_row(dom, str(n))
    console.print(table)


@data_app.command("ingest")
@reports_errors
def data_ingest(
    root: Annotated[Path, typer.Argument(help="image folder to ingest")],
    config: ConfigOpt = Path("config/demo.yaml"),
    out: Annotated[Path, typer.Option(help="where manifest.csv, rejects.csv go")] = Path(
        ".aads/manifest"
    ),
    layout: Annotated[
        str, typer.Option(help="auto | plantvillage | crop-class | crop-part-class")
    ] = "auto",
    domain_dirs: Annotated[
        bool | None, typer.Option("--domain-dirs/--no-domain-dirs", help="top level = domains")
    ] = None,
    part: Annotated[str, typer.Option(help="plant part when the layout has none")] = "leaf",
    domain: Annotated[str, typer.Option(help="domain when the layout has none")] = "base",
) -> None:
    """Check every image, split by seed, assign phases; write the manifest + rejects report."""
    from aads.data.ingest import ingest, write_ingest_outputs

    if layout not in ("auto", "plantvillage", "crop-class", "crop-part-class"):
        raise ConfigError(
            f"--layout {layout!r}: must be auto, plantvillage, crop-class or crop-part-class"
        )
    cfg = _config(config)
    with progress_bar("checking images") as progress:
        result = ingest(
            root,
            config=cfg,
            layout=layout,  # type: ignore[arg-type]
            domain_dirs=domain_dirs,
            default_part=part,
            domain=domain,
            progress=progress,
        )
    paths = write_ingest_outputs(result, out)
    s = result.summary
    table = Table("split", "images", title=f"{s['images']} images ({s['layout']} layout)")
    for split, n in sorted(s["splits"].items()):
        table.add_row(split, str(n))
    console.print(table)
    if result.rejects:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s["rejects_by_reason"].items()))
        console.print(f"[yellow]{len(result.rejects)} rejected[/] ({reasons}): {paths['rejects']}")
    for crop, gap in s["missing_classes"].items():
        console.print(f"[yellow]{crop}: no base-domain images for {', '.join(gap)}[/]")
    console.print(f"manifest {paths['manifest']} sha256 {result.manifest_sha256[:16]}")


@data_app.command("stats")
@reports_errors
def data_stats(
    manifest: Annotated[Path, typer.Argument(help="manifest.csv")],
) -> None:
    """Images per crop, class, domain and split of a manifest."""
    from collections import Counter

    from aads.data.manifest import read_manifest

    rows = read_manifest(manifest)
    counts = Counter((r.crop, r.domain, r.label, r.phase or "-", r.split) for r in rows)
    table = Table("crop", "domain", "class", "phase", "train", "val", "test")
    keys = sorted({k[:4] for k in counts})
    for k in keys:
        table.add_row(*k, *(str(counts[(*k, s)]) for s in ("train", "val", "test")))
    console.print(table)


# --------------------------------------------------------------------------- backbone


@backbone_app.command("info")
@reports_errors
def backbone_info(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The real DINOv3 and DINOv2 variants (ids, shapes, normalisation, licence) and the random
    presets."""
    from dataclasses import asdict

    from aads.backbone import PRESETS, VARIANTS

    if as_json:
        rows = [{**asdict(v), "parameters": v.num_parameters} for v in VARIANTS]
        console.print_json(data={"variants": rows, "random_presets": sorted(PRESETS)})
        return
    table = Table(
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
    console.print(table)
    console.print(f"random presets (random:<name>): {', '.join(sorted(PRESETS))}")


@backbone_app.command("features")
@reports_errors
def backbone_features(
    manifest: Annotated[Path, typer.Option(help="manifest.csv from `aads data ingest`")],
    out: Annotated[Path, typer.Option(help="features .safetensors to write")],
    config: ConfigOpt = Path("config/demo.yaml"),
    which: Annotated[str, typer.Option(help="router | adapter backbone")] = "router",
    data_root: Annotated[
        Path | None, typer.Option(help="image root; default: the one ingest recorded")
    ] = None,
    split: Annotated[str | None, typer.Option(help="only this split")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
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


def _report_package(pkg: Path) -> None:
    from aads.adapters.package import read_meta

    meta = read_meta(pkg)
    table = Table("metric", "value", title=f"{meta.crop}: phase {meta.last_phase} -> {pkg}")
    for k, v in sorted(meta.metrics.items()):
        table.add_row(k, f"{v:.4f}")
    console.print(table)


@train_app.command("router")
@reports_errors
def train_router_cmd(
    out: OutOpt = Path(".aads/models/router"),
    config: ConfigOpt = Path("config/demo.yaml"),
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
) -> None:
    """Fit the crop and part heads on frozen router-backbone features."""
    from aads.router import train_router

    rows, root, _ = _training_inputs(manifest, data_root)
    with progress_bar("router features") as progress:
        result = train_router(_config(config), rows, root, out, progress=progress)
    table = Table("metric", "value", title=f"router -> {result.out_dir}")
    for k, v in sorted(result.metrics.items()):
        table.add_row(k, f"{v:.4f}")
    console.print(table)


def _train_phase(
    phase: str,
    crop: str,
    from_pkg: Path | None,
    out: Path,
    config: Path,
    manifest: Path,
    data_root: Path | None,
    checkpoint_dir: Path | None,
) -> None:
    from aads.adapters.phases.phase1 import train_phase1
    from aads.adapters.phases.phase2 import train_phase2
    from aads.adapters.phases.phase3 import train_phase3

    cfg = _config(config)
    rows, root, digest = _training_inputs(manifest, data_root)
    method = {"1": "DoRA", "2": "SD-LoRA", "3": "CONEC-LoRA"}[phase]
    common = {"checkpoint_dir": checkpoint_dir, "manifest_sha256": digest}
    with progress_bar(f"{crop}: phase {phase} ({method})") as progress:
        if phase == "1":
            pkg = train_phase1(cfg, crop, rows, root, out, progress=progress, **common)
        else:
            train = train_phase2 if phase == "2" else train_phase3
            pkg = train(cfg, crop, rows, root, from_pkg, out, progress=progress, **common)
    _report_package(pkg)


@train_app.command("phase1")
@reports_errors
def train_phase1_cmd(
    crop: CropOpt,
    out: OutOpt,
    config: ConfigOpt = Path("config/demo.yaml"),
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    checkpoint_dir: CheckpointOpt = None,
) -> None:
    """Phase 1: DoRA on the crop's base disease classes."""
    _train_phase("1", crop, None, out, config, manifest, data_root, checkpoint_dir)


@train_app.command("phase2")
@reports_errors
def train_phase2_cmd(
    crop: CropOpt,
    from_pkg: FromOpt,
    out: OutOpt,
    config: ConfigOpt = Path("config/demo.yaml"),
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    checkpoint_dir: CheckpointOpt = None,
) -> None:
    """Phase 2: SD-LoRA, one task per pending phase-2 class batch (rehearsal-free)."""
    _train_phase("2", crop, from_pkg, out, config, manifest, data_root, checkpoint_dir)


@train_app.command("phase3")
@reports_errors
def train_phase3_cmd(
    crop: CropOpt,
    from_pkg: FromOpt,
    out: OutOpt,
    config: ConfigOpt = Path("config/demo.yaml"),
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    checkpoint_dir: CheckpointOpt = None,
) -> None:
    """Phase 3: CONEC-LoRA, one pending domain shift at a time."""
    _train_phase("3", crop, from_pkg, out, config, manifest, data_root, checkpoint_dir)


# --------------------------------------------------------------------------- ood

PackageOpt = Annotated[Path, typer.Option("--package", help="adapter package folder")]
LocoOpt = Annotated[
    bool, typer.Option("--loco/--no-loco", help="also leave each class out in turn (near-OOD)")
]


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table("metric", "value", title=title)
    for k, v in sorted(metrics.items()):
        table.add_row(k, f"{v:.4f}")
    return table


@ood_app.command("calibrate")
@reports_errors
def ood_calibrate(
    package: PackageOpt,
    config: ConfigOpt = Path("config/demo.yaml"),
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    loco: LocoOpt = True,
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
    console.print(_metrics_table(f"OOD calibration -> {package}/ood", result.metrics))


@ood_app.command("evaluate")
@reports_errors
def ood_evaluate(
    package: PackageOpt,
    out: Annotated[Path, typer.Option(help="report folder")] = Path(".aads/ood-eval"),
    config: ConfigOpt = Path("config/demo.yaml"),
    manifest: ManifestOpt = Path(".aads/manifest/manifest.csv"),
    data_root: DataRootOpt = None,
    loco: LocoOpt = True,
    compare: Annotated[
        bool, typer.Option("--compare", help="also score every method (method table)")
    ] = False,
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
    console.print(_metrics_table(f"OOD evaluation of {package}", report.metrics))
    if report.methods:
        table = Table("method", "threshold", "mean AUROC", "balanced acc", title="methods")
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
        console.print(table)
    console.print(f"report: {out}")


# --------------------------------------------------------------------------- promotion

RepoOpt = Annotated[Path, typer.Option(help="the GitOps repository (holds charts/ and manifests/)")]
EnvOpt = Annotated[str, typer.Option("--env", help="environment, e.g. staging or production")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI")]
CrdsOpt = Annotated[
    Path | None, typer.Option(help="folder of KServe CRDs to validate InferenceServices against")
]


def _promotion_table(result) -> Table:  # noqa: ANN001 - aads.promotion.Promotion
    table = Table("field", "value", title=f"{result.crop} in {result.env}")
    table.add_row("version", f"{result.version} (was {result.previous_version or 'none'})")
    table.add_row("storage URI", result.storage_uri)
    table.add_row("digest", result.digest)
    table.add_row("commit", result.commit or "none (already promoted)")
    return table


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
    config: ConfigOpt = Path("config/production.yaml"),
    tracking_uri: TrackingOpt = None,
    crds: CrdsOpt = None,
) -> None:
    """Pin a gated, checksum-verified version for an environment and commit it (GitOps);
    with --canary, send only that share of the crop's traffic to it."""
    from aads.promotion import promote

    result = promote(
        _config(config),
        repo,
        crop,
        version,
        env,
        canary=canary,
        tracking_uri=tracking_uri,
        crds=crds,
    )
    console.print(_promotion_table(result))


@app.command("rollback")
@reports_errors
def rollback_cmd(
    crop: CropOpt,
    env: EnvOpt,
    repo: RepoOpt = Path("."),
    config: ConfigOpt = Path("config/production.yaml"),
    tracking_uri: TrackingOpt = None,
    crds: CrdsOpt = None,
) -> None:
    """End a running canary, or pin the version the current one replaced, the same way as a
    promotion."""
    from aads.promotion import rollback

    result = rollback(_config(config), repo, crop, env, tracking_uri=tracking_uri, crds=crds)
    console.print(_promotion_table(result))


# --------------------------------------------------------------------------- demo


@app.command("demo")
@reports_errors
def demo(
    config: ConfigOpt = Path("config/demo.yaml"),
    workdir: Annotated[Path, typer.Option(help="where the demo writes")] = Path(".aads/demo"),
) -> None:
    """Run the main job end to end on the embedded default (what `make demo` calls)."""
    from aads.demo import run_demo

    summary = run_demo(_config(config), workdir, progress_bar=progress_bar, console=console)
    table = Table("step", "result", "seconds", title="AADS demo")
    for step in summary["steps"]:
        table.add_row(step["name"], step["result"], f"{step['seconds']:.1f}")
    console.print(table)
    console.print(f"summary: {summary['summary_path']}")


from aads.monitor_cli import feedback_app, monitor  # noqa: E402 - it imports this module's helpers

app.command("monitor")(monitor)
app.add_typer(feedback_app, name="feedback")


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


if __name__ == "__main__":  # pragma: no cover
    app()
