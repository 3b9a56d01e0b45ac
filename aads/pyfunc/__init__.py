"""AADS models as MLflow pyfunc models: what every registered version is.

`save_model` turns an adapter package or a router folder into a local MLflow model folder:

    MLmodel                 flavor python_function, signature, input example, model config
    adapter_code.py         "models from code": MLflow runs it to build the model (no pickle)
    artifacts/package/      the package itself, byte for byte (KServe serves this folder)
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml

so ``mlflow.pyfunc.load_model("models:/aads-adapter-tomato@candidate").predict(df)`` runs the
same `Diagnoser` (or router) the KServe predictor runs, and KServe's storage initializer still
fetches the plain package from ``<model>/artifacts/package``. The output signature is inferred
from a real answer on the input example, as MLflow itself does: the model is loaded once here,
which also proves the package loads before anything is registered.

Loading needs the ``aads`` package installed (the component and serving images have it):
the code file imports it, like any models-from-code model imports its library.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Literal

from aads.errors import BadInput

Kind = Literal["adapter", "router"]
PACKAGE_PATH = "artifacts/package"
"""Where the package sits inside a saved model folder (and inside a logged model's artifacts)."""
CODE = {
    "adapter": Path(__file__).with_name("adapter_code.py"),
    "router": Path(__file__).with_name("router_code.py"),
}
REQUIREMENTS = ("aads", "mlflow", "torch", "transformers", "peft", "safetensors", "pillow")


class PyfuncError(BadInput):
    """A folder that is neither an adapter package nor a router."""


def model_kind(package: Path) -> Kind:
    """``adapter`` for a folder with ``adapter.json``, ``router`` for one with ``router.json``."""
    package = Path(package)
    if (package / "adapter.json").is_file():
        return "adapter"
    if (package / "router.json").is_file():
        return "router"
    raise PyfuncError(f"{package} is neither an adapter package nor a router folder")


def example_image(package: Path) -> bytes:
    """A small PNG at the backbone's input size: the input example users see on the model."""
    from PIL import Image

    kind = model_kind(package)
    meta = json.loads((Path(package) / f"{kind}.json").read_text())
    side = int(meta.get("backbone_settings", {}).get("image_size", 64))
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (64, 128, 48)).save(buffer, format="PNG")
    return buffer.getvalue()


def requirements() -> list[str]:
    """The installed versions of what the model imports (pip pins for `mlflow models serve`)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def save_model(
    package: Path, out_dir: Path, *, model_config: dict | None = None, image: bytes | None = None
) -> Path:
    """Write `package` as a local MLflow pyfunc model folder at `out_dir` (which must not
    exist); returns `out_dir`. `image` is the input example (default: `example_image`)."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.pyfunc import PythonModelContext

    from aads.pyfunc.models import PACKAGE_ARTIFACT, AdapterModel, RouterModel

    kind = model_kind(package)
    config = dict(model_config or {})
    example = pd.DataFrame({"image": [image if image is not None else example_image(package)]})
    with tempfile.TemporaryDirectory() as tmp:
        # The artifact keeps its folder's name inside the model: stage it as "package".
        staged = Path(shutil.copytree(package, Path(tmp) / PACKAGE_ARTIFACT))
        model = AdapterModel() if kind == "adapter" else RouterModel()
        model.load_context(PythonModelContext({PACKAGE_ARTIFACT: str(staged)}, config))
        signature = infer_signature(example, model.predict(None, example))
        mlflow.pyfunc.save_model(
            str(out_dir),
            python_model=str(CODE[kind]),
            artifacts={PACKAGE_ARTIFACT: str(staged)},
            signature=signature,
            input_example=example,
            model_config=config,
            pip_requirements=requirements(),
            metadata={"aads_kind": kind, "aads_package_path": PACKAGE_PATH},
        )
    return Path(out_dir)
