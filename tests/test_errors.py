"""One error hierarchy: every exception class AADS defines is an `AADSError` of one kind, and
the kind alone decides the HTTP status and the CLI exit code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import aads
import pipelines
import serving
from aads.errors import (
    AADSError,
    BadInput,
    NotFound,
    TooLarge,
    Unavailable,
    exit_code,
    http_status,
)

KINDS = (BadInput, NotFound, Unavailable)


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in (aads, serving, pipelines):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if (
                    issubclass(obj, BaseException)
                    and obj.__module__ == info.name
                    and info.name != "aads.errors"
                ):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CLASSES = _exception_classes()


def test_the_walk_finds_the_module_errors():
    names = {c.__name__ for c in CLASSES}
    assert {"StorageError", "ConfigError", "PackageError", "RegistryUnavailable"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_class_has_a_kind(cls):
    assert issubclass(cls, AADSError), f"{cls.__module__}.{cls.__name__} is not an AADSError"
    if cls.__name__ != "PipelineFailed":  # a failed task: its own cause decides
        assert issubclass(cls, KINDS), f"{cls.__name__} derives from no kind"


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [(BadInput, 400, 2), (TooLarge, 413, 2), (NotFound, 404, 2), (Unavailable, 503, 3)],
)
def test_the_kind_decides_status_and_exit_code(kind, status, code):
    err = kind("x")
    assert (http_status(err), exit_code(err)) == (status, code)


def test_an_error_that_is_not_ours_is_a_bug():
    assert http_status(KeyError("x")) == 500
    assert exit_code(KeyError("x")) == 1


def test_a_store_that_is_down_is_unavailable_even_though_it_is_a_storage_error():
    from aads.storage import StorageError, StoreUnavailable

    err = StoreUnavailable("down")
    assert isinstance(err, StorageError)
    assert (http_status(err), exit_code(err)) == (503, 3)


def test_a_missing_registry_alias_is_not_found_and_still_a_registry_error():
    from aads.registry import RegistryError, RegistryNotFound

    err = RegistryNotFound("no alias")
    assert isinstance(err, RegistryError) and err.code == "RESOURCE_DOES_NOT_EXIST"
    assert http_status(err) == 404


def test_kinds_keep_the_builtin_they_replace():
    assert issubclass(BadInput, ValueError)
    assert issubclass(NotFound, LookupError)
    assert issubclass(Unavailable, RuntimeError)
