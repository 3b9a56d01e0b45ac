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
import kserve
from kserve import Model, ModelServer
from kserve.protocol.infer_type import InferRequest, InferResponse
from PIL import Image

from aads.config import PlatformConfig, load_config
from aads.inference import InvalidRequest
from aads.vlm.diagnosis import LocalDiagnoser, RegionDiagnoser
from aads.vlm.errors import VLMError
from aads.vlm.response import ScoutingAnswer
from aads.vlm.scouting import Scout, load_scout
from serving.protocol import (
    SCOUTING_MODEL_NAME,
    answer_metadata,
    check_request_size,
    image_metadata,
    parse_instances,
    respond,
)

log = logging.getLogger("aads.serving.scouting")


class RouterDiagnoser:
    """Regions diagnosed by the deployed router: one V1 call per photo's regions, each crop
    marked ``scouting: false`` so the router routes and diagnoses it like any image."""

    def __init__(self, router_url: str, timeout_s: float = 60.0):
        self.url = router_url.rstrip("/") + "/v1/models/aads:predict"
        self.client = httpx.Client(timeout=timeout_s)

    def __call__(self, images: Sequence[Image.Image]) -> list[dict]:
        body = {"instances": [{"image": {"b64": _png_b64(im)}, "scouting": False} for im in images]}
        try:
            response = self.client.post(self.url, json=body)
            response.raise_for_status()
            return response.json()["predictions"]
        except (httpx.HTTPError, KeyError, ValueError) as err:
            message = f"the router at {self.url} failed: {str(err).strip() or type(err).__name__}"
            log.warning(message)
            return [{"crop": None, "error": {"code": 503, "message": message}} for _ in images]


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ScoutingModel(Model):
    """`kserve.Model` over a `Scout`; photos are scouted one after another in a worker thread
    (the stage is compute-bound, the event loop keeps answering health checks)."""

    def __init__(self, config: PlatformConfig, diagnoser: RegionDiagnoser):
        super().__init__(SCOUTING_MODEL_NAME)
        self.config, self.diagnoser = config, diagnoser
        self.scout: Scout | None = None

    def load(self) -> bool:
        self.scout = load_scout(self.config, self.diagnoser)
        self.ready = True
        return self.ready

    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        assert self.scout is not None
        check_request_size(headers, self.config.serving)
        instances = parse_instances(payload, self.config.serving)
        scout = self.scout
        try:
            answers = await asyncio.to_thread(
                lambda: [
                    scouting_answer(scout.scout(inst.image, f"instances[{i}]"))
                    for i, inst in enumerate(instances)
                ]
            )
        except (InvalidRequest, VLMError) as err:
            raise kserve.errors.InvalidInput(str(err)) from None
        return respond(payload, answers, self.name)

    def get_input_types(self) -> list[dict]:
        return image_metadata()

    def get_output_types(self) -> list[dict]:
        return answer_metadata()


def scouting_answer(answer: ScoutingAnswer) -> dict:
    """A scouting answer with the flat fields every answer has (label, confidence, is_ood),
    taken from its verdict, so V2 outputs and simple clients read it like a diagnosis."""
    verdict = answer.verdict
    label = verdict.disease if verdict.status in ("diseased", "healthy") else verdict.status
    return {
        "scouting": True,
        "label": label or "unknown",
        "confidence": verdict.confidence or 0.0,
        "is_ood": verdict.status in ("unknown", "no_regions"),
        "crop": verdict.crop,
        **answer.model_dump(mode="json"),
    }


def build_diagnoser(args: argparse.Namespace, config: PlatformConfig) -> RegionDiagnoser:
    if args.router_url:
        return RouterDiagnoser(args.router_url, config.serving.predictor_timeout_s * 2)
    if not args.router or not args.adapter:
        raise SystemExit("give --router-url URL, or --router DIR with --adapter crop=DIR")
    adapters = dict(item.split("=", 1) for item in args.adapter)
    return LocalDiagnoser.from_dirs(args.router, adapters, config.storage)


def main() -> None:
    parser = argparse.ArgumentParser(
        parents=[kserve.model_server.parser], conflict_handler="resolve"
    )
    parser.add_argument("--spec", default="config/demo.yaml", help="platform spec YAML")
    parser.add_argument("--router-url", default=None, help="the router that diagnoses regions")
    parser.add_argument("--router", default=None, help="router folder (in-process diagnosis)")
    parser.add_argument("--adapter", action="append", help="crop=folder (repeat; in-process)")
    args, _ = parser.parse_known_args()
    config = load_config(args.spec)
    if config.scouting is None:
        raise SystemExit(f"{args.spec} has no `scouting:` section")
    model = ScoutingModel(config, build_diagnoser(args, config))
    model.load()
    ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
