"""Phase 3: CONEC-LoRA domain-incremental learning, one task per shifted imaging domain.

The same disease classes seen under new conditions (field photos, low light) must not cost the
lab-photo accuracy earlier phases reached. Starting from a phase-1 or phase-2 package (DoRA and
SD-LoRA merged into the base weights), CONEC-LoRA adds shared LoRAs to the first half of the
blocks, trained on every new domain under distillation from their previous copy, and one frozen
LoRA set and head per domain in the second half; a domain selector on the boundary features
routes each image at inference. A phase-3 package can be continued with the domains it lacks.

Domain 0 is the base domain. Its only use in phase 3 is the selector's base statistics, fitted
on the base-domain train images of the known classes before the first new domain: no step is
trained on base images (rehearsal-free). Base test images are evaluated before and after to
report protected retention.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aads.adapters.classifier import ConecClassifier
from aads.adapters.conec.model import (
    ConecHeads,
    ConecLoRA,
    ConecState,
    apply_conec,
    boundary_features,
)
from aads.adapters.loading import LoadedAdapter, load_adapter
from aads.adapters.method import TaskSetup, train_task
from aads.adapters.package import (
    CLASS_STATS_FILE,
    CONEC_FILE,
    AdapterMeta,
    PhaseRecord,
    read_meta,
    read_tensors,
)
from aads.adapters.phases.common import (
    AdapterTrainingError,
    PhaseData,
    accuracy,
    best_metric,
    domain_rows,
    image_loader,
    mean,
    phase_rows,
    predict,
    val_accuracy,
    write_conec_package,
    write_phase_metrics,
)
from aads.backbone import Backbone
from aads.config import BASE_DOMAIN, CONECSettings, PlatformConfig, TrainingSettings
from aads.data.manifest import ManifestRow
from aads.features import backbone_signature
from aads.metrics import average_forgetting, classification_summary
from aads.phases import CONEC_LORA, NUMBERS
from aads.progress import Progress
from aads.storage import CHECKSUM_FILE, sha256_file
from aads.training import EpochCallback

STRUCTURAL_CONEC_FIELDS = ("shared_blocks", "modules", "rank", "alpha", "selector")
"""CONEC settings a continued phase-3 package must share with the config: they shape the
network already in the package (distillation weight and temperature may change)."""


def check_phase3_inputs(
    config: PlatformConfig, crop: str, rows: list[ManifestRow], from_pkg: Path
) -> list[str]:
    """Everything phase 3 can check without a backbone; returns the domains still to learn."""
    spec = config.crop(crop)
    meta = read_meta(from_pkg)
    if meta.crop != crop:
        raise AdapterTrainingError(f"{from_pkg} is an adapter for '{meta.crop}', not '{crop}'")
    _check_package_phase(meta, from_pkg, config.adapter.conec)
    _check_classes(meta, spec.known_classes, spec.phase1_classes, from_pkg)
    unknown = [d for d in meta.domains[1:] if d not in spec.phase3_domains]
    if unknown:
        raise AdapterTrainingError(
            f"{from_pkg} has learned domain(s) {unknown} that crop '{crop}' does not list in "
            f"phase3_domains {spec.phase3_domains}"
        )
    pending = [d for d in spec.phase3_domains if d not in meta.domains]
    if not pending:
        raise AdapterTrainingError(
            f"crop '{crop}' has no phase-3 domain left to learn: configured "
            f"{spec.phase3_domains}, {from_pkg} has {meta.domains}"
        )
    for domain in pending:
        _checkdomain_rows(phase_rows(rows, crop, "3", domain), domain, crop, meta.classes)
    if not meta.has_domains and not domain_rows(rows, crop, BASE_DOMAIN, meta.classes, "train"):
        raise AdapterTrainingError(
            f"crop '{crop}' has no base-domain train images of {meta.classes}: the domain "
            "selector needs them for its base-domain statistics"
        )
    return pending


def train_phase3(
    config: PlatformConfig,
    crop: str,
    rows: list[ManifestRow],
    data_root: Path,
    from_pkg: Path,
    out_dir: Path,
    *,
    checkpoint_dir: Path | None = None,
    manifest_sha256: str = "",
    progress: Progress | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> Path:
    """Learn every pending phase-3 domain of `crop` and write the new package to `out_dir`;
    `on_epoch_end` sees every epoch of every task as it ends."""
    pending = check_phase3_inputs(config, crop, rows, from_pkg)
    conec, settings = config.adapter.conec, config.training.phase3
    prev = load_adapter(
        from_pkg,
        config.storage,
        device=config.adapter.backbone.device,
        dtype=config.adapter.backbone.dtype,
        merge=True,
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    backbone, meta = prev.backbone, prev.meta.model_copy(deep=True)
    classes = meta.classes
    domains = [*meta.domains, *pending]
    tests = {d: domain_rows(rows, crop, d, classes, "test") for d in domains}
    evaluate = _Evaluator(data_root, classes, backbone, settings)
    before = {d: evaluate.accuracy(prev.network, r) for d, r in tests.items()}

    torch.manual_seed(settings.seed)  # the shared LoRAs' A matrices are drawn here
    network = _conec_network(prev, conec)
    state, heads = network.state, network.heads
    if prev.conec is None:
        meta.adapter_settings = {**meta.adapter_settings, "conec": conec.model_dump(mode="json")}
        base_train = domain_rows(rows, crop, BASE_DOMAIN, classes, "train")
        state.selector.add_domain(evaluate.boundary(network, state, base_train))
    history = [evaluate.oracle(network, state, {d: tests[d] for d in meta.domains})]
    fingerprint = {
        "phase": CONEC_LORA.number,
        "crop": crop,
        "classes": json.dumps(classes),
        "from_package": sha256_file(Path(from_pkg) / CHECKSUM_FILE),
        "backbone": json.dumps(backbone_signature(backbone), sort_keys=True),
        "conec": conec.model_dump_json(),
        "training": settings.model_dump_json(),
    }

    method = ConecLoRA(network.backbone, state, heads, conec)
    for name in pending:
        data = phase_rows(rows, crop, "3", name)
        outcome = train_task(
            method,
            state.num_domains,
            partial(_domain_setup, network, method, data, evaluate, conec.distill_weight),
            settings=settings,
            checkpoint_dir=checkpoint_dir / f"domain-{name}" if checkpoint_dir else None,
            fingerprint={**fingerprint, "task": name, "domains": json.dumps(meta.domains)},
            progress=progress,
            on_epoch_end=on_epoch_end,
            device=backbone.device,
        )
        state.selector.add_domain(evaluate.boundary(network, state, data.train))
        meta.domains = [*meta.domains, name]
        history.append(evaluate.oracle(network, state, {d: tests[d] for d in meta.domains}))
        meta.phases.append(
            PhaseRecord(
                phase=CONEC_LORA.number,
                task=name,
                added=[name],
                epochs=len(outcome.fit.history),
                seconds=outcome.seconds,
                history=outcome.fit.history,
                metrics={  # <domain>_accuracy: test images routed to their true domain
                    "val_accuracy": best_metric(outcome.fit),
                    **outcome.report,  # rank
                    **{f"{d}_accuracy": v for d, v in history[-1].items()},
                },
            )
        )

    summary, metrics = _final_metrics(network, state, tests, evaluate, before, history)
    meta.metrics = {**meta.metrics, **metrics}
    meta.manifest_sha256 = manifest_sha256 or meta.manifest_sha256
    return write_conec_package(
        meta,
        state,
        heads,
        from_pkg,
        out_dir,
        # Base-domain class statistics, carried: a later classes task aligns head 0 on them.
        class_stats=read_tensors(from_pkg, CLASS_STATS_FILE),
        extra=lambda d: write_phase_metrics(
            from_pkg, d, summary, "phase3_test", f"{crop}: phase 3, all domains (test)"
        ),
    )


def _domain_setup(
    network: ConecClassifier,
    method: ConecLoRA,
    data: PhaseData,
    evaluate: _Evaluator,
    distill_weight: float,
) -> TaskSetup:
    """One domain's part of a task, once its late set and head exist: loaders over its images
    only, and cross-entropy plus distillation from the previous domain's network (which
    keeps the shared LoRAs near what earlier domains were fitted with)."""
    val_loader = evaluate.loader(data.val or data.train)

    def loss_fn(m: nn.Module, batch: tuple) -> torch.Tensor:
        pixels, labels, _ = batch
        logits = m(pixels)
        loss = F.cross_entropy(logits, labels)  # every known class: same label set
        if distill_weight == 0:
            return loss
        return loss + distill_weight * method.distillation_loss(pixels, logits)

    return TaskSetup(
        network=network,
        train_loader=evaluate.loader(data.train, train=True),
        loss_fn=loss_fn,
        # Routed to the domain being learned (start_task set it); its images only.
        eval_fn=val_accuracy(val_loader, evaluate.backbone.device),
    )


def _check_package_phase(meta: AdapterMeta, from_pkg: Path, conec: CONECSettings) -> None:
    """A phase-1/2 package, or a phase-3 one whose CONEC state fits the config's settings."""
    if meta.last_phase not in NUMBERS:
        raise AdapterTrainingError(
            f"{from_pkg} has finished phase {meta.last_phase}; phase 3 continues a phase-1, "
            "phase-2 or phase-3 package"
        )
    continues = meta.has_domains  # a classes task after a domain keeps the CONEC state
    has_conec = (Path(from_pkg) / CONEC_FILE).is_file()
    if continues != has_conec or (meta.last_phase == CONEC_LORA.number and not continues):
        raise AdapterTrainingError(
            f"{from_pkg} is inconsistent: last phase {meta.last_phase}, domains {meta.domains}, "
            f"{CONEC_FILE} {'present' if has_conec else 'absent'}"
        )
    if continues:
        packaged = CONECSettings(**meta.adapter_settings["conec"])
        differ = [
            f"{k}: package {getattr(packaged, k)!r}, config {getattr(conec, k)!r}"
            for k in STRUCTURAL_CONEC_FIELDS
            if getattr(packaged, k) != getattr(conec, k)
        ]
        if differ:
            raise AdapterTrainingError(
                f"{from_pkg} was trained with other CONEC settings; " + "; ".join(differ)
            )


