"""The table of real DINOv3 and DINOv2 checkpoints: one frozen record per Hugging Face id.

DINOv3 facts come from DESIGN.md section 2 and the authors' hub definitions
(facebookresearch/dinov3 ``hub/backbones.py``); DINOv2 (the ungated Apache-2.0 fallback) from
the ``facebook/dinov2-*`` configs on the Hub and facebookresearch/dinov2 ``hub/backbones.py``.
Parameter counts are computed from the shapes, and a test checks them against a model built
on the meta device. The seed plan's size-word DINOv3 ids (a size word where the architecture
name belongs) do not exist and are not here; DINOv2's ids really are size words.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .errors import BackboneError
from .generations import DINOV2, DINOV3, Generation
from .normalization import NORMALIZATIONS, Dataset, Normalization

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Family = Literal["vit", "convnext"]
MODEL_TYPES: dict[str, Family] = {
    "dinov3_vit": "vit",
    "dinov3_convnext": "convnext",
    "dinov2": "vit",
}
"""Hugging Face ``model_type`` values we load, and the architecture family each one is (the
generation, DINOv3 or DINOv2, is `aads.backbone.generations.generation_of`)."""

LICENCE = DINOV3.licence
PATCH_SIZE = DINOV3.patch_size
REGISTER_TOKENS = DINOV3.register_tokens
DINOV2_IMAGE_SIZE = 518
"""Resolution DINOv2's learned position embeddings were trained at (37 x 37 patches of 14)."""


