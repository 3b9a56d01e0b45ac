"""Serving-side diagnosis, independent of any server framework: where a model comes from, and
one answer per image from a loaded adapter (uploads are checked by `aads.uploads`).

`serving/` wraps these in KServe models; tests and `aads predict` call them directly, so the
answer a user gets is computed by the same code everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aads.adapters.loading import LoadedAdapter, load_adapter
from aads.answer import Answer, ModelRef, OODVerdict, TopClass
from aads.backbone import Backbone, ImageInput, preprocess_image
from aads.config import RegistrySettings, ServingSettings, StorageSettings
from aads.errors import BadInput, NotFound
from aads.uploads import model_input

KSERVE_MODEL_DIR = Path("/mnt/models")
StageTimer = Callable[[str], AbstractContextManager[object]]
"""``stage("predict")`` times a block (`aads.telemetry.stage_timer` in a server)."""


def untimed(stage: str) -> AbstractContextManager[object]:
    return nullcontext()


class InvalidRequest(BadInput):
    """Input a caller must fix (HTTP 400): the message names the instance and the problem."""


class ModelSourceNotFound(NotFound, FileNotFoundError):
    """A model source folder that does not exist (HTTP 404, exit code 2)."""


# --------------------------------------------------------------------------- model sources


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    version: str = ""  # the registry version number for models:/ sources


def resolve_model_dir(
    source: str | Path,
    storage: StorageSettings,
    registry: RegistrySettings | None = None,
    *,
    tracking_uri: str | None = None,
) -> Path:
    """`resolve_model` without the version."""
    return resolve_model(source, storage, registry, tracking_uri=tracking_uri).path


def resolve_model(
    source: str | Path,
    storage: StorageSettings,
    registry: RegistrySettings | None = None,
    *,
    tracking_uri: str | None = None,
) -> ResolvedModel:
    """A local folder holding the package `source` names.

    ``/mnt/models`` (what KServe's storage initializer fills) or any local path as is;
    ``s3://bucket/prefix``: a verified cached copy; ``models:/<name>@<alias>`` or
    ``models:/<name>/<version>``: the MLflow registry's version, downloaded and verified.
    """
    text = str(source)
    if text.startswith("s3://"):
        from aads.storage import fetch_dir_cached

        return ResolvedModel(fetch_dir_cached(text, storage))
    if text.startswith("models:/"):
        from aads.registry import Registry

        ref = text.removeprefix("models:/")
        name, sep, alias = ref.partition("@")
        if not sep:
            name, _, alias = ref.rpartition("/")
        if not name or not alias:
            raise InvalidRequest(f"{text}: use models:/<name>@<alias> or models:/<name>/<version>")
        registry_client = Registry(registry or RegistrySettings(), tracking_uri=tracking_uri)
        version = registry_client.resolve(name, alias)
        # Keyed by the version's artifact source (it names the run), not by its number: a
        # new registry numbers from 1 again and must never get an old cached package.
        key = hashlib.sha256(version.source.encode()).hexdigest()[:24]
        dst = Path(storage.cache_dir) / "registry" / f"{name}-{key}"
        if (dst / "SHA256SUMS").is_file():
            from aads.storage import StorageError, verify_checksums

            try:
                verify_checksums(dst)
                return ResolvedModel(dst, version.version)
            except StorageError:
                pass  # a damaged cache is fetched again
        return ResolvedModel(registry_client.download(name, version.version, dst), version.version)
    path = Path(text)
    if not path.is_dir():
        raise ModelSourceNotFound(f"model source {text}: no such folder")
    return ResolvedModel(path)


# --------------------------------------------------------------------------- diagnosis


@dataclass
class Diagnoser:
    """A loaded crop adapter that answers images: class or unknown, confidence, top-k, OOD."""

    adapter: LoadedAdapter
    model_name: str
    model_version: str = ""
    top_k: int = 3

    @classmethod
    def from_dir(
        cls,
        package: Path,
        storage: StorageSettings | None = None,
        *,
        model_name: str = "",
        model_version: str = "",
        top_k: int = 3,
        device: str = "auto",
        dtype: str = "auto",
    ) -> Diagnoser:
        adapter = load_adapter(package, storage, device=device, dtype=dtype)
        if adapter.ood is None:
            from aads.adapters.package import PackageError

            raise PackageError(
                f"{package}: the '{adapter.meta.crop}' adapter has no OOD calibration; serving "
                "it would force every image into a class. Run `aads ood calibrate` first"
            )
        return cls(adapter, model_name or f"aads-adapter-{adapter.meta.crop}", model_version, top_k)

    @property
    def crop(self) -> str:
        return self.adapter.meta.crop

    @property
    def backbone(self) -> Backbone:
        return self.adapter.backbone

    def prepare(self, image: bytes, where: str, limits: ServingSettings) -> torch.Tensor:
        """One upload, checked and decoded (`aads.uploads`), as this adapter's input tensor;
        `UploadRejected` / `UploadTooLarge` name `where`. One image's error boundary."""
        return model_input(image, where, limits, self.backbone)

    def diagnose(self, images: Sequence[ImageInput]) -> list[Answer]:
        """One answer per decoded image or file (same order): training's own preprocessing."""
        bb = self.backbone
        return self.diagnose_pixels(
            [preprocess_image(im, bb.image_size, bb.normalization) for im in images]
        )

    def diagnose_pixels(
        self, pixels: Sequence[torch.Tensor], stage: StageTimer = untimed
    ) -> list[Answer]:
        """One answer per prepared input tensor (same order). Every item is already a checked
        tensor of one shape, so no item can fail the batch. `stage` times the forward pass
        (``predict``) and the OOD check (``ood``)."""
        if not pixels:
            return []
        with stage("predict"):
            features, logits = self.adapter.features_and_logits(torch.stack(list(pixels)))
            domains = self.adapter.domain_picks(len(pixels))
        assert self.adapter.ood is not None
        with stage("ood"):
            probs = torch.softmax(logits.double(), dim=1).numpy()
            verdicts = self.adapter.ood.verdicts(features.double().numpy(), logits.double().numpy())
        classes = self.adapter.classes
        k = min(self.top_k, len(classes))
        top = np.argsort(-probs, axis=1)[:, :k]
        model = ModelRef(name=self.model_name, version=self.model_version)
        return [
            Answer(
                crop=self.crop,
                label=v.label,
                is_ood=v.is_ood,
                predicted_class=v.predicted_class,
                confidence=round(v.confidence, 6),
                top_k=[
                    TopClass(class_=classes[j], probability=round(float(probs[i, j]), 6))
                    for j in top[i]
                ],
                ood=OODVerdict(
                    distance=round(v.distance, 6),
                    threshold=round(v.threshold, 6),
                    nearest_class=v.nearest_class,
                ),
                model=model,
                domain=domains[i],
            )
            for i, v in enumerate(verdicts)
        ]


def share_identical_parameters(networks: Sequence[torch.nn.Module]) -> int:
    """Make equal parameters and buffers of several networks one tensor in memory.

    Multi-adapter serving: each crop's network is its own merged copy of the backbone, but the
    weights an adapter did not touch (MLP, norms, embeddings, unadapted projections) are equal
    across crops; pointing them at the first network's tensor (matched by qualified name)
    keeps one backbone in memory plus each crop's adapted layers. Returns the bytes freed.
    """
    reference: dict[str, torch.Tensor] = {}
    freed = 0
    for net in networks:
        for mod_name, module in net.named_modules():
            for store in (module._parameters, module._buffers):  # noqa: SLF001 - rebinding
                for key, tensor in list(store.items()):
                    if tensor is None:
                        continue
                    qual = f"{mod_name}.{key}"
                    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
                    first = reference.setdefault(qual, data)
                    if first is data or first.shape != data.shape or first.dtype != data.dtype:
                        continue
                    if torch.equal(first, data):
                        freed += data.numel() * data.element_size()
                        store[key] = (
                            torch.nn.Parameter(first, requires_grad=False)
                            if isinstance(tensor, torch.nn.Parameter)
                            else first
                        )
    return freed
