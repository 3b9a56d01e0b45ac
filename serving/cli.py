"""`aads serve` and `aads predict`: local serving and a client for it (or any AADS router).

Plugged into the `aads` command through the ``aads.cli`` entry point, like the pipeline
commands, so `aads` itself imports no server code.

Exit codes (as every `aads` command): 0 done; 2 bad input (a file, an option, a crop or alias
that does not exist, an image the router refused); 3 a store or server that cannot be reached
or is unavailable. `aads predict` prints every image's row first, then exits with the worst
code among them, so a script learns that some image was refused without losing the others.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aads.answer import Answer
from aads.cli_common import ConfigOpt, reports_errors
from aads.cli_output import answer_cell
from aads.errors import NotFound

console = Console()
err_console = Console(stderr=True)


def routed_to(answer: Answer) -> str:
    """Where an image went: the router's crop and part, the caller's hint, or no crop."""
    routing = answer.routing
    if routing is None:
        return "-"
    if routing.rejected:
        return f"no known crop (nearest {routing.crop})"
    if routing.source == "crop_hint":
        return f"{routing.crop} (hint)"
    text = f"{routing.crop} {routing.crop_confidence or 0:.2f} ({routing.part})"
    return text + (" canary" if routing.variant == "canary" else "")


def answers_table(images: list[str], answers: list[Answer], title: str = "diagnosis") -> Table:
    table = Table("image", "routed to", "answer", "conf.", "OOD dist. / thr.", "model", title=title)
    for name, a in zip(images, answers, strict=True):
        answer = answer_cell(a)
        if a.error is not None:
            table.add_row(name, routed_to(a), answer, "-", "-", "-")
            continue
        if a.scouting is not None:
            table.add_row(name, "scouting", answer, f"{a.confidence or 0:.2f}", "-", "-")
            continue
        ood = f"{a.ood.distance:.0f} / {a.ood.threshold:.0f}" if a.ood else "-"
        model = a.model
        shown = f"v{model.version}" if model and model.version else ("router" if not model else "-")
        table.add_row(name, routed_to(a), answer, f"{a.confidence or 0:.2f}", ood, shown)
    return table


def alias_sources(
    config: Path, alias: str, crops: list[str] | None, router: str | None, tracking_uri: str | None
) -> tuple[dict[str, str], str]:
    """``models:/`` sources for `alias`, checked against the registry first: a crop named with
    ``--crop`` that has no such version is an error; of the config's crops (no ``--crop``),
    those without one are skipped with a note."""
    from aads.config import load_config
    from aads.registry import Registry

    cfg = load_config(config)
    registry = Registry(cfg.registry, tracking_uri=tracking_uri)
    named = list(crops or [])
    sources, missing = {}, []
    for crop in named or cfg.crop_names:
        name = f"{cfg.registry.adapter_model_prefix}{crop}"
        try:
            registry.resolve(name, alias)
        except NotFound:
            missing.append(crop)
            continue
        sources[crop] = f"models:/{name}@{alias}"
    if missing and named:
        raise NotFound(f"no version of crop(s) {missing} has the alias {alias!r}")
    if missing:
        err_console.print(f"note: no version of {missing} has the alias {alias!r}; not served")
    if not sources:
        raise NotFound(f"no crop has a version with the alias {alias!r}: nothing to serve")
    if router is None:
        registry.resolve(cfg.registry.router_model_name, alias)
        router = f"models:/{cfg.registry.router_model_name}@{alias}"
    return sources, router


def folder_sources(adapters: Path) -> dict[str, str]:
    from aads.adapters.package import read_meta

    if not adapters.is_dir():
        raise NotFound(f"--adapters {adapters}: no such folder")
    return {
        read_meta(p).crop: str(p)
        for p in sorted(adapters.iterdir())
        if (p / "adapter.json").is_file()
    }


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends `aads serve` like Ctrl-C does: through the cleanup that stops the servers."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    config: ConfigOpt = Path("config/demo.yaml"),
    adapters: Annotated[
        Path | None, typer.Option(help="folder of adapter packages, one per crop")
    ] = None,
    router: Annotated[
        str | None,
        typer.Option(help="router folder, s3:// or models:/ URI (with --alias: the registry's)"),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(help="serve the MLflow versions with this alias (candidate, champion ...)"),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI for --alias (default: the config's)")
    ] = None,
    crop: Annotated[
        list[str] | None,
        typer.Option("--crop", help="with --alias: only these crops (repeat; default: all)"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address the router listens on (0.0.0.0: every interface)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the router's port", min=1, max=65535)] = 8080,
    workdir: Annotated[Path, typer.Option(help="where the servers' logs and spec go")] = Path(
        ".aads/serve"
    ),
) -> None:
    """Start the router and a multi-adapter predictor on this machine until Ctrl-C or SIGTERM
    (both stop the servers; nothing keeps holding a port)."""
    from serving.local import serve_locally

    if alias:
        sources, router = alias_sources(config, alias, crop, router, tracking_uri)
    elif adapters:
        sources = folder_sources(adapters)
    else:
        raise typer.BadParameter("give --adapters DIR or --alias NAME")
    if not router or not sources:
        raise typer.BadParameter("need a router (--router) and at least one adapter")
    with stop_on_sigterm(), ExitStack() as stack:
        try:
            with err_console.status(f"starting: loading {sorted(sources)} and the router") as st:
                running = stack.enter_context(
                    serve_locally(
                        config.read_text(),
                        router,
                        sources,
                        workdir,
                        tracking_uri=tracking_uri,
                        host=host,
                        port=port,
                        progress=st.update,
                    )
                )
            url = running.router_url
            console.print(f"router:    {url}")
            console.print(f"           V1 POST {url}/v1/models/aads:predict")
            console.print(f"           V2 POST {url}/v2/models/aads/infer")
            console.print(f"predictor: {running.predictor_url}  crops: {running.crops}")
            console.print(f"try:       aads predict --url {url} IMAGE...")
            console.print("Ctrl-C (or SIGTERM) stops both.")
            running.wait()
        except KeyboardInterrupt:
            err_console.print("stopping")


def predict(
    images: Annotated[list[Path], typer.Argument(help="image files (JPEG, PNG or WebP)")],
    url: Annotated[
        str,
        typer.Option(
            help="the router: its base URL (as `aads serve` prints it) or its V1/V2 inference URL"
        ),
    ] = "http://127.0.0.1:8080",
    crop_hint: Annotated[
        str | None, typer.Option(help="skip routing: send every image to this crop's adapter")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the answers as JSON instead of a table")
    ] = False,
) -> None:
    """Send images to an AADS router and print each diagnosis (one request per image: a
    refused image gets its own error row; exit 2 if any image was refused, 3 if the router or
    a predictor was unavailable)."""
    from serving.local import predict_files

    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise NotFound(f"no such file(s): {missing}")
    answers = predict_files(url, images, crop_hint)
    if as_json:
        console.print_json(json.dumps([a.wire() for a in answers]))
    else:
        console.print(answers_table([p.name for p in images], answers))
    codes = [a.error.code for a in answers if a.error is not None]
    if codes:
        raise typer.Exit(max(3 if c >= 500 else 2 for c in codes))


def register(app: typer.Typer) -> None:
    """Entry point: add the top-level `serve` and `predict` commands."""
    app.command("serve")(reports_errors(serve))
    app.command("predict")(reports_errors(predict))
