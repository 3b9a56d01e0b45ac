"""DINOv3 backbones, and DINOv2 as the ungated fallback: the variant table, loading from the
Hub / a directory / an ``s3://`` mirror / ``random:<preset>``, preprocessing, pooled features
and LoRA target selection. What differs between the two generations is in `generations`.

Typical use::

    backbone = load_backbone(settings.router, settings.storage)
    feats = FeatureExtractor(backbone, batch_size=64).extract_images(paths)
"""

from .base import Backbone, Pooling
from .device import resolve_device, resolve_dtype
from .errors import BackboneError, BackboneNotAvailable, ImageDecodeError
from .features import (
    FeatureExtractor,
    extract_features,
    feature_dim,
    forward_features,
    pool_tokens,
)
from .generations import (
    DINOV2,
    DINOV3,
    GENERATIONS,
    Generation,
    GenerationFacts,
    generation_of,
    prefix_token_count,
    vit_blocks,
)
from .loading import load_backbone, load_local_dir, save_backbone, source_kind
from .normalization import (
    LVD142M,
    LVD1689M,
    NORMALIZATIONS,
    SAT493M,
    Normalization,
    normalization_for,
)
from .preprocess import (
    ImageInput,
    open_image,
    preprocess_batch,
    preprocess_image,
    rgb_tensor,
    to_rgb,
)
from .presets import PRESETS, build_random_model, preset_config
from .targets import lora_target_regex, lora_target_regex_for, resolve_lora_targets, target_names
from .variants import (
    MODEL_TYPES,
    VARIANTS,
    VARIANTS_BY_ID,
    VARIANTS_BY_KEY,
    Variant,
    find_variant,
    get_variant,
)

__all__ = [
    "DINOV2",
    "DINOV3",
    "GENERATIONS",
    "LVD142M",
    "LVD1689M",
    "MODEL_TYPES",
    "NORMALIZATIONS",
    "PRESETS",
    "SAT493M",
    "VARIANTS",
    "VARIANTS_BY_ID",
    "VARIANTS_BY_KEY",
    "Backbone",
    "BackboneError",
    "BackboneNotAvailable",
    "FeatureExtractor",
    "Generation",
    "GenerationFacts",
    "ImageDecodeError",
    "ImageInput",
    "Normalization",
    "Pooling",
    "Variant",
    "build_random_model",
    "extract_features",
    "feature_dim",
    "find_variant",
    "forward_features",
    "generation_of",
    "get_variant",
    "load_backbone",
    "load_local_dir",
    "lora_target_regex",
    "lora_target_regex_for",
    "normalization_for",
    "open_image",
    "pool_tokens",
    "prefix_token_count",
    "preprocess_batch",
    "preprocess_image",
    "preset_config",
    "resolve_device",
    "resolve_dtype",
    "resolve_lora_targets",
    "rgb_tensor",
    "save_backbone",
    "source_kind",
    "target_names",
    "to_rgb",
    "vit_blocks",
]
