"""`aads pipeline ...`: compile, run locally, submit to a KFP cluster.

Plugged into the `aads` command through the ``aads.cli`` entry point (pyproject), so the core
package never imports the pipeline code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from aads.cli_common import ConfigOpt, config_path, fail, reports_errors
from aads.cli_output import key_table, print_table
from aads.config import BASE_DOMAIN
from aads.phases import DORA

app = typer.Typer(help="Compile, run locally, or submit the KFP training pipeline.")
console = Console(soft_wrap=True)


ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="cluster settings YAML: images, GPU scheduling, resources, retries, Secret names "
        "(default: config/cluster.yaml)",
    ),
]
SpecOpt = Annotated[
    str | None,
    typer.Option(
        "--spec",
        help="platform spec whose crops are the pipeline's default (default: "
        "config/production.yaml, the spec the chart installs)",
    ),
]


@app.command("compile")
@reports_errors
def compile_cmd(
    namespace: Annotated[str, typer.Option(help="namespace of the Pipeline objects")] = "kubeflow",
    cluster: ClusterOpt = None,
    spec: SpecOpt = None,
) -> None:
    """Write pipelines/training.yaml and the Pipeline/PipelineVersion manifests."""
    from pipelines.compile import compile_all

    for path in compile_all(namespace, cluster, spec):
        console.print(f"wrote {path}")


CropsOpt = Annotated[
    list[str] | None, typer.Option("--crop", help="crop to train (repeat; default: all)")
]
PhasesOpt = Annotated[
    list[str] | None, typer.Option("--phase", help="phase to run: 1, 2, 3 (repeat; default all)")
]


@app.command("run")
@reports_errors
def run_cmd(
    data: Annotated[str, typer.Option(help="image folder or s3://bucket/prefix")],
    config: ConfigOpt = None,
    local: Annotated[bool, typer.Option("--local", help="run here with kfp.local")] = True,
    crop: CropsOpt = None,
    phase: PhasesOpt = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow; default: start one on sqlite under --workdir")
    ] = None,
    workdir: Annotated[Path, typer.Option(help="run outputs, local MLflow")] = Path(
        ".aads/pipeline"
    ),
) -> None:
    """Run the whole training pipeline on this machine (kfp.local SubprocessRunner)."""
    if not local:
        raise typer.BadParameter("only --local runs here; use `aads pipeline submit` for KFP")
    run = _run_quietly(
        workdir,
        config_path(config).read_text(encoding="utf-8"),
        data,
        crops=crop,
        phases=phase,
        tracking_uri=tracking_uri,
    )
    print_summary(run)


def _run_quietly(workdir: Path, config_text: str, data: str, **options):  # noqa: ANN003, ANN202
    """Run with task logs in ``<workdir>/pipeline.log`` and one line per task on screen."""
    from pipelines.local import PipelineFailed, last_error, output_to, run_local
    from pipelines.submit import git_sha

    log_path = workdir / "pipeline.log"
    console.print(f"running the pipeline locally (task logs: {log_path})")
    try:
        with output_to(log_path) as echo:
            return run_local(config_text, data, workdir, git_sha=git_sha(), echo=echo, **options)
    except PipelineFailed as err:
        reason = last_error(log_path)
        fail(RuntimeError(f"{err}\n  cause: {reason}" if reason else str(err)), 1)


def print_summary(run) -> None:  # noqa: ANN001 - pipelines.local.LocalRun
    """One row per model: the evaluation's headline (`aads.headline`: accuracy over every test
    image of the last phase with its 95 % interval, the worst retention of the continual
    phases, near- and far-OOD AUROC), the gate and the registered version."""
    from aads.metrics import headline_metrics

    table = key_table(
        "model",
        "accuracy (95 % CI)",
        "retention",
        "OOD AUROC (near/far)",
        "gate",
        "registered",
        title=f"pipeline run ({run.seconds:.0f} s): {run.run_dir}",
    )
    r = run.router
    table.add_row(
        "router",
        _fmt(r.metrics.get("test_crop_accuracy")),
        "-",
        "-",
        _gate(r.passed),
        _version(r.version),
    )
    for c in run.crops.values():
        m = headline_metrics(c.metrics)
        accuracy = _fmt(m.get("accuracy"))
        if "accuracy_ci95_low" in c.metrics and "accuracy_ci95_high" in c.metrics:
            low, high = c.metrics["accuracy_ci95_low"], c.metrics["accuracy_ci95_high"]
            accuracy += f" ({low:.2f}-{high:.2f})"
        table.add_row(
            c.crop,
            accuracy,
            _fmt(m.get("retention")),
            f"{_fmt(m.get('near_ood_auroc'))} / {_fmt(m.get('far_ood_auroc'))}",
            _gate(c.passed) + ("" if c.passed or not c.gate else f" ({c.gate})"),
            _version(c.version),
        )
    print_table(console, table)
    console.print(f"MLflow used by the run: {run.tracking_uri}")


def _version(name_and_version: str) -> str:
    """``aads-adapter-corn/3`` -> ``v3`` (the model column already names the model)."""
    return f"v{name_and_version.rsplit('/', 1)[-1]}" if name_and_version else "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _gate(passed: bool | None) -> str:
    return {True: "passed", False: "failed", None: "-"}[passed]


@app.command("demo")
@reports_errors
def demo_cmd(
    config: ConfigOpt = None,
    workdir: Annotated[Path, typer.Option(help="data, run outputs, MLflow")] = Path(
        ".aads/pipeline-demo"
    ),
) -> None:
    """What `make demo` runs: synthesise data, run the pipeline locally, register in MLflow,
    serve what was registered and diagnose a few held-out images, then close a short field
    loop (`pipelines.field_loop`): a disease the served version never saw is captured,
    reviewed, labelled and learned by a continuation from ``candidate``."""
    from aads.config import load_config
    from aads.data.synth import synthesize
    from aads.mlflow_server import local_mlflow_server, server_command
    from pipelines.field_loop import field_loop

    config = config_path(config)
    cfg = load_config(config)
    text = config.read_text(encoding="utf-8")
    data = workdir / "data"
    console.print(f"synthesising {cfg.data.synth.images_per_class} images per class -> {data}")
    synthesize(cfg, data, settings=cfg.data.synth)
    with local_mlflow_server(workdir / "mlflow") as tracking_uri:
        run = _run_quietly(workdir, text, str(data), tracking_uri=tracking_uri)
        print_summary(run)
        serve_and_diagnose(cfg, text, run, data, workdir, tracking_uri)
        field_loop(cfg, text, run, data, workdir, tracking_uri, console)
    browse = " ".join(server_command(workdir / "mlflow", 5000))
    console.print(f"Browse the registry: {browse}  (then open http://127.0.0.1:5000)")
    console.print(f"KFP outputs (model cards, reports, ROC curves): {run.run_dir}")


def serve_and_diagnose(cfg, text: str, run, data: Path, workdir: Path, tracking_uri: str) -> None:  # noqa: ANN001
    """Serve the versions this run registered (alias ``candidate``) and diagnose held-out test
    images: one per crop (a crop whose adapter the gate refused gets a clear per-image error)
    and one picture that is not a plant at all."""
    from serving.cli import answers_table
    from serving.local import predict_files, serve_locally

    served = [c for c, r in run.crops.items() if r.version]
    if not run.router.version or not served:
        console.print("nothing registered to serve")
        return
    images = held_out_images(run.run_dir, data, list(run.crops))
    images.append(not_a_plant(workdir / "serve" / "not-a-plant.png"))
    registry = cfg.registry
    adapters = {c: f"models:/{registry.adapter_model_prefix}{c}@candidate" for c in served}
    router = f"models:/{registry.router_model_name}@candidate"
    console.print(f"serving {served} from MLflow (alias candidate) on 127.0.0.1 ...")
    with serve_locally(text, router, adapters, workdir / "serve", tracking_uri=tracking_uri) as s:
        answers = predict_files(s.router_url, images)
    names = [p.parent.name if p.parent.name != "serve" else p.stem for p in images]
    console.print(answers_table(names, answers, title=f"diagnosis via {s.router_url}"))


def held_out_images(run_dir: Path, data: Path, crops: list[str]) -> list[Path]:
    """One base-domain test-split image per crop, from the run's own manifest."""
    from pipelines.field_loop import manifest_rows

    picked: dict[str, Path] = {}
    for row in manifest_rows(run_dir):
        base = row.domain == BASE_DOMAIN and row.phase == DORA.number
        if base and row.split == "test" and row.crop in crops:
            picked.setdefault(row.crop, data / row.path)
    return [picked[c] for c in crops if c in picked]


