"""``random:<preset>`` scouting models: real architectures with seeded random weights.

Nothing can download weights here, so tests, the demo and benchmarks run the production code
path on models built in code. ``tiny`` of each model runs in milliseconds on a CPU; the other
presets are the published shapes (for GPU benchmarks with ``benchmarks/vlm.py --real-shapes``):

- Grounding DINO: ``swin_t`` = IDEA-Research/grounding-dino-tiny (Swin-T + BERT-base, 900
  queries, 6 + 6 layers). The vision backbone is transformers' own Swin (`AutoBackbone`), never
  timm.
- SAM-2: ``hiera_tiny``, ``hiera_small``, ``hiera_base_plus``, ``hiera_large`` (the shapes of
  transformers' SAM-2 conversion script), 1024 x 1024 input.
- BioCLIP: ``vitl14`` = BioCLIP 2 (CLIP ViT-L/14, 224 px, 768-d embeddings, GELU),
  ``vitb16`` = BioCLIP 1 (ViT-B/16, 512-d).

Weights are a pure function of (preset, seed) and building never touches the caller's RNG.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aads.backbone.presets import seeded

from .errors import VLMError
from .vocab import BERT_BASE_VOCAB, bert_tokenizer, load_clip_tokenizer, write_clip_bpe

if TYPE_CHECKING:
    from transformers import (
        CLIPConfig,
        GroundingDinoConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        Sam2Config,
    )


@dataclass(frozen=True)
class DetectorPreset:
    config: Callable[[], GroundingDinoConfig]
    vocab_size: int
    shortest_edge: int
    longest_edge: int


@dataclass(frozen=True)
class ClipPreset:
    config: Callable[[int], CLIPConfig]  # vocabulary size -> config
    vocab_size: int | None  # None: just the in-code BPE


def _unknown(kind: str, preset: str, presets: dict) -> VLMError:
    return VLMError(
        f"{kind}: unknown random preset '{preset}'; presets: {', '.join(sorted(presets))}"
    )


# --------------------------------------------------------------------------- Grounding DINO


def _gd_tiny() -> GroundingDinoConfig:
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    return GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 2, 2],
            window_size=4,
            image_size=64,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=1100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        num_queries=30,
        encoder_layers=1,
        decoder_layers=2,  # the tied bbox heads need at least two decoder layers
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        d_model=64,  # its GroupNorms have 32 groups: 2 channels each survive a 1x1 map
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=64,
    )


def _gd_swin_t() -> GroundingDinoConfig:
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig()  # the defaults are grounding-dino-tiny: Swin-T + BERT-base


DETECTOR_PRESETS: dict[str, DetectorPreset] = {
    "tiny": DetectorPreset(_gd_tiny, 1100, 64, 128),
    "swin_t": DetectorPreset(_gd_swin_t, BERT_BASE_VOCAB, 800, 1333),
}


def build_grounding_dino(
    preset: str, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, DetectorPreset]:
    from transformers import GroundingDinoForObjectDetection

    if preset not in DETECTOR_PRESETS:
        raise _unknown("grounding_dino", preset, DETECTOR_PRESETS)
    spec = DETECTOR_PRESETS[preset]
    model = seeded(lambda: GroundingDinoForObjectDetection(spec.config()), seed)
    return model.float().eval(), bert_tokenizer(spec.vocab_size), spec


# --------------------------------------------------------------------------- SAM-2


def _sam2_tiny() -> Sam2Config:
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    side = 64
    hiera = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=[side, side],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 2],
        global_attention_blocks=[3],  # never a stage's first (pooling) block
        window_positional_embedding_background_size=[4, 4],
    )
    return Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=hiera,
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=32, image_size=side, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32,
            mlp_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )


def _sam2_real(**hiera: Any) -> Callable[[], Sam2Config]:
    def build() -> Sam2Config:
        from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

        channels = list(reversed(hiera.get("embed_dim_per_stage", [96, 192, 384, 768])))
        vision = Sam2VisionConfig(
            backbone_config=Sam2HieraDetConfig(**hiera), backbone_channel_list=channels
        )
        return Sam2Config(vision_config=vision)

    return build


SAM2_PRESETS: dict[str, Callable[[], Sam2Config]] = {
    "tiny": _sam2_tiny,
    "hiera_tiny": _sam2_real(),
    "hiera_small": _sam2_real(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]),
    "hiera_base_plus": _sam2_real(
        hidden_size=112,
        embed_dim_per_stage=[112, 224, 448, 896],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        blocks_per_stage=[2, 3, 16, 3],
        global_attention_blocks=[12, 16, 20],
        window_positional_embedding_background_size=[14, 14],
    ),
    "hiera_large": _sam2_real(
        hidden_size=144,
        embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        blocks_per_stage=[2, 6, 36, 4],
        global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7],
        window_size_per_stage=[8, 4, 16, 8],
    ),
}


def build_sam2(preset: str, seed: int = 0) -> PreTrainedModel:
    from transformers import Sam2Model

    if preset not in SAM2_PRESETS:
        raise _unknown("sam2", preset, SAM2_PRESETS)
    config = SAM2_PRESETS[preset]()
    return seeded(lambda: Sam2Model(config), seed).float().eval()


# --------------------------------------------------------------------------- BioCLIP (CLIP)


def clip_config(
    *,
    vocab_size: int,
    embed_dim: int,
    vision: dict[str, int],
    text: dict[str, int],
    hidden_act: str = "gelu",
) -> CLIPConfig:
    """A transformers CLIPConfig from open_clip-style sizes; end-of-text is the last id."""
    from transformers import CLIPConfig

    def tower(width: int, layers: int, heads: int, mlp: int) -> dict[str, Any]:
        return {
            "hidden_size": width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": mlp,
            "hidden_act": hidden_act,
            "layer_norm_eps": 1e-5,
            "projection_dim": embed_dim,
        }

    return CLIPConfig(
        vision_config={
            **tower(vision["width"], vision["layers"], vision["heads"], vision["mlp"]),
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
        },
        text_config={
            **tower(text["width"], text["layers"], text["heads"], text["mlp"]),
            "vocab_size": vocab_size,
            "max_position_embeddings": text["context_length"],
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        projection_dim=embed_dim,
    )


def _clip_tiny(vocab_size: int) -> CLIPConfig:
    return clip_config(
        vocab_size=vocab_size,
        embed_dim=24,
        vision={"width": 32, "layers": 2, "heads": 2, "mlp": 64, "image_size": 32, "patch_size": 8},
        text={"width": 32, "layers": 2, "heads": 2, "mlp": 64, "context_length": 77},
    )


def _clip_vitl14(vocab_size: int) -> CLIPConfig:
    return clip_config(
        vocab_size=vocab_size,
        embed_dim=768,
        vision={
            "width": 1024,
            "layers": 24,
            "heads": 16,
            "mlp": 4096,
            "image_size": 224,
            "patch_size": 14,
        },
        text={"width": 768, "layers": 12, "heads": 12, "mlp": 3072, "context_length": 77},
    )


def _clip_vitb16(vocab_size: int) -> CLIPConfig:
    return clip_config(
        vocab_size=vocab_size,
        embed_dim=512,
        vision={
            "width": 768,
            "layers": 12,
            "heads": 12,
            "mlp": 3072,
            "image_size": 224,
            "patch_size": 16,
        },
        text={"width": 512, "layers": 12, "heads": 8, "mlp": 2048, "context_length": 77},
        hidden_act="quick_gelu",
    )


CLIP_PRESETS: dict[str, ClipPreset] = {
    "tiny": ClipPreset(_clip_tiny, None),
    "vitl14": ClipPreset(_clip_vitl14, 49408),
    "vitb16": ClipPreset(_clip_vitb16, 49408),
}


def build_clip(preset: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random CLIPModel and the in-code BPE tokenizer sized to its vocabulary."""
    from transformers import CLIPModel

    if preset not in CLIP_PRESETS:
        raise _unknown("bioclip", preset, CLIP_PRESETS)
    spec = CLIP_PRESETS[preset]
    with tempfile.TemporaryDirectory(prefix="aads-clip-bpe-") as tmp:
        write_clip_bpe(Path(tmp), size=spec.vocab_size)
        tokenizer = load_clip_tokenizer(Path(tmp))
    config = spec.config(len(tokenizer))
    return seeded(lambda: CLIPModel(config), seed).float().eval(), tokenizer
