"""The route table of every AADS server (`serving.routes`): the paths are declared once, and
what the connection guards (`serving.http`) treat specially is read from the same
declarations, so a route added or renamed cannot leave the guards behind."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from kserve.model_repository import ModelRepository
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from serving.routes import PROBE_PATHS, Surface, inference_protocol, register_routes

SAMPLE = {"{model_name:model}": "tomato", "{model_version:model}": "3"}


def _served(*, admin: bool = False) -> dict[str, APIRoute]:
    """Each route of a server's app (the admin routes too with `admin`), by a concrete path
    it answers."""
    repository = ModelRepository()
    app = FastAPI()
    extension = ModelRepositoryExtension(repository) if admin else None
    register_routes(app, Surface(repository, [], extension))
    return {_concrete(r.path): r for r in app.routes if isinstance(r, APIRoute)}


def _concrete(template: str) -> str:
    for placeholder, value in SAMPLE.items():
        template = template.replace(placeholder, value)
    return template


@pytest.mark.parametrize("admin", [False, True])
def test_inference_is_counted_on_exactly_the_routes_that_infer_with_their_protocol(admin):
    for path, route in _served(admin=admin).items():
        infers = route.endpoint.__name__ == "infer"
        expected = ("v1" if path.endswith(":predict") else "v2") if infers else None
        assert inference_protocol(path) == expected, path


def test_a_path_no_route_answers_is_not_counted_as_inference():
    for path in ("/v2/models/a/b/infer", "/v1/models/a/b:predict", "/v1/models:predict", "/x"):
        assert inference_protocol(path) is None, path


def test_the_probes_spared_from_load_shedding_are_the_health_and_metrics_routes():
    probes = {"live", "ready", "metrics_handler"}
    routes = _served()
    assert PROBE_PATHS == {p for p, r in routes.items() if r.endpoint.__name__ in probes}
    assert {"/", "/v2/health/live", "/v2/health/ready", "/metrics"} == PROBE_PATHS
