"""SD-LoRA wiring into a whole network: wrap the target layers, run the per-task lifecycle
(`SDLoRA`: ``start_task`` -> train ``trainable_parameters`` -> ``finish_task``, the verbs of
`aads.adapters.method.ContinualMethod`), save, load and merge.

The maths lives in `layer.SDLoRALinear`; everything here is bookkeeping over the model's
wrapped layers, found by type in ``named_modules``, so a model carries its own state and no
side registry can disagree with it.

State-dict format (`sd_lora_state_dict`), flat and safetensors-ready, for each wrapped module
at path ``<m>`` (e.g. ``model.layer.3.attention.q_proj``; on DINOv2
``encoder.layer.3.attention.q_proj``):

- ``<m>.sd_lora.A.<i>``: A of pair i, shape (r_i, d_in);
- ``<m>.sd_lora.B.<i>``: B of pair i, shape (d_out, r_i);
- ``<m>.sd_lora.alphas``: the magnitudes, shape (n,), one per pair.

Pairs are numbered 0..n-1 in the order they were added. After -KD folds, a layer can have fewer
pairs than there were tasks, so i is a pair index, not a task index. The ranks are read back
from the shapes: no side metadata is needed to rebuild the layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .config import SDLoRASettings
from .layer import SDLoRAError, SDLoRALinear

_KEY = re.compile(r"(?P<module>.+)\.sd_lora\.(?:(?P<kind>[AB])\.(?P<index>\d+)|alphas)")
_LISTED = 8


def apply_sd_lora(model: nn.Module, target_names: Iterable[str]) -> dict[str, SDLoRALinear]:
    """Replace the named `nn.Linear` submodules of `model` by `SDLoRALinear` wrappers, in place.

    Pass the backbone (e.g. names from `aads.backbone.resolve_lora_targets`): every parameter
    of `model` that is not SD-LoRA is frozen, as SD-LoRA trains no backbone weight. All names
    are checked before anything is replaced.
    """
    names = list(target_names)
    if not names:
        raise SDLoRAError("no target modules given for SD-LoRA")
    linears = {name: _linear_at(model, name) for name in names}
    wrapped = {}
    for name, linear in linears.items():
        wrapped[name] = SDLoRALinear(linear)
        _replace(model, name, wrapped[name])
    adapter = {id(p) for p in _adapter_parameters(model)}
    for p in model.parameters():
        if id(p) not in adapter:
            p.requires_grad_(False)
    return wrapped


def sd_lora_layers(model: nn.Module) -> dict[str, SDLoRALinear]:
    """The wrapped layers of `model` by module path, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SDLoRALinear)}


def rank_for_task(settings: SDLoRASettings, task_index: int) -> int:
    """The new pair's rank: ``rank`` for plain and kd; for rr, ``rank_schedule[task_index]``,
    the last entry for every task past the schedule."""
    if task_index < 0:
        raise SDLoRAError(f"task_index must be >= 0, got {task_index}")
    if settings.variant == "rr" and settings.rank_schedule:
        return settings.rank_schedule[min(task_index, len(settings.rank_schedule) - 1)]
    return settings.rank


class SDLoRA:
    """SD-LoRA's task lifecycle (`aads.adapters.method.ContinualMethod`) on a model whose
    target layers `apply_sd_lora` wrapped.

    The pairs and magnitudes live in the model's layers, so this object only carries the
    settings, the generator new pairs are drawn from (None: torch's global one) and the
    current task's rank.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: SDLoRASettings,
        generator: torch.Generator | None = None,
    ) -> None:
        _require_layers(model)
        self.model = model
        self.settings = settings
        self.generator = generator
        self.rank: int | None = None
        self.folds: dict[str, dict[str, Any]] = {}

    def start_task(self, task: int) -> None:
        """Freeze the current pairs and add a new trainable pair (rank `rank_for_task`) to
        every wrapped layer. Build the optimiser afterwards, from `trainable_parameters`: the
        magnitude vector is a new `Parameter` each time a pair is added."""
        self.rank = rank_for_task(self.settings, task)
        for layer in _require_layers(self.model).values():
            layer.add_pair(self.rank, self.settings.alpha_init, self.generator, open=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Each layer's newest trainable pair and all its magnitudes; never a backbone
        weight."""
        return [p for p in _adapter_parameters(self.model) if p.requires_grad]

    def finish_task(self) -> dict[str, float]:
        """Close every layer's open pair (function unchanged), then, for the kd variant, fold
        each newest direction into the old magnitudes where the old directions span it
        (`SDLoRALinear.fold_if_spanned`; the per-layer results are kept in ``folds``).

        Returns ``{"rank", "folded_layers"}``: the task's rank and how many layers folded
        their new direction (always 0 unless the variant is kd).
        """
        layers = _require_layers(self.model)
        for layer in layers.values():
            layer.close_pair()
        self.folds = {}
        if self.settings.variant == "kd":
            threshold = self.settings.kd_threshold
            self.folds = {name: layer.fold_if_spanned(threshold) for name, layer in layers.items()}
        folded = sum(bool(result["folded"]) for result in self.folds.values())
        rank = float("nan") if self.rank is None else float(self.rank)
        return {"rank": rank, "folded_layers": float(folded)}


