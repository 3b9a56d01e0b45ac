"""A crop adapter's network: backbone (with whatever adapters it carries) -> pooled -> head.

Pooling matches `aads.backbone.pool_tokens` (CLS or CLS + mean patch token), so the features a
head is trained on are the ones feature caches, OOD prototypes and serving compute.
"""

from __future__ import annotations

import torch
from torch import nn

from aads.adapters.conec.model import ConecHeads, ConecState, conec_logits
from aads.backbone import Pooling, pool_tokens


class AdapterClassifier(nn.Module):
    """Pixels in, disease logits out; `features` exposes the pooled vector for OOD fitting."""

    def __init__(self, backbone: nn.Module, head: nn.Module, pooling: Pooling, prefix_tokens: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pooling: Pooling = pooling
        self.prefix_tokens = prefix_tokens

    def train(self, mode: bool = True) -> AdapterClassifier:
        """Train mode everywhere except RoPE: DINOv3 randomly rescales its RoPE coordinates in
        training mode (a pretraining augmentation, ``pos_embed_rescale``), so fine-tuning with
        it on would train on other position encodings than evaluation and serving use."""
        super().train(mode)
        freeze_rope_augmentation(self)
        return self

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=pixel_values)
        return pool_tokens(out.last_hidden_state, self.pooling, self.prefix_tokens)

    def features_and_logits(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one forward: serving needs the logits and the OOD check the features."""
        features = self.features(pixel_values)
        return features, self.head(features)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))


def grow_head(head: nn.Linear, new_classes: int) -> nn.Linear:
    """A head with `new_classes` extra outputs; old rows copied, new rows zero-initialised so
    the new classes start with no preference (their bias is the old rows' mean bias)."""
    grown = nn.Linear(head.in_features, head.out_features + new_classes).to(
        device=head.weight.device, dtype=head.weight.dtype
    )
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: head.out_features] = head.weight
        grown.bias.fill_(float(head.bias.mean()))
        grown.bias[: head.out_features] = head.bias
    return grown


def freeze_rope_augmentation(model: nn.Module) -> None:
    for module in model.modules():
        if type(module).__name__.endswith("RopePositionEmbedding"):
            module.eval()


class ConecClassifier(nn.Module):
    """Phase 3 network: CONEC-routed backbone, each sample scored by its domain's head."""

    def __init__(self, backbone: nn.Module, state: ConecState, heads: ConecHeads):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.state = state

    def train(self, mode: bool = True) -> ConecClassifier:
        super().train(mode)
        freeze_rope_augmentation(self)
        return self

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=pixel_values)
        return pool_tokens(out.last_hidden_state, self.state.pooling, self.state.prefix_tokens)

    def features_and_logits(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One routed forward: pooled features and each sample's domain-head logits."""
        features = self.features(pixel_values)
        return features, self.heads(features, self.state.routing.domain_ids)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return conec_logits(self.backbone, self.state, self.heads, pixel_values)
