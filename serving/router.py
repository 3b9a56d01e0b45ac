"""The router transformer: the single entry point (``/v1/models/aads:predict``,
``/v2/models/aads/infer``). It checks and decodes the images, routes each to a crop (or takes
the caller's ``crop_hint``), sends each crop's images to that crop's predictor over V2,
concurrently, and answers in input order. A predictor that is down or slow costs only its own
images an error entry; the others are answered.

    python -m serving.router --router /mnt/models --config config/production.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
from collections import defaultdict

import httpx
import kserve
from kserve import InferenceRESTClient, Model, ModelServer
from kserve.inference_client import RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from aads.batching import DynamicBatcher
from aads.config import PlatformConfig, load_config
from aads.inference import InvalidRequest, check_image, resolve_model_dir
from aads.router import CropRouter, load_router, not_a_known_crop
from serving.protocol import (
    IMAGE_INPUT,
    SCOUTING_MODEL_NAME,
    Instance,
    answer_metadata,
    check_request_size,
    image_metadata,
    parse_instances,
    respond,
)

log = logging.getLogger("aads.serving.router")
ROUTER_MODEL_NAME = "aads"
FORWARDED_HEADERS = ("x-request-id", "x-b3-traceid", "x-b3-spanid", "traceparent", "authorization")


class RouterTransformer(Model):
    """Crop router in front of the per-crop predictors."""

    def __init__(
        self,
        router_source: str,
        config: PlatformConfig,
        *,
        name: str = ROUTER_MODEL_NAME,
        tracking_uri: str | None = None,
    ):
        super().__init__(name)
        self.router_source, self.config, self.tracking_uri = router_source, config, tracking_uri
        self.router: CropRouter | None = None
        self.route_batcher: DynamicBatcher | None = None
        # One pooled client for the scouting service, as `self.client` is for predictors.
        self.scouting_client = httpx.AsyncClient(timeout=config.serving.scouting_timeout_s)
        serving = config.serving
        self.client = InferenceRESTClient(
            RESTConfig(
                protocol="v2",
                retries=serving.predictor_retries,
                timeout=serving.predictor_timeout_s,
            )
        )

    def load(self) -> bool:
        folder = resolve_model_dir(
            self.router_source,
            self.config.storage,
            self.config.registry,
            tracking_uri=self.tracking_uri,
        )
        self.router = load_router(
            folder,
            self.config.storage,
            device=self.config.router.device,
            dtype=self.config.router.dtype,
        )
        serving = self.config.serving
        # Concurrent requests share one router forward pass, as predictors batch per crop.
        self.route_batcher = DynamicBatcher(
            self.router.route,
            max_batch_size=serving.max_batch_size,
            max_wait_ms=serving.max_wait_ms,
            name="router-batcher",
        )
        self.ready = True
        return self.ready

    def predictor_url(self, crop: str) -> str | None:
        """The crop's predictor: an explicit URL, else the template; None when neither."""
        serving = self.config.serving
        template = serving.predictor_url_template
        return serving.predictor_urls.get(crop) or (
            template.format(crop=crop) if template else None
        )

    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        assert self.router is not None
        check_request_size(headers, self.config.serving)
        instances = parse_instances(payload, self.config.serving)
        known = self.router.crops
        for i, inst in enumerate(instances):
            if inst.crop_hint is not None and inst.crop_hint not in known:
                raise kserve.errors.InvalidInput(
                    f"instance {i}: unknown crop_hint '{inst.crop_hint}'; known crops: {known}"
                )
        try:
            images = [
                check_image(inst.image, f"image {i}", self.config.serving)
                for i, inst in enumerate(instances)
            ]
        except InvalidRequest as err:
            raise kserve.errors.InvalidInput(str(err)) from None
        scouted = [i for i, inst in enumerate(instances) if self.scouts(inst)]
        scouted_set = set(scouted)
        if scouted and not self.config.serving.scouting_url:
            raise kserve.errors.InvalidInput(
                "scouting was asked for, but this deployment has no scouting service "
                "(serving.scouting_url; chart value scouting.enabled)"
            )
        todo = [
            i for i, inst in enumerate(instances) if inst.crop_hint is None and i not in scouted_set
        ]
        assert self.route_batcher is not None
        forwarded = {k: v for k, v in (headers or {}).items() if k.lower() in FORWARDED_HEADERS}
        scouting = (
            asyncio.create_task(self._scout([instances[i] for i in scouted], forwarded))
            if scouted
            else None
        )
        decisions = await self.route_batcher.submit([images[i] for i in todo]) if todo else []
        routes = route_dicts(instances, todo, decisions)
        answers: list[dict] = [{} for _ in instances]
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, route in enumerate(routes):
            if i in scouted_set:
                continue
            if route.get("is_ood"):
                answers[i] = not_a_known_crop(route)
                continue
            variant = self.variant(route["crop"], instances[i].image)
            if variant == "canary":
                route["variant"] = "canary"
                route["canary_version"] = self.config.serving.canaries[route["crop"]].version
            groups[(route["crop"], variant)].append(i)
        results = await asyncio.gather(
            *(
                self._ask(crop, [instances[i] for i in idx], forwarded, variant)
                for (crop, variant), idx in groups.items()
            )
        )
        for idx, crop_answers in zip(groups.values(), results, strict=True):
            for i, answer in zip(idx, crop_answers, strict=True):
                answers[i] = {**answer, "routing": routes[i]}
        if scouting is not None:
            for i, answer in zip(scouted, await scouting, strict=True):
                answers[i] = answer
        return respond(payload, answers, self.name)

    def scouts(self, instance: Instance) -> bool:
        """Whether this image goes to the scouting stage: its own flag, else the default."""
        if instance.scouting is not None:
            return instance.scouting
        return self.config.serving.scouting_default

    async def _scout(self, instances: list[Instance], headers: dict[str, str]) -> list[dict]:
        """One V1 call to the scouting service for these photos; it finds the regions and
        sends each back through this router (with ``scouting: false``) for its diagnosis.
        On failure, an error entry per photo, as for a predictor."""
        serving = self.config.serving
        url = serving.scouting_url.rstrip("/") + f"/v1/models/{SCOUTING_MODEL_NAME}:predict"
        body = {
            "instances": [
                {"image": {"b64": base64.b64encode(inst.image).decode()}} for inst in instances
            ]
        }
        try:
            response = await self.scouting_client.post(url, json=body, headers=headers)
            if response.status_code == 400:  # the photo itself: the caller's mistake
                detail = response.json().get("error", response.text)
                raise kserve.errors.InvalidInput(f"scouting: {detail}")
            response.raise_for_status()
            predictions = response.json()["predictions"]
            if len(predictions) != len(instances):
                raise ValueError(f"{len(predictions)} answers for {len(instances)} photos")
        except (httpx.HTTPError, KeyError, ValueError) as err:
            message = str(err).strip() or type(err).__name__
            log.warning("scouting at %s failed: %s", url, message)
            error = {"code": 503, "message": f"the scouting service at {url} failed: {message}"}
            return [{"scouting": True, "error": error} for _ in instances]
        return predictions

    def variant(self, crop: str, image: bytes) -> str:
        """``canary`` for the configured share of the crop's images, else ``stable``."""
        canary = self.config.serving.canaries.get(crop)
        if canary is None:
            return "stable"
        return "canary" if canary_bucket(image) < canary.percent else "stable"

    async def _ask(
        self,
        crop: str,
        instances: list[Instance],
        headers: dict[str, str],
        variant: str = "stable",
    ) -> list[dict]:
        """One V2 call to the crop's predictor; on failure, an error entry per image."""
        request = InferRequest(
            model_name=crop,
            infer_inputs=[
                InferInput(
                    IMAGE_INPUT,
                    [len(instances)],
                    "BYTES",
                    [base64.b64encode(inst.image).decode() for inst in instances],
                )
            ],
        )
        url = (
            self.config.serving.canaries[crop].url
            if variant == "canary"
            else self.predictor_url(crop)
        )
        if url is None:
            error = {"code": 404, "message": f"no adapter is served for crop '{crop}'"}
            return [{"crop": crop, "error": error} for _ in instances]
        try:
            response = await self.client.infer(url, request, model_name=crop, headers=headers)
            output = next(o for o in response.outputs if o.name == "diagnosis")
            return [json.loads(v) for v in output.data]
        except (
            httpx.HTTPError,
            kserve.errors.InferenceError,
            StopIteration,
            ValueError,
            RuntimeError,
        ) as err:
            message = str(err).strip() or type(err).__name__
            log.warning("predictor for %s at %s failed: %s", crop, url, message)
            error = {"code": 503, "message": f"the {crop} predictor at {url} failed: {message}"}
            return [{"crop": crop, "error": error} for _ in instances]

    def get_input_types(self) -> list[dict]:
        return image_metadata()

    def get_output_types(self) -> list[dict]:
        return answer_metadata()


