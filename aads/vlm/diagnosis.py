"""Who diagnoses a region: the crop router and that crop's adapter, behind one callable.

The scouting stage only needs "region images in, one `aads.answer.Answer` each out", as the
serving router answers them: the adapter's answer with its ``routing``, `Answer.unknown_crop`
for a picture of no known crop, or an error entry when the crop's adapter could not be asked.
`RegionDiagnoser` is that contract; `LocalDiagnoser` fulfils it in process with a loaded
`CropRouter` and `Diagnoser`s (tests, the CLI, a single-pod VLM service). A VLM
InferenceService in front of the deployed router can fulfil it with one V1 call per image batch
instead, unchanged downstream.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from aads.answer import Answer, ErrorEntry
from aads.config import StorageSettings
from aads.inference import Diagnoser
from aads.router import CropRouter, load_router


class RegionDiagnoser(Protocol):
    """Answers region crops, one answer per image in the same order."""

    def __call__(self, images: Sequence[Image.Image]) -> list[Answer]: ...


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

    def __call__(self, images: Sequence[Image.Image]) -> list[Answer]:
        if not images:
            return []
        decisions = self.router.route(list(images))
        answers: list[Answer | None] = [None] * len(images)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, decision in enumerate(decisions):
            routing = decision.routing()
            if decision.is_ood:
                answers[i] = Answer.unknown_crop(routing)
            elif decision.crop not in self.adapters:
                error = ErrorEntry(code=404, message=f"no adapter is served for {decision.crop}")
                answers[i] = Answer.failed(error, crop=decision.crop, routing=routing)
            else:
                groups[decision.crop].append(i)
        for crop, idx in groups.items():
            crop_answers = self.adapters[crop].diagnose([images[i] for i in idx])
            for i, answer in zip(idx, crop_answers, strict=True):
                answers[i] = answer.routed(decisions[i].routing())
        assert all(a is not None for a in answers), "every region is answered"
        return answers  # type: ignore[return-value]
