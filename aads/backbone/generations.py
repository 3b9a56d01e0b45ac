"""What differs between the DINOv3 and DINOv2 backbone generations, in one place.

DINOv2 is the fallback when DINOv3's gated weights cannot be used: its weights are Apache-2.0
and not gated. The rest of AADS asks this module instead of testing model types itself, so
a third generation would be one more row here, not a hunt through the adapters.

Facts checked in transformers 5 (``Dinov2Model``, ``DINOv3ViTModel``):

- Blocks live at ``model.layer`` (DINOv3) and ``encoder.layer`` (DINOv2).
- Attention projections are ``attention.{q,k,v,o}_proj`` in both: transformers 5 renames
  DINOv2's checkpoint names (``attention.attention.query``, ``attention.output.dense``) on
  load and back on save. The GELU MLP is ``mlp.{up,down}_proj`` in DINOv3 but ``mlp.{fc1,fc2}``
  in DINOv2; SwiGLU MLPs are ``mlp.{gate,up,down}_proj`` in both (DINOv2's fused
  ``weights_in`` is split on load).
- Tokens before the patches: CLS + 4 registers (DINOv3), CLS only (DINOv2).
- Patch 16 with RoPE (DINOv3); patch 14 with learned position embeddings (DINOv2, trained at
  518 px and interpolated bicubically to any other grid).

AADS names LoRA modules by role with DINOv3's names (`aads.adapters.config.LoraModule`);
`module_names` maps them to the names a given model really uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from torch import nn

from .errors import BackboneError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Generation = Literal["dinov3", "dinov2"]


@dataclass(frozen=True)
class GenerationFacts:
    """One generation's layout and terms of use."""

    name: Generation
    title: str
    model_types: tuple[str, ...]
    patch_size: int
    register_tokens: int
    blocks_path: str
    gelu_mlp_names: dict[str, str] = field(default_factory=dict)
    licence: str = ""
    gated: bool = False
    hub_prefix: str = ""
    image_processor: str = ""


DINOV3 = GenerationFacts(
    name="dinov3",
    title="DINOv3",
    model_types=("dinov3_vit", "dinov3_convnext"),
    patch_size=16,
    register_tokens=4,
    blocks_path="model.layer",
    licence="DINOv3 License",
    gated=True,
    hub_prefix="facebook/dinov3-",
    image_processor="DINOv3ViTImageProcessorFast",
)
DINOV2 = GenerationFacts(
    name="dinov2",
    title="DINOv2",
    model_types=("dinov2",),
    patch_size=14,
    register_tokens=0,
    blocks_path="encoder.layer",
    gelu_mlp_names={"up_proj": "fc1", "down_proj": "fc2"},
    licence="Apache-2.0",
    gated=False,
    hub_prefix="facebook/dinov2-",
    image_processor="BitImageProcessor",
)
GENERATIONS: dict[Generation, GenerationFacts] = {g.name: g for g in (DINOV3, DINOV2)}
_BY_MODEL_TYPE = {t: g for g in GENERATIONS.values() for t in g.model_types}


def generation_of(config: PretrainedConfig) -> GenerationFacts:
    """The generation of a Hugging Face config; `BackboneError` for any other model type."""
    try:
        return _BY_MODEL_TYPE[config.model_type]
    except KeyError:
        raise BackboneError(
            f"'{config.model_type}' is neither a DINOv3 nor a DINOv2 model type "
            f"({', '.join(_BY_MODEL_TYPE)})"
        ) from None


def is_swiglu(config: PretrainedConfig) -> bool:
    """True for gated (SwiGLU) MLPs: DINOv3 ``use_gated_mlp``, DINOv2 ``use_swiglu_ffn``."""
    return bool(getattr(config, "use_gated_mlp", False) or getattr(config, "use_swiglu_ffn", False))


def prefix_token_count(config: PretrainedConfig) -> int:
    """Tokens before the patch tokens in ``last_hidden_state``: CLS plus register tokens for a
    ViT (5 for DINOv3, 1 for DINOv2), the pooled vector for a ConvNeXt (1)."""
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def module_names(config: PretrainedConfig) -> dict[str, str]:
    """Role name (``up_proj``) -> this model's module name (``fc1`` on a GELU DINOv2).

    Only names that differ are listed; every other role is its own name.
    """
    facts = generation_of(config)
    return {} if is_swiglu(config) else dict(facts.gelu_mlp_names)


def vit_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a DINOv3 or DINOv2 ViT, in order; `BackboneError` otherwise
    (a ConvNeXt, or a model that is not a backbone)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    facts = _BY_MODEL_TYPE.get(str(model_type))
    try:
        blocks = model.get_submodule(facts.blocks_path) if facts else None
    except AttributeError:
        blocks = None
    if not isinstance(blocks, nn.ModuleList):
        raise BackboneError(
            f"{type(model).__name__} is not a DINOv3 or DINOv2 ViT: no transformer blocks at "
            "model.layer (DINOv3) or encoder.layer (DINOv2)"
        )
    return blocks
