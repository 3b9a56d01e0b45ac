"""The diagnosis answer: one `Answer` per image, the same model from every producer to every
reader, so a field is added, renamed or documented in one place.

Producers: the adapter (`aads.inference.Diagnoser`: class or ``unknown``, confidence, top-k,
OOD verdict, model), the crop router (`aads.router`: `Routing`, and `Answer.unknown_crop` for a
picture of no known crop), the serving router (routing merged in, canary marks, an `ErrorEntry`
when a predictor or the scouting service cannot answer) and the scouting stage
(`Answer.scouted`). Readers: the CLI and demo tables, the scouting stage (regions diagnosed
through the router come back as answers), the tests. Servers publish `Answer`'s JSON schema in
``/openapi.json``.

On the wire (V1 ``predictions``, V2 ``diagnosis`` output) an answer is `Answer.wire()`: JSON
without the fields that do not apply, so an error answer has no ``label`` and a diagnosis no
``error``. A per-image error says what the caller can do (its ``code`` is the HTTP status of
its kind, `aads.errors`) and never carries internal URLs or exception class names: those go
to the server's log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aads.errors import AADSError, http_status
from aads.vlm.response import ScoutingAnswer

MAX_MESSAGE_CHARS = 300
"""Error text is capped: a message may quote a field or a value, never a whole input."""


def capped(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, at most `limit` characters (an ellipsis marks a cut)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class _Part(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    def wire(self) -> dict[str, Any]:
        """JSON-able dict without the fields that do not apply: what a client receives."""
        return self.model_dump(mode="json", exclude_none=True)


class TopClass(_Part):
    """One of the adapter's most probable classes."""

    class_: str = Field(alias="class", description="disease class (or 'healthy')")
    probability: float = Field(ge=0, le=1)


class OODVerdict(_Part):
    """The Mahalanobis check behind ``is_ood``: distance against the nearest class's threshold."""

    distance: float
    threshold: float
    nearest_class: str = Field(description="the nearest known class: a hint, not an answer")


class ModelRef(_Part):
    """The model that answered."""

    name: str
    version: str = Field("", description="registry version ('' for a local folder)")


class Routing(_Part):
    """How the image reached its adapter: the router's decision, or the caller's hint."""

    source: Literal["router", "crop_hint"]
    crop: str | None = Field(
        None,
        description="the routed crop (the hint, or the router's top crop; for an image of no "
        "known crop, the nearest one)",
    )
    crop_confidence: float | None = None
    part: str | None = Field(None, description="plant part (leaf, fruit, ...) from the router")
    part_confidence: float | None = None
    is_ood: bool | None = Field(None, description="the router's crop-level OOD check")
    distance: float | None = None
    threshold: float | None = None
    variant: Literal["stable", "canary"] | None = Field(
        None, description="canary: a share of this crop's images goes to a canary version"
    )
    canary_version: str | None = None

    @classmethod
    def hint(cls, crop: str) -> Routing:
        return cls(source="crop_hint", crop=crop)

    @property
    def rejected(self) -> bool:
        """The router's OOD check found no known crop: no adapter may be asked."""
        return bool(self.is_ood)


class ErrorEntry(_Part):
    """Why one image has no diagnosis; the rest of its request is answered."""

    code: int = Field(description="HTTP status of the error's kind: 400, 404, 413, 503, 500")
    message: str = Field(description="what went wrong and what to do; no internals")

    @classmethod
    def of(cls, err: BaseException) -> ErrorEntry:
        """The entry for an error raised while answering one image: an `AADSError`'s own
        message and status; anything else is a bug, reported without its details."""
        if isinstance(err, AADSError):
            return cls(code=http_status(err), message=capped(str(err)))
        return cls(code=500, message="internal error while answering this image")


