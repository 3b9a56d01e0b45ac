"""``synthetic:<preset>`` backbones: DINOv3- or DINOv2-shaped ViTs pretrained in code on
synthetic plants (``synthetic:mini``, ``synthetic:dinov2_mini``).

Why: the real DINOv3 weights cannot be downloaded here, and a randomly initialised ViT is a
poor stand-in for a foundation model: its features barely separate lesion patterns (a linear
probe on frozen `random:tiny` features: 0.29 on tomato's 6 demo diseases, chance 0.17;
`synthetic:mini` pretrained by recipe v2: 0.60), so adapter training,
continual-learning comparisons and OOD calibration measured on it would mean nothing.

So, like a foundation model, this backbone is pretrained once on *other* data: a fixed set of
synthetic crops and diseases that never appear in a platform config (strawberry, grape,
apple, cucumber), supervised on (crop, disease) over random crops and mirror images of them
(`augment`), then frozen. What transfers is generic plant-image structure (leaf shapes, lesion
textures, colours), not the target classes, so downstream phases still have to learn their own
classes and can still forget them.

The weights are a pure function of (preset, seed, image size, recipe version): the data,
the augmentation and the probe head's initial weights are all drawn from the seed (until recipe
v4 the head came from the process's unseeded random state, and two builds of one recipe
differed by up to 0.29 in a weight). They are built
on first use and cached as a ``save_pretrained`` directory under the storage cache, written to
a temporary folder and renamed so concurrent first uses cannot leave a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aads.atomic import atomic_dir
from aads.progress import Progress

from .errors import BackboneError
from .features import pool_tokens
from .generations import generation_of, prefix_token_count
from .normalization import LVD1689M, PREPROCESSOR_CONFIG, preprocessor_config
from .presets import build_random_model, preset_config, seeded
from .variants import MODEL_TYPES

RECIPE_VERSION = "4"
PRETRAIN_CROPS = [
    {"name": "strawberry", "parts": ["leaf", "stem"],
     "phase1_classes": ["healthy", "leaf_scorch", "late_blight", "scab"]},
    {"name": "grape", "parts": ["leaf", "fruit"],
     "phase1_classes": ["healthy", "black_rot", "leaf_spot", "powdery_mildew"]},
    {"name": "apple", "parts": ["leaf", "fruit"],
     "phase1_classes": ["healthy", "rust", "mosaic_virus", "target_spot"]},
    {"name": "cucumber", "parts": ["leaf", "fruit"],
     "phase1_classes": ["healthy", "anthracnose", "downy_mold", "gray_leaf_spot"]},
]  # fmt: skip
"""Pretraining crops: disjoint from every shipped config's crops (demo and production)."""


@dataclass(frozen=True)
class PretrainRecipe:
    images_per_class: int = 60
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    data_seed: int = 123
    min_crop_area: float = 0.35


def synthetic_cache_dir(cache_root: Path, preset: str, seed: int, image_size: int) -> Path:
    recipe = json.dumps({"v": RECIPE_VERSION, **PretrainRecipe().__dict__}, sort_keys=True)
    key = hashlib.sha256(f"{preset}|{seed}|{image_size}|{recipe}".encode()).hexdigest()[:16]
    return Path(cache_root) / "synthetic" / f"{preset}-s{seed}-{image_size}px-{key}"


