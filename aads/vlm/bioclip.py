"""BioCLIP 2 without open_clip: its open_clip checkpoint converted to transformers' CLIPModel.

BioCLIP 2 (imageomics/bioclip-2) is published as an open_clip ViT-L/14, and open_clip needs
torchvision, which is unusable here. The two layouts hold the same tensors: open_clip fuses
q, k and v into one ``in_proj`` (rows q, then k, then v, as ``nn.MultiheadAttention``) and
stores the projections as ``x @ proj`` matrices, the transpose of a ``Linear`` weight.
`convert_open_clip_state_dict` renames, splits and transposes, and refuses a checkpoint whose
keys do not match, listing the missing and unexpected ones (a silently random tower would
still produce confident-looking probabilities).

The architecture comes from ``open_clip_config.json`` when the checkpoint ships one, else it
is read off the tensor shapes (heads = width / 64, true of the OpenAI and LAION towers).
Weights are read from safetensors only. A folder already in transformers' layout
(``config.json`` with ``model_type: clip``) loads as is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from aads.config import StorageSettings
from aads.model_sources import (
    load_pretrained,
    random_preset,
    read_json,
    safetensors_files,
    source_dir,
)

from .errors import VLMError, model_kind
from .preprocess import OPENAI_CLIP, Normalisation, resize_center_crop, resize_square, to_tensor
from .settings import BioCLIPSettings
from .vocab import load_clip_tokenizer

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

BIOCLIP = model_kind("bioclip")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
IGNORED_KEYS = {"attn_mask"}
"""Buffers older open_clip versions saved; rebuilt by the model, not weights."""
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")
_UNSUPPORTED = {
    "vision_cfg": (
        "attentional_pool",
        "global_average_pool",
        "no_ln_pre",
        "final_ln_after_pool",
        "ls_init_value",
        "timm_model_name",
    ),
    "text_cfg": ("hf_model_name", "no_causal_mask", "proj_bias", "embed_cls", "ls_init_value"),
}


class OpenClipKeyError(VLMError):
    """An open_clip state dict that does not fit the CLIP architecture it should fill."""

    def __init__(self, message: str, *, missing: list[str], unexpected: list[str]) -> None:
        super().__init__(message)
        self.missing, self.unexpected = missing, unexpected


# --------------------------------------------------------------------------- architecture


def _layers(state_dict: Mapping[str, torch.Tensor], visual: bool) -> int:
    indices = {
        int(m.group(2)) for k in state_dict if (m := _BLOCK.match(k)) and bool(m.group(1)) == visual
    }
    return max(indices) + 1 if indices else 0


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise OpenClipKeyError(
            f"bioclip: not an open_clip CLIP state dict: '{key}' is missing",
            missing=[key],
            unexpected=[],
        )
    return state_dict[key]


def open_clip_sizes(
    state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The tower sizes of an open_clip CLIP: read off the tensors, checked against
    ``model_cfg`` (``open_clip_config.json``'s ``model_cfg``) where it states them; heads come
    from the config (open_clip: vision width / head_width, text ``heads``) or width / 64."""
    cfg = dict(model_cfg or {})
    vcfg, tcfg = dict(cfg.get("vision_cfg") or {}), dict(cfg.get("text_cfg") or {})
    for section, keys in _UNSUPPORTED.items():
        used = [k for k in keys if (vcfg if section == "vision_cfg" else tcfg).get(k)]
        if used:
            raise VLMError(f"bioclip: open_clip {section} options {used} are not supported")
    conv = _require(state_dict, "visual.conv1.weight")
    token = _require(state_dict, "token_embedding.weight")
    v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(int(_require(state_dict, "visual.positional_embedding").shape[0]) - 1)
    t_width = int(token.shape[1])
    sizes = {
        "embed_dim": int(_require(state_dict, "visual.proj").shape[1]),
        "vision": {
            "width": v_width,
            "layers": _layers(state_dict, visual=True),
            "heads": v_width // int(vcfg.get("head_width", 64)),
            "mlp": int(
                _require(state_dict, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0]
            ),
            "patch_size": patch,
            "image_size": grid * patch,
        },
        "text": {
            "width": t_width,
            "layers": _layers(state_dict, visual=False),
            "heads": int(tcfg.get("heads", 8 if tcfg else t_width // 64)),
            "mlp": int(_require(state_dict, "transformer.resblocks.0.mlp.c_fc.weight").shape[0]),
            "context_length": int(_require(state_dict, "positional_embedding").shape[0]),
        },
        "vocab_size": int(token.shape[0]),
    }
    stated = {
        "embed_dim": (cfg.get("embed_dim"), sizes["embed_dim"]),
        "vision_cfg.width": (vcfg.get("width"), v_width),
        "vision_cfg.layers": (vcfg.get("layers"), sizes["vision"]["layers"]),
        "vision_cfg.patch_size": (vcfg.get("patch_size"), patch),
        "vision_cfg.image_size": (vcfg.get("image_size"), grid * patch),
        "text_cfg.width": (tcfg.get("width"), t_width),
        "text_cfg.layers": (tcfg.get("layers"), sizes["text"]["layers"]),
        "text_cfg.context_length": (tcfg.get("context_length"), sizes["text"]["context_length"]),
        "text_cfg.vocab_size": (tcfg.get("vocab_size"), sizes["vocab_size"]),
    }
    wrong = {k: v for k, v in stated.items() if v[0] is not None and v[0] != v[1]}
    if wrong:
        details = ", ".join(f"{k}: config {a}, weights {b}" for k, (a, b) in wrong.items())
        raise VLMError(f"bioclip: open_clip_config.json disagrees with the weights ({details})")
    for tower in ("vision", "text"):
        if sizes[tower]["width"] % sizes[tower]["heads"]:
            raise VLMError(f"bioclip: {tower} width is not a multiple of its head count")
    return sizes


def clip_config_for(
    state_dict: Mapping[str, torch.Tensor],
    model_cfg: Mapping[str, Any] | None = None,
    activation: str = "auto",
) -> CLIPConfig:
    """transformers' CLIPConfig for an open_clip state dict (see `open_clip_sizes`)."""
    from .presets import clip_config

    sizes = open_clip_sizes(state_dict, model_cfg)
    if activation == "auto":
        activation = "quick_gelu" if (model_cfg or {}).get("quick_gelu") else "gelu"
    return clip_config(
        vocab_size=sizes["vocab_size"],
        embed_dim=sizes["embed_dim"],
        vision=sizes["vision"],
        text=sizes["text"],
        hidden_act=activation,
    )


# --------------------------------------------------------------------------- key mapping


def _block_map(src: str, dst: str) -> dict[str, str]:
    """open_clip -> transformers names inside one residual block (in_proj handled apart)."""
    pairs = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    return {
        f"{src}.{a}.{p}": f"{dst}.{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")
    }


def convert_open_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: CLIPConfig
) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict in transformers' CLIPModel layout.

    Raises `OpenClipKeyError` listing every open_clip key the architecture needs but the dict
    lacks, and every key it has that nothing maps (e.g. layer scales, a SigLIP logit_bias).
    """
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    renames = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "logit_scale": "logit_scale",
    }
    for p in ("weight", "bias"):
        renames[f"visual.ln_pre.{p}"] = f"vision_model.pre_layrnorm.{p}"
        renames[f"visual.ln_post.{p}"] = f"vision_model.post_layernorm.{p}"
        renames[f"ln_final.{p}"] = f"text_model.final_layer_norm.{p}"
    fused: dict[str, str] = {}  # open_clip in_proj prefix -> transformers self_attn prefix
    towers = (
        ("visual.transformer", "vision_model.encoder", config.vision_config.num_hidden_layers),
        ("transformer", "text_model.encoder", config.text_config.num_hidden_layers),
    )
    for src, dst, depth in towers:
        for i in range(depth):
            renames |= _block_map(f"{src}.resblocks.{i}", f"{dst}.layers.{i}")
            fused[f"{src}.resblocks.{i}.attn"] = f"{dst}.layers.{i}.self_attn"
    transposed = {
        "visual.proj": "visual_projection.weight",
        "text_projection": "text_projection.weight",
    }

    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for src, dst in renames.items():
        if src in sd:
            out[dst] = sd[src]
            used.add(src)
        else:
            missing.append(src)
    for src, dst in transposed.items():
        if src in sd:
            out[dst] = sd[src].t().contiguous()
            used.add(src)
        else:
            missing.append(src)
    for src, dst in fused.items():
        for kind in ("weight", "bias"):
            key = f"{src}.in_proj_{kind}"
            if key not in sd:
                missing.append(key)
                continue
            used.add(key)
            q, k, v = sd[key].chunk(3, dim=0)
            out[f"{dst}.q_proj.{kind}"] = q.contiguous()
            out[f"{dst}.k_proj.{kind}"] = k.contiguous()
            out[f"{dst}.v_proj.{kind}"] = v.contiguous()
    unexpected = sorted(k for k in sd if k not in used and k not in IGNORED_KEYS)
    if missing or unexpected:
        raise OpenClipKeyError(
            "bioclip: the checkpoint does not match a CLIP of "
            f"{config.vision_config.num_hidden_layers} vision / "
            f"{config.text_config.num_hidden_layers} text blocks; "
            f"missing keys ({len(missing)}): {sorted(missing)[:20]}; "
            f"unexpected keys ({len(unexpected)}): {unexpected[:20]}",
            missing=sorted(missing),
            unexpected=unexpected,
        )
    return out


def clip_model_from_open_clip(
    state_dict: Mapping[str, torch.Tensor], config: CLIPConfig
) -> CLIPModel:
    """A CLIPModel holding exactly the converted tensors (shape mismatches are named)."""
    from transformers import CLIPModel

    converted = convert_open_clip_state_dict(state_dict, config)
    model = CLIPModel(config)
    expected = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise VLMError(f"bioclip: tensor shapes do not match the config: {wrong[:10]}")
    result = model.load_state_dict(converted, strict=False)
    absent = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if absent or result.unexpected_keys:  # a mapping bug, not a user error: fail loudly
        raise VLMError(f"bioclip: conversion left {absent} unset, {result.unexpected_keys} unused")
    return model.eval()


# --------------------------------------------------------------------------- the model


@dataclass
class BioCLIP:
    """A CLIP model with its tokenizer and image transform: embeddings and zero-shot scores."""

    model: CLIPModel
    tokenizer: PreTrainedTokenizerBase
    normalisation: Normalisation = OPENAI_CLIP
    resize_mode: str = "shortest"  # open_clip: "shortest" (+ centre crop) or "squash"
    interpolation: str = "bicubic"
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        side, how = self.image_size, self.interpolation
        resize = resize_square if self.resize_mode == "squash" else resize_center_crop
        return torch.stack([to_tensor(resize(im, side, how), self.normalisation) for im in images])

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings (float32, CPU)."""
        if not images:
            return torch.empty(0, self.model.config.projection_dim)
        pixels = self.pixels(images).to(self.device, self.dtype)
        with torch.inference_mode():
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            feats = self.model.visual_projection(pooled)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, D) L2-normalised text embeddings (float32, CPU)."""
        context = int(self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=context,
            return_tensors="pt",
        )
        with torch.inference_mode():
            pooled = self.model.text_model(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
            ).pooler_output
            feats = self.model.text_projection(pooled)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    def probabilities(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Softmax over the texts of the scaled cosine similarities, (N, T)."""
        scale = self.model.logit_scale.detach().float().exp().cpu()
        return (scale * image_embeds @ text_embeds.T).softmax(dim=-1)