class Answer(_Part):
    """One image's answer: a disease, ``unknown``, or an error entry."""

    label: str | None = Field(None, description="disease class or 'unknown'; absent on error")
    is_ood: bool | None = Field(None, description="out of distribution: answered 'unknown'")
    confidence: float | None = Field(None, ge=0, le=1)
    crop: str | None = Field(None, description="the crop whose adapter answered")
    predicted_class: str | None = Field(None, description="the class before the OOD check")
    top_k: list[TopClass] | None = None
    ood: OODVerdict | None = None
    model: ModelRef | None = None
    routing: Routing | None = None
    reason: str | None = Field(None, description="why the answer is 'unknown', when not OOD")
    domain: str | None = Field(
        None,
        description="the CONEC domain the adapter's selector picked (phase-3 adapters only)",
    )
    error: ErrorEntry | None = None
    scouting: ScoutingAnswer | None = Field(
        None, description="regions and verdict, for a photo sent to the scouting stage"
    )

    # -- producers ---------------------------------------------------------------------------

    @classmethod
    def failed(
        cls,
        error: ErrorEntry | BaseException,
        *,
        crop: str | None = None,
        routing: Routing | None = None,
    ) -> Answer:
        entry = error if isinstance(error, ErrorEntry) else ErrorEntry.of(error)
        return cls(crop=crop, error=entry, routing=routing)

    @classmethod
    def unknown_crop(cls, routing: Routing) -> Answer:
        """A picture the router's OOD check rejects: no adapter is asked."""
        return cls(
            label="unknown",
            is_ood=True,
            confidence=0.0,
            crop=None,
            reason="not one of the known crops",
            ood=OODVerdict(
                distance=routing.distance or 0.0,
                threshold=routing.threshold or 0.0,
                nearest_class=routing.crop or "",
            ),
            routing=routing,
        )

    @classmethod
    def scouted(cls, report: ScoutingAnswer) -> Answer:
        """A scouted photo: the flat fields every answer has, from the photo's verdict."""
        verdict = report.verdict
        answered = verdict.status in ("diseased", "healthy")
        return cls(
            label=(verdict.disease if answered else None) or "unknown",
            is_ood=not answered,
            confidence=verdict.confidence or 0.0,
            crop=verdict.crop,
            scouting=report,
        )

    def routed(self, routing: Routing) -> Answer:
        return self.model_copy(update={"routing": routing})

    # -- readers -----------------------------------------------------------------------------

    @property
    def answered(self) -> bool:
        """A known crop and a known class, no error."""
        return self.error is None and not self.is_ood and self.label is not None

    @property
    def verdict(self) -> Verdict:
        """What this answer said (`verdict_of`)."""
        return verdict_of(self)

    def wire_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


Verdict = Literal["known", "unknown", "not_a_known_crop", "none"]
"""What an answer said: a class by name, ``unknown`` (the adapter's OOD check), not a known crop
(the router's OOD check), or ``none`` (an error entry, or a scouted photo: its regions were
answered, counted and captured one by one, through the router)."""


def answer_field(answer: Mapping[str, Any] | Answer | Any, name: str) -> Any:
    """A field of an answer given as a dict (the wire form, as captured records hold it) or as
    an `Answer`, so readers on the request path need not serialise a model to read a field."""
    if isinstance(answer, Mapping):
        return answer.get(name)
    return getattr(answer, name, None)


def verdict_of(answer: Mapping[str, Any] | Answer | Any) -> Verdict:
    """The one decision of what an answer said, for telemetry, capture and drift alike.

    Reads the fields every answer has had since the first server: ``error``, ``label``,
    ``is_ood``, ``crop`` (None when the router rejects the image) and ``routing.is_ood``;
    `answer` is an `Answer` or its wire dict (a captured record's ``answer``).
    """
    if (
        answer_field(answer, "error")
        or answer_field(answer, "scouting")
        or answer_field(answer, "label") is None
    ):
        return "none"
    if not answer_field(answer, "is_ood"):
        return "known"
    routing = answer_field(answer, "routing")
    if answer_field(answer, "crop") is None or (routing and answer_field(routing, "is_ood")):
        return "not_a_known_crop"
    return "unknown"


def answer_json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """`Answer`'s JSON schema (what ``/openapi.json`` publishes)."""
    return Answer.model_json_schema(by_alias=True, ref_template=ref_template, mode="serialization")
