"""Which DINOv3 linear layers a LoRA-family adapter wraps: a PEFT regex and its resolution.

PEFT treats a string ``target_modules`` as a regex and applies `re.fullmatch` to each module
name; that is the only way to select late blocks on a bare DINOv3 model (``layers_to_transform``
with ``layers_pattern="layer"`` matches nothing there). DINOv3 names its projections
``layer.{i}.attention.{q,k,v,o}_proj`` and ``layer.{i}.mlp.{up,down[,gate]}_proj``; DINOv2's
``query``/``key``/``value`` do not exist, and a typo should fail here with the right names,
not deep inside PEFT.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from aads.config import ATTENTION_MODULES, MLP_MODULES

from .base import Backbone
from .errors import BackboneError

_DINOV2_NAMES = {
    "query": "q_proj",
    "key": "k_proj",
    "value": "v_proj",
    "qkv": "q_proj, k_proj, v_proj",
    "dense": "o_proj",
    "proj": "o_proj",
    "fc1": "up_proj",
    "fc2": "down_proj",
}
_BLOCK = re.compile(r"(?:^|.*\.)layer\.(\d+)\.(attention|mlp)\.(\w+)")
_SWIGLU_VARIANTS = "vits16plus, vith16plus, vit7b16"


def lora_target_regex(blocks: Sequence[int], modules: Sequence[str]) -> str:
    """A PEFT ``target_modules`` regex for `modules` in `blocks`, e.g.
    ``.*layer\\.(6|7)\\.attention\\.(q_proj|v_proj)``.

    `blocks` are 0-based indices, typically from `aads.config.resolve_blocks`.
    """
    chosen = _check_modules(modules)
    indices = _check_blocks(blocks)
    groups = []
    attention = [m for m in ATTENTION_MODULES if m in chosen]
    mlp = [m for m in MLP_MODULES if m in chosen]
    if attention:
        groups.append(rf"attention\.({'|'.join(attention)})")
    if mlp:
        groups.append(rf"mlp\.({'|'.join(mlp)})")
    inner = groups[0] if len(groups) == 1 else f"({'|'.join(groups)})"
    return rf".*layer\.({'|'.join(str(b) for b in indices)})\.{inner}"


def resolve_lora_targets(
    model: torch.nn.Module | Backbone, blocks: Sequence[int], modules: Sequence[str]
) -> list[str]:
    """Names of the `torch.nn.Linear` modules of `model` the regex selects, in model order.

    Raises `BackboneError` when a block is out of range, a module kind does not exist in this
    model (``gate_proj`` on a GELU MLP), or nothing matches (a ConvNeXt has no such layers).
    """
    if isinstance(model, Backbone):
        model = model.model
    modules = [modules] if isinstance(modules, str) else list(modules)
    pattern = re.compile(lora_target_regex(blocks, modules))
    present: dict[str, set[int]] = {}
    matched: list[str] = []
    for name, module in model.named_modules():
        found = _BLOCK.fullmatch(name)
        # A layer PEFT already wrapped keeps its name and holds the Linear as `base_layer`.
        linear = getattr(module, "base_layer", module)
        if found and isinstance(linear, torch.nn.Linear):
            present.setdefault(found.group(3), set()).add(int(found.group(1)))
            if pattern.fullmatch(name):
                matched.append(name)
    if not present:
        raise BackboneError(
            f"{type(model).__name__} has no DINOv3 ViT blocks (layer.{{i}}.attention / .mlp): "
            "LoRA targets need a ViT backbone (ConvNeXt has no attention projections)"
        )
    depth = max(max(ix) for ix in present.values()) + 1
    out_of_range = sorted(b for b in blocks if b >= depth)
    if out_of_range:
        raise BackboneError(f"blocks {out_of_range} out of range: this model has {depth} blocks")
    for m in modules:
        if m not in present:
            have = [x for x in (*ATTENTION_MODULES, *MLP_MODULES) if x in present]
            why = ""
            if m == "gate_proj":
                why = (
                    f" gate_proj exists only in SwiGLU MLPs ({_SWIGLU_VARIANTS}); this model's "
                    "MLP is GELU."
                )
            raise BackboneError(f"module '{m}' does not exist in this model.{why} Present: {have}")
    if not matched:
        raise BackboneError(f"no module matches {pattern.pattern}")
    return matched


def _check_modules(modules: Sequence[str]) -> set[str]:
    if isinstance(modules, str):
        modules = [modules]
    if not modules:
        raise BackboneError("no LoRA modules given; choose from q_proj, k_proj, v_proj, ...")
    known = (*ATTENTION_MODULES, *MLP_MODULES)
    for m in modules:
        if m in _DINOV2_NAMES:
            raise BackboneError(
                f"'{m}' is a DINOv2 module name; DINOv3 uses {_DINOV2_NAMES[m]} "
                f"(attention: {', '.join(ATTENTION_MODULES)}; mlp: {', '.join(MLP_MODULES)})"
            )
        if m not in known:
            raise BackboneError(f"unknown LoRA module '{m}'; DINOv3 modules: {', '.join(known)}")
    return set(modules)


def _check_blocks(blocks: Sequence[int]) -> list[int]:
    indices = sorted(set(blocks))
    if not indices:
        raise BackboneError("no blocks selected for LoRA")
    if any(not isinstance(b, int) or b < 0 for b in indices):
        raise BackboneError(f"blocks must be non-negative integers, got {list(blocks)}")
    return indices