def load_bioclip(
    settings: BioCLIPSettings,
    storage: StorageSettings | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> BioCLIP:
    """The BioCLIP model `settings.source` names, on `device` in `dtype`, in eval mode."""
    from .presets import build_clip

    if settings.source is None:
        raise VLMError("bioclip.source is not set")
    preset = random_preset(settings.source)
    if preset is not None:
        model, tokenizer = build_clip(preset, settings.seed)
        bio = BioCLIP(model, tokenizer, source=f"{settings.source}@seed={settings.seed}")
    else:
        folder = source_dir(settings.source, storage, BIOCLIP, revision=settings.revision)
        bio = load_bioclip_dir(folder, activation=settings.activation, dtype=dtype)
        bio.source = settings.source
        if settings.tokenizer is not None:
            tok_dir = source_dir(settings.tokenizer, storage, model_kind("bioclip.tokenizer"))
            bio.tokenizer = load_clip_tokenizer(tok_dir, "bioclip.tokenizer")
    _check_tokenizer(bio)
    bio.model = bio.model.to(device=device, dtype=dtype).eval()
    return bio


def load_bioclip_dir(folder: Path, *, activation: str = "auto", dtype=torch.float32) -> BioCLIP:
    """A BioCLIP from a folder: open_clip layout (``open_clip_config.json`` optional,
    ``open_clip_model.safetensors`` or a single ``*.safetensors``) or transformers' layout.
    Tokenizer files are optional here (`load_bioclip` may take them from elsewhere)."""
    from safetensors.torch import load_file
    from transformers import CLIPModel

    files = safetensors_files(folder, BIOCLIP)
    tokenizer = None
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        tokenizer = load_clip_tokenizer(folder)
    config_json = folder / "config.json"
    if config_json.is_file() and read_json(config_json, BIOCLIP).get("model_type") == "clip":
        model = load_pretrained(CLIPModel, folder, BIOCLIP, model_types=["clip"], dtype=dtype)
        return BioCLIP(model, tokenizer, source=str(folder))  # type: ignore[arg-type]
    cfg: dict[str, Any] = {}
    if (folder / OPEN_CLIP_CONFIG).is_file():
        cfg = read_json(folder / OPEN_CLIP_CONFIG, BIOCLIP)
    weights = folder / OPEN_CLIP_WEIGHTS
    if not weights.is_file():
        if len(files) != 1:
            raise VLMError(
                f"bioclip: {folder} has {len(files)} safetensors files and no "
                f"{OPEN_CLIP_WEIGHTS}; name the weights {OPEN_CLIP_WEIGHTS}"
            )
        weights = files[0]
    try:
        state_dict = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - truncated or corrupt file
        raise VLMError(f"bioclip: cannot read {weights} ({err})") from err
    config = clip_config_for(state_dict, cfg.get("model_cfg"), activation)
    model = clip_model_from_open_clip(state_dict, config)
    pre = cfg.get("preprocess_cfg") or {}
    norm = OPENAI_CLIP
    if pre.get("mean") and pre.get("std"):
        norm = Normalisation(tuple(pre["mean"]), tuple(pre["std"]))
    return BioCLIP(
        model,
        tokenizer,  # type: ignore[arg-type]
        normalisation=norm,
        resize_mode="squash" if pre.get("resize_mode") == "squash" else "shortest",
        interpolation=pre.get("interpolation", "bicubic")
        if pre.get("interpolation") in ("bicubic", "bilinear")
        else "bicubic",
        source=str(folder),
    )


def _check_tokenizer(bio: BioCLIP) -> None:
    """The tokenizer must fit the text tower: ids inside its vocabulary, and end-of-text the
    id the tower pools at."""
    if bio.tokenizer is None:
        raise VLMError(
            f"bioclip: {bio.source} has no tokenizer files (vocab.json + merges.txt); "
            "set bioclip.tokenizer to a folder or Hub id that has them (OpenAI CLIP's BPE, e.g. "
            "openai/clip-vit-large-patch14)"
        )
    text = bio.model.config.text_config
    if len(bio.tokenizer) > text.vocab_size:
        raise VLMError(
            f"bioclip: the tokenizer has {len(bio.tokenizer)} tokens, the text tower "
            f"{text.vocab_size}"
        )
    eos = bio.tokenizer.eos_token_id
    if eos is None:
        raise VLMError("bioclip: the tokenizer has no end-of-text token")
    text.eos_token_id = eos
    bio.model.text_model.eos_token_id = eos
