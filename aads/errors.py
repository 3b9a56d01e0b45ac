"""One error hierarchy for AADS: every error a caller can act on is an `AADSError` of one kind,
chosen by what the caller should do about it, not by where it was raised.

| kind          | the caller should          | HTTP | CLI exit |
|---------------|----------------------------|------|----------|
| `BadInput`    | fix the input or settings  | 400  | 2        |
| `TooLarge`    | send less                  | 413  | 2        |
| `NotFound`    | name something that exists | 404  | 2        |
| `Unavailable` | retry later (store, server)| 503  | 3        |

Each module keeps its own error class (``StorageError``, ``PackageError`` ...) so messages and
``except`` clauses stay specific, but it derives from one kind, so the servers and the CLI map
errors to a status or an exit code in one place (`http_status`, `exit_code`) instead of
listing classes by hand. Anything that is not an `AADSError` is a bug: a 500 and a traceback.

The kinds also derive from the builtin they replace (``ValueError``, ``LookupError``,
``RuntimeError``) so code written against the builtins keeps working.
"""

from __future__ import annotations

from typing import ClassVar


class AADSError(Exception):
    """Base of every error AADS raises on purpose; the message says what and what to do."""

    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1


class BadInput(AADSError, ValueError):
    """Input, a file or settings the caller must fix: HTTP 400, exit code 2."""

    http_status = 400
    exit_code = 2


class TooLarge(BadInput):
    """A request or an image over a configured limit: HTTP 413, exit code 2."""

    http_status = 413


class NotFound(AADSError, LookupError):
    """A model, version, alias, object or file that does not exist: HTTP 404, exit code 2."""

    http_status = 404
    exit_code = 2


class Unavailable(AADSError, RuntimeError):
    """A store, server or model that is down or not ready; retrying later may work:
    HTTP 503, exit code 3."""

    http_status = 503
    exit_code = 3


def http_status(err: BaseException) -> int:
    """The HTTP status an error maps to: its kind's, else 500 (a bug)."""
    return err.http_status if isinstance(err, AADSError) else 500


def exit_code(err: BaseException) -> int:
    """The CLI exit code an error maps to: its kind's; for an OSError of the standard library,
    3 when a connection failed or timed out (a server is down), 2 for a local file problem
    (missing, not allowed, a folder where a file was expected); else 1 (a bug)."""
    if isinstance(err, AADSError):
        return err.exit_code
    if isinstance(err, ConnectionError | TimeoutError):
        return 3
    if isinstance(err, OSError):
        return 2
    return 1


ERROR_KINDS = ("bad_input", "too_large", "not_found", "unavailable", "internal")
"""The kinds' names, as metrics and logs label errors (`error_kind`)."""


def error_kind(err: BaseException | int) -> str:
    """The name of an error's kind, from the error or from the HTTP status it was sent as
    (an answer's error entry carries only its status): ``bad_input`` (any other 4xx),
    ``too_large`` (413), ``not_found`` (404), ``unavailable`` (503, 504) or ``internal``."""
    status = http_status(err) if isinstance(err, BaseException) else err
    if not isinstance(status, int) or isinstance(status, bool):
        return "internal"
    if status == 413:
        return "too_large"
    if status == 404:
        return "not_found"
    if status in (503, 504):
        return "unavailable"
    if 400 <= status < 500:
        return "bad_input"
    return "internal"