def ensure_synthetic_backbone(
    preset: str,
    seed: int,
    image_size: int,
    cache_root: Path,
    *,
    progress: Progress | None = None,
) -> Path:
    """The cached pretrained directory for (preset, seed, size), pretraining it if missing."""
    target = synthetic_cache_dir(cache_root, preset, seed, image_size)
    if (target / "config.json").is_file():
        return target
    config = preset_config(preset)
    if MODEL_TYPES.get(config.model_type) != "vit":
        raise BackboneError(f"synthetic:{preset}: only ViT presets can be pretrained here")
    # keep_existing: another process that finished first made the identical folder.
    with atomic_dir(target, keep_existing=True) as staging:
        record = pretrain(preset, seed, image_size, staging, progress=progress)
        (staging / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    return target


def pretrain(
    preset: str, seed: int, image_size: int, out_dir: Path, *, progress: Progress | None = None
) -> dict:
    """Supervised pretraining of a `preset` ViT on the synthetic pretraining crops."""
    from aads.config import SplitFractions, SynthSettings, TrainingSettings, parse_config
    from aads.data.ingest import ingest
    from aads.data.synth import synthesize
    from aads.training import fit

    from .preprocess import preprocess_batch

    recipe = PretrainRecipe()
    spec = parse_config(
        {
            "crops": PRETRAIN_CROPS,
            "router": {"source": f"random:{preset}"},
            "adapter": {"backbone": {"source": f"random:{preset}"}},
            "data": {"split": SplitFractions(train=0.85, val=0.15, test=0.0).model_dump()},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        synth = SynthSettings(
            images_per_class=recipe.images_per_class,
            images_per_domain_class=0,
            image_size=image_size,
            seed=recipe.data_seed,
        )
        synthesize(spec, Path(tmp), settings=synth)
        rows = ingest(Path(tmp), config=spec).rows
        # Decode once: 2k small images fit in memory; 40 epochs of JPEG decoding would cost
        # more than the model.
        pixels = preprocess_batch([Path(tmp) / r.path for r in rows], image_size, LVD1689M)
    labels = sorted({f"{r.crop}/{r.label}" for r in rows})
    target = torch.tensor([labels.index(f"{r.crop}/{r.label}") for r in rows])
    is_train = torch.tensor([r.split == "train" for r in rows])
    val_x, val_y = pixels[~is_train], target[~is_train]

    model = build_random_model(preset, seed)
    # No RoPE coordinate augmentation (DINOv3): at this scale it slows learning more than it
    # helps. DINOv2 has learned positions and no such switch.
    rope_rescale = getattr(model.config, "pos_embed_rescale", None)
    if rope_rescale is not None:
        model.config.pos_embed_rescale = None
    # The head's initial weights come from `seed` too: drawn from the process's unseeded RNG
    # they made every pretraining a different backbone (recipe v3 and earlier).
    head = seeded(lambda: nn.Linear(2 * model.config.hidden_size, len(labels)), seed)
    net = _Probe(model, head)
    loader = DataLoader(
        TensorDataset(pixels[is_train], target[is_train]),
        batch_size=recipe.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    settings = TrainingSettings(
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        seed=seed,
        precision="fp32",
        early_stopping_patience=None,
    )

    views = torch.Generator().manual_seed(seed)

    def loss_fn(m: nn.Module, batch: tuple) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(m(augment(x, views, recipe.min_crop_area)), y)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return {"val_accuracy": float((m(val_x).argmax(-1) == val_y).float().mean())}

    result = fit(
        net,
        list(net.parameters()),
        loader,
        settings=settings,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        monitor=None,
        progress=progress,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if rope_rescale is not None:
        model.config.pos_embed_rescale = rope_rescale
    model.save_pretrained(out_dir)
    processor = generation_of(model.config).image_processor
    (out_dir / PREPROCESSOR_CONFIG).write_text(
        json.dumps(preprocessor_config(LVD1689M, image_size, processor), indent=2) + "\n"
    )
    return {
        "recipe_version": RECIPE_VERSION,
        "preset": preset,
        "seed": seed,
        "image_size": image_size,
        "recipe": recipe.__dict__,
        "crops": [c["name"] for c in PRETRAIN_CROPS],
        "classes": labels,
        "val_accuracy": result.history[-1].metrics.get("val_accuracy"),
    }


class _Probe(nn.Module):
    """Backbone + linear head on CLS concatenated with the mean patch token."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.prefix_tokens = prefix_token_count(backbone.config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(pixel_values=pixels).last_hidden_state
        return self.head(pool_tokens(tokens, "cls_mean", self.prefix_tokens))


def augment(pixels: torch.Tensor, generator: torch.Generator, min_area: float) -> torch.Tensor:
    """Each image cropped to a random square covering `min_area` to all of it, resized back,
    and flipped left-right at random (plants have no left and right).

    Why: without it the pretraining learns each class from the whole leaf's outline and
    colour, and the frozen features barely tell a leaf with small lesions from a healthy one
    (corn's gray leaf spot; see the README's probe numbers). Seen at several scales, the lesions
    themselves have to carry the class. One batched `grid_sample`, so it costs next to nothing.
    """
    n = pixels.shape[0]
    scale = torch.empty(n).uniform_(min_area, 1.0, generator=generator).sqrt()
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - scale)[:, None]
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = shift
    grid = nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    return nn.functional.grid_sample(pixels, grid, mode="bilinear", align_corners=False)
