"""The router transformer: the single entry point (``/v1/models/aads:predict``,
``/v2/models/aads/infer``). It checks and decodes each image once (`serving.base`), routes it
to a crop (or takes the caller's ``crop_hint``), sends each crop's images to that crop's
predictor over V2, concurrently, and answers in input order. A predictor that is down or slow
costs only its own images an error entry; the others are answered.

The spec is followed while serving (`aads.specwatch`): predictor URLs, canaries, the
scouting service and capture apply from the next request after the mounted spec changes.

It is the server that sends every answer to the client, so it counts them (`aads.telemetry`:
verdict, class, confidence, distance ratio, CONEC domain, by crop, model version and variant)
and times the route stage; with ``serving.capture.enabled`` it offers every answered image to
the capture writer (`aads.capture`), which never delays or fails the request.

    python -m serving.router --router /mnt/models --spec /etc/aads/spec.yaml --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
from collections import defaultdict

import httpx
import orjson
from kserve import InferenceRESTClient
from kserve.inference_client import RESTConfig
from pydantic import ValidationError

from aads import telemetry
from aads.answer import Answer, ErrorEntry, Routing, capped
from aads.batching import DynamicBatcher
from aads.capture.slot import CaptureSlot
from aads.config import PlatformConfig, ServingSettings
from aads.inference import InvalidRequest, resolve_model
from aads.router import CropRouter, load_router
from serving.base import Batch, ServedModel, SpecSource
from serving.protocol import IMAGE_INPUT, SCOUTING_MODEL_NAME, Instance
from serving.server import ModelServer, server_arguments

log = logging.getLogger("aads.serving.router")
ROUTER_MODEL_NAME = "aads"
FORWARDED_HEADERS = ("x-request-id", "x-b3-traceid", "x-b3-spanid", "traceparent", "authorization")


class RouterTransformer(ServedModel):
    """Crop router in front of the per-crop predictors."""

    def __init__(
        self,
        router_source: str,
        spec: SpecSource,
        *,
        name: str = ROUTER_MODEL_NAME,
        tracking_uri: str | None = None,
    ):
        super().__init__(name, spec)
        self.router_source, self.tracking_uri = router_source, tracking_uri
        self.router: CropRouter | None = None
        self.route_batcher: DynamicBatcher | None = None
        self.capture: CaptureSlot | None = None
        serving = spec.current.serving
        # One pooled client for the scouting service, as `self.client` is for predictors.
        self.scouting_client = httpx.AsyncClient(timeout=serving.scouting_timeout_s)
        self.client = InferenceRESTClient(
            RESTConfig(
                protocol="v2",
                retries=serving.predictor_retries,
                timeout=serving.predictor_timeout_s,
            )
        )

    def load(self) -> bool:
        config = self.config
        resolved = resolve_model(
            self.router_source, config.storage, config.registry, tracking_uri=self.tracking_uri
        )
        self.version = resolved.version
        self.router = load_router(
            resolved.path, config.storage, device=config.router.device, dtype=config.router.dtype
        )
        serving = config.serving
        # Concurrent requests share one router forward pass, as predictors batch per crop;
        # items are checked tensors of one shape, so no item can fail the batch.
        self.route_batcher = DynamicBatcher(
            self.router.route_pixels,
            max_batch_size=serving.max_batch_size,
            max_wait_ms=serving.max_wait_ms,
            name="router-batcher",
        )
        if serving.metrics:
            telemetry.register_crops(self.router.crops)
        self.capture = CaptureSlot(config, metrics=serving.metrics)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """KServe's teardown (SIGTERM): the capture writer writes what it holds and closes."""
        if self.capture is not None:
            self.capture.close()
        super().stop()

    # -- per image ----------------------------------------------------------------------------

    def check_instance(self, instance: Instance, where: str, config: PlatformConfig) -> None:
        assert self.router is not None
        hint = instance.crop_hint
        if hint is not None and hint not in self.router.crops:
            raise InvalidRequest(
                f"{where}: unknown crop_hint {capped(hint, 40)!r}; known crops: {self.router.crops}"
            )
        if self.scouts(instance, config.serving) and not config.serving.scouting_url:
            raise InvalidRequest(
                f"{where}: scouting was asked for, but this deployment has no scouting service "
                "(serving.scouting_url; chart value scouting.enabled)"
            )

    def prepare(self, image: bytes, where: str, limits: ServingSettings):  # noqa: ANN201
        assert self.router is not None
        return self.router.prepare(image, where, limits)

    @staticmethod
    def scouts(instance: Instance, serving: ServingSettings) -> bool:
        """Whether this image goes to the scouting stage: its own flag, else the default."""
        if instance.scouting is not None:
            return instance.scouting
        return serving.scouting_default

    # -- per request --------------------------------------------------------------------------

    async def answer(self, batch: Batch, headers: dict[str, str]) -> list[Answer]:
        assert self.route_batcher is not None
        serving = batch.config.serving
        ready = batch.ready
        instances = batch.instances
        forwarded = {k: v for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}
        scouted = [i for i in ready if self.scouts(instances[i], serving)]
        scouting = (
            asyncio.create_task(self._scout([instances[i] for i in scouted], forwarded, serving))
            if scouted
            else None
        )
        routed = [i for i in ready if instances[i].crop_hint is None and i not in scouted]
        with self.stage("route", batch.config):
            decisions = await self.route_batcher.submit([batch.inputs[i] for i in routed])
        routes = {i: d.routing() for i, d in zip(routed, decisions, strict=True)}
        answers: dict[int, Answer] = {}
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i in ready:
            if i in scouted:
                continue
            hint = instances[i].crop_hint
            route = routes[i] if hint is None else Routing.hint(hint)
            if route.rejected:
                answers[i] = Answer.unknown_crop(route)
                continue
            assert route.crop is not None
            variant = variant_of(route.crop, instances[i].image, serving)
            if variant == "canary":
                canary = serving.canaries[route.crop]
                route = route.model_copy(
                    update={"variant": "canary", "canary_version": canary.version}
                )
            routes[i] = route
            groups[(route.crop, variant)].append(i)
        results = await asyncio.gather(
            *(
                self._ask(crop, [instances[i] for i in idx], forwarded, serving, variant)
                for (crop, variant), idx in groups.items()
            )
        )
        for idx, crop_answers in zip(groups.values(), results, strict=True):
            for i, answer in zip(idx, crop_answers, strict=True):
                answers[i] = answer.routed(routes[i])
        if scouting is not None:
            for i, answer in zip(scouted, await scouting, strict=True):
                answers[i] = answer
        return [answers[i] for i in ready]

    def answered(self, batch: Batch, headers: dict[str, str]) -> None:
        """Count every answer, and offer every answered image to capture (both non-blocking:
        the helpers catch their own failures)."""
        if batch.config.serving.metrics:
            for answer in batch.answers:
                telemetry.observe_answer(answer)
        writer = self.capture.writer_for(batch.config) if self.capture is not None else None
        if writer is None:
            return
        request_id = headers.get("x-request-id", "")
        for instance, answer in zip(batch.instances, batch.answers, strict=True):
            writer.offer(instance.image, answer, request_id=request_id)

    async def _scout(
        self, instances: list[Instance], headers: dict[str, str], serving: ServingSettings
    ) -> list[Answer]:
        """One V1 call to the scouting service for these photos; it finds the regions and
        sends each back through this router (with ``scouting: false``) for its diagnosis.
        On failure, an error entry per photo, as for a predictor."""
        url = serving.scouting_url.rstrip("/") + f"/v1/models/{SCOUTING_MODEL_NAME}:predict"
        body = {
            "instances": [
                {"image": {"b64": base64.b64encode(inst.image).decode()}} for inst in instances
            ]
        }
        try:
            response = await self.scouting_client.post(url, json=body, headers=headers)
            if response.status_code < 500 and response.status_code != 200:
                error = ErrorEntry(code=response.status_code, message=_their_error(response))
                return [Answer.failed(error) for _ in instances]
            response.raise_for_status()
            predictions = response.json()["predictions"]
            if len(predictions) != len(instances):
                raise ValueError(f"{len(predictions)} answers for {len(instances)} photos")
            return [Answer.model_validate(p) for p in predictions]
        except (httpx.HTTPError, KeyError, TypeError, ValueError, ValidationError) as err:
            log.warning("scouting at %s failed: %s: %s", url, type(err).__name__, err)
            error = ErrorEntry(code=503, message="the scouting service is unavailable; retry later")
            return [Answer.failed(error) for _ in instances]

    async def _ask(
        self,
        crop: str,
        instances: list[Instance],
        headers: dict[str, str],
        serving: ServingSettings,
        variant: str = "stable",
    ) -> list[Answer]:
        """One V2 call to the crop's predictor; on failure, an error entry per image."""
        url = serving.canaries[crop].url if variant == "canary" else predictor_url(crop, serving)
        if url is None:
            error = ErrorEntry(code=404, message=f"no adapter is served for crop '{crop}'")
            return [Answer.failed(error, crop=crop) for _ in instances]
        body = {
            "inputs": [
                {
                    "name": IMAGE_INPUT,
                    "shape": [len(instances)],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(inst.image).decode() for inst in instances],
                }
            ]
        }
        try:
            response = await self.client.infer(url, body, model_name=crop, headers=headers)
            output = next(o for o in response.outputs if o.name == "diagnosis")
            answers = [Answer.model_validate(orjson.loads(v)) for v in output.data]
            if len(answers) != len(instances):
                raise ValueError(f"{len(answers)} answers for {len(instances)} images")
            return answers
        except httpx.HTTPStatusError as err:
            status = err.response.status_code
            if status < 500 and status != 404:  # the predictor refused these images
                error = ErrorEntry(code=status, message=_their_error(err.response))
                return [Answer.failed(error, crop=crop) for _ in instances]
            failure: BaseException = err
        except (httpx.HTTPError, StopIteration, ValueError, TypeError, ValidationError) as err:
            failure = err
        log.warning(
            "predictor for %s (%s) at %s failed: %s: %s",
            crop,
            variant,
            url,
            type(failure).__name__,
            capped(str(failure), 200),
        )
        error = ErrorEntry(code=503, message=f"the {crop} predictor is unavailable; retry later")
        return [Answer.failed(error, crop=crop) for _ in instances]