def not_a_plant(path: Path) -> Path:
    """A magenta checkerboard: what a user might upload by mistake."""
    import numpy as np
    from PIL import Image

    board = (np.indices((96, 96)).sum(0) // 12 % 2).astype(np.uint8) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([board, np.zeros_like(board), board], axis=-1)).save(path)
    return path


@app.command("upload")
@reports_errors
def upload_cmd(
    host: Annotated[
        str, typer.Option(help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    ],
    version_name: Annotated[
        str | None,
        typer.Option(
            help="pipeline version name; default: aads-training-v<version>[-g<git sha>] "
            "(the one scheme of upload, submit, the chart's Job and the manifests)"
        ),
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="KFP namespace (multi-user)")] = None,
    cluster: ClusterOpt = None,
    spec: SpecOpt = None,
) -> None:
    """Publish the training pipeline to KFP as a new version (kept if it already exists), so
    users can start runs from the UI. The chart's upload Job runs this."""
    from pipelines.submit import upload, version_name_here
    from pipelines.training import PIPELINE_NAME

    name = version_name or version_name_here()
    pipeline_id, version_id, created = upload(  # KFP down: SubmitError (Unavailable), exit 3
        host, name, namespace=namespace, cluster=cluster, spec=spec
    )
    state = "uploaded" if created else "already there"
    console.print(
        f"{PIPELINE_NAME} version {name} {state}: pipeline {pipeline_id}, version {version_id}"
    )


@app.command("submit")
@reports_errors
def submit_cmd(
    host: Annotated[
        str, typer.Option(help="KFP API endpoint, e.g. https://kubeflow.example/pipeline")
    ],
    data: Annotated[str, typer.Option(help="s3://bucket/prefix of the images")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="platform spec YAML sent with the run (overrides --config-uri)"
        ),
    ] = None,
    config_uri: Annotated[
        str,
        typer.Option(
            help="spec the run reads by reference: the chart's ConfigMap (/etc/aads/spec.yaml) "
            "or s3://bucket/key.yaml"
        ),
    ] = "",
    crop: CropsOpt = None,
    phase: PhasesOpt = None,
    experiment: Annotated[str, typer.Option(help="KFP experiment")] = "aads",
    namespace: Annotated[str | None, typer.Option(help="KFP namespace (multi-user)")] = None,
    cluster: ClusterOpt = None,
    spec: SpecOpt = None,
) -> None:
    """Upload this checkout's pipeline version (aads-training-v<version>-g<git sha>, kept if
    present) and start a run; print its URL."""
    from pipelines.submit import git_sha, submit, version_name_here

    text = config.read_text(encoding="utf-8") if config else ""
    url = submit(  # KFP down or refusing: SubmitError (Unavailable), exit 3
        host,
        data,
        version_name_here(),
        config_text=text,
        config_uri=config_uri,
        crops=crop,
        phases=phase,
        experiment=experiment,
        namespace=namespace,
        git_sha=git_sha(),
        cluster=cluster,
        spec=spec,
    )
    console.print(f"run: {url}")