def sd_lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Every SD-LoRA tensor of `model`, detached copies under the keys in the module docstring.

    Only finished tasks are saved: an open pair (its task still training) would be read back
    as a normalised direction and change the function, so it is refused.
    """
    layers = _require_layers(model)
    if any(layer.open for layer in layers.values()):
        raise SDLoRAError("a task is still open: finish_task before saving SD-LoRA tensors")
    return {
        f"{name}.sd_lora.{key}": p.detach().clone()
        for name, layer in _require_layers(model).items()
        for key, p in layer.adapter_named_parameters()
    }


def load_sd_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Rebuild every wrapped layer's pairs (count and ranks from the shapes) and load them.

    Strict: the keys must be exactly those of the model's wrapped layers, or `SDLoRAError`
    names the missing and unexpected ones; shapes are checked against every layer before any
    layer changes. Loaded pairs are frozen (finished tasks); `SDLoRA.start_task` adds the next one.
    """
    layers = _require_layers(model)
    grouped, unexpected = _group_keys(state, layers)
    missing: list[str] = []
    for name in layers:
        missing += _missing_keys(name, grouped.get(name, {}))
        unexpected += _surplus_keys(name, grouped.get(name, {}))
    if missing or unexpected:
        raise SDLoRAError(
            "SD-LoRA state does not match the model's wrapped layers: "
            f"missing {_listing(missing)}; unexpected {_listing(unexpected)}"
        )
    pairs = {name: _pairs(grouped[name]) for name in layers}
    for name, layer in layers.items():
        try:
            layer.check_pairs(*pairs[name])
        except SDLoRAError as err:
            raise SDLoRAError(f"{name}: {err}") from None
    for name, layer in layers.items():
        layer.set_pairs(*pairs[name])


def merge_sd_lora(model: nn.Module) -> None:
    """Replace every `SDLoRALinear` by its merged plain `nn.Linear` (W0 + delta), in place."""
    for name, layer in _require_layers(model).items():
        _replace(model, name, layer.merge())


# ---------------------------------------------------------------------- helpers


def _require_layers(model: nn.Module) -> dict[str, SDLoRALinear]:
    layers = sd_lora_layers(model)
    if not layers:
        raise SDLoRAError(f"{type(model).__name__} has no SD-LoRA layers: call apply_sd_lora first")
    return layers


def _adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [
        p for layer in sd_lora_layers(model).values() for _, p in layer.adapter_named_parameters()
    ]


def _linear_at(model: nn.Module, name: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise SDLoRAError(f"{type(model).__name__} has no module '{name}'") from None
    if isinstance(module, SDLoRALinear):
        raise SDLoRAError(f"'{name}' is already wrapped by SD-LoRA")
    if not isinstance(module, nn.Linear):
        raise SDLoRAError(f"'{name}' is a {type(module).__name__}; SD-LoRA wraps nn.Linear")
    return module


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _group_keys(
    state: Mapping[str, Tensor], layers: Mapping[str, SDLoRALinear]
) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """Split keys by wrapped layer (``{path: {"A.0": t, ..., "alphas": t}}``); keys that
    are malformed or name no wrapped layer are returned as unexpected."""
    grouped: dict[str, dict[str, Tensor]] = {}
    unexpected = []
    for key, tensor in state.items():
        found = _KEY.fullmatch(key)
        if not found or found["module"] not in layers:
            unexpected.append(key)
            continue
        part = f"{found['kind']}.{int(found['index'])}" if found["kind"] else "alphas"
        grouped.setdefault(found["module"], {})[part] = tensor
    return grouped, unexpected


def _pair_count(parts: Mapping[str, Tensor]) -> int:
    alphas = parts.get("alphas")
    return alphas.shape[0] if alphas is not None and alphas.dim() == 1 else 0


def _missing_keys(name: str, parts: Mapping[str, Tensor]) -> list[str]:
    wanted = ["alphas", *(f"{k}.{i}" for k in "AB" for i in range(_pair_count(parts)))]
    return [f"{name}.sd_lora.{w}" for w in wanted if w not in parts]


def _surplus_keys(name: str, parts: Mapping[str, Tensor]) -> list[str]:
    n = _pair_count(parts)
    return [f"{name}.sd_lora.{p}" for p in parts if p != "alphas" and int(p.split(".")[1]) >= n]


def _pairs(parts: Mapping[str, Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
    n = _pair_count(parts)
    return (
        [parts[f"A.{i}"] for i in range(n)],
        [parts[f"B.{i}"] for i in range(n)],
        parts["alphas"],
    )


def _listing(keys: list[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:_LISTED])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _LISTED else ''})"