def _their_error(response: httpx.Response) -> str:
    """A downstream service's own 4xx message (capped), for the caller."""
    try:
        return capped(str(response.json().get("error", "")) or f"refused ({response.status_code})")
    except ValueError:
        return f"refused ({response.status_code})"


def predictor_url(crop: str, serving: ServingSettings) -> str | None:
    """The crop's predictor: an explicit URL, else the template; None when neither."""
    template = serving.predictor_url_template
    return serving.predictor_urls.get(crop) or (template.format(crop=crop) if template else None)


def variant_of(crop: str, image: bytes, serving: ServingSettings) -> str:
    """``canary`` for the configured share of the crop's images, else ``stable``."""
    canary = serving.canaries.get(crop)
    if canary is None:
        return "stable"
    return "canary" if canary_bucket(image) < canary.percent else "stable"


def canary_bucket(image: bytes) -> float:
    """A stable number in [0, 100) for an image: the same bytes always land in the same
    bucket, so the split is sticky per image and identical on every router replica."""
    return int.from_bytes(hashlib.sha256(image).digest()[:8], "big") % 10_000 / 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description="AADS crop router (KServe V1/V2)", parents=[server_arguments()]
    )
    parser.add_argument("--router", default="/mnt/models", help="router folder, s3:// or models:/")
    parser.add_argument("--tracking-uri", default=None, help="MLflow, for models:/ sources")
    parser.add_argument("--predictor-url", action="append", default=[], help="crop=URL (repeat)")
    args, ignored = parser.parse_known_args()
    if ignored:
        log.warning("ignoring unknown arguments %s", ignored)
    overrides = dict(item.split("=", 1) for item in args.predictor_url)

    def with_overrides(config: PlatformConfig) -> PlatformConfig:
        if not overrides:
            return config
        serving = config.serving.model_copy(
            update={"predictor_urls": {**config.serving.predictor_urls, **overrides}}
        )
        return config.model_copy(update={"serving": serving})

    server = ModelServer.from_args(args, reload_spec=True, adjust=with_overrides)
    model = RouterTransformer(args.router, server.spec, tracking_uri=args.tracking_uri)
    model.load()
    server.start([model])


if __name__ == "__main__":
    main()
