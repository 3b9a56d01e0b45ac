"""The end of `make demo`: a short field loop from the served version to its child.

For each served crop whose spec holds a disease out of training (``ood_holdout``), with the
parts a team runs: the router and predictor serve ``candidate`` (v1) with capture on into a
folder; photos of the held-out disease arrive from the field (the run's images of it outside
the test split: never trained on, since the disease is held out) and those answered ``unknown``
are captured; a real Prometheus server with the chart's rules fires the unknown-rate alert on
them (`pipelines.field_alert`, where Prometheus is installed); ``aads feedback review``
clusters them; the demo plays the person who labels (it names every cluster with the disease's
name, as a person renaming the review's cluster folders would); ``aads feedback import`` writes
a ``classes`` batch; the KFP continuation pipeline, run locally as the training pipeline is,
continues ``candidate`` on that batch with an evaluation set made of the run's own test-split
images of everything else (links, in the layout the synthesiser writes); the gate against the
parent decides; a passing child is registered with its lineage and served, and the disease's
test photos, which neither version saw, are sent to v1 and to the child: the before/after
table. A refusal (before training, or by the gate) is printed with its reasons and ends the
loop for that crop normally.

Why field photos and test photos apart: a handful of captured test photos (3 to 5 of 8) left
the child one photo to be measured on and the gate's new-task accuracy a coin toss, and the
before/after then showed photos the child had trained on.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

from aads.answer import Answer
from aads.cli_output import answer_cell
from aads.config import PlatformConfig
from aads.data.manifest import ManifestRow, read_manifest


@dataclass
class LoopResult:
    """What one crop's loop did (printed as it goes; returned for tests and timing)."""

    crop: str
    disease: str
    images: list[Path] = field(default_factory=list)  # the disease's test photos
    before: list[Answer] = field(default_factory=list)  # v1's answers to them
    after: list[Answer] = field(default_factory=list)  # the child's
    arrived: list[Path] = field(default_factory=list)  # its field photos (outside the test split)
    answered: list[Answer] = field(default_factory=list)  # v1's answers to those, captured
    captured: int = 0
    alert: str = ""  # the unknown-rate alert Prometheus fired on v1's answers ('' if not)
    batch: Path | None = None
    passed: bool | None = None
    gate: str = ""
    child: str = ""  # ``<model>/<version>`` of the registered child
    lineage: str = ""
    stopped: str = ""  # why the loop ended before serving a child ('' when it did)
    seconds: float = 0.0


def manifest_rows(run_dir: Path) -> list[ManifestRow]:
    """The training run's manifest (its preprocess step's output)."""
    (manifest,) = Path(run_dir).glob("preprocess/manifest/manifest.csv")
    return read_manifest(manifest)


def field_loop(
    cfg: PlatformConfig,
    text: str,
    run,  # noqa: ANN001 - pipelines.local.LocalRun
    data: Path,
    workdir: Path,
    tracking_uri: str,
    console: Console,
    alert_rules: dict | None = None,
) -> list[LoopResult]:
    """The loop for every served crop with an ``ood_holdout`` disease (the module docstring).
    `alert_rules`: the chart's ``monitoring`` values the alert step renders its rules with
    (default `pipelines.field_alert.DEMO_RULES`)."""
    rows = manifest_rows(run.run_dir)
    results = []
    for crop, registered in run.crops.items():
        spec = cfg.crop(crop)
        if not registered.version or not spec.ood_holdout or not run.router.version:
            continue
        start = time.perf_counter()
        result = LoopResult(crop, spec.ood_holdout[0])
        console.rule(f"field loop: {crop} meets {result.disease}, a disease v1 never saw")
        try:
            work = Path(workdir) / "field" / crop
            _one_loop(cfg, text, rows, data, work, tracking_uri, console, result, alert_rules)
        except typer.Exit:  # a CLI step printed its `error:` line; the loop ends here
            result.stopped = result.stopped or "a step failed (its error is printed above)"
        result.seconds = time.perf_counter() - start
        if result.stopped:
            console.print(f"[yellow]loop for {crop} ended:[/] {result.stopped}")
        console.print(f"field loop for {crop}: {result.seconds:.0f} s")
        results.append(result)
    return results


