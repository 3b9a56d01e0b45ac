"""How the `aads` commands print results: rich tables for people, JSON for programs.

A table's first column is its key (a model id, a crop, a metric name): it is never cut. On a
terminal the key column does not wrap and the other columns give way; when the output is a
pipe or a file (``aads backbone info | cat``) the table is as wide as its content instead of
the 80 columns rich assumes, so no cell is cut with an ellipsis and every row stays on one
line for grep. ``--output json`` prints the same data as one JSON document on stdout
(progress and warnings go to stderr), for scripts.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

if TYPE_CHECKING:
    from aads.answer import Answer


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        help="table (for people) or json (one document on stdout, for scripts)",
        case_sensitive=False,
    ),
]


def key_table(key: str, *columns: str, title: str | None = None) -> Table:
    """A table whose first column (`key`) never wraps or shrinks."""
    table = Table(title=title)
    table.add_column(key, no_wrap=True, overflow="fold")
    for name in columns:
        table.add_column(name)
    return table


def print_table(console: Console, table: Table) -> None:
    """Print `table` whole: on a terminal within its width when every column still fits (the
    key column at its full width, the others wrapping), else, and on a pipe, as wide as the
    content needs."""
    key = table.columns[0] if table.columns else None
    if key is not None:
        key.min_width = max((len(str(c)) for c in key.cells), default=0)
    plain = Console(width=100_000, file=console.file, color_system=None, highlight=False)
    needed = Measurement.get(plain, plain.options, table)
    if console.is_terminal and needed.minimum <= console.width:
        console.print(table, soft_wrap=False)
        return
    if table.title:  # on its own line: within the table's width it would wrap
        plain.print(table.title, soft_wrap=True)
        table.title = None
    out = plain if not console.is_terminal else Console(width=needed.maximum, file=console.file)
    out.print(table, width=needed.maximum)


def answer_cell(answer: Answer) -> str:
    """What one image's answer says, in one table cell (rich markup): its class, ``unknown``
    with why (the reason, or the nearest known class), a scouted photo's verdict, or the
    error's message. Every table of answers shows them through this (`aads predict`, the
    demo's field loop), so an answer reads the same wherever it is printed. Text that came
    from the answer is escaped: a bracket in a message or label is printed, not styled."""
    if answer.error is not None:
        return f"[red]error: {escape(answer.error.message)}[/]"
    if answer.scouting is not None:
        verdict = answer.scouting.verdict
        scouting = f"scouting: {verdict.status}, {verdict.regions} regions"
        return f"{escape(answer.label or '-')} ({escape(scouting)})"
    if answer.is_ood:
        nearest = answer.ood.nearest_class if answer.ood else ""
        why = answer.reason or (f"nearest: {nearest}" if nearest else "")
        return "[yellow]unknown[/]" + (f" ({escape(why)})" if why else "")
    return escape(answer.label or "-")


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no NaN), paths and enums strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def print_json(data: Any) -> None:
    """One JSON document on stdout, nothing else."""
    typer.echo(json.dumps(_plain(data), indent=2))


def emit(console: Console, output: Output, data: Any, *tables: Table) -> None:
    """Print `data` as JSON, or `tables` for people."""
    if output is Output.json:
        print_json(data)
        return
    for table in tables:
        print_table(console, table)
