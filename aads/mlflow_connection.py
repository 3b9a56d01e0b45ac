"""One MLflow tracking server, called with bounded retries: what the registry and the pipeline's
run tracking share.

- **Bounded failure.** MLflow's own HTTP client retries 7 times with exponential backoff: a
  dead server takes about 4 minutes per call to fail. Here MLflow makes one attempt per call
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and a 15 s ``MLFLOW_HTTP_REQUEST_TIMEOUT``, set only
  while a call runs and only where the operator has not set them), tenacity retries
  connection-type failures with exponential backoff, then the subclass's ``unavailable``
  error (an `aads.errors.Unavailable`) names the URI.
- **No global MLflow state.** Each connection has its own `MlflowClient`; nothing calls
  ``mlflow.set_tracking_uri`` or starts a fluent "active run", so two connections in one
  process (or a test beside a pipeline step) do not interfere.
- **No credentials in messages.** Error texts have the URI's ``user:password@`` removed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlparse, urlunparse

import requests
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from aads.errors import BadInput, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# One HTTP attempt per MLflow call: tenacity owns retrying. An operator who sets these
# variables keeps their values.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# What MLflow says when the server cannot be reached or fails on its side: it wraps every
# `requests` failure into a plain MlflowException("API request to ... failed with exception
# HTTPConnectionPool(...): Max retries exceeded ... Connection refused").
_TRANSIENT_MARKERS = (
    "max retries exceeded",
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remotedisconnected",
    "timeout exception",
    "timed out",
    "error responses",  # urllib3: "too many 503 error responses"
    "temporary failure in name resolution",
    "name or service not known",
    # MLflow 3's telemetry thread removes this variable from os.environ when it cannot reach
    # its own servers, while a request may be reading the environment (proxy settings): the
    # request fails with a KeyError on it. A race on our side of the wire: try again.
    "_mlflow_telemetry_session_id",
)
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"


class MlflowUnavailable(Unavailable):
    """The tracking server did not answer after all retries."""


class MlflowError(BadInput):
    """A request the server refused as asked; `code` is MLflow's error code, if it gave one
    (e.g. ``RESOURCE_DOES_NOT_EXIST``)."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


def redact_uri(uri: str) -> str:
    """The URI without user:password, for messages and logs."""
    parsed = urlparse(uri)
    if not parsed.netloc or "@" not in parsed.netloc:
        return uri
    return urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]))


# --------------------------------------------------------------------------- HTTP behaviour

_env_lock = threading.Lock()
_env_users = 0
_env_applied: list[str] = []


@contextmanager
def one_http_attempt() -> Iterator[None]:
    """Apply `HTTP_ENV` while any MLflow call runs (refcounted: threads may overlap).

    MLflow reads these settings from the environment on every request and offers no
    per-client knob, so they are set for the duration of our calls only and removed after.
    """
    global _env_users, _env_applied
    with _env_lock:
        if _env_users == 0:
            _env_applied = [k for k in HTTP_ENV if k not in os.environ]
            os.environ.update({k: HTTP_ENV[k] for k in _env_applied})
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for k in _env_applied:
                    os.environ.pop(k, None)
                _env_applied = []


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the server unreachable, slow, or failing on its side."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, requests.exceptions.HTTPError):  # artifact uploads and downloads
        return exc.response is not None and exc.response.status_code >= 500
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, RestException):  # the server answered with a JSON error
        return exc.get_http_status_code() >= 500
    if isinstance(exc, MlflowException):
        message = str(exc).lower()
        return any(marker in message for marker in _TRANSIENT_MARKERS)
    return False


# --------------------------------------------------------------------------- the connection


class MlflowConnection:
    """An `MlflowClient` on one tracking server whose calls go through `call`."""

    unavailable: type[Unavailable] = MlflowUnavailable
    refused: type[MlflowError] = MlflowError

    def __init__(self, tracking_uri: str, retries: int = 5):
        from mlflow import MlflowClient

        if not tracking_uri:
            raise self.refused(
                "no tracking URI: set registry.tracking_uri in the platform config or pass "
                "tracking_uri (e.g. http://mlflow.aads.svc:5000)"
            )
        if retries < 1:
            raise self.refused(f"retries must be at least 1, got {retries}")
        self.tracking_uri = tracking_uri
        self.retries = retries
        self.description = f"MLflow at {redact_uri(tracking_uri)}"
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def call(self, what: str, fn: Callable[[], T], *, attempts: int | None = None) -> T:
        """Run `fn` with one HTTP attempt per MLflow call, retrying connection failures
        (`attempts` times, default `retries`)."""
        from mlflow.exceptions import MlflowException

        attempts = attempts or self.retries
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.5, max=4.0),
            retry=retry_if_exception(is_transient),
            reraise=False,
        )
        try:
            with one_http_attempt():
                return retrying(fn)
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise self.unavailable(
                f"{self.description} unreachable: {what} failed after {attempts} attempts "
                f"({type(cause).__name__}: {self.clean(cause)}). Check that the tracking "
                "server is running and reachable from here (URI, port, network policy, and "
                "--allowed-hosts on the server when it is behind a Service or Ingress)."
            ) from None
        except (MlflowException, requests.exceptions.RequestException) as err:
            raise self.refused(
                f"{self.description}: {what}: {self.clean(err)}",
                code=str(getattr(err, "error_code", "")),
            ) from None

    def clean(self, err: BaseException | None) -> str:
        """The error text with the raw URI (which may carry credentials) redacted."""
        text = getattr(err, "message", None) or str(err)
        return text.replace(self.tracking_uri, redact_uri(self.tracking_uri))

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created if missing (another step may create it concurrently)."""

        def get_or_create() -> str:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None and exp.lifecycle_stage == "deleted":
                raise self.refused(
                    f"experiment {name!r} is deleted on {self.description}: restore it "
                    "(mlflow experiments restore) or set registry.experiment to another name"
                )
            if exp is not None:
                return exp.experiment_id
            try:
                return self.client.create_experiment(name)
            except Exception as err:  # created concurrently by another step
                if getattr(err, "error_code", "") != ALREADY_EXISTS:
                    raise
                return self.client.get_experiment_by_name(name).experiment_id

        return self.call(f"get or create experiment {name!r}", get_or_create)

    def mark_failed(self, run_id: str) -> None:
        """Best effort, no retries: the server may be the reason we are failing."""
        from mlflow.entities import RunStatus

        try:
            with one_http_attempt():
                self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        except Exception as err:  # already failing: keep the first error
            log.warning("could not mark run %s failed: %s", run_id, self.clean(err))