def _one_loop(
    cfg: PlatformConfig,
    text: str,
    rows: list[ManifestRow],
    data: Path,
    work: Path,
    tracking_uri: str,
    console: Console,
    result: LoopResult,
    alert_rules: dict | None = None,
) -> None:
    import aads.cli  # noqa: F401 - first: aads.monitor_cli's commands hang on aads.cli's app
    from aads.continual.lineage import chain, chain_text, links
    from aads.continue_cli import lineage_cmd
    from aads.monitor_cli import feedback_import, feedback_review
    from aads.registry import Registry, adapter_model_name
    from pipelines.field_alert import alert_summary, watch_unknown_rate
    from pipelines.local import PipelineFailed, last_error, output_to, run_continuation_local
    from pipelines.submit import git_sha
    from serving.local import predict_files, serve_locally

    crop, disease = result.crop, result.disease
    if work.exists():
        shutil.rmtree(work)  # a fresh store: capture deduplicates by image, across runs too
    work.mkdir(parents=True)
    photos = [r for r in rows if r.crop == crop and r.label == disease]
    result.images = [data / r.path for r in photos if r.split == "test"]
    result.arrived = [data / r.path for r in photos if r.split != "test"]
    if not result.images or not result.arrived:
        result.stopped = f"the run has no test images of {disease}, or none outside its test split"
        return
    registry = Registry(cfg.registry, tracking_uri=tracking_uri)
    model = adapter_model_name(cfg.registry, crop)
    v1 = registry.resolve(model, "candidate").version
    v1_uri = f"models:/{model}/{v1}"
    router_uri = f"models:/{cfg.registry.router_model_name}@candidate"
    spec_path = work / "spec.yaml"
    spec_text = _with_capture(text, work / "capture")
    spec_path.write_text(spec_text, encoding="utf-8")

    # a. v1 serves with capture on; the disease's photos arrive from the field
    console.print(
        f"serving {crop} v{v1} (candidate) with capture into {work / 'capture'}; "
        f"{len(result.arrived)} photos of {disease} arrive from the field (crop named by the app)"
    )
    adapters = {crop: v1_uri}
    with serve_locally(
        spec_text, router_uri, adapters, work / "serve-v1", tracking_uri=tracking_uri
    ) as served:
        result.answered = predict_files(served.router_url, result.arrived, crop_hint=crop)
        unknown = sum(a.label == "unknown" for a in result.answered)
        console.print(f"v{v1} answered {unknown} of {len(result.arrived)} `unknown`")
        urls = (served.router_url, served.predictor_url)
        alert = watch_unknown_rate(*urls, crop, result.arrived, work, console, alert_rules)
        result.alert = alert_summary(alert) if alert else ""
    # stopping the router flushes its capture queue (SIGTERM)
    result.captured = len(list((work / "capture").rglob("*.json")))
    console.print(f"{result.captured} image(s) captured (each photo once)")
    if not result.captured:
        result.stopped = "nothing was captured, so there is nothing to review"
        return

    # b. review, label, import: the CLI's own commands
    console.print(f"$ aads feedback review --crop {crop} --since 1d --new-class {disease}")
    feedback_review(
        crop=crop,
        since="1d",
        config=spec_path,
        package=v1_uri,
        out=work / "review",
        new_class=[disease],
        tracking_uri=tracking_uri,
    )
    labelled = work / "labelled"
    clusters = sorted(p for p in (work / "review" / "images").iterdir() if p.is_dir())
    for cluster in clusters:
        shutil.copytree(cluster, labelled / disease, dirs_exist_ok=True)
    console.print(
        f"the demo plays the person who labels: it names cluster(s) "
        f"{', '.join(c.name for c in clusters)} '{disease}' (the review's folders, renamed "
        f"into {labelled})"
    )
    console.print(f"$ aads feedback import --crop {crop} --folder {labelled}")
    result.batch = work / "batch"
    feedback_import(
        crop=crop,
        out=result.batch,
        folder=labelled,
        config=spec_path,
        package=v1_uri,
        tracking_uri=tracking_uri,
    )

    # c. continue from candidate through the KFP continuation pipeline
    golden = evaluation_links(rows, data, crop, disease, work / "golden")
    console.print(
        f"continuing {crop} v{v1} (candidate) on the batch with the continuation pipeline "
        f"(kfp.local); evaluation set: {golden} (the run's test images, as links)"
    )
    log = work / "continuation.log"
    console.print(f"(task logs: {log})")
    try:
        with output_to(log) as echo:
            cont = run_continuation_local(
                spec_text,
                str(result.batch),
                work / "continuation",
                base="candidate",
                crop=crop,
                eval_uri=str(golden),
                tracking_uri=tracking_uri,
                git_sha=git_sha(),
                echo=echo,
            )
    except PipelineFailed as err:  # refused before training, or a step failed: say why
        result.stopped = f"the continuation stopped: {last_error(log) or err}"
        return
    result.passed, result.gate, result.child = cont.passed, cont.gate, cont.version
    console.print(f"continuation gate against v{v1}: {cont.gate}")
    if not cont.version:
        result.stopped = "the gate refused the child; nothing was registered"
        return

    # d. the disease's test photos, which neither version saw: v1's answers, then the child's
    child_version = cont.version.rsplit("/", 1)[-1]
    found = links(registry, model)
    result.lineage = chain_text(chain(found, child_version))
    console.print(f"$ aads lineage --crop {crop} --version {child_version}")
    lineage_cmd(crop=crop, version=child_version, config=spec_path, tracking_uri=tracking_uri)
    console.print(
        f"sending {len(result.images)} test photos of {disease} to v{v1} and to the child"
    )
    for version, out in ((v1, "before"), (child_version, "after")):
        adapters = {crop: f"models:/{model}/{version}"}
        with serve_locally(
            text, router_uri, adapters, work / f"serve-{out}", tracking_uri=tracking_uri
        ) as served:
            setattr(result, out, predict_files(served.router_url, result.images, crop_hint=crop))
    console.print(before_after_table(result, v1, child_version))


