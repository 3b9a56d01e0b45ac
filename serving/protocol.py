"""V1 / V2 request parsing and response building for every AADS server, from the raw body.

Images travel as encoded bytes (JPEG/PNG/WebP), never as float tensors:

- V1 ``POST /v1/models/<m>:predict``: ``{"instances": [{"image": {"b64": "..."},
  "crop_hint": "tomato", "scouting": false}, ...]}`` (an instance may also be the base64 string
  or ``{"b64": ...}`` alone); the answer is ``{"predictions": [answer, ...]}``.
- V2 ``POST /v2/models/<m>/infer`` (Open Inference Protocol): a ``BYTES`` input ``image`` of
  shape ``[N]``, base64 strings in JSON or raw bytes with the binary tensor extension
  (``Inference-Header-Content-Length``; each element a 4-byte little-endian length, then the
  bytes), parsed here before anything decodes text; optional ``crop_hint`` input (one string
  per image, ``""`` for none) or parameter, and a ``scouting`` parameter. The answer has the
  outputs ``diagnosis`` (each image's answer as JSON), ``label``, ``confidence``, ``is_ood``,
  in JSON or, when asked (``binary_data_output``, an output's ``binary_data``), binary.

The body is parsed with orjson (NaN and other non-JSON are refused) and validated with pydantic
under the same type rules for both protocols (``crop_hint`` a string, ``scouting`` a boolean);
every failure is an `InvalidRequest` (400) naming the field, never quoting the input.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from aads.answer import Answer, capped
from aads.config import ServingSettings
from aads.errors import TooLarge
from aads.inference import InvalidRequest

IMAGE_INPUT = "image"
HINT_INPUT = "crop_hint"
SCOUTING = "scouting"
SCOUTING_MODEL_NAME = "scouting"  # the scouting service's model (/v1/models/scouting:predict)
OUTPUTS: dict[str, str] = {
    "diagnosis": "BYTES",
    "label": "BYTES",
    "confidence": "FP32",
    "is_ood": "BOOL",
}
BINARY_HEADER = "inference-header-content-length"

Protocol = Literal["v1", "v2"]


class TooManyImages(TooLarge):
    """More images in one request than ``serving.max_images_per_request`` (413)."""


@dataclass(frozen=True)
class InferenceCall:
    """What an inference route hands a model: the raw body, before any parsing."""

    protocol: Protocol
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names


@dataclass
class Instance:
    image: bytes
    crop_hint: str | None = None
    scouting: bool | None = None  # None: the deployment's default (serving.scouting_default)


@dataclass
class ParsedRequest:
    """A request's images and what its caller asked of the response."""

    protocol: Protocol
    instances: list[Instance]
    id: str = ""
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))
    binary_outputs: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Reply:
    """A response body and the headers that go with it."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class B64Image(_Strict):
    b64: StrictStr = Field(description="the encoded image (JPEG, PNG or WebP), base64")


class V1Instance(_Strict):
    image: StrictStr | B64Image = Field(description="base64 image, or {'b64': ...}")
    crop_hint: StrictStr | None = Field(None, description="skip routing: send to this crop")
    scouting: StrictBool | None = Field(None, description="send to the scouting stage")


class V1Request(_Strict):
    instances: list[V1Instance | B64Image | StrictStr] = Field(
        min_length=1, description="one per image: {'image': ...}, {'b64': ...} or base64"
    )


class V2Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    crop_hint: StrictStr | None = None
    scouting: StrictBool | None = None
    binary_data_output: StrictBool | None = None


class V2TensorParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_size: StrictInt | None = Field(None, ge=0)
    binary_data: StrictBool | None = None


class V2Input(_Strict):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: V2TensorParameters | None = None
    data: list[Any] | None = None


class V2Output(_Strict):
    name: StrictStr
    parameters: V2TensorParameters | None = None


class V2Request(_Strict):
    id: StrictStr | None = None
    parameters: V2Parameters | None = None
    inputs: list[V2Input] = Field(min_length=1)
    outputs: list[V2Output] | None = None


def validation_message(err: ValidationError, where: str = "") -> str:
    """Pydantic's errors as ``field.path: problem``; the offending value is never quoted."""
    parts = []
    for e in err.errors(include_input=False, include_url=False)[:5]:
        loc = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
        parts.append(f"{loc.lstrip('.') or 'body'}: {e['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- parsing


def parse_request(call: InferenceCall, limits: ServingSettings) -> ParsedRequest:
    """The request's images and options; `InvalidRequest` (400) naming what is wrong."""
    parsed = _parse_v2(call) if call.protocol == "v2" else _parse_v1(call.body)
    if len(parsed.instances) > limits.max_images_per_request:
        raise TooManyImages(
            f"{len(parsed.instances)} images in one request; the limit is "
            f"{limits.max_images_per_request}"
        )
    return parsed


def _json(body: bytes, what: str = "the body") -> Any:
    if not body:
        raise InvalidRequest(f"{what} is empty; send a JSON request")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InvalidRequest(f"{what} is not valid JSON ({capped(str(err), 120)})") from None


def _validated(model: type[BaseModel], data: Any, where: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InvalidRequest(validation_message(err, where)) from None


def _parse_v1(body: bytes) -> ParsedRequest:
    data = _json(body)
    if not isinstance(data, dict) or "instances" not in data:
        raise InvalidRequest('V1 requests are {"instances": [{"image": {"b64": ...}}, ...]}')
    extra = sorted(set(data) - {"instances"})
    if extra:
        raise InvalidRequest(f"{capped(extra[0], 40)}: unknown field (V1 takes 'instances')")
    items = data["instances"]
    if not isinstance(items, list) or not items:
        raise InvalidRequest("instances: a non-empty list of images")
    instances = []
    for i, item in enumerate(items):
        where = f"instances[{i}]"
        if isinstance(item, dict) and "image" in item:
            instance = _validated(V1Instance, item, where)
            image = _b64(instance.image, f"{where}.image")
            instances.append(Instance(image, instance.crop_hint or None, instance.scouting))
        elif isinstance(item, dict):
            instances.append(Instance(_b64(_validated(B64Image, item, where), where)))
        elif isinstance(item, str):
            instances.append(Instance(_b64(item, where)))
        else:
            raise InvalidRequest(
                f'{where}: expected {{"image": {{"b64": ...}}}}, {{"b64": ...}} or a base64 string'
            )
    return ParsedRequest("v1", instances)


def _b64(value: str | B64Image, where: str) -> bytes:
    text = value.b64 if isinstance(value, B64Image) else value
    if not text:
        raise InvalidRequest(f"{where}: empty image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: not valid base64") from None


def _parse_v2(call: InferenceCall) -> ParsedRequest:
    body, binary = _split_binary(call)
    what = "the JSON header" if BINARY_HEADER in call.headers else "the body"
    request: V2Request = _validated(V2Request, _json(body, what))
    names = [t.name for t in request.inputs]
    for i, name in enumerate(names):
        if name not in (IMAGE_INPUT, HINT_INPUT):
            raise InvalidRequest(
                f"inputs[{i}].name: unknown input {capped(name, 40)!r}; this model takes "
                f"'{IMAGE_INPUT}' (BYTES) and optionally '{HINT_INPUT}' (BYTES)"
            )
        if names.index(name) != i:
            raise InvalidRequest(f"inputs[{i}].name: input '{name}' given twice")
    if IMAGE_INPUT not in names:
        raise InvalidRequest(f"inputs: no input named '{IMAGE_INPUT}' (BYTES, shape [N])")
    tensors = _binary_tensors(request.inputs, binary)
    images = tensors[IMAGE_INPUT]
    n = len(images)
    if n == 0:
        raise InvalidRequest(f"inputs[{names.index(IMAGE_INPUT)}]: no images")
    params = request.parameters or V2Parameters()
    hints: list[str | None] = [params.crop_hint or None] * n
    if HINT_INPUT in tensors:
        if params.crop_hint is not None:
            raise InvalidRequest("crop_hint given both as an input and as a parameter")
        values = tensors[HINT_INPUT]
        where = f"inputs[{names.index(HINT_INPUT)}]"
        if len(values) != n:
            raise InvalidRequest(
                f"{where}: one crop_hint per image ('' for none), got {len(values)}"
            )
        hints = [_text(v, f"{where}.data[{i}]") or None for i, v in enumerate(values)]
    outputs, binary_outputs = _requested_outputs(request)
    return ParsedRequest(
        "v2",
        [Instance(image, hint, params.scouting) for image, hint in zip(images, hints, strict=True)],
        id=request.id or "",
        outputs=outputs,
        binary_outputs=binary_outputs,
    )


def _split_binary(call: InferenceCall) -> tuple[bytes, bytes]:
    """The JSON header and the binary section (empty without the extension)."""
    declared = call.headers.get(BINARY_HEADER)
    if declared is None:
        return call.body, b""
    if not declared.isdigit() or int(declared) > len(call.body):
        raise InvalidRequest(
            f"header Inference-Header-Content-Length must be the JSON header's length in bytes "
            f"(0..{len(call.body)})"
        )
    size = int(declared)
    return call.body[:size], call.body[size:]


def _binary_tensors(inputs: list[V2Input], binary: bytes) -> dict[str, list[bytes | str]]:
    """Each input's elements: raw bytes from the binary section, or JSON strings."""
    out: dict[str, list[bytes | str]] = {}
    offset = 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if tensor.datatype != "BYTES":
            raise InvalidRequest(
                f"{where}.datatype: must be BYTES, got {capped(tensor.datatype, 20)}"
            )
        if len(tensor.shape) != 1 or tensor.shape[0] < 0:
            raise InvalidRequest(f"{where}.shape: must be [N] (one element per image)")
        size = tensor.parameters.binary_data_size if tensor.parameters else None
        if size is not None:
            if tensor.data is not None:
                raise InvalidRequest(f"{where}: give data or parameters.binary_data_size, not both")
            if offset + size > len(binary):
                raise InvalidRequest(f"{where}.parameters.binary_data_size: past the body's end")
            elements: list[bytes | str] = _unpack_bytes(binary[offset : offset + size], where)
            offset += size
        else:
            if tensor.data is None:
                raise InvalidRequest(f"{where}.data: missing (or binary_data_size)")
            elements = _json_elements(tensor.data, where)
        if len(elements) != tensor.shape[0]:
            raise InvalidRequest(
                f"{where}: shape [{tensor.shape[0]}] but {len(elements)} elements in data"
            )
        out[tensor.name] = elements
    if offset != len(binary):
        raise InvalidRequest(
            f"the binary section has {len(binary) - offset} bytes no input's binary_data_size "
            "accounts for"
        )
    if IMAGE_INPUT in out:
        out[IMAGE_INPUT] = [
            v if isinstance(v, bytes) else _b64(v, f"{IMAGE_INPUT}[{k}]")
            for k, v in enumerate(out[IMAGE_INPUT])
        ]
    return out


def _json_elements(data: list[Any], where: str) -> list[bytes | str]:
    for k, value in enumerate(data):
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}.data[{k}]: BYTES elements are strings in JSON")
    return list(data)


def _unpack_bytes(raw: bytes, where: str) -> list[bytes | str]:
    """BYTES tensor elements from the binary extension: <uint32 LE length><bytes>, repeated."""
    items: list[bytes | str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"{where}: binary BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidRequest(f"{where}: binary BYTES element {len(items)} runs past its data")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def _text(value: bytes | str, where: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{where}: not UTF-8 text") from None


def _requested_outputs(request: V2Request) -> tuple[list[str], set[str]]:
    params = request.parameters or V2Parameters()
    if not request.outputs:
        return list(OUTPUTS), set(OUTPUTS) if params.binary_data_output else set()
    names, binary = [], set()
    for i, out in enumerate(request.outputs):
        if out.name not in OUTPUTS:
            raise InvalidRequest(
                f"outputs[{i}].name: unknown output {capped(out.name, 40)!r}; this model "
                f"answers {list(OUTPUTS)}"
            )
        names.append(out.name)
        flag = out.parameters.binary_data if out.parameters else None
        if flag or (flag is None and params.binary_data_output):
            binary.add(out.name)
    return names, binary


# --------------------------------------------------------------------------- answering


def respond(
    request: ParsedRequest, answers: list[Answer], model_name: str, model_version: str = ""
) -> Reply:
    """The answers in the protocol (and the output encoding) the request asked for."""
    if request.protocol == "v1":
        return json_reply({"predictions": [a.wire() for a in answers]})
    columns = {
        "diagnosis": [a.wire_json() for a in answers],
        "label": [a.label or "" for a in answers],
        "confidence": [float(a.confidence or 0.0) for a in answers],
        "is_ood": [bool(a.is_ood) for a in answers],
    }
    header: dict[str, Any] = {
        "model_name": model_name,
        "id": request.id or str(uuid.uuid4()),
        "outputs": [],
    }
    if model_version:
        header["model_version"] = model_version
    binary = []
    for name in request.outputs:
        datatype, values = OUTPUTS[name], columns[name]
        output: dict[str, Any] = {"name": name, "shape": [len(values)], "datatype": datatype}
        if name in request.binary_outputs:
            raw = _pack(values, datatype)
            output["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            output["data"] = values
        header["outputs"].append(output)
    head = orjson.dumps(header)
    if not binary:
        return Reply(head, {"content-type": "application/json"})
    return Reply(
        head + b"".join(binary),
        {"content-type": "application/octet-stream", BINARY_HEADER: str(len(head))},
    )


def _pack(values: list[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    dtype = {"FP32": "<f4", "BOOL": "?"}[datatype]
    return np.asarray(values, dtype=dtype).tobytes()


def json_reply(body: Any, status_headers: dict[str, str] | None = None) -> Reply:
    return Reply(orjson.dumps(body), {"content-type": "application/json", **(status_headers or {})})


def input_metadata() -> list[dict]:
    return [
        {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
        {"name": HINT_INPUT, "datatype": "BYTES", "shape": [-1]},
    ]


def output_metadata() -> list[dict]:
    return [{"name": name, "datatype": dt, "shape": [-1]} for name, dt in OUTPUTS.items()]
