"""`Backbone`: a loaded DINOv3 or DINOv2 model together with everything needed to feed it
correctly.

Keeping the module, its normalisation, input size, pooling, device and dtype in one object
means preprocessing and feature extraction cannot disagree with the model they serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .generations import GenerationFacts, generation_of, prefix_token_count
from .normalization import Normalization
from .variants import MODEL_TYPES, Family, Variant

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Pooling = Literal["cls", "cls_mean"]


@dataclass
class Backbone:
    """A DINOv3 or DINOv2 model ready for inference (eval mode, on `device` in `dtype`).

    ``source`` is canonical: a Hub id (``id@revision`` when pinned), an absolute directory, an
    ``s3://bucket/prefix`` without trailing slash, or ``random:<preset>@seed=<n>``. ``variant``
    is the released checkpoint this is, when known (never for random weights).
    """

    model: torch.nn.Module
    config: PretrainedConfig
    variant: Variant | None
    normalization: Normalization
    image_size: int
    pooling: Pooling
    device: torch.device
    dtype: torch.dtype
    source: str

    @property
    def family(self) -> Family:
        return MODEL_TYPES[self.config.model_type]

    @property
    def generation(self) -> GenerationFacts:
        """DINOv3 or DINOv2: token layout, module names, licence."""
        return generation_of(self.config)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.normalization.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.normalization.std

    @property
    def width(self) -> int:
        """Width of one token / the CLS vector."""
        if self.family == "convnext":
            return int(self.config.hidden_sizes[-1])
        return int(self.config.hidden_size)

    @property
    def depth(self) -> int:
        """Transformer blocks (ViT) or all ConvNeXt blocks."""
        if self.family == "convnext":
            return int(sum(self.config.depths))
        return int(self.config.num_hidden_layers)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens in ``last_hidden_state``: CLS + 4 registers for a
        DINOv3 ViT, CLS alone for DINOv2, the pooled vector for ConvNeXt."""
        return prefix_token_count(self.config)

    @property
    def feature_dim(self) -> int:
        return self.width * (2 if self.pooling == "cls_mean" else 1)
