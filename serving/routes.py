"""The HTTP surface of every AADS server, and the one place an error becomes a status.

Routes (V1 as KServe, V2 as the Open Inference Protocol; nothing else):

    GET  /  /v2/health/live  /v2/health/ready  /metrics  /openapi.json
    GET  /v2  /v2/  /v2/models  /v1/models  /v1/models/{m}
    GET  /v2/models/{m}[/versions/{v}]  /v2/models/{m}[/versions/{v}]/ready
    POST /v1/models/{m}:predict  /v2/models/{m}[/versions/{v}]/infer

The model repository's load and unload routes exist only with ``serving.model_repository``
(an unauthenticated admin surface; off by default). Readiness is true only while every model
the server started with is loaded and ready. A wrong method on an existing path is a 405 with
``Allow``; model names never contain ``/`` or ``:`` (so ``GET .../m:predict`` is a 405, not a
lookup of a model named ``m:predict``).

Every inference request a route answers is counted (`aads.telemetry.observe_request`: protocol,
status, duration) unless ``serving.metrics`` is off; those the connection guards refuse before
a route runs (`serving.http`) are not.

`error_response` maps every error by kind (`aads.errors`; KServe's own classes and the web
framework's are translated to a kind first) to ``{"error": message}``: messages are the
errors' own (capped, never the input), a 500 says only "internal error" and closes its
connection, a 413 closes it too (the rest of the body is not read), a 503 says when to retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import kserve.errors as kserve_errors
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from kserve.model_repository import ModelRepository
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import metrics_handler
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from aads.answer import Answer, capped
from aads.errors import AADSError, BadInput, NotFound, Unavailable, http_status
from aads.telemetry import observe_request
from serving.base import ServedModel
from serving.protocol import BINARY_HEADER, InferenceCall, Protocol, V1Request, V2Request

log = logging.getLogger("aads.serving.errors")

KSERVE_KINDS: dict[type[BaseException], type[AADSError]] = {
    kserve_errors.InvalidInput: BadInput,
    kserve_errors.ModelNotFound: NotFound,
    kserve_errors.ModelNotReady: Unavailable,
    kserve_errors.ServerNotReady: Unavailable,
    kserve_errors.ServerNotLive: Unavailable,
}
"""KServe raises its own classes from its data plane; each is one of our kinds."""


class ModelNotServed(NotFound):
    """No model (or no such version of it) is served under that name."""


class NotReady(Unavailable):
    """A model or the server is not (or no longer) loaded."""


class ModelNameConvertor(Convertor):
    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("model", ModelNameConvertor())


# --------------------------------------------------------------------------- paths

LIVE_PATHS = ("/", "/v2/health/live")
READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"
PROBE_PATHS = frozenset({*LIVE_PATHS, READY_PATH, METRICS_PATH})
"""Liveness, readiness and metrics: never refused for load (`serving.http`), since a busy
server is not a dead one."""

V2_MODEL_PATHS = (
    "/v2/models/{model_name:model}",
    "/v2/models/{model_name:model}/versions/{model_version:model}",
)
INFERENCE_PATHS: dict[str, Protocol] = {
    "/v1/models/{model_name:model}:predict": "v1",
    **{f"{model}/infer": "v2" for model in V2_MODEL_PATHS},
}
"""Every inference route and its protocol: `register_routes` adds them from here, and a
request the connection guards refuse before its route runs is counted by the same table
(`inference_protocol`)."""

_INFERENCE_MATCHERS = tuple(
    (compile_path(path)[0], protocol) for path, protocol in INFERENCE_PATHS.items()
)


def inference_protocol(path: str) -> Protocol | None:
    """``v1`` or ``v2`` for a path an inference route answers, else None."""
    return next((protocol for regex, protocol in _INFERENCE_MATCHERS if regex.match(path)), None)


# --------------------------------------------------------------------------- errors


def status_of(err: BaseException) -> int:
    if isinstance(err, AADSError):
        return http_status(err)
    for cls, kind in KSERVE_KINDS.items():
        if isinstance(err, cls):
            return kind.http_status
    if isinstance(err, RequestValidationError):
        return 400
    if isinstance(err, StarletteHTTPException):
        return err.status_code
    return 500


def message_of(err: BaseException, status: int) -> str:
    if isinstance(err, RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return capped(f"{loc}: {first.get('msg', 'invalid request')}")
    if isinstance(err, StarletteHTTPException):
        if status == 405:
            return "method not allowed on this path"
        return "no such path" if status == 404 else capped(str(err.detail))
    if status >= 500 and status != 503:
        return "internal error"
    return capped(str(err))


async def error_response(request: Request, err: Exception) -> JSONResponse:
    """The one mapping from an error to the response its caller gets."""
    status = status_of(err)
    headers: dict[str, str] = {}
    if isinstance(err, StarletteHTTPException) and err.headers:
        headers.update(err.headers)
    if status in (413, 500) or status > 503:
        headers["connection"] = "close"
    if status == 503:
        headers["retry-after"] = "1"
    if status >= 500 and status != 503:
        log.error("%s %s: %s", request.method, request.url.path, type(err).__name__, exc_info=err)
    else:
        log.debug("%s %s: %d %s", request.method, request.url.path, status, err)
    return JSONResponse({"error": message_of(err, status)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    for cls in (AADSError, RequestValidationError, StarletteHTTPException, *KSERVE_KINDS):
        app.add_exception_handler(cls, error_response)


# --------------------------------------------------------------------------- routes


@dataclass
class Surface:
    """What the routes need from the server."""

    registry: ModelRepository
    expected: list[str]  # the models the server started with
    repository: ModelRepositoryExtension | None = None  # only with serving.model_repository

    def model(self, name: str, version: str | None = None) -> ServedModel:
        model = self.registry.get_model(name)
        if not isinstance(model, ServedModel):
            raise ModelNotServed(f"no model named {capped(name, 60)!r} is served here")
        if version is not None and version != model.version:
            served = f"version {model.version!r}" if model.version else "no versions"
            raise ModelNotServed(
                f"model '{name}' has no version {capped(version, 40)!r} ({served})"
            )
        if not model.ready:
            raise NotReady(f"model '{name}' is not loaded")
        return model

    def not_ready(self) -> list[str]:
        return [
            name
            for name in self.expected
            if (m := self.registry.get_model(name)) is None or not m.ready
        ]


def register_routes(app: FastAPI, surface: Surface) -> None:
    def add(path: str, endpoint: Callable[..., Awaitable[Any]], method: str, **kw: Any) -> None:
        app.add_api_route(path, endpoint, methods=[method], response_class=JSONResponse, **kw)

    async def live() -> dict:
        return {"live": True}

    async def ready() -> dict:
        missing = surface.not_ready()
        if missing:
            raise NotReady(f"not ready: model(s) {missing} not loaded")
        return {"ready": True}

    async def server_metadata() -> dict:
        extensions = ["binary_tensor_data"] + (["model_repository"] if surface.repository else [])
        return {"name": "aads", "version": _version(), "extensions": extensions}

    async def models() -> dict:
        return {"models": list(surface.registry.get_models())}

    async def model_metadata(model_name: str, model_version: str | None = None) -> dict:
        model = surface.model(model_name, model_version)
        return {
            "name": model.name,
            "versions": [model.version] if model.version else [],
            "platform": "aads-pytorch",
            "inputs": model.get_input_types(),
            "outputs": model.get_output_types(),
        }

    async def model_ready(model_name: str, model_version: str | None = None) -> dict:
        surface.model(model_name, model_version)
        return {"name": model_name, "ready": True}

    async def v1_status(model_name: str) -> dict:
        surface.model(model_name)
        return {"name": model_name, "ready": True}

    def inference(protocol: Protocol) -> Callable[..., Awaitable[Response]]:
        async def infer(
            request: Request, model_name: str, model_version: str | None = None
        ) -> Response:
            began, status, counted = time.perf_counter(), 500, True
            try:
                model = surface.model(model_name, model_version)
                counted = model.config.serving.metrics
                body = await request.body()
                headers = dict(request.headers)
                reply, response_headers = await model(
                    InferenceCall(protocol, body, headers), headers=headers
                )
                response_headers.pop("content-length", None)
                status = 200
                return Response(reply.body, headers=response_headers)
            except Exception as err:
                status = status_of(err)
                raise
            finally:
                if counted:
                    observe_request(protocol, status, time.perf_counter() - began)

        return infer

    for path in LIVE_PATHS:
        add(path, live, "GET", include_in_schema=path != "/")
    add(READY_PATH, ready, "GET")
    add(METRICS_PATH, metrics_handler, "GET", include_in_schema=False)
    add("/v2", server_metadata, "GET")
    add("/v2/", server_metadata, "GET", include_in_schema=False)
    add("/v2/models", models, "GET")
    add("/v1/models", models, "GET")
    add("/v1/models/{model_name:model}", v1_status, "GET")
    for model in V2_MODEL_PATHS:
        add(model, model_metadata, "GET")
        add(f"{model}/ready", model_ready, "GET")
    docs: dict[Protocol, dict[str, Any]] = {"v1": V1_DOC, "v2": V2_DOC}
    for path, protocol in INFERENCE_PATHS.items():
        add(path, inference(protocol), "POST", openapi_extra=docs[protocol])
    if surface.repository is not None:
        repository = surface.repository

        async def load(model_name: str) -> dict:
            await repository.load(model_name)
            return {"name": model_name, "load": True}

        async def unload(model_name: str) -> dict:
            await repository.unload(model_name)
            return {"name": model_name, "unload": True}

        add("/v2/repository/models/{model_name:model}/load", load, "POST")
        add("/v2/repository/models/{model_name:model}/unload", unload, "POST")


def _version() -> str:
    try:
        return metadata.version("aads")
    except metadata.PackageNotFoundError:
        return "0"


# --------------------------------------------------------------------------- openapi


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "200": ok,
        "400": {"description": "a bad request, or every image failed its checks", "content": error},
        "413": {"description": "over a size or pixel limit", "content": error},
        "503": {"description": "busy or not loaded: retry", "content": error},
    }


V1_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V1Request"}}},
    },
    "responses": _responses(
        {
            "description": "one answer per image, in order",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/V1Response"}}
            },
        }
    ),
}
V2_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/V2Request"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
        "description": f"JSON, or the binary tensor extension: the JSON header (its length in "
        f"the {BINARY_HEADER} header), then the BYTES elements",
    },
    "responses": _responses(
        {"description": "outputs diagnosis (Answer JSON per image), label, confidence, is_ood"}
    ),
}


def install_openapi(app: FastAPI) -> None:
    """``/openapi.json`` documents the routes and the answer: `Answer`'s JSON schema, the V1
    request and response, the V2 request, the error body."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title="AADS inference (KServe V1, Open Inference Protocol V2)",
            version=_version(),
            description=(__doc__ or "").split("\n\n", 1)[0],
            routes=app.routes,
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for model, mode in (
            (Answer, "serialization"),
            (V1Request, "validation"),
            (V2Request, "validation"),
        ):
            found = model.model_json_schema(
                by_alias=True, ref_template="#/components/schemas/{model}", mode=mode
            )
            schemas.update(found.pop("$defs", {}))
            schemas[model.__name__] = found
        schemas["V1Response"] = {
            "type": "object",
            "required": ["predictions"],
            "properties": {
                "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Answer"}}
            },
        }
        schemas["Error"] = {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        }
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
