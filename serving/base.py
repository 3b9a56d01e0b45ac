"""The base of every AADS KServe model (predictor, router, scouting): one place for what each
request goes through before and after its model runs.

KServe calls ``preprocess -> predict -> postprocess`` on the `InferenceCall` an inference route
hands over (the raw body; `serving.server`). Here:

- `preprocess` parses the body (`serving.protocol`, V1 or V2, 400 naming the field), applies
  the request limits, then gives each image its own error boundary: `check_instance` (the
  subclass's per-image rules), the header check, the per-request pixel budget (from headers,
  before anything decodes), and `prepare` (decode + the model's input), run in a small
  process-wide thread pool (``serving.max_concurrent_decodes``) one image of a request at a
  time, off the event loop. An image that fails is an error entry for itself only; a request
  whose every image fails is answered with the first image's error (400 / 413), so a
  one-image request gets a plain 4xx.
- `predict` asks the subclass's `answer` for the images that passed, and fills in the rest
  with their `ErrorEntry`.
- `postprocess` writes the answers in the caller's protocol (`serving.protocol.respond`).

Telemetry (`aads.telemetry`, on ``/metrics`` unless ``serving.metrics`` is off): the decode
stage of every request is timed here (`stage`); what a subclass alone sees (routing, a forward
pass, the answers the router sends) it records through the same helpers, and `answered` is
where it sees a request's answers once they are complete (the router counts and captures them).

Errors are raised as `aads.errors` kinds and mapped to statuses in one place
(`serving.server`). Settings come from ``self.config``, re-read for every request, so a spec
reloaded while serving (`aads.specwatch`) applies from the next request on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from kserve import Model

from aads.answer import Answer
from aads.config import PlatformConfig, ServingSettings
from aads.errors import AADSError
from aads.telemetry import stage_timer
from aads.uploads import ImageHeader, check_request_pixels, read_header
from serving.protocol import (
    InferenceCall,
    Instance,
    ParsedRequest,
    Reply,
    input_metadata,
    output_metadata,
    parse_request,
    respond,
)

log = logging.getLogger("aads.serving")


class SpecSource(Protocol):
    """Where a model reads its platform spec: fixed, or reloaded while serving."""

    @property
    def current(self) -> PlatformConfig: ...


@dataclass(frozen=True)
class FixedSpec:
    current: PlatformConfig


@dataclass
class Batch:
    """One request on its way through the hooks: its images' model inputs, or their errors."""

    request: ParsedRequest
    config: PlatformConfig  # the spec this request is answered under, start to end
    inputs: dict[int, Any] = field(default_factory=dict)  # image index -> prepared input
    errors: dict[int, BaseException] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        return self.request.instances

    @property
    def ready(self) -> list[int]:
        """Indices of the images that passed every check, in order."""
        return sorted(self.inputs)


class DecodePool:
    """At most N images decoded at once in this process, whatever the number of requests:
    the bound on decode memory (`aads.uploads`)."""

    _executor: concurrent.futures.ThreadPoolExecutor | None = None
    _size = 0

    @classmethod
    def executor(cls, size: int) -> concurrent.futures.ThreadPoolExecutor:
        if cls._executor is None:
            cls._executor = concurrent.futures.ThreadPoolExecutor(size, "aads-decode")
            cls._size = size
        return cls._executor


class ServedModel(Model):
    """A `kserve.Model` whose requests are AADS images; subclasses give `prepare` and
    `answer` (and may add `check_instance`)."""

    telemetry_crop = ""
    """The crop this model's stages are counted under ("" before routing: router, scouting)."""
    variant = ""
    """The variant its stages are counted under: a predictor's own (`aads.telemetry.VARIANT_ENV`);
    "" for a model that serves no single variant (the router, scouting)."""

    def __init__(self, name: str, spec: SpecSource) -> None:
        super().__init__(name, return_response_headers=True)
        self.spec = spec
        self.version = ""

    def stage(
        self, name: str, config: PlatformConfig, crop: str = ""
    ) -> AbstractContextManager[object]:
        """Times the block as stage `name` (`aads.telemetry.STAGES`) when metrics are on."""
        if not config.serving.metrics:
            return nullcontext()
        return stage_timer(name, crop or self.telemetry_crop, self.variant)

    @property
    def config(self) -> PlatformConfig:
        return self.spec.current

    # -- what subclasses give -----------------------------------------------------------------

    def check_instance(self, instance: Instance, where: str, config: PlatformConfig) -> None:
        """Per-image rules beyond the image itself (e.g. a known crop hint); raise a kind."""

    def prepare(self, image: bytes, where: str, limits: ServingSettings) -> Any:
        """The model's input for one upload (runs in the decode pool); raise a kind."""
        raise NotImplementedError

    async def answer(self, batch: Batch, headers: dict[str, str]) -> list[Answer]:
        """One answer per index in ``batch.ready``, in that order."""
        raise NotImplementedError

    def answered(self, batch: Batch, headers: dict[str, str]) -> None:
        """Every image of the request has its answer (``batch.answers``); must not raise or
        wait (the router counts and captures them here)."""

    # -- KServe's hooks -----------------------------------------------------------------------

    async def preprocess(
        self, payload: InferenceCall, headers: dict[str, str] | None = None
    ) -> Batch:
        config = self.config
        limits = config.serving
        batch = Batch(parse_request(payload, limits), config)
        with self.stage("decode", config):
            await self._prepare(batch)
        if not batch.inputs:
            raise batch.errors[min(batch.errors)]
        return batch

    async def _prepare(self, batch: Batch) -> None:
        limits = batch.config.serving
        loop = asyncio.get_running_loop()
        pool = DecodePool.executor(limits.max_concurrent_decodes)
        # Headers too are read in the pool: a PNG's text chunks are decompressed to read them.
        headers = await loop.run_in_executor(pool, self._check_headers, batch)
        check_request_pixels(list(headers.values()), limits)
        for i in headers:
            where = f"image {i}"
            try:
                batch.inputs[i] = await loop.run_in_executor(
                    pool, self.prepare, batch.instances[i].image, where, limits
                )
            except AADSError as err:
                batch.errors[i] = err
            except Exception as err:  # noqa: BLE001 - a bug on one image costs only that image
                log.exception("%s: %s failed to prepare %s", self.name, type(self).__name__, where)
                batch.errors[i] = err

    def _check_headers(self, batch: Batch) -> dict[int, ImageHeader]:
        """Each image's own rules and header; a failure is that image's error."""
        checked = {}
        for i, instance in enumerate(batch.instances):
            where = f"image {i}"
            try:
                self.check_instance(instance, where, batch.config)
                checked[i] = read_header(instance.image, where, batch.config.serving)
            except AADSError as err:
                batch.errors[i] = err
        return checked

    async def predict(
        self,
        payload: Batch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Batch:
        ready = payload.ready
        answered = await self.answer(payload, headers or {})
        if len(answered) != len(ready):
            raise RuntimeError(f"{self.name}: {len(answered)} answers for {len(ready)} images")
        by_index = dict(zip(ready, answered, strict=True))
        payload.answers = [
            by_index[i] if i in by_index else Answer.failed(payload.errors[i])
            for i in range(len(payload.instances))
        ]
        self.answered(payload, headers or {})
        return payload

    async def postprocess(
        self,
        result: Batch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Reply:
        reply = respond(result.request, result.answers, self.name, self.version)
        if response_headers is not None:
            response_headers.update(reply.headers)
        return reply

    def get_input_types(self) -> list[dict]:
        return input_metadata()

    def get_output_types(self) -> list[dict]:
        return output_metadata()
