"""The scouting service: field photos in, one answer per photo listing its regions.

Its own (GPU) InferenceService in the cluster, called by the router transformer for images
whose request asks for ``scouting`` (or by default). It runs `aads.vlm`: detect regions
(Grounding DINO, or the vegetation proposal stage), segment each (SAM-2), and has each masked
crop diagnosed by the router, which it calls back over V1 with ``scouting: false``; BioCLIP
cross-checks every region. Routing the regions through the router keeps one place that knows
the crops, the predictors, their batching and canaries.

    python -m serving.scouting --spec /etc/aads/spec.yaml --router-url http://aads-router-predictor
    python -m serving.scouting --spec spec.yaml --router .aads/models/router \
        --adapter tomato=.aads/models/tomato          # regions diagnosed in process (one pod)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
from collections.abc import Sequence

import httpx
from PIL import Image
from pydantic import ValidationError

from aads.answer import Answer, ErrorEntry
from aads.config import PlatformConfig, ServingSettings
from aads.uploads import decode_upload
from aads.vlm.diagnosis import LocalDiagnoser, RegionDiagnoser
from aads.vlm.scouting import Scout, load_scout
from serving.base import Batch, ServedModel, SpecSource
from serving.protocol import SCOUTING_MODEL_NAME
from serving.server import ModelServer, server_arguments

log = logging.getLogger("aads.serving.scouting")


class RouterDiagnoser:
    """Regions diagnosed by the deployed router: one V1 call per photo's regions, each crop
    marked ``scouting: false`` so the router routes and diagnoses it like any image."""

    def __init__(self, router_url: str, timeout_s: float = 60.0):
        self.url = router_url.rstrip("/") + "/v1/models/aads:predict"
        self.client = httpx.Client(timeout=timeout_s)

    def __call__(self, images: Sequence[Image.Image]) -> list[Answer]:
        body = {"instances": [{"image": {"b64": _png_b64(im)}, "scouting": False} for im in images]}
        try:
            response = self.client.post(self.url, json=body)
            response.raise_for_status()
            predictions = response.json()["predictions"]
            if len(predictions) != len(images):
                raise ValueError(f"{len(predictions)} answers for {len(images)} regions")
            return [Answer.model_validate(p) for p in predictions]
        except (httpx.HTTPError, KeyError, TypeError, ValueError, ValidationError) as err:
            log.warning("the router at %s failed: %s: %s", self.url, type(err).__name__, err)
            error = ErrorEntry(code=503, message="the router is unavailable; retry later")
            return [Answer.failed(error) for _ in images]


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ScoutingModel(ServedModel):
    """`kserve.Model` over a `Scout`; each photo is decoded once at full size (checked like
    every upload) and scouted in a worker thread (the stage is compute-bound; the event loop
    keeps answering health checks)."""

    def __init__(self, spec: SpecSource, diagnoser: RegionDiagnoser):
        super().__init__(SCOUTING_MODEL_NAME, spec)
        self.diagnoser = diagnoser
        self.scout: Scout | None = None
        self.scout_config: PlatformConfig | None = None

    def load(self) -> bool:
        self.scout_config = self.config
        self.scout = load_scout(self.scout_config, self.diagnoser)
        self.ready = True
        return self.ready

    def current_scout(self, config: PlatformConfig) -> Scout:
        """The scout under `config`: a reloaded spec reconfigures it (same loaded models)."""
        assert self.scout is not None
        if config is not self.scout_config:
            self.scout, self.scout_config = self.scout.reconfigured(config), config
        return self.scout

    def prepare(self, image: bytes, where: str, limits: ServingSettings) -> Image.Image:
        return decode_upload(image, where, limits)

    async def answer(self, batch: Batch, headers: dict[str, str]) -> list[Answer]:
        scout = self.current_scout(batch.config)
        photos = [batch.inputs[i] for i in batch.ready]
        reports = await asyncio.to_thread(lambda: [scout.scout(photo) for photo in photos])
        return [Answer.scouted(report) for report in reports]


def build_diagnoser(args: argparse.Namespace, config: PlatformConfig) -> RegionDiagnoser:
    if args.router_url:
        return RouterDiagnoser(args.router_url, config.serving.predictor_timeout_s * 2)
    if not args.router or not args.adapter:
        raise SystemExit("give --router-url URL, or --router DIR with --adapter crop=DIR")
    adapters = dict(item.split("=", 1) for item in args.adapter)
    return LocalDiagnoser.from_dirs(args.router, adapters, config.storage)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="AADS scouting service (KServe V1/V2)", parents=[server_arguments()]
    )
    parser.add_argument("--router-url", default=None, help="the router that diagnoses regions")
    parser.add_argument("--router", default=None, help="router folder (in-process diagnosis)")
    parser.add_argument("--adapter", action="append", help="crop=folder (repeat; in-process)")
    args, ignored = parser.parse_known_args()
    if ignored:
        log.warning("ignoring unknown arguments %s", ignored)
    server = ModelServer.from_args(args, reload_spec=True)
    config = server.spec.current
    if config.scouting is None:
        raise SystemExit(f"{args.spec} has no `scouting:` section")
    model = ScoutingModel(server.spec, build_diagnoser(args, config))
    model.load()
    server.start([model])


if __name__ == "__main__":
    main()
