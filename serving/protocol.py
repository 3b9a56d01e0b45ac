"""V1 / V2 request parsing and response building shared by the router and the predictors.

Images travel as encoded bytes (JPEG/PNG/WebP), never as float tensors: V1 JSON carries them
as base64 (``{"instances": [{"image": {"b64": "..."}, "crop_hint": "tomato"}]}``), V2 as a
``BYTES`` input named ``image`` (base64 strings in JSON, raw bytes with the binary extension).
Every answer is one JSON object per image; V2 returns them as the ``diagnosis`` output (JSON
strings) next to plain ``label``, ``confidence`` and ``is_ood`` outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from aads.config import ServingSettings
from aads.inference import InvalidRequest, b64_bytes

IMAGE_INPUT = "image"
HINT_INPUT = "crop_hint"
V2_OUTPUTS = ("diagnosis", "label", "confidence", "is_ood")


SCOUTING = "scouting"
SCOUTING_MODEL_NAME = "scouting"  # the scouting service's model (/v1/models/scouting:predict)


@dataclass
class Instance:
    image: bytes
    crop_hint: str | None = None
    scouting: bool | None = None  # None: the deployment's default (serving.scouting_default)


def check_request_size(headers: dict[str, str] | None, limits: ServingSettings) -> None:
    """Refuse bodies over the limit by their declared length. (The ingress and Knative queue
    proxy should cap bodies before they reach the pod; this is the last line.)"""
    length = {k.lower(): v for k, v in (headers or {}).items()}.get("content-length")
    if length and length.isdigit() and int(length) > limits.max_request_bytes:
        raise InvalidInput(
            f"request body is {length} bytes, over the {limits.max_request_bytes} byte limit"
        )


def parse_instances(payload: dict | InferRequest, limits: ServingSettings) -> list[Instance]:
    """The request's images (and crop hints); `InvalidInput` (HTTP 400) says what is wrong."""
    try:
        instances = _parse_v2(payload) if isinstance(payload, InferRequest) else _parse_v1(payload)
    except InvalidRequest as err:
        raise InvalidInput(str(err)) from None
    if not instances:
        raise InvalidInput("the request has no images")
    if len(instances) > limits.max_images_per_request:
        raise InvalidInput(
            f"{len(instances)} images in one request; the limit is {limits.max_images_per_request}"
        )
    return instances


def _parse_v1(payload: object) -> list[Instance]:
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidRequest('V1 requests need {"instances": [{"image": {"b64": ...}}, ...]}')
    out = []
    for i, item in enumerate(payload["instances"]):
        where = f"instances[{i}]"
        if isinstance(item, dict) and IMAGE_INPUT in item:
            hint = item.get(HINT_INPUT)
            if hint is not None and not isinstance(hint, str):
                raise InvalidRequest(f"{where}.crop_hint must be a string")
            scouting = _scouting_flag(item.get(SCOUTING), f"{where}.scouting")
            image = b64_bytes(item[IMAGE_INPUT], f"{where}.image")
            out.append(Instance(image, hint or None, scouting))
        else:
            out.append(Instance(b64_bytes(item, where)))
    return out


def _parse_v2(request: InferRequest) -> list[Instance]:
    image = request.get_input_by_name(IMAGE_INPUT)
    if image is None:
        names = [i.name for i in request.inputs]
        raise InvalidRequest(f"V2 requests need a BYTES input named 'image'; got {names}")
    if image.datatype != "BYTES":
        raise InvalidRequest(f"input 'image' must be BYTES, got {image.datatype}")
    if len(image.shape) != 1:
        raise InvalidRequest(f"input 'image' must have shape [N], got {image.shape}")
    data = list(image.data or [])
    if len(data) != image.shape[0]:
        raise InvalidRequest(f"input 'image' has shape {image.shape} but {len(data)} elements")
    hints: list[str | None] = [None] * len(data)
    hint_input = request.get_input_by_name(HINT_INPUT)
    if hint_input is not None:
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in hint_input.data or []]
        if len(values) != len(data):
            raise InvalidRequest("input 'crop_hint' needs one value per image ('' for none)")
        hints = [v or None for v in values]
    elif request.parameters and isinstance(request.parameters.get(HINT_INPUT), str):
        hints = [request.parameters[HINT_INPUT]] * len(data)
    scouting = _scouting_flag((request.parameters or {}).get(SCOUTING), "parameters.scouting")
    return [
        Instance(b64_bytes(v, f"image[{i}]") if not isinstance(v, bytes) else v, hints[i], scouting)
        for i, v in enumerate(data)
    ]


def _scouting_flag(value: object, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidRequest(f"{where} must be true or false, got {value!r}")


def respond(
    payload: dict | InferRequest, answers: list[dict], model_name: str, model_version: str = ""
) -> dict | InferResponse:
    """Answers in the protocol the request came in."""
    if not isinstance(payload, InferRequest):
        return {"predictions": answers}
    n = len(answers)
    outputs = [
        InferOutput("diagnosis", [n], "BYTES", [json.dumps(a) for a in answers]),
        InferOutput("label", [n], "BYTES", [str(a.get("label", "")) for a in answers]),
        InferOutput(
            "confidence",
            [n],
            "FP32",
            np.asarray([a.get("confidence", 0.0) for a in answers], dtype=np.float32),
        ),
        InferOutput(
            "is_ood", [n], "BOOL", np.asarray([bool(a.get("is_ood")) for a in answers], dtype=bool)
        ),
    ]
    return InferResponse(
        response_id=payload.id or "",
        model_name=model_name,
        model_version=model_version or None,
        infer_outputs=outputs,
    )


def image_metadata() -> list[dict]:
    return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]


def answer_metadata() -> list[dict]:
    return [
        {"name": "diagnosis", "datatype": "BYTES", "shape": [-1]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "confidence", "datatype": "FP32", "shape": [-1]},
        {"name": "is_ood", "datatype": "BOOL", "shape": [-1]},
    ]