def _checkdomain_rows(data: PhaseData, domain: str, crop: str, classes: list[str]) -> None:
    """A domain needs training images; a known class it lacks is fine (same label set)."""
    if not data.train:
        raise AdapterTrainingError(
            f"phase-3 domain '{domain}' of '{crop}' has no training images; add images "
            "or remove it from phase3_domains"
        )
    unknown = sorted({r.label for r in (*data.train, *data.val, *data.test)} - set(classes))
    if unknown:
        raise AdapterTrainingError(
            f"phase-3 domain '{domain}' of '{crop}' has images of class(es) {unknown} the "
            f"adapter does not know {classes}; the manifest was made with another config: "
            "ingest again"
        )


def _check_classes(meta: AdapterMeta, known: list[str], phase1: list[str], from_pkg: Path) -> None:
    """Phase 3 adapts every known class (phase 1 and all phase-2 batches) to new domains."""
    if meta.classes == known:
        return
    if known[: len(meta.classes)] == meta.classes and meta.classes[: len(phase1)] == phase1:
        missing = known[len(meta.classes) :]
        raise AdapterTrainingError(
            f"{from_pkg} does not know class(es) {missing} yet: finish phase 2 before phase 3 "
            "(phase 3 adapts every known class to new domains)"
        )
    raise AdapterTrainingError(
        f"{from_pkg} was trained on {meta.classes}, but the config's known classes are {known}"
    )


