"""What every `aads` command group shares: the ``--config`` option and where it resolves, and
how an error reaches the user (one ``error:`` line, the exit code of its kind).

Its own module so that command groups other packages plug in (``pipelines.cli``,
``serving.cli``, registered under the ``aads.cli`` entry point) can import it without importing
`aads.cli`, which loads those plugins when it is imported: a plugin importing `aads.cli` first
found itself half-initialised (``import pipelines.cli`` failed unless `aads.cli` came first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from aads.config import locate_config
from aads.errors import AADSError, exit_code

F = TypeVar("F", bound=Callable[..., object])


def config_option(default: str, shipped: str) -> Any:
    """The ``--config`` option of a command whose spec defaults to ``./config/<default>``, else
    the `shipped` spec inside the package (`config_path` resolves it the same way)."""
    return Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help=f"platform spec YAML; default: $AADS_CONFIG, else ./config/{default}, else "
            f"the {shipped} spec shipped with AADS",
            show_default=False,
        ),
    ]


ConfigOpt = config_option("demo.yaml", "demo")


def one_line(message: str) -> str:
    """A multi-line reason (a config with several bad fields) as one grep-able line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else "unknown error"
    return f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"


def print_error(message: str) -> None:
    """`message` as one red `error:` line on stderr (the form every CLI error takes)."""
    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(one_line(message))}", highlight=False
    )


def fail(err: BaseException, code: int) -> NoReturn:
    """Print the reason as one `error:` line (grep-able) and exit; never a traceback."""
    print_error(_reason(err))
    raise typer.Exit(code) from None


def _reason(err: BaseException) -> str:
    """What went wrong in words: an OSError as "<file>: <what>", not "[Errno 13] ..."."""
    if isinstance(err, OSError) and not isinstance(err, AADSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    return str(err) or type(err).__name__


def reports_errors(fn: F) -> F:
    """Map errors to `error: ...` + the exit code of their kind (`aads.errors.exit_code`): 2
    for bad input or something that does not exist, 3 for a store or server that is down. An
    OSError that is not ours is a local file (2) or a connection (3) problem."""

    @wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except (AADSError, OSError) as err:
            fail(err, exit_code(err))

    return wrapper  # type: ignore[return-value]


def config_path(given: Path | None, default: str = "demo.yaml", given_as: str = "--config") -> Path:
    """The spec file a command reads (`aads.config.locate_config`: flag, $AADS_CONFIG,
    ./config/<default>, the packaged one)."""
    return locate_config(given, environ=os.environ, default=default, given_as=given_as)
