"""`aads train continue` and `aads lineage`: continue from the champion, from the command line.

``aads train continue --from models:/aads-adapter-tomato@champion --classes septoria_leaf_spot
--data DIR [--eval DIR] [--register]`` learns one task on top of a registered version
(`aads.continual.continue_from`); a batch folder from `aads feedback import` carries its
``task.json``, so ``--data BATCH`` alone says what to learn. ``aads lineage --crop tomato``
prints the chain of versions. A thin shell: parsing, one call into `aads.continual`, tables.
Exit codes as every command: 0 done, 2 bad input (a refused candidate too: the gate's report
says which number fell short), 3 a store or the registry is down.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from aads.cli import ConfigOpt, _config, app, console, progress_bar, reports_errors, train_app
from aads.cli_output import Output, OutputOpt, emit, key_table
from aads.monitor_cli import TrackingOpt


def _names(values: list[str] | None) -> list[str]:
    """``--classes a,b --classes c`` -> [a, b, c]."""
    return [v.strip() for text in values or [] for v in text.split(",") if v.strip()]


@reports_errors
def continue_cmd(
    data: Annotated[
        Path, typer.Option(help="the task's images only: <crop>/<class>/<image> (+ task.json)")
    ],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="the base: models:/NAME@ALIAS, models:/NAME/VERSION, an alias (champion), a "
            "version number, s3://... or a package folder (default: the crop's champion)",
        ),
    ] = None,
    classes: Annotated[
        list[str] | None, typer.Option(help="new disease classes (comma-separated or repeated)")
    ] = None,
    domain: Annotated[
        str | None, typer.Option(help="a new condition (farm, camera, season) of known classes")
    ] = None,
    crop: Annotated[str | None, typer.Option(help="the crop (default: the batch's one)")] = None,
    eval_: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="evaluation ('golden') set: measures retention and recalibrates the OOD "
            "check, never trained on",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    register: Annotated[
        bool, typer.Option(help="register a candidate the gate passed as the next version")
    ] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Learn one task on top of a registered version from the task's images only, gated
    against that version on the same images; --register makes the child a candidate."""
    from aads.continual import ContinuationError, continue_from
    from aads.continual.data import task_for
    from aads.continual.lineage import register_continuation

    cfg = _config(config)
    task = task_for(data, crop, _names(classes), domain)
    base = from_ or f"models:/{cfg.registry.adapter_model_prefix}{task.crop}@champion"
    out = out or Path(f"continuation-{task.crop}")
    with progress_bar(f"{task.crop}: continue {base}") as progress:
        result = continue_from(
            cfg,
            base,
            task,
            data,
            out,
            eval_dir=eval_,
            tracking_uri=tracking_uri,
            progress=progress,
        )
    version = None
    if register and result.gate.passed:
        # MLflow prints run links on stdout; stdout is for the result (-o json).
        with contextlib.redirect_stdout(sys.stderr):
            version = register_continuation(
                cfg,
                result.package,
                gate_passed=True,
                gate_summary=result.gate.summary(),
                metrics=result.metrics,
                card=result.card,
                tracking_uri=tracking_uri,
            )
    parent = result.parent.label if result.parent else "-"
    table = key_table("measure", f"parent {parent}", "candidate", title=f"{task.crop}: {base}")
    for key in sorted(set(result.parent_measure.metrics) | set(result.child_measure.metrics)):
        a, b = result.parent_measure.get(key), result.child_measure.get(key)
        table.add_row(key, "n/a" if a is None else f"{a:.4f}", "n/a" if b is None else f"{b:.4f}")
    table.add_row("gate", "", result.gate.summary())
    table.add_row("package", "", str(result.package))
    table.add_row("report", "", str(result.report))
    if version is not None:
        table.add_row("registered", "", f"{version.name} v{version.version} (candidate)")
    data_out = {
        "package": result.package,
        "report": result.report,
        "parent": {"source": base, "version": result.parent.version if result.parent else ""},
        "task": result.task.model_dump(mode="json"),
        "gate": result.gate.model_dump(mode="json"),
        "metrics": result.metrics,
        "registered": {"name": version.name, "version": version.version} if version else None,
    }
    emit(console, output, data_out, table)
    if not result.gate.passed:
        raise ContinuationError(
            f"candidate refused by the continuation gate ({result.gate.summary()}); see "
            f"{result.report}"
        )


@reports_errors
def lineage_cmd(
    crop: Annotated[str, typer.Option(help="crop name")],
    version: Annotated[
        str | None, typer.Option(help="the chain ending at this version or alias (default: all)")
    ] = None,
    config: ConfigOpt = None,
    tracking_uri: TrackingOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The crop's registered versions and where each came from: v1 base -> v2 + X -> v3 + Y."""
    from aads.continual.lineage import chain, chain_text, links
    from aads.registry import Registry, adapter_model_name

    cfg = _config(config)
    registry = Registry(cfg.registry, tracking_uri=tracking_uri)
    name = adapter_model_name(cfg.registry, crop)
    found = links(registry, name)
    ends = [registry.resolve(name, version).version] if version else sorted(found, key=int)
    leaves = [v for v in ends if version or not any(f.parent == v for f in found.values())]
    chains = {v: chain(found, v) for v in leaves}
    table = key_table("version", "aliases", "parent", "task", title=name)
    for number in sorted(found, key=int):
        link = found[number]
        table.add_row(
            f"v{number}",
            ", ".join(link.aliases),
            f"v{link.parent}" if link.parent else "-",
            f"{link.kind}: {link.task}" if link.kind else "(pipeline)",
        )
    data = {
        "model": name,
        "versions": [vars(found[v]) for v in sorted(found, key=int)],
        "chains": {v: chain_text(c) for v, c in chains.items()},
    }
    if output is Output.json:
        emit(console, output, data)
        return
    emit(console, output, data, table)
    for text in data["chains"].values():
        console.print(text, highlight=False)


train_app.command("continue")(continue_cmd)
app.command("lineage")(lineage_cmd)