def canary_bucket(image: bytes) -> float:
    """A stable number in [0, 100) for an image: the same bytes always land in the same
    bucket, so the split is sticky per image and identical on every router replica."""
    return int.from_bytes(hashlib.sha256(image).digest()[:8], "big") % 10_000 / 100


def route_dicts(instances: list[Instance], routed: list[int], decisions: list) -> list[dict]:
    """Per instance: the router's decision (crop, part, confidences, crop-level OOD), or the
    caller's hint taken as given."""
    routes: list[dict] = [{"crop": inst.crop_hint, "source": "crop_hint"} for inst in instances]
    for i, d in zip(routed, decisions, strict=True):
        routes[i] = d.as_dict()
    return routes


def main() -> None:
    parser = argparse.ArgumentParser(
        parents=[kserve.model_server.parser], conflict_handler="resolve"
    )
    parser.add_argument("--router", default="/mnt/models", help="router folder, s3:// or models:/")
    parser.add_argument("--spec", default="config/demo.yaml", help="platform spec YAML")
    parser.add_argument("--tracking-uri", default=None, help="MLflow, for models:/ sources")
    parser.add_argument("--predictor-url", action="append", default=[], help="crop=URL (repeat)")
    args, _ = parser.parse_known_args()
    config = load_config(args.spec)
    overrides = dict(item.split("=", 1) for item in args.predictor_url)
    if overrides:
        serving = config.serving.model_copy(
            update={"predictor_urls": {**config.serving.predictor_urls, **overrides}}
        )
        config = config.model_copy(update={"serving": serving})
    model = RouterTransformer(args.router, config, tracking_uri=args.tracking_uri)
    model.load()
    ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
