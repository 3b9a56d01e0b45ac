"""The Label Studio side of curation: a labelling project for captured unknowns, and reading
what the labellers said.

Written by ``aads feedback review`` (Label Studio itself is not needed here):

- ``labeling-config.xml``: an image classification project. ``label`` (single choice) lists
  the crop's known classes, ``new class`` (with a ``new_class`` text box that appears when it
  is chosen; names given with ``--new-class`` are offered as choices too), ``not a plant`` and
  ``skip``; ``cluster`` shows the review's cluster (pre-annotated, so labellers can filter and
  label a cluster at once).
- ``tasks.json``: one task per image: ``data.image`` is where Label Studio fetches it
  (``s3://bucket/key``, resolved through an S3 source storage connected to the project, or a
  presigned/HTTP URL), ``data.capture_key`` and ``data.sha256`` name the captured image, and a
  ``predictions`` entry carries the cluster and the nearest known class.

Read by ``aads feedback import``: Label Studio's JSON export (a list of tasks, each with
``annotations[].result[]``; a ``choices`` result's ``value.choices``, a ``textarea`` result's
``value.text``; ``was_cancelled`` marks a skipped task), see `task_label`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from aads.data.layout import slugify
from aads.errors import BadInput

IMAGE, LABEL, CLUSTER, NEW_CLASS = "image", "label", "cluster", "new_class"
NEW, NOT_A_PLANT, SKIP = "new class", "not a plant", "skip"

Outcome = Literal["labelled", "skipped", "not_a_plant", "unlabelled", "conflict", "unnamed"]


class LabelStudioError(BadInput):
    """An export that is not Label Studio's JSON task list."""


def labeling_config(known: Sequence[str], clusters: Sequence[str], new: Sequence[str] = ()) -> str:
    """The project's labelling interface (XML), every value escaped."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="$hint")
    ET.SubElement(view, "Image", name=IMAGE, value="$image", zoom="true", zoomControl="true")
    ET.SubElement(view, "Header", value="What is it?")
    choices = ET.SubElement(
        view,
        "Choices",
        name=LABEL,
        toName=IMAGE,
        choice="single",
        showInline="true",
        required="true",
    )
    for value in [*known, *[n for n in new if n not in known], NEW, NOT_A_PLANT, SKIP]:
        ET.SubElement(choices, "Choice", value=value)
    naming = ET.SubElement(
        view, "View", visibleWhen="choice-selected", whenTagName=LABEL, whenChoiceValue=NEW
    )
    ET.SubElement(naming, "Header", value="Name of the new class (e.g. septoria_leaf_spot)")
    ET.SubElement(naming, "TextArea", name=NEW_CLASS, toName=IMAGE, maxSubmissions="1", rows="1")
    ET.SubElement(view, "Header", value="Cluster found by aads feedback review")
    group = ET.SubElement(
        view, "Choices", name=CLUSTER, toName=IMAGE, choice="single", showInline="true"
    )
    for value in clusters:
        ET.SubElement(group, "Choice", value=value)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def _choices(from_name: str, value: str) -> dict[str, Any]:
    return {
        "from_name": from_name,
        "to_name": IMAGE,
        "type": "choices",
        "value": {"choices": [value]},
    }


def task(
    image_url: str,
    data: dict[str, Any],
    *,
    cluster: str,
    nearest_class: str | None,
    model_version: str,
    score: float,
) -> dict[str, Any]:
    """One import task: the image, its identifiers and a prediction (cluster, nearest class)."""
    result = [_choices(CLUSTER, cluster)]
    if nearest_class:
        result.insert(0, _choices(LABEL, nearest_class))
    return {
        "data": {"image": image_url, **data},
        "predictions": [{"model_version": model_version, "score": score, "result": result}],
    }


# --------------------------------------------------------------------------- the export


class ExportResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = ""
    from_name: str = ""
    value: dict[str, Any] = {}


class ExportAnnotation(BaseModel):
    model_config = ConfigDict(extra="allow")

    result: list[ExportResult] = []
    was_cancelled: bool = False
    ground_truth: bool = False


class ExportTask(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int | str | None = None
    data: dict[str, Any] = {}
    annotations: list[ExportAnnotation] = []


_EXPORT = TypeAdapter(list[ExportTask])


def read_export(path: Path) -> list[ExportTask]:
    """Label Studio's JSON export: a list of tasks. Errors name the task and the field."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LabelStudioError(f"{path}: not a JSON file ({err})") from None
    if isinstance(raw, dict) and "annotations" in raw:
        raw = [raw]  # one task exported on its own
    try:
        return _EXPORT.validate_python(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise LabelStudioError(
            f"{path}: not a Label Studio JSON export (task list): {where}: {first['msg']}"
        ) from None


def task_label(t: ExportTask) -> tuple[Outcome, str | None]:
    """What the labellers said about one task: an outcome and, when labelled, the class slug.

    Cancelled (skipped) annotations do not count; ground-truth annotations, where there are
    any, overrule the others; annotations that disagree are a ``conflict`` (left out, so a
    disputed image never trains a model).
    """
    live = [a for a in t.annotations if not a.was_cancelled]
    if not live:
        return ("skipped" if t.annotations else "unlabelled"), None
    if any(a.ground_truth for a in live):
        live = [a for a in live if a.ground_truth]
    answers = {a for a in (_answer(a) for a in live) if a is not None}
    if not answers:
        return "unlabelled", None
    if len(answers) > 1:
        return "conflict", None
    (answer,) = answers
    if answer == SKIP:
        return "skipped", None
    if answer == NOT_A_PLANT:
        return "not_a_plant", None
    if answer == "":
        return "unnamed", None
    return "labelled", answer


def _answer(annotation: ExportAnnotation) -> str | None:
    """The class an annotation gives (a slug), SKIP / NOT_A_PLANT, "" for an unnamed new
    class, or None when it has no ``label`` choice."""
    choices = [r for r in annotation.result if r.type == "choices"]
    picked = next((r for r in choices if r.from_name == LABEL), None)
    if picked is None:
        others = [r for r in choices if r.from_name != CLUSTER]
        picked = others[0] if len(others) == 1 else None
    values = picked.value.get("choices") if picked else None
    if not values or not isinstance(values[0], str):
        return None
    choice = values[0]
    if choice in (SKIP, NOT_A_PLANT):
        return choice
    if choice == NEW:
        texts = [
            text
            for r in annotation.result
            if r.type == "textarea" and r.from_name == NEW_CLASS
            for text in r.value.get("text", [])
            if isinstance(text, str) and text.strip()
        ]
        return slugify(texts[0]) if texts else ""
    return slugify(choice)