@dataclass(frozen=True)
class Variant:
    """One released DINOv3 or DINOv2 backbone.

    ``width`` is the feature width (last stage for ConvNeXt); ``depth`` counts transformer
    blocks (ViT) or all ConvNeXt blocks. ``mlp_size`` is the hidden width of a block's MLP:
    for SwiGLU that is the size of each of gate/up, which is why vits16plus (ratio 6, x 2/3)
    has the same 1536 as the GELU vits16, and DINOv2's giant (ratio 4 of 1536, x 2/3, rounded
    up to a multiple of 8) has 4096. ``image_size`` is the resolution of learned position
    embeddings (DINOv2); None for RoPE (DINOv3), which has no such parameters.
    """

    key: str
    hf_id: str
    family: Family
    width: int
    depth: int
    dataset: Dataset
    heads: int | None = None
    mlp: Literal["gelu", "swiglu"] | None = None
    mlp_size: int | None = None
    patch_size: int | None = PATCH_SIZE
    register_tokens: int = REGISTER_TOKENS
    qkv_bias: bool = True
    stage_widths: tuple[int, ...] = field(default=())
    stage_depths: tuple[int, ...] = field(default=())
    licence: str = LICENCE
    gated: bool = True
    generation: Generation = "dinov3"
    image_size: int | None = None

    @property
    def normalization(self) -> Normalization:
        return NORMALIZATIONS[self.dataset]

    @property
    def num_parameters(self) -> int:
        """Trainable parameter count of the Hugging Face model (no head), from the shape."""
        if self.family == "convnext":
            return _convnext_parameters(self.stage_widths, self.stage_depths)
        assert self.mlp is not None and self.mlp_size is not None
        d, h = self.width, self.mlp_size
        # DINOv3 has no key bias (q, v biases follow qkv_bias); DINOv2 has all three. o has one.
        qkv_biases = (3 if self.generation == "dinov2" else 2) if self.qkv_bias else 0
        qkvo = 4 * d * d + d * (qkv_biases + 1)
        mlp = (2 if self.mlp == "swiglu" else 1) * (d * h + h) + h * d + d
        block = 2 * d + qkvo + d + 2 * d + mlp + d  # norm1, attn, ls1, norm2, mlp, ls2
        p = self.patch_size or PATCH_SIZE
        embed = 3 * p * p * d + d + (2 + self.register_tokens) * d  # conv, cls, mask, registers
        if self.image_size is not None:  # learned positions: CLS + one per patch
            embed += (1 + (self.image_size // p) ** 2) * d
        return embed + self.depth * block + 2 * d

    def hf_config(self) -> PretrainedConfig:
        """The Hugging Face config of this checkpoint's shape (what ``random:<key>`` builds)."""
        from transformers import Dinov2Config, DINOv3ConvNextConfig, DINOv3ViTConfig

        if self.generation == "dinov2":
            # As the Hub configs: the MLP width follows mlp_ratio (SwiGLU: x 2/3, rounded up).
            return Dinov2Config(
                patch_size=self.patch_size,
                image_size=self.image_size,
                hidden_size=self.width,
                num_hidden_layers=self.depth,
                num_attention_heads=self.heads,
                mlp_ratio=4,
                use_swiglu_ffn=self.mlp == "swiglu",
                qkv_bias=self.qkv_bias,
                layerscale_value=1.0,
            )
        if self.family == "convnext":
            return DINOv3ConvNextConfig(
                hidden_sizes=list(self.stage_widths), depths=list(self.stage_depths)
            )
        gated = self.mlp == "swiglu"
        return DINOv3ViTConfig(
            patch_size=self.patch_size or PATCH_SIZE,
            hidden_size=self.width,
            intermediate_size=self.mlp_size,
            num_hidden_layers=self.depth,
            num_attention_heads=self.heads,
            hidden_act="silu" if gated else "gelu",
            use_gated_mlp=gated,
            num_register_tokens=self.register_tokens,
            query_bias=self.qkv_bias,
            key_bias=False,
            value_bias=self.qkv_bias,
        )


def _convnext_parameters(widths: tuple[int, ...], depths: tuple[int, ...]) -> int:
    total = 3 * 4 * 4 * widths[0] + widths[0] + 2 * widths[0]  # stem conv + its LayerNorm
    for i, (c, n) in enumerate(zip(widths, depths, strict=True)):
        if i:
            total += 2 * widths[i - 1] + 4 * widths[i - 1] * c + c  # LayerNorm + 2x2 conv
        total += n * (8 * c * c + 58 * c)  # dwconv 7x7, LN, 4x MLP, layer scale
    return total + 2 * widths[-1]  # final LayerNorm


def _vit(key: str, width: int, depth: int, heads: int, mlp: str, mlp_size: int, **kw) -> Variant:
    dataset = kw.pop("dataset", "lvd1689m")
    name = key.removesuffix(f"_{dataset}")
    return Variant(
        key=key,
        hf_id=f"facebook/dinov3-{name}-pretrain-{dataset}",
        family="vit",
        width=width,
        depth=depth,
        heads=heads,
        mlp=mlp,  # type: ignore[arg-type]
        mlp_size=mlp_size,
        dataset=dataset,
        **kw,
    )


def _convnext(size: str, widths: tuple[int, ...], depths: tuple[int, ...]) -> Variant:
    return Variant(
        key=f"convnext_{size}",
        hf_id=f"facebook/dinov3-convnext-{size}-pretrain-lvd1689m",
        family="convnext",
        width=widths[-1],
        depth=sum(depths),
        dataset="lvd1689m",
        patch_size=None,
        register_tokens=0,
        stage_widths=widths,
        stage_depths=depths,
    )


def _dinov2(size: str, width: int, depth: int, heads: int, mlp: str, mlp_size: int) -> Variant:
    """A DINOv2 checkpoint; the key is the authors' torch.hub name (``dinov2_vitb14``)."""
    return Variant(
        key=f"dinov2_vit{size[0]}14",
        hf_id=f"{DINOV2.hub_prefix}{size}",
        family="vit",
        width=width,
        depth=depth,
        heads=heads,
        mlp=mlp,  # type: ignore[arg-type]
        mlp_size=mlp_size,
        dataset="lvd142m",
        patch_size=DINOV2.patch_size,
        register_tokens=DINOV2.register_tokens,
        licence=DINOV2.licence,
        gated=DINOV2.gated,
        generation="dinov2",
        image_size=DINOV2_IMAGE_SIZE,
    )


VARIANTS: tuple[Variant, ...] = (
    _vit("vits16", 384, 12, 6, "gelu", 1536),
    _vit("vits16plus", 384, 12, 6, "swiglu", 1536),
    _vit("vitb16", 768, 12, 12, "gelu", 3072),
    _vit("vitl16", 1024, 24, 16, "gelu", 4096),
    _vit("vitl16_sat493m", 1024, 24, 16, "gelu", 4096, dataset="sat493m"),
    _vit("vith16plus", 1280, 32, 20, "swiglu", 5120),
    _vit("vit7b16", 4096, 40, 32, "swiglu", 8192, qkv_bias=False),
    _vit("vit7b16_sat493m", 4096, 40, 32, "swiglu", 8192, qkv_bias=False, dataset="sat493m"),
    _convnext("tiny", (96, 192, 384, 768), (3, 3, 9, 3)),
    _convnext("small", (96, 192, 384, 768), (3, 3, 27, 3)),
    _convnext("base", (128, 256, 512, 1024), (3, 3, 27, 3)),
    _convnext("large", (192, 384, 768, 1536), (3, 3, 27, 3)),
    _dinov2("small", 384, 12, 6, "gelu", 1536),
    _dinov2("base", 768, 12, 12, "gelu", 3072),
    _dinov2("large", 1024, 24, 16, "gelu", 4096),
    _dinov2("giant", 1536, 40, 24, "swiglu", 4096),
)
VARIANTS_BY_ID: dict[str, Variant] = {v.hf_id: v for v in VARIANTS}
VARIANTS_BY_KEY: dict[str, Variant] = {v.key: v for v in VARIANTS}


def find_variant(hf_id: str) -> Variant | None:
    """The variant with exactly this Hugging Face id, or None (fine-tunes, local dirs)."""
    return VARIANTS_BY_ID.get(hf_id)


def get_variant(hf_id: str) -> Variant:
    """The variant with exactly this id; a `BackboneError` listing the real ids otherwise."""
    variant = find_variant(hf_id)
    if variant is None:
        raise BackboneError(unknown_id_message(hf_id))
    return variant


def looks_like_fake_dinov3_id(hf_id: str) -> bool:
    """True for ids that imitate an official DINOv3 checkpoint but are not one, such as the
    seed plan's size-word ids: worth refusing before any download."""
    name = hf_id.lower()
    official_looking = name.startswith("facebook/dinov3")
    invented_size = any(f"dinov3-{s}" in name for s in ("small", "base", "large", "giant", "huge"))
    return hf_id not in VARIANTS_BY_ID and (official_looking or invented_size)


def unknown_id_message(hf_id: str) -> str:
    # A DINOv3 typo should not be answered with the DINOv2 id one letter away.
    same_generation = [
        i
        for i in VARIANTS_BY_ID
        if not hf_id.lower().startswith(DINOV3.hub_prefix) or i.startswith(DINOV3.hub_prefix)
    ]
    close = difflib.get_close_matches(hf_id, same_generation, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"'{hf_id}' is not a DINOv3 checkpoint: ids with a size word instead of the architecture "
        f"(vits16, vitb16, vitl16, ...) do not exist (size words name DINOv2 ids only).{hint} "
        "The real ids are:\n  " + "\n  ".join(VARIANTS_BY_ID)
    )
