"""Phase 2 on a package that has learned domains: new classes learned in the heads.

A phase-3 package merges its SD-LoRA pairs into the weights and wraps the same projections
with CONEC-LoRA's shared and per-domain layers; a new SD-LoRA pair would have to wrap CONEC's
wrappers, and the package format has no place for pairs that come after CONEC. It does not
need one: in one-class tasks phase 2's new pair stays at B = 0 (measured, README's
continuation section) and the head rows plus classifier alignment are what learn the new
class. So a classes task after a domain keeps the whole network (backbone, DoRA, SD-LoRA,
shared and late CONEC sets, domain selector) frozen and learns only in the heads,
rehearsal-free, per class batch:

1. Base domain (0): the batch's train images' features under domain 0 become the new classes'
   statistics beside the package's (`add_class_statistics`), head 0 grows by their rows and
   is re-aligned on every class's statistics (`align_head`), exactly as phase 2 finishes a
   task.
2. Every later domain d: its head grows by rows that do not compete (`later_domain_rows`,
   measured against copying head 0's rows there), its old rows bit for bit as they were:
   they were trained on domain d's images, which the task does not have.

The record is a phase-2 record (its task index, the classes added) whose metrics say
``learned_in_heads`` = 1; `AdapterMeta.has_domains` is what says the package is CONEC-routed.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from aads.adapters.alignment import add_class_statistics, align_head
from aads.adapters.classifier import grow_head
from aads.adapters.loading import load_adapter
from aads.adapters.package import (
    PhaseRecord,
)
from aads.adapters.phases.common import (
    AdapterTrainingError,
    accuracy,
    class_statistics,
    class_task_metrics,
    domain_rows,
    image_loader,
    mean,
    per_class_accuracy,
    phase_rows,
    predict,
    write_conec_package,
    write_phase_metrics,
)
from aads.config import BASE_DOMAIN, PlatformConfig
from aads.data.manifest import ManifestRow
from aads.metrics import classification_summary
from aads.phases import SD_LORA


def later_domain_rows(head: nn.Linear, new_classes: int) -> nn.Linear:
    """`head` (a later domain's) grown by `new_classes` rows that do not compete: zero
    weights and the old rows' mean bias (`grow_head`'s start), old rows untouched.

    The task has no images of the new classes under that domain's conditions, nor of the old
    classes through that domain's path (rehearsal-free). Copying head 0's aligned rows was
    measured (`benchmarks/classes_after_domains.py`, demo spec's pepper, 20 anthracnose
    images): under warm light it named 5 of 16 anthracnose photos and took all 10 of the 16
    bacterial_spot photos the parent got right; fitting the new rows on the class statistics
    against the frozen old rows named 3 to 9 and took the same 10 (and up to 5 healthy).
    Rows that do not compete kept every old answer in that domain (the base domain names the
    new class either way: the selector sends base photos to head 0). A later `domain` task
    that shows the new class under its condition trains them (its head starts from the
    newest).
    """
    return grow_head(head, new_classes).requires_grad_(False)


def learn_classes_in_heads(
    config: PlatformConfig,
    crop: str,
    rows: list[ManifestRow],
    data_root: Path,
    from_pkg: Path,
    out_dir: Path,
    tasks: list[int],
    classes: list[str],
    *,
    manifest_sha256: str = "",
) -> Path:
    """Learn phase-2 batches `tasks` of `crop` in the heads of the CONEC package `from_pkg`
    (which knows `classes`) and write the child to `out_dir`."""
    spec, settings = config.crop(crop), config.training.phase2
    prev = load_adapter(
        from_pkg,
        config.storage,
        device=config.adapter.backbone.device,
        dtype=config.adapter.backbone.dtype,
    )
    if prev.conec is None:
        raise AdapterTrainingError(f"{from_pkg} names domains {prev.meta.domains} but has no CONEC")
    backbone, meta, network = prev.backbone, prev.meta.model_copy(deep=True), prev.network
    state, heads = prev.conec, network.heads
    stats = class_statistics(from_pkg, len(classes))
    old_classes = list(spec.phase1_classes)

    def loader(subset: list[ManifestRow]) -> torch.utils.data.DataLoader:
        return image_loader(subset, data_root, classes, backbone, settings, train=False)

    def served(subset: list[ManifestRow]) -> dict[str, float]:
        state.use_selector()  # as it is served: each image routed by the selector
        return per_class_accuracy(network, subset, data_root, classes, backbone, settings)

    test_rows = domain_rows(rows, crop, BASE_DOMAIN, classes, "test")
    before = served(test_rows)
    history = [before]
    for task in tasks:
        started = time.monotonic()
        batch = spec.phase2_batches[task]
        n_old = len(classes)
        classes = [*classes, *batch]
        data = phase_rows(rows, crop, "2", str(task))
        state.use_domain(0)
        add_class_statistics(
            stats, network, loader(data.train), list(range(n_old, len(classes))), backbone.device
        )
        heads.heads[0] = grow_head(heads.heads[0], len(batch))
        align_loss = align_head(heads.heads[0], stats, seed=settings.seed + task)
        heads.heads[0].requires_grad_(False)
        for d in range(1, heads.num_domains):
            heads.heads[d] = later_domain_rows(heads.heads[d], len(batch))
        held_out = data.test or data.val or data.train
        routed = {}  # the batch's held-out images routed to each domain: does its head know them
        for d, name in enumerate(meta.domains):
            state.use_domain(d)
            truth, pred = predict(network, loader(held_out), backbone.device)
            routed[f"{name}_new_classes_accuracy"] = accuracy(truth, pred)
        test_rows = domain_rows(rows, crop, BASE_DOMAIN, classes, "test")
        after = served(test_rows)
        history.append(after)
        meta.phases.append(
            PhaseRecord(
                phase=SD_LORA.number,
                task=str(task),
                added=batch,
                seconds=time.monotonic() - started,
                metrics={
                    "learned_in_heads": 1.0,  # no SD-LoRA pair: the heads learned this batch
                    "align_loss": align_loss,
                    "new_classes_accuracy": mean([after[c] for c in batch if c in after]),
                    "old_classes_accuracy": mean([after[c] for c in old_classes if c in after]),
                    "seen_classes_accuracy": mean(list(after.values())),
                    **routed,
                },
            )
        )

    state.use_selector()
    y_true, y_pred = predict(network, loader(test_rows), backbone.device)
    summary = classification_summary(y_true, y_pred, classes)
    meta.classes = classes
    meta.metrics = {**meta.metrics, **class_task_metrics(summary, history, old_classes)}
    meta.manifest_sha256 = manifest_sha256 or meta.manifest_sha256
    return write_conec_package(
        meta,
        state,
        heads,
        from_pkg,
        out_dir,
        class_stats=stats.state_dict(),
        extra=lambda d: write_phase_metrics(
            from_pkg, d, summary, "phase2_test", f"{crop}: phase 2 in the heads (test)"
        ),
    )
