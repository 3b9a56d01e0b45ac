"""`aads serve` and `aads predict`: local serving and a client for it (or any AADS router).

Plugged into the `aads` command through the ``aads.cli`` entry point, like the pipeline
commands, so `aads` itself imports no server code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aads.cli import ConfigOpt, _fail, reports_errors

console = Console()


def answers_table(images: list[str], answers: list[dict], title: str = "diagnosis") -> Table:
    table = Table("image", "routed to", "answer", "conf.", "OOD dist. / thr.", "model", title=title)
    for name, a in zip(images, answers, strict=True):
        routing = a.get("routing", {})
        routed = f"{routing.get('crop', '?')}"
        if "crop_confidence" in routing:
            routed += f" {routing['crop_confidence']:.2f} ({routing.get('part', '')})"
        elif routing.get("source") == "crop_hint":
            routed += " (hint)"
        if "error" in a:
            table.add_row(name, routed, f"[red]{a['error']['message']}[/]", "-", "-", "-")
            continue
        ood = a["ood"]
        if a["is_ood"]:
            why = a.get("reason") or f"nearest: {ood['nearest_class']}"
            label = f"[yellow]unknown[/] ({why})"
        else:
            label = a["label"]
        model = a.get("model", {})
        table.add_row(
            name,
            routed,
            label,
            f"{a['confidence']:.2f}",
            f"{ood['distance']:.0f} / {ood['threshold']:.0f}",
            f"v{model['version']}" if model.get("version") else ("router" if not model else "-"),
        )
    return table


def serve(
    config: ConfigOpt = Path("config/demo.yaml"),
    adapters: Annotated[
        Path | None, typer.Option(help="folder of adapter packages (one per crop)")
    ] = None,
    router: Annotated[str | None, typer.Option(help="router folder, s3:// or models:/ URI")] = None,
    alias: Annotated[
        str | None, typer.Option(help="serve MLflow versions with this alias (e.g. champion)")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow for --alias")] = None,
    crop: Annotated[list[str] | None, typer.Option("--crop", help="with --alias: crops")] = None,
    workdir: Annotated[Path, typer.Option(help="logs and spec")] = Path(".aads/serve"),
) -> None:
    """Start the router and a multi-adapter predictor on 127.0.0.1 until Ctrl-C."""
    from aads.config import load_config
    from serving.local import serve_locally

    cfg = load_config(config)
    if alias:
        crops = crop or cfg.crop_names
        sources = {c: f"models:/{cfg.registry.adapter_model_prefix}{c}@{alias}" for c in crops}
        router = router or f"models:/{cfg.registry.router_model_name}@{alias}"
    elif adapters:
        sources = {
            json.loads((p / "adapter.json").read_text())["crop"]: str(p)
            for p in sorted(Path(adapters).iterdir())
            if (p / "adapter.json").is_file()
        }
    else:
        raise typer.BadParameter("give --adapters DIR or --alias NAME")
    if not router or not sources:
        raise typer.BadParameter("need a router (--router) and at least one adapter")
    with serve_locally(
        config.read_text(), router, sources, workdir, tracking_uri=tracking_uri
    ) as served:
        console.print(
            f"router:    {served.router_url}/v1/models/aads:predict  (V2: /v2/models/aads/infer)"
        )
        console.print(
            f"predictor: {served.predictor_url}/v2/models/<crop>/infer  crops: {served.crops}"
        )
        console.print("Ctrl-C stops both.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping")


def predict(
    images: Annotated[list[Path], typer.Argument(help="image files")],
    url: Annotated[str, typer.Option(help="the router's base URL")] = "http://127.0.0.1:8080",
    crop_hint: Annotated[str | None, typer.Option(help="skip routing: this crop")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="raw answers")] = False,
) -> None:
    """Send images to an AADS router and print each diagnosis."""
    from serving.local import ServingFailed, predict_files

    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise typer.BadParameter(f"no such file(s): {missing}")
    try:
        answers = predict_files(url, images, crop_hint)
    except (ServingFailed, OSError) as err:
        _fail(err, 3)
    if as_json:
        console.print_json(json.dumps(answers))
    else:
        console.print(answers_table([p.name for p in images], answers))


def register(app: typer.Typer) -> None:
    """Entry point: add the top-level `serve` and `predict` commands."""
    app.command("serve")(reports_errors(serve))
    app.command("predict")(reports_errors(predict))
