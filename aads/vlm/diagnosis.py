"""Who diagnoses a region: the crop router and that crop's adapter, behind one callable.

The scouting stage only needs "region images in, one answer each out", in the answer schema
of the router transformer (`serving/router.py`): the adapter's answer plus a ``routing``
entry, ``crop: None`` with ``label: "unknown"`` for a picture of no known crop, or an
``error`` entry when the crop's adapter could not be asked. `RegionDiagnoser` is that
contract; `LocalDiagnoser` fulfils it in process with a loaded `CropRouter` and `Diagnoser`s
(tests, the CLI, a single-pod VLM service). A VLM InferenceService in front of the deployed
router can fulfil it with one V1 call per image batch instead, unchanged downstream.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from aads.config import StorageSettings
from aads.inference import Diagnoser
from aads.router import CropRouter, load_router, not_a_known_crop


class RegionDiagnoser(Protocol):
    """Answers region crops, one dict per image in the same order."""

    def __call__(self, images: Sequence[Image.Image]) -> list[dict]: ...


@dataclass
class LocalDiagnoser:
    """Route every region with the crop router, then ask each crop's adapter for its regions
    in one batch. A crop without a loaded adapter is an error entry for its regions only."""

    router: CropRouter
    adapters: Mapping[str, Diagnoser]

    @classmethod
    def from_dirs(
        cls,
        router_dir: Path,
        adapter_dirs: Mapping[str, Path],
        storage: StorageSettings | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
    ) -> LocalDiagnoser:
        router = load_router(Path(router_dir), storage, device=device, dtype=dtype)
        adapters = {
            crop: Diagnoser.from_dir(Path(d), storage, device=device, dtype=dtype)
            for crop, d in adapter_dirs.items()
        }
        return cls(router, adapters)

    def __call__(self, images: Sequence[Image.Image]) -> list[dict]:
        if not images:
            return []
        decisions = self.router.route(list(images))
        answers: list[dict] = [{} for _ in images]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, decision in enumerate(decisions):
            route = decision.as_dict()
            if decision.is_ood:
                answers[i] = not_a_known_crop(route)
            elif decision.crop not in self.adapters:
                message = f"no adapter is loaded for crop '{decision.crop}'"
                answers[i] = {
                    "crop": decision.crop,
                    "error": {"code": 404, "message": message},
                    "routing": route,
                }
            else:
                answers[i] = {"routing": route}
                groups[decision.crop].append(i)
        for crop, idx in groups.items():
            crop_answers = self.adapters[crop].diagnose([images[i] for i in idx])
            for i, answer in zip(idx, crop_answers, strict=True):
                answers[i] = {**answer, "routing": answers[i]["routing"]}
        return answers
