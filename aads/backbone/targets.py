"""Which ViT linear layers a LoRA-family adapter wraps: a PEFT regex and its resolution.

PEFT treats a string ``target_modules`` as a regex and applies `re.fullmatch` to each module
name; that is the only way to select late blocks on a bare backbone (``layers_to_transform``
with ``layers_pattern="layer"`` matches nothing there). Modules are asked for by role, in
DINOv3's names: ``layer.{i}.attention.{q,k,v,o}_proj`` and ``layer.{i}.mlp.{up,down[,gate]}_proj``.
DINOv2 (under ``encoder.layer.{i}``) shares the attention names in transformers 5 but calls a
GELU MLP's layers ``fc1``/``fc2``; `aads.backbone.generations.module_names` maps the roles to
a model's own names, so every adapter works on either generation. Transformers 4's DINOv2
names (``query``/``key``/``value``) and misspellings fail here with the right names, not
deep inside PEFT.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from aads.adapters.config import ATTENTION_MODULES, MLP_MODULES

from .base import Backbone
from .errors import BackboneError
from .generations import generation_of, module_names

DINOV2_CHECKPOINT_NAMES = {  # its checkpoint files' names -> the role to ask for
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
_SWIGLU_VARIANTS = "DINOv3 vits16plus, vith16plus, vit7b16; DINOv2 giant"


def lora_target_regex(
    blocks: Sequence[int], modules: Sequence[str], names: Mapping[str, str] | None = None
) -> str:
    """A PEFT ``target_modules`` regex for `modules` in `blocks`, e.g.
    ``.*layer\\.(6|7)\\.attention\\.(q_proj|v_proj)``.

    `blocks` are 0-based indices, typically from `aads.config.resolve_blocks`. `names` maps
    roles to the model's own module names (`target_names` of the model); without it the
    regex uses DINOv3's.
    """
    chosen = _check_modules(modules)
    indices = _check_blocks(blocks)
    names = names or {}
    groups = []
    attention = [names.get(m, m) for m in ATTENTION_MODULES if m in chosen]
    mlp = [names.get(m, m) for m in MLP_MODULES if m in chosen]
    if attention:
        groups.append(rf"attention\.({'|'.join(attention)})")
    if mlp:
        groups.append(rf"mlp\.({'|'.join(mlp)})")
    inner = groups[0] if len(groups) == 1 else f"({'|'.join(groups)})"
    return rf".*layer\.({'|'.join(str(b) for b in indices)})\.{inner}"


def target_names(model: torch.nn.Module | Backbone) -> dict[str, str]:
    """Role -> module name where `model` differs from DINOv3 (``{"up_proj": "fc1", ...}`` on
    a GELU DINOv2); empty for DINOv3 and for models that are not a known backbone."""
    if isinstance(model, Backbone):
        model = model.model
    config = getattr(model, "config", None)
    try:
        return module_names(config) if config is not None else {}
    except BackboneError:
        return {}


def lora_target_regex_for(
    model: torch.nn.Module | Backbone, blocks: Sequence[int], modules: Sequence[str]
) -> str:
    """`lora_target_regex` in `model`'s own module names (what PEFT needs for that model)."""
    return lora_target_regex(blocks, modules, target_names(model))


def resolve_lora_targets(
    model: torch.nn.Module | Backbone, blocks: Sequence[int], modules: Sequence[str]
) -> list[str]:
    """Names of the `torch.nn.Linear` modules of `model` the regex selects, in model order.

    `modules` are roles (``q_proj``, ``up_proj``...), mapped to the model's own names. Raises
    `BackboneError` when a block is out of range, a role does not exist in this model
    (``gate_proj`` on a GELU MLP), or nothing matches (a ConvNeXt has no such layers).
    """
    if isinstance(model, Backbone):
        model = model.model
    modules = [modules] if isinstance(modules, str) else list(modules)
    names = target_names(model)
    pattern = re.compile(lora_target_regex(blocks, modules, names))
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
            f"{type(model).__name__} has no ViT blocks (layer.{{i}}.attention / .mlp): "
            "LoRA targets need a ViT (DINOv3 or DINOv2; ConvNeXt has no attention projections)"
        )
    depth = max(max(ix) for ix in present.values()) + 1
    out_of_range = sorted(b for b in blocks if b >= depth)
    if out_of_range:
        raise BackboneError(f"blocks {out_of_range} out of range: this model has {depth} blocks")
    for m in modules:
        if names.get(m, m) not in present:
            have = [x for x in (*ATTENTION_MODULES, *MLP_MODULES) if names.get(x, x) in present]
            why = ""
            if m == "gate_proj":
                why = (
                    f" gate_proj exists only in SwiGLU MLPs ({_SWIGLU_VARIANTS}); this model's "
                    "MLP is GELU."
                )
            raise BackboneError(
                f"module '{m}' does not exist in this {_title(model)}model.{why} Present: {have}"
            )
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
        if m in DINOV2_CHECKPOINT_NAMES:
            raise BackboneError(
                f"'{m}' is a DINOv2 module name; LoRA modules are named by role in DINOv3's "
                f"terms and mapped to each model's own layers: use {DINOV2_CHECKPOINT_NAMES[m]} "
                f"(attention: {', '.join(ATTENTION_MODULES)}; mlp: {', '.join(MLP_MODULES)})"
            )
        if m not in known:
            raise BackboneError(f"unknown LoRA module '{m}'; DINOv3 modules: {', '.join(known)}")
    return set(modules)


def _title(model: torch.nn.Module) -> str:
    """``DINOv2 `` / ``DINOv3 `` for messages; empty for a model of no known generation."""
    try:
        return f"{generation_of(model.config).title} "
    except (AttributeError, BackboneError):
        return ""


def _check_blocks(blocks: Sequence[int]) -> list[int]:
    indices = sorted(set(blocks))
    if not indices:
        raise BackboneError("no blocks selected for LoRA")
    if any(not isinstance(b, int) or b < 0 for b in indices):
        raise BackboneError(f"blocks must be non-negative integers, got {list(blocks)}")
    return indices
