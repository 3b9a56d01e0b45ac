"""The training task a data batch is for: ``task.json`` beside the batch's images.

A batch folder holds images in the crop-class layout `aads data ingest` reads
(``<crop>/<class>/<image>``) and one `TaskSpec` saying what to learn from them:

- ``base``: the first version of a crop's adapter (phase 1): its ``classes``;
- ``classes``: new disease classes on top of a registered version (an SD-LoRA task): the new
  class names, none of which the version knows;
- ``domain``: a new condition (farm, camera, season...) for classes the version knows (a
  CONEC-LoRA task): ``domain`` names it, ``classes`` are the known classes the batch shows.

`aads feedback import` writes it from labelled captures; the continuation (``aads train
continue``) reads it. Validated on read, so a hand-edited file fails naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aads.atomic import atomic_write_text
from aads.config import BASE_DOMAIN, Slug, format_validation_error
from aads.errors import BadInput, NotFound

TASK_FILE = "task.json"
FORMAT = "aads-task/1"
TaskKind = Literal["base", "classes", "domain"]


class TaskError(BadInput):
    """A ``task.json`` that is malformed or says something impossible."""


class TaskNotFound(NotFound, TaskError):
    """A batch folder without ``task.json``."""


class TaskSpec(BaseModel):
    """What a data batch teaches, and where its labels came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["aads-task/1"] = FORMAT
    kind: TaskKind
    crop: Slug
    classes: list[Slug] = Field(
        min_length=1,
        description="base: the classes; classes: the new classes; domain: the known classes "
        "the batch shows in the new domain",
    )
    domain: Slug | None = Field(None, description="the new domain (kind domain only)")
    images: dict[str, int] = Field(default_factory=dict, description="images per class")
    source: str = Field("", description="where the images and labels came from")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {self.classes}")
        if self.kind == "domain":
            if self.domain is None:
                raise ValueError("a domain task names its domain")
            if self.domain == BASE_DOMAIN:
                raise ValueError(f"'{BASE_DOMAIN}' is the domain every adapter starts with")
        elif self.domain is not None:
            raise ValueError(f"a {self.kind} task has no domain (got '{self.domain}')")
        if self.kind == "base" and len(self.classes) < 2:
            raise ValueError("a base task needs at least 2 classes")
        stray = sorted(set(self.images) - set(self.classes))
        if stray:
            raise ValueError(f"images counted for classes the task does not name: {stray}")
        return self


def write_task(folder: Path, spec: TaskSpec) -> Path:
    """Write ``task.json`` into `folder` (atomically)."""
    path = Path(folder) / TASK_FILE
    atomic_write_text(path, spec.model_dump_json(indent=2) + "\n")
    return path


def read_task(path: Path) -> TaskSpec:
    """The `TaskSpec` in a batch folder (or a ``task.json`` path); errors name the field."""
    path = Path(path)
    if path.is_dir():
        path = path / TASK_FILE
    if not path.is_file():
        raise TaskNotFound(f"{path}: no task file (a batch from `aads feedback import` has one)")
    try:
        return TaskSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as err:
        raise TaskError(format_validation_error(err, str(path))) from None
