"""KServe's `ModelServer`, configured the way a public endpoint needs it.

KServe 0.21's `ModelServer` starts a `RESTServer` that binds 0.0.0.0, registers the model
repository's load/unload routes, answers FastAPI's 422 ``{"detail": ...}`` echoing the input and
sets no header or body timeout. The subclasses here keep KServe (its data plane, model registry,
metrics, signal handling, graceful shutdown: the cluster and the tests run real ModelServer
processes) and change only that:

- the host (``--host``, default 127.0.0.1; the chart passes ``--host=0.0.0.0``);
- the routes (`serving.routes`: no admin surface unless ``serving.model_repository``, readiness
  false while a model is not loaded, 405 for a wrong method) and one error mapping;
- uvicorn's connection handling (`serving.http`: header, body and keep-alive timeouts, a
  connection cap over a raised RLIMIT_NOFILE, in-flight limits, a streaming body limit) and
  repeated log lines rate-limited.

Every server entry point (``python -m serving.predictor|router|scouting``) parses its common
options with `server_arguments` and starts with `ModelServer.from_args`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import kserve
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer as KServeRESTServer
from kserve.protocol.rest.server import _RefreshingServer

from aads.config import PlatformConfig, load_config
from aads.specwatch import SpecWatcher
from serving.base import FixedSpec, ServedModel, SpecSource
from serving.http import (
    ConnectionGuard,
    GuardedConfig,
    RequestGuard,
    connection_limit,
    quiet_repeats,
    raise_fd_limit,
)
from serving.local import die_with_parent
from serving.routes import Surface, install_error_handlers, install_openapi, register_routes

log = logging.getLogger("aads.serving.server")

DEFAULT_HOST = "127.0.0.1"


def server_arguments() -> argparse.ArgumentParser:
    """The options every AADS server takes (a parent parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default 127.0.0.1; 0.0.0.0 in a pod)",
    )
    parser.add_argument(
        "--http_port", "--http-port", dest="http_port", type=int, default=8080, help="HTTP port"
    )
    parser.add_argument("--spec", default="config/demo.yaml", help="platform spec YAML")
    parser.add_argument(
        "--grace-period",
        type=int,
        default=30,
        help="seconds in-flight requests get to finish on SIGTERM",
    )
    return parser


def _log_like_kserve(name: str) -> None:
    """Send the `name` logger's records to KServe's handlers (its format, its stream)."""
    logger = logging.getLogger(name)
    if logger.handlers:
        return
    for handler in logging.getLogger("kserve").handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class RESTServer(KServeRESTServer):
    """KServe's REST server on our host, routes, error mapping and connection handling."""

    def __init__(
        self,
        surface: Surface,
        dataplane: kserve.protocol.dataplane.DataPlane,
        spec: SpecSource,
        *,
        host: str,
        http_port: int,
        grace_period: int,
    ) -> None:
        settings = spec.current.serving
        super().__init__(
            FASTAPI_APP_IMPORT_STRING,
            dataplane,
            surface.repository,
            http_port,
            grace_period=grace_period,
            timeout_keep_alive=int(settings.keep_alive_timeout_s),
        )
        self.surface, self.spec = surface, spec
        fd_limit = raise_fd_limit()
        self.guard = ConnectionGuard(connection_limit(settings, fd_limit))
        self.config = GuardedConfig(
            FASTAPI_APP_IMPORT_STRING,
            host=host,
            port=http_port,
            log_config=None,
            timeout_graceful_shutdown=grace_period,
            timeout_keep_alive=settings.keep_alive_timeout_s,
            guard=self.guard,
            settings=settings,
        )
        self._server = _RefreshingServer(self.config)
        log.info(
            "listening on %s:%d; at most %d connections (fd limit %d)",
            host,
            http_port,
            self.guard.max_connections,
            fd_limit,
        )

    def _register_endpoints(self, app) -> None:  # noqa: ANN001 - KServe's signature
        register_routes(app, self.surface)
        install_openapi(app)

    def _add_exception_handlers(self, app) -> None:  # noqa: ANN001
        install_error_handlers(app)

    def _add_middlewares(self, app) -> None:  # noqa: ANN001
        super()._add_middlewares(app)
        app.add_middleware(RequestGuard, settings=lambda: self.spec.current.serving)


class ModelServer(kserve.ModelServer):
    """`kserve.ModelServer` serving AADS models with the REST server above (one process, no
    gRPC), its spec fixed or reloaded while serving."""

    def __init__(
        self,
        spec: SpecSource,
        *,
        host: str = DEFAULT_HOST,
        http_port: int = 8080,
        grace_period: int = 30,
    ) -> None:
        super().__init__(
            http_port=http_port,
            enable_grpc=False,
            workers=1,
            enable_docs_url=False,
            grace_period=grace_period,
        )
        self.spec, self.host = spec, host
        _log_like_kserve("aads")
        quiet_repeats()

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        *,
        reload_spec: bool = False,
        adjust: Callable[[PlatformConfig], PlatformConfig] = lambda config: config,
    ) -> ModelServer:
        """A server for `server_arguments`' options. `reload_spec`: follow the spec file while
        serving (`aads.specwatch`), else read it once; `adjust` applies command-line
        overrides to every version of the spec."""
        die_with_parent()
        spec: SpecSource = (
            SpecWatcher(Path(args.spec), adjust=adjust).start()
            if reload_spec
            else FixedSpec(adjust(load_config(args.spec)))
        )
        return cls(spec, host=args.host, http_port=args.http_port, grace_period=args.grace_period)

    @property
    def config(self) -> PlatformConfig:
        return self.spec.current

    def start(self, models: list[ServedModel]) -> None:  # type: ignore[override]
        """Register `models` and serve until SIGTERM / SIGINT (KServe's `start`, one REST
        server of our own)."""
        self._register_and_check_atleast_one_model_is_ready(models)
        repository = (
            ModelRepositoryExtension(model_registry=self.registered_models)
            if self.config.serving.model_repository
            else None
        )
        surface = Surface(self.registered_models, [m.name for m in models], repository)
        self._rest_server = RESTServer(
            surface,
            self.dataplane,
            self.spec,
            host=self.host,
            http_port=self.http_port,
            grace_period=self.grace_period,
        )
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