def _conec_network(prev: LoadedAdapter, settings: CONECSettings) -> ConecClassifier:
    """The incoming network with CONEC-LoRA: applied afresh, or as the phase-3 package has it."""
    if prev.conec is not None:
        if prev.conec.num_domains != len(prev.meta.domains):
            raise AdapterTrainingError(
                f"package has {prev.conec.num_domains} CONEC domains but names {prev.meta.domains}"
            )
        return prev.network
    model = prev.backbone.model
    state = apply_conec(model, settings, pooling=prev.backbone.pooling)
    return ConecClassifier(model, state, ConecHeads(prev.network.head)).eval()


class _Evaluator:
    """Loaders over manifest rows, and measurements in eval mode without gradients."""

    def __init__(
        self, root: Path, classes: list[str], backbone: Backbone, settings: TrainingSettings
    ) -> None:
        self.root, self.classes, self.backbone, self.settings = root, classes, backbone, settings

    def loader(
        self, rows: list[ManifestRow], *, train: bool = False
    ) -> torch.utils.data.DataLoader:
        return image_loader(
            rows, self.root, self.classes, self.backbone, self.settings, train=train
        )

    def accuracy(self, network: nn.Module, rows: list[ManifestRow]) -> float:
        """Accuracy of `network` as it routes (no routing change)."""
        if not rows:
            return float("nan")
        return accuracy(*predict(network, self.loader(rows), self.backbone.device))

    def oracle(
        self, network: nn.Module, state: ConecState, tests: dict[str, list[ManifestRow]]
    ) -> dict[str, float]:
        """Per-domain accuracy with each domain's images routed to their true domain."""
        out = {}
        for domain, (name, rows) in enumerate(tests.items()):
            state.use_domain(domain)
            out[name] = self.accuracy(network, rows)
        return out

    @torch.no_grad()
    def selected(
        self, network: nn.Module, state: ConecState, rows: list[ManifestRow]
    ) -> tuple[list[int], list[int], list[int]]:
        """(true labels, predicted labels, selected domains) with selector routing."""
        network.eval()
        state.use_selector()
        y_true: list[int] = []
        y_pred: list[int] = []
        routed: list[int] = []
        if not rows:
            return y_true, y_pred, routed
        for pixels, labels, _ in self.loader(rows):
            logits = network(pixels.to(self.backbone.device))
            y_true += labels.tolist()
            y_pred += logits.argmax(-1).cpu().tolist()
            routed += state.routing.domain_ids.cpu().tolist()
        return y_true, y_pred, routed

    def boundary(
        self, network: nn.Module, state: ConecState, rows: list[ManifestRow]
    ) -> torch.Tensor:
        """Selector features of `rows` at the shared/late boundary (statistics only)."""
        network.eval()
        device = self.backbone.device
        batches = [
            boundary_features(network.backbone, state, pixels.to(device))
            for pixels, _, _ in self.loader(rows)
        ]
        return torch.cat(batches)


