"""Load an adapter package for inference (or as the start of the next phase), in one call.

Rebuilds the network stage by stage from the package: the recorded backbone, phase-1 DoRA
merged into its weights, phase-2 SD-LoRA pairs (merged for serving, or kept as layers for
inspection), phase-3 CONEC sets routed by the domain selector, and the head(s). No training
code is imported and nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aads.adapters.classifier import AdapterClassifier, ConecClassifier
from aads.adapters.conec.model import ConecHeads, ConecState, apply_conec, load_conec_state_dict
from aads.adapters.dora.model import ADAPTER_DIR, load_dora, merge_dora
from aads.adapters.package import (
    CONEC_FILE,
    HEADS_FILE,
    OOD_DIR,
    SD_LORA_FILE,
    AdapterMeta,
    PackageError,
    package_backbone,
    read_meta,
    read_tensors,
    verify_package,
)
from aads.adapters.sd_lora.model import apply_sd_lora, load_sd_lora_state_dict, merge_sd_lora
from aads.backbone import Backbone
from aads.config import CONECSettings, StorageSettings
from aads.ood.detector import OODDetector, Verdict, load_detector

SD_LORA_SUFFIX = ".sd_lora."


@dataclass
class LoadedAdapter:
    """A ready crop adapter. ``backbone.model`` is the adapted backbone inside ``network``."""

    meta: AdapterMeta
    backbone: Backbone
    network: nn.Module  # pixels -> logits over meta.classes
    conec: ConecState | None = None
    ood: OODDetector | None = None  # the package's OOD calibration, when it has one

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.network(pixel_values.to(self.backbone.device, self.backbone.dtype)).float()

    def features_and_logits(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (what OOD calibration scores) and logits, float32 on the CPU."""
        with torch.inference_mode():
            pixels = pixel_values.to(self.backbone.device, self.backbone.dtype)
            features, logits = self.network.features_and_logits(pixels)
            return features.float().cpu(), logits.float().cpu()

    def domain_picks(self, n: int) -> list[str | None]:
        """The domains CONEC's selector routed the last forward pass's `n` images to (call it
        right after that pass, on the same thread); None each for adapters without CONEC."""
        routing = self.conec.routing.domain_ids if self.conec is not None else None
        if routing is None or len(routing) != n:
            return [None] * n
        names = self.meta.domains
        return [names[i] if 0 <= i < len(names) else None for i in routing.tolist()]

    def verdicts(self, pixel_values: torch.Tensor) -> list[Verdict]:
        """Class or ``unknown`` per image, with distance and threshold (needs a calibration)."""
        if self.ood is None:
            raise PackageError(
                f"the '{self.meta.crop}' adapter has no OOD calibration: run `aads ood calibrate`"
            )
        features, logits = self.features_and_logits(pixel_values)
        return self.ood.verdicts(features.double().numpy(), logits.double().numpy())


def load_adapter(
    pkg_dir: Path,
    storage: StorageSettings | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    verify: bool = True,
    merge: bool = True,
    gradient_checkpointing: bool = False,
) -> LoadedAdapter:
    """The package at `pkg_dir` as a network in eval mode on `device`.

    ``merge=False`` keeps SD-LoRA as layers (phase 2 continues training them); serving merges,
    and so does a phase-3 package, whose CONEC layers wrap the merged projections.
    """
    pkg_dir = Path(pkg_dir)
    if verify:
        verify_package(pkg_dir)
    meta = read_meta(pkg_dir)
    backbone = package_backbone(
        meta, storage, device=device, dtype=dtype, gradient_checkpointing=gradient_checkpointing
    )
    model = backbone.model
    if (pkg_dir / ADAPTER_DIR).is_dir():
        model = merge_dora(load_dora(model, pkg_dir))
    sd_lora = read_tensors(pkg_dir, SD_LORA_FILE)
    conec_tensors = read_tensors(pkg_dir, CONEC_FILE)
    if sd_lora is not None:
        targets = sorted({k.split(SD_LORA_SUFFIX)[0] for k in sd_lora})
        apply_sd_lora(model, targets)
        load_sd_lora_state_dict(model, sd_lora)
        if merge or conec_tensors is not None:  # CONEC wraps the same projections: merge first
            merge_sd_lora(model)
    model.requires_grad_(False)
    heads = read_tensors(pkg_dir, HEADS_FILE) or {}
    head = _linear(heads, "head.0", len(meta.classes), backbone)
    state: ConecState | None = None
    if conec_tensors is not None:
        settings = CONECSettings(**meta.adapter_settings["conec"])
        state = apply_conec(model, settings, pooling=backbone.pooling)
        conec_heads = ConecHeads(head)
        load_conec_state_dict(state, conec_tensors, heads=conec_heads)
        state.use_selector()
        network: nn.Module = ConecClassifier(model, state, conec_heads)
    else:
        network = AdapterClassifier(model, head, backbone.pooling, backbone.prefix_tokens)
    network = network.to(device=backbone.device, dtype=backbone.dtype).eval()
    backbone.model = model
    ood = load_detector(pkg_dir / OOD_DIR)
    if ood is not None and ood.classes != meta.classes:
        raise PackageError(
            f"{pkg_dir}: OOD calibration is for classes {ood.classes}, the head has "
            f"{meta.classes}: recalibrate after training"
        )
    return LoadedAdapter(meta, backbone, network, state, ood)


def _linear(
    tensors: dict[str, torch.Tensor], prefix: str, classes: int, backbone: Backbone
) -> nn.Linear:
    try:
        weight, bias = tensors[f"{prefix}.weight"], tensors[f"{prefix}.bias"]
    except KeyError:
        raise PackageError(f"{HEADS_FILE} has no {prefix}.weight/.bias") from None
    if weight.shape != (classes, backbone.feature_dim):
        raise PackageError(
            f"{prefix} has shape {tuple(weight.shape)}, expected ({classes}, "
            f"{backbone.feature_dim}) for {classes} classes on this backbone"
        )
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head
