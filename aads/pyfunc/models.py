"""The adapter package and the crop router as MLflow ``PythonModel``s: thin wrappers over the
same calls the KServe predictor and router make, so a model loaded with
``mlflow.pyfunc.load_model("models:/aads-adapter-tomato@candidate")`` answers what the
predictor answers.

Input: one row per image, column ``image`` holding the encoded bytes (JPEG, PNG or WebP; in a
JSON request to ``mlflow models serve`` the column is base64, which MLflow decodes because the
signature says ``binary``). A plain list of bytes is accepted too. Every image is checked and
decoded by the model's own `prepare` (`aads.uploads`: bounded decoding with the serving limits),
as in the predictor and the router, with the request's pixel budget checked first.

Output: one JSON-able answer per image, in input order: the adapter's diagnosis
(`aads.inference.Diagnoser.diagnose`), or the router's routing entry
(`aads.router.RouteDecision.routing`, the ``routing`` entry of the router's answers).

``model_config`` (given when the model is logged, overridable at load time with
``load_model(uri, model_config={...})``): ``device`` and ``dtype`` (as in the backbone settings),
``top_k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext

from aads.config import ServingSettings, StorageSettings
from aads.errors import BadInput

PACKAGE_ARTIFACT = "package"
"""The key of the package folder among the model's artifacts."""


def image_bytes(model_input: Any) -> list[bytes]:
    """Encoded images from a DataFrame with an ``image`` column, a dict of columns or a list."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise _bad_input(
                f"input has columns {list(model_input.columns)}; expected one named 'image'"
            )
        values: Sequence[Any] = model_input["image"].tolist()
    elif isinstance(model_input, dict):
        if "image" not in model_input:
            raise _bad_input(f"input has keys {sorted(model_input)}; expected 'image'")
        column = model_input["image"]
        values = column if isinstance(column, list | tuple) else [column]
    elif isinstance(model_input, list | tuple):
        values = [v["image"] if isinstance(v, dict) and "image" in v else v for v in model_input]
    else:
        raise _bad_input(f"expected a DataFrame with an 'image' column, got {type(model_input)}")
    for i, value in enumerate(values):
        if not isinstance(value, bytes | bytearray):
            raise _bad_input(f"image {i}: expected encoded image bytes, got {type(value).__name__}")
    return [bytes(v) for v in values]


def _bad_input(message: str) -> MlflowException:
    """MLflow's scoring server answers this error kind with HTTP 400."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _plain(answer: Any) -> dict:
    """An answer (or its routing entry) as the servers send it (`aads.answer` ``wire``)."""
    return answer.wire()


def _settings(context: PythonModelContext) -> dict[str, Any]:
    return dict(context.model_config or {})


def _prepared(model_input: Any, limits: ServingSettings, model: Any) -> list:
    """Each image checked and decoded by `model.prepare` (a Diagnoser or a Router), as the
    servers do: the request's pixel budget from the headers first, then one image at a time."""
    from aads.uploads import check_request_pixels, read_header

    images = image_bytes(model_input)
    try:
        check_request_pixels(
            [read_header(data, f"image {i}", limits) for i, data in enumerate(images)], limits
        )
        return [model.prepare(data, f"image {i}", limits) for i, data in enumerate(images)]
    except BadInput as err:
        raise _bad_input(str(err)) from None


class AdapterModel(PythonModel):
    """A crop adapter package: disease or ``unknown`` per image, with top-k and OOD verdict."""

    def load_context(self, context: PythonModelContext) -> None:
        from aads.inference import Diagnoser

        settings = _settings(context)
        self.limits = ServingSettings(top_k=int(settings.get("top_k", 3)))
        self.diagnoser = Diagnoser.from_dir(
            Path(context.artifacts[PACKAGE_ARTIFACT]),
            StorageSettings(),
            top_k=self.limits.top_k,
            device=settings.get("device", "auto"),
            dtype=settings.get("dtype", "auto"),
        )

    # `model_input` has no type hint on purpose: MLflow would read one as the input schema,
    # which the signature (binary column "image") already states.
    def predict(self, context: PythonModelContext, model_input, params: dict | None = None):
        pixels = _prepared(model_input, self.limits, self.diagnoser)
        return [_plain(a) for a in self.diagnoser.diagnose_pixels(pixels)]


class RouterModel(PythonModel):
    """The crop router: crop, plant part and the crop-level OOD verdict per image."""

    def load_context(self, context: PythonModelContext) -> None:
        from aads.router import load_router

        settings = _settings(context)
        self.limits = ServingSettings()
        self.router = load_router(
            Path(context.artifacts[PACKAGE_ARTIFACT]),
            StorageSettings(),
            device=settings.get("device", "auto"),
            dtype=settings.get("dtype", "auto"),
        )

    def predict(self, context: PythonModelContext, model_input, params: dict | None = None):
        pixels = _prepared(model_input, self.limits, self.router)
        return [_plain(decision.routing()) for decision in self.router.route_pixels(pixels)]