def _with_capture(text: str, store: Path) -> str:
    """The spec with capture on into `store`: every unknown kept, no sample of the others."""
    spec = yaml.safe_load(text)
    serving = spec.setdefault("serving", {})
    serving["capture"] = {
        **serving.get("capture", {}),
        "enabled": True,
        "store": str(store.resolve()),
        "sample_rate": 0.0,
    }
    return yaml.safe_dump(spec, sort_keys=False)


def evaluation_links(
    rows: list[ManifestRow], data: Path, crop: str, disease: str, out: Path
) -> Path:
    """The evaluation set: links to the run's test images at their own paths
    (``<domain>/<crop>/<part>/<class>/<image>``): `crop`'s known classes (old-class accuracy),
    its other held-out diseases (near OOD) and the other crops (far OOD); never `disease`'s
    (the before/after's photos: the gate measures the new class on the batch's own test
    split)."""
    for r in rows:
        if r.split != "test" or (r.crop == crop and r.label == disease):
            continue
        link = out / r.path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((data / r.path).resolve(), link)
    return out


def before_after_table(result: LoopResult, v1: str, v2: str) -> Table:
    table = Table(
        "image", f"v{v1} answer", f"v{v2} answer", title=f"{result.disease}: before and after"
    )
    for path, before, after in zip(result.images, result.before, result.after, strict=True):
        table.add_row(path.name, answer_cell(before), answer_cell(after))
    named = sum(a.label == result.disease for a in result.after)
    table.caption = f"v{v2} names {named} of {len(result.images)} {result.disease}"
    return table