def _final_metrics(
    network: nn.Module,
    state: ConecState,
    tests: dict[str, list[ManifestRow]],
    evaluate: _Evaluator,
    before: dict[str, float],
    history: list[dict[str, float]],
) -> tuple[dict, dict[str, float]]:
    """Pooled test summary (selector routing) and the phase-3 metrics of the package.

    Per domain: accuracy before phase 3 (the incoming package), with selector routing (as
    served), with oracle routing (the true domain), and the selector's hit rate. Overall:
    pooled and mean accuracy, selector accuracy, protected retention (base accuracy after /
    before) and forgetting (oracle routing, over the domains learned before the last one).
    """
    oracle, metrics = history[-1], {}
    y_true: list[int] = []
    y_pred: list[int] = []
    hits: list[bool] = []
    selected: dict[str, float] = {}
    for domain, (name, rows) in enumerate(tests.items()):
        truth, pred, routed = evaluate.selected(network, state, rows)
        selected[name] = accuracy(truth, pred)
        routed_right = [r == domain for r in routed]
        metrics |= {
            f"phase3_{name}_accuracy_before": before[name],
            f"phase3_{name}_accuracy": selected[name],
            f"phase3_{name}_oracle_accuracy": oracle[name],
            f"phase3_{name}_selector_accuracy": mean([float(h) for h in routed_right]),
        }
        y_true, y_pred, hits = y_true + truth, y_pred + pred, hits + routed_right
    summary = classification_summary(y_true, y_pred, evaluate.classes)
    base_before, base_after = before[BASE_DOMAIN], selected[BASE_DOMAIN]
    metrics |= {
        "phase3_test_accuracy": summary["accuracy"],
        "phase3_mean_accuracy": mean(list(selected.values())),
        "phase3_mean_oracle_accuracy": mean(list(oracle.values())),
        "phase3_selector_accuracy": mean([float(h) for h in hits]),
        "phase3_base_accuracy_before": base_before,
        "phase3_protected_retention": base_after / base_before if base_before > 0 else float("nan"),
        "phase3_forgetting": average_forgetting(history, list(tests)[:-1]),
    }
    return summary, metrics
