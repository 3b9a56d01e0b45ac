"""The crop adapter predictor: one `kserve.Model` per crop (``/v2/models/<crop>/infer``).

Single mode: one process serves one crop (one InferenceService per crop, weights merged).
Multi-adapter mode: one process serves several crops; their networks share every weight the
adapters did not change (`share_identical_parameters`), so one backbone is in memory, and
each crop has its own dynamic batcher (adapters cannot share a batch).

    python -m serving.predictor --adapter tomato=/mnt/models              # KServe, single
    python -m serving.predictor --model-root .aads/serve/adapters       # every package in it
    python -m serving.predictor --adapter corn=models:/aads-adapter-corn@champion
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from aads import telemetry
from aads.adapters.package import PackageError
from aads.answer import Answer
from aads.batching import DynamicBatcher
from aads.config import PlatformConfig, ServingSettings
from aads.inference import (
    KSERVE_MODEL_DIR,
    Diagnoser,
    resolve_model,
    share_identical_parameters,
    untimed,
)
from aads.telemetry import VARIANT_ENV, VARIANTS
from serving.base import Batch, FixedSpec, ServedModel, SpecSource
from serving.server import ModelServer, server_arguments

log = logging.getLogger("aads.serving.predictor")


class AdapterPredictor(ServedModel):
    """One crop's adapter: images in, disease or unknown out (with OOD verdict and top-k).

    On ``/metrics`` it exports what only it sees: the adapter's calibrated rejection rate (at
    load), each batch's size and the predict and OOD stages of its forward pass. Its answers
    are counted by the router that relays them (`aads.telemetry`: one count per answer).
    """

    def __init__(
        self,
        crop: str,
        source: str,
        spec: SpecSource,
        *,
        tracking_uri: str | None = None,
        version: str = "",
        variant: str = "champion",
    ):
        super().__init__(crop, spec)
        self.telemetry_crop = crop
        self.source, self.tracking_uri, self.version = source, tracking_uri, version
        self.variant = variant
        self.diagnoser: Diagnoser | None = None
        self.batcher: DynamicBatcher | None = None

    def load(self) -> bool:
        config = self.config
        resolved = resolve_model(
            self.source, config.storage, config.registry, tracking_uri=self.tracking_uri
        )
        self.version = self.version or resolved.version
        self.diagnoser = Diagnoser.from_dir(
            resolved.path,
            config.storage,
            model_version=self.version,
            top_k=config.serving.top_k,
            device=config.adapter.backbone.device,
            dtype=config.adapter.backbone.dtype,
        )
        if self.diagnoser.crop != self.name:
            raise PackageError(
                f"{resolved.path} is the '{self.diagnoser.crop}' adapter, served as '{self.name}'"
            )
        if config.serving.metrics:
            try:
                telemetry.register_adapter(self.diagnoser.adapter, self.version, resolved.path)
            except Exception:  # noqa: BLE001 - a gauge never keeps a model from serving
                log.exception("%s: could not export the calibrated rejection rate", self.name)
        serving = config.serving
        # Items are checked tensors of one shape: a batch cannot fail because of one of them.
        self.batcher = DynamicBatcher(
            self._diagnose,
            max_batch_size=serving.max_batch_size,
            max_wait_ms=serving.max_wait_ms,
            name=f"{self.name}-batcher",
        )
        self.ready = True
        return self.ready

    def prepare(self, image: bytes, where: str, limits: ServingSettings):  # noqa: ANN201
        assert self.diagnoser is not None
        return self.diagnoser.prepare(image, where, limits)

    async def answer(self, batch: Batch, headers: dict[str, str]) -> list[Answer]:
        assert self.batcher is not None
        return await self.batcher.submit([batch.inputs[i] for i in batch.ready])

    def _diagnose(self, pixels: list[torch.Tensor]) -> list[Answer]:
        """One batch through the adapter (the batcher's thread), counted when metrics are on."""
        assert self.diagnoser is not None
        if not self.config.serving.metrics:
            return self.diagnoser.diagnose_pixels(pixels, untimed)
        telemetry.observe_batch(len(pixels), self.name, self.version)
        return self.diagnoser.diagnose_pixels(
            pixels, lambda stage: telemetry.stage_timer(stage, self.name, self.variant)
        )


def model_sources(args: argparse.Namespace) -> dict[str, str]:
    """{crop: source} from ``--model crop=source`` and/or ``--model-root`` subfolders."""
    sources: dict[str, str] = {}
    for item in args.adapter or []:
        crop, sep, source = item.partition("=")
        if not sep or not crop or not source:
            raise SystemExit(f"--adapter expects crop=source, got {item!r}")
        sources[crop] = source
    if args.model_root:
        for pkg in sorted(Path(args.model_root).iterdir()):
            if (pkg / "adapter.json").is_file():
                sources.setdefault(json.loads((pkg / "adapter.json").read_text())["crop"], str(pkg))
    if not sources and (KSERVE_MODEL_DIR / "adapter.json").is_file():
        crop = json.loads((KSERVE_MODEL_DIR / "adapter.json").read_text())["crop"]
        sources[crop] = str(KSERVE_MODEL_DIR)
    if not sources:
        raise SystemExit("no adapters: give --adapter crop=source or --model-root DIR")
    return sources


def build_predictors(
    sources: dict[str, str],
    config: PlatformConfig,
    tracking_uri: str | None = None,
    variant: str = "champion",
) -> list[AdapterPredictor]:
    """Load every crop's predictor; with several, share their identical weights."""
    spec = FixedSpec(config)
    predictors = [
        AdapterPredictor(crop, source, spec, tracking_uri=tracking_uri, variant=variant)
        for crop, source in sources.items()
    ]
    for p in predictors:
        p.load()
    if len(predictors) > 1:
        freed = share_identical_parameters([p.diagnoser.adapter.network for p in predictors])
        release_free_memory()
        log.info(
            "multi-adapter: %d crops share one backbone (%.1f MB freed)",
            len(predictors),
            freed / 2**20,
        )
    return predictors


def release_free_memory() -> None:
    """Give the weights `share_identical_parameters` dropped back to the OS: glibc keeps freed
    heap pages otherwise, and the process's resident memory would not shrink (measured: 8 crops
    of ViT-S, 1377 -> 786 MiB). A no-op where glibc is not the allocator."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description="AADS crop adapter predictor (KServe V1/V2)", parents=[server_arguments()]
    )
    parser.add_argument("--adapter", action="append", help="crop=source (repeat)")
    parser.add_argument("--model-root", help="folder of adapter packages, one per crop")
    parser.add_argument("--tracking-uri", default=None, help="MLflow, for models:/ sources")
    parser.add_argument(
        "--variant",
        default=os.environ.get(VARIANT_ENV) or "champion",
        help=f"champion or canary: the label of this predictor's stage timings on /metrics "
        f"(default: ${VARIANT_ENV}, which the chart sets on a canary's predictor, else champion)",
    )
    args, ignored = parser.parse_known_args()
    if ignored:
        log.warning("ignoring unknown arguments %s", ignored)
    if args.variant not in VARIANTS:
        parser.error(
            f"--variant (or ${VARIANT_ENV}) must be one of {VARIANTS}, not {args.variant!r}"
        )
    server = ModelServer.from_args(args)
    predictors = build_predictors(
        model_sources(args), server.spec.current, args.tracking_uri, args.variant
    )
    server.start(predictors)


if __name__ == "__main__":
    main()
