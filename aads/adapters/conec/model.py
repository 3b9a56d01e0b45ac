"""CONEC-LoRA wiring on a DINOv3 or DINOv2 ViT: shared LoRAs early, per-domain LoRA sets late,
a domain selector at the boundary, per-domain heads, distillation, and a flat state dict.

Domain-incremental learning (same labels, new imaging conditions): the first half of the blocks
(`CONECSettings.shared_blocks`, scaled to depth) carry `SharedLoRALinear` layers that keep
training on every new domain under knowledge distillation from their previous copy; the other
blocks carry `DomainLoRALinear` layers with one LoRA set per domain. Domain 0 is the base
domain, the model as earlier phases left it: no late LoRA and the existing head.

Routing happens inside the forward. A hook on the last shared block pools its output (CLS +
mean patch token) into ``state.boundary_features`` and sets the late layers' per-sample domain
ids: a fixed domain for training (`ConecState.use_domain`), given ids for mixed batches
(`use_domains`), or the selector's prediction for inference (`use_selector`). Inference is one
forward pass, and a batch may mix domains.

Typical phase 3, starting with the base domain's selector statistics; a task is a new domain
(`ConecLoRA`, the verbs of `aads.adapters.method.ContinualMethod`)::

    state.selector.add_domain(boundary_features(model, state, base_pixels))   # domain 0
    method = ConecLoRA(model, state, heads)
    # then, for each new domain:
    method.start_task(state.num_domains)   # teacher snapshot, new late set + head, routed to it
    for pixels, labels in loader:          # optimiser over method.trainable_parameters()
        logits = conec_logits(model, state, heads, pixels)
        loss = F.cross_entropy(logits, labels) + settings.distill_weight * (
            method.distillation_loss(pixels, logits))
    method.finish_task()
    state.selector.add_domain(boundary_features(model, state, domain_pixels))

Caveat: the boundary moves as the shared LoRAs keep training, so each domain's selector
statistics are taken under the shared weights of their time; distillation keeps that drift
small but does not remove it (the reference code fits its domain classifiers on LoRA-free
embeddings instead, at the cost of a second pass through the early blocks).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

from aads.backbone import (
    BackboneError,
    Pooling,
    pool_tokens,
    prefix_token_count,
    resolve_lora_targets,
    vit_blocks,
)
from aads.config import complement_blocks, resolve_blocks

from .config import CONECSettings
from .layer import ConecError, DomainLoRALinear, DomainRouting, LoRAPair, SharedLoRALinear
from .selector import DomainSelector, build_selector

RoutingMode = Literal["fixed", "explicit", "select"]
_LATE_KEY = re.compile(r"late\.(\d+)\.(.+)\.(A|B|scaling)")


@dataclass(eq=False)
class ConecState:
    """Everything `apply_conec` added to a model, and how its next forward is routed.

    ``shared`` and ``late`` map module names (``model.layer.0.attention.q_proj``; DINOv2:
    ``encoder.layer.0.attention.q_proj``) to the wrapping layers; ``boundary_features`` is the
    (N, 2 x width) float32 pooled output of the last shared block from the latest forward,
    detached.
    """

    settings: CONECSettings
    shared_blocks: list[int]
    late_blocks: list[int]
    shared: dict[str, SharedLoRALinear]
    late: dict[str, DomainLoRALinear]
    routing: DomainRouting
    selector: DomainSelector
    prefix_tokens: int
    pooling: Pooling = "cls_mean"
    boundary_features: torch.Tensor | None = None
    mode: RoutingMode = "fixed"
    domain: int = 0
    explicit_ids: torch.Tensor | None = None
    hook: RemovableHandle | None = field(default=None, repr=False)

    @property
    def num_domains(self) -> int:
        """Domains the late layers can serve, the base domain 0 included."""
        return next(iter(self.late.values())).num_domains

    def use_domain(self, domain: int) -> None:
        """Route every sample of the following forwards to `domain` (training, evaluation)."""
        self._check_domain(domain)
        self.mode, self.domain, self.explicit_ids = "fixed", domain, None

    def use_domains(self, domain_ids: torch.Tensor) -> None:
        """Route the following forwards per sample by `domain_ids` (N,): mixed-domain batches."""
        ids = domain_ids.to(torch.long)
        if len(ids):
            self._check_domain(int(ids.max()))
            self._check_domain(int(ids.min()))
        self.mode, self.explicit_ids = "explicit", ids

    def use_selector(self) -> None:
        """Route each sample by the domain selector's prediction (inference)."""
        if not 1 <= self.selector.num_domains <= self.num_domains:
            raise ConecError(
                f"the selector knows {self.selector.num_domains} domains and the model has "
                f"{self.num_domains}: fit it (or add_domain) on boundary features first"
            )
        self.mode, self.explicit_ids = "select", None

    def route(self, boundary: torch.Tensor) -> None:
        """Set the late layers' domain ids for a batch whose boundary features are given."""
        batch, device = len(boundary), boundary.device
        if self.mode == "fixed":
            self.routing.route_all(self.domain, batch, device)
        elif self.mode == "explicit":
            self.routing.domain_ids = self.explicit_ids.to(device)
        else:
            self.routing.domain_ids = self.selector.predict(boundary).to(device)

    def _check_domain(self, domain: int) -> None:
        if not 0 <= domain < self.num_domains:
            raise ConecError(f"domain {domain} does not exist; the model has {self.num_domains}")


class ConecHeads(nn.Module):
    """One classifier head per domain; domain 0 is the head earlier phases trained.

    A new head starts as a copy of the previous domain's head (same labels, nearby inputs),
    and `add_domain` freezes the earlier heads as CONEC freezes earlier late sets.
    """

    def __init__(self, base_head: nn.Linear) -> None:
        super().__init__()
        self.heads = nn.ModuleList([base_head])

    @property
    def num_domains(self) -> int:
        return len(self.heads)

    def add_domain(self) -> int:
        """Freeze every head, add a trainable copy of the newest; returns its domain index."""
        self.heads.requires_grad_(False)
        self.heads.append(copy.deepcopy(self.heads[-1]).requires_grad_(True))
        return len(self.heads) - 1

    def forward(self, features: torch.Tensor, domain_ids: torch.Tensor) -> torch.Tensor:
        """(N, classes) logits, each row from its own domain's head."""
        present = torch.unique(domain_ids).tolist() or [0]
        if present[0] < 0 or present[-1] >= self.num_domains:
            raise ConecError(f"domain ids {present} outside 0..{self.num_domains - 1}")
        if len(present) == 1:
            return self.heads[present[0]](features)
        out: torch.Tensor | None = None
        for domain in present:
            rows = (domain_ids == domain).nonzero().squeeze(1)
            logits = self.heads[domain](features.index_select(0, rows))
            if out is None:
                out = logits.new_zeros(len(features), logits.shape[1])
            out = out.index_copy(0, rows, logits)
        return out


def apply_conec(
    model: nn.Module, settings: CONECSettings, pooling: Pooling = "cls_mean"
) -> ConecState:
    """Freeze `model`, wrap ``settings.modules`` of the shared and late blocks, hook the boundary.

    `model` is a `DINOv3ViTModel` or `Dinov2Model` (``backbone.model``) whose earlier
    adapters are merged.
    Shared blocks must come before late blocks: the boundary hook routes the late layers.
    `pooling` is how `conec_logits` pools the final tokens for the heads.
    """
    blocks = _vit_blocks(model)
    depth = len(blocks)
    shared_blocks = resolve_blocks(settings.shared_blocks, depth)
    late_blocks = complement_blocks(shared_blocks, depth)
    if not shared_blocks or not late_blocks or max(shared_blocks) > min(late_blocks):
        raise ConecError(
            f"CONEC needs shared blocks before late blocks; got shared {shared_blocks}, "
            f"late {late_blocks} of {depth}"
        )
    if any(isinstance(m, SharedLoRALinear | DomainLoRALinear) for m in model.modules()):
        raise ConecError("CONEC-LoRA is already applied to this model")
    model.requires_grad_(False)
    routing = DomainRouting()
    shared = {
        name: _replace(
            model, name, SharedLoRALinear(model.get_submodule(name), settings.rank, settings.alpha)
        )
        for name in resolve_lora_targets(model, shared_blocks, settings.modules)
    }
    late = {
        name: _replace(model, name, DomainLoRALinear(model.get_submodule(name), routing))
        for name in resolve_lora_targets(model, late_blocks, settings.modules)
    }
    state = ConecState(
        settings=settings,
        shared_blocks=shared_blocks,
        late_blocks=late_blocks,
        shared=shared,
        late=late,
        routing=routing,
        selector=build_selector(settings.selector),
        prefix_tokens=prefix_token_count(model.config),
        pooling=pooling,
    )
    state.hook = blocks[shared_blocks[-1]].register_forward_hook(_boundary_hook(state))
    return state


class ConecLoRA:
    """CONEC-LoRA's task lifecycle (`aads.adapters.method.ContinualMethod`); a task is a new
    domain. Works on a model `apply_conec` wrapped (its `ConecState`) and the per-domain heads.

    ``start_task`` snapshots the shared LoRAs as the distillation teacher (the previous
    domain's network), adds a late LoRA set (rank and alpha from the settings, older sets
    frozen) and a head copied from the newest one (older heads frozen), and routes training to
    the new domain. The shared LoRAs keep training on every domain, under `distillation_loss`.
    """

    def __init__(
        self,
        model: nn.Module,
        state: ConecState,
        heads: ConecHeads,
        settings: CONECSettings | None = None,
    ) -> None:
        """`settings` (default: the state's) give new sets' rank and alpha and the
        distillation temperature; a continued package may train with another temperature."""
        self.model = model
        self.state = state
        self.heads = heads
        self.settings = settings or state.settings
        self.teacher: dict[str, torch.Tensor] | None = None
        self.teacher_domain: int | None = None

    def start_task(self, task: int) -> None:
        """Start domain `task`, which must be the next one (``state.num_domains``)."""
        if task != self.state.num_domains:
            raise ConecError(
                f"the next CONEC domain is {self.state.num_domains}, not {task}: domains are "
                "learned in order"
            )
        if self.heads.num_domains != task:
            raise ConecError(f"{self.heads.num_domains} heads for {task} domains")
        self.teacher = snapshot_shared(self.state)
        self.teacher_domain = task - 1
        rank, alpha = self.settings.rank, self.settings.alpha
        domains = {layer.add_domain(rank, alpha) for layer in self.state.late.values()}
        (domain,) = domains
        self.heads.add_domain()
        self.state.use_domain(domain)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The shared LoRA pairs, the newest late set and the newest head."""
        params = list(shared_parameters(self.state).values())
        newest = self.state.num_domains - 1
        if newest > 0:
            pairs = [layer.pair(newest) for layer in self.state.late.values()]
            params += [p for pair in pairs for p in (pair.A, pair.B)]
        return params + list(self.heads.heads[-1].parameters())

    def distillation_loss(
        self, pixel_values: torch.Tensor, student_logits: torch.Tensor
    ) -> torch.Tensor:
        """`distillation_loss` against this task's teacher, at the settings' temperature."""
        if self.teacher is None or self.teacher_domain is None:
            raise ConecError("no CONEC task is running: start_task first")
        return distillation_loss(
            self.model,
            self.state,
            pixel_values,
            student_logits,
            self.teacher,
            self.teacher_domain,
            self.heads,
            self.settings.distill_temperature,
        )

    def finish_task(self) -> dict[str, float]:
        """Drop the teacher; the task's late set and head freeze when the next one starts.
        Returns ``{"rank"}``, the new late set's rank."""
        self.teacher = self.teacher_domain = None
        return {"rank": float(self.settings.rank)}


def shared_parameters(state: ConecState) -> dict[str, nn.Parameter]:
    """The shared LoRA parameters keyed by their name in the model (``...q_proj.lora.A``)."""
    return {
        f"{name}.lora.{p}": getattr(layer.lora, p)
        for name, layer in state.shared.items()
        for p in ("A", "B")
    }


def conec_logits(
    model: nn.Module, state: ConecState, heads: ConecHeads, pixel_values: torch.Tensor
) -> torch.Tensor:
    """One routed forward: backbone, pooled tokens, each sample's domain head."""
    return _head_logits(model(pixel_values=pixel_values), state, heads)


def boundary_features(
    model: nn.Module, state: ConecState, pixel_values: torch.Tensor
) -> torch.Tensor:
    """(N, 2 x width) selector features of a batch, without autograd.

    The boundary does not depend on routing, so the forward is routed to domain 0 (no late
    LoRA); the state's routing is restored afterwards.
    """
    with torch.no_grad(), _routed(state, 0):
        model(pixel_values=pixel_values)
        return state.boundary_features


def snapshot_shared(state: ConecState) -> dict[str, torch.Tensor]:
    """Detached copies of the shared LoRA parameters, keyed by their name in the model.

    Take it before training a new domain: it is the distillation teacher's shared part.
    """
    return {name: p.detach().clone() for name, p in shared_parameters(state).items()}


def teacher_logits(
    model: nn.Module,
    state: ConecState,
    pixel_values: torch.Tensor,
    teacher_snapshot: dict[str, torch.Tensor],
    teacher_domain: int,
    heads: ConecHeads,
) -> torch.Tensor:
    """Logits of the same network with the snapshot's shared LoRAs, routed to `teacher_domain`.

    `torch.func.functional_call` swaps the parameters for this call only, so the student's
    autograd graph is untouched; the teacher runs in eval mode under no_grad, and the state's
    routing and every module's train/eval flag are restored afterwards.
    """
    if set(teacher_snapshot) != set(shared_parameters(state)):
        raise ConecError("teacher_snapshot does not match this model's shared LoRAs")
    with torch.no_grad(), _routed(state, teacher_domain), _eval_mode(model):
        out = functional_call(model, teacher_snapshot, kwargs={"pixel_values": pixel_values})
        return _head_logits(out, state, heads)


def distillation_loss(
    model: nn.Module,
    state: ConecState,
    pixel_values: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_snapshot: dict[str, torch.Tensor],
    teacher_domain: int,
    heads: ConecHeads,
    temperature: float,
) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, times T^2 (Hinton et al.).

    The teacher is the previous domain's network (see `teacher_logits`); gradients reach the
    student's shared LoRAs (and its newest late set and head) through `student_logits`.
    """
    target = teacher_logits(model, state, pixel_values, teacher_snapshot, teacher_domain, heads)
    t = float(temperature)
    return (
        F.kl_div(
            F.log_softmax(student_logits.float() / t, dim=-1),
            F.log_softmax(target.float() / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * t**2
    )


def conec_state_dict(state: ConecState, heads: ConecHeads | None = None) -> dict[str, torch.Tensor]:
    """Flat CPU tensors: ``shared.<module>.{A,B,scaling}``, ``late.<d>.<module>.{A,B,scaling}``
    for d >= 1, ``selector.<kind>.<name>`` and, with `heads`, ``heads.<d>.{weight,bias}``.

    Domain names are the caller's metadata; here domains are indices.
    """
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in _live(state, heads)}
    kind = state.selector.kind
    tensors.update({f"selector.{kind}.{k}": v for k, v in state.selector.state_dict().items()})
    return tensors


def load_conec_state_dict(
    state: ConecState, tensors: dict[str, torch.Tensor], heads: ConecHeads | None = None
) -> None:
    """Load `conec_state_dict` output into a freshly applied state (strict).

    Late sets and heads missing from the state are created first (rank and scaling from the
    file); every key must then match, with the same shape, or `ConecError` lists what differs
    and no tensor is copied (the state may keep the added empty sets: apply afresh to retry).
    The selector is replaced by one of the settings' kind loaded from the file.
    """
    selector = _selector_from_file(state, tensors)
    domains = _file_domains(tensors)
    if domains < max(state.num_domains, heads.num_domains if heads else 0, selector.num_domains):
        raise ConecError(f"the file has {domains} domains, fewer than the model or its selector")
    _grow_late(state, tensors, domains)
    while heads is not None and heads.num_domains < domains:
        heads.add_domain()
    live = dict(_live(state, heads))
    _check_same_keys({k for k in tensors if not k.startswith("selector.")}, set(live), heads)
    for key, target in live.items():
        if tensors[key].shape != target.shape:
            raise ConecError(
                f"{key}: shape {tuple(tensors[key].shape)} in the file, "
                f"{tuple(target.shape)} in the model"
            )
    with torch.no_grad():
        for key, target in live.items():
            target.copy_(tensors[key])
    state.selector = selector


def _vit_blocks(model: nn.Module) -> nn.ModuleList:
    try:
        return vit_blocks(model)
    except BackboneError as err:
        raise ConecError(f"CONEC-LoRA needs a ViT backbone: {err}") from None


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)
    return module


def _boundary_hook(state: ConecState) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
    """Pool the last shared block's output for the selector and route the late layers."""

    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        pooled = pool_tokens(output.detach(), "cls_mean", state.prefix_tokens)
        state.boundary_features = pooled
        state.route(pooled)

    return hook


def _head_logits(out: object, state: ConecState, heads: ConecHeads) -> torch.Tensor:
    features = pool_tokens(out.last_hidden_state, state.pooling, state.prefix_tokens)
    return heads(features, state.routing.domain_ids)


@contextmanager
def _routed(state: ConecState, domain: int) -> Iterator[None]:
    """Route to `domain` inside the block; restore mode, ids and boundary features after."""
    saved = (state.mode, state.domain, state.explicit_ids, state.boundary_features)
    ids = state.routing.domain_ids
    state.use_domain(domain)
    try:
        yield
    finally:
        state.mode, state.domain, state.explicit_ids, state.boundary_features = saved
        state.routing.domain_ids = ids


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _live(state: ConecState, heads: ConecHeads | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, parameter or buffer) for every tensor of the state file except the selector."""
    for name, layer in state.shared.items():
        yield from _pair_tensors(f"shared.{name}", layer.lora)
    for name, layer in state.late.items():
        for domain in range(1, layer.num_domains):
            yield from _pair_tensors(f"late.{domain}.{name}", layer.pair(domain))
    if heads is not None:
        for domain, head in enumerate(heads.heads):
            for pname, p in head.named_parameters():
                yield f"heads.{domain}.{pname}", p


def _pair_tensors(prefix: str, pair: LoRAPair) -> Iterator[tuple[str, torch.Tensor]]:
    yield f"{prefix}.A", pair.A
    yield f"{prefix}.B", pair.B
    yield f"{prefix}.scaling", pair.scaling


def _file_domains(tensors: dict[str, torch.Tensor]) -> int:
    late = [int(m.group(1)) for k in tensors if (m := _LATE_KEY.fullmatch(k))]
    return 1 + max(late, default=0)


def _grow_late(state: ConecState, tensors: dict[str, torch.Tensor], domains: int) -> None:
    for domain in range(state.num_domains, domains):
        for name, layer in state.late.items():
            prefix = f"late.{domain}.{name}"
            if f"{prefix}.A" not in tensors or f"{prefix}.scaling" not in tensors:
                raise ConecError(f"the file lacks {prefix}.A / .scaling")
            rank = tensors[f"{prefix}.A"].shape[0]
            layer.add_domain(rank, float(tensors[f"{prefix}.scaling"]) * rank)


def _selector_from_file(state: ConecState, tensors: dict[str, torch.Tensor]) -> DomainSelector:
    """A selector of the state's kind loaded from the ``selector.<kind>.*`` tensors."""
    kind = state.selector.kind
    kinds = {k.split(".")[1] for k in tensors if k.startswith("selector.")}
    if kinds - {kind}:
        raise ConecError(f"the file holds a {sorted(kinds)[0]} selector; the settings use {kind}")
    prefix = f"selector.{kind}."
    selector = build_selector(kind)
    selector.load_state_dict(
        {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    )
    return selector


def _check_same_keys(in_file: set[str], in_model: set[str], heads: ConecHeads | None) -> None:
    missing, unexpected = sorted(in_model - in_file), sorted(in_file - in_model)
    if not missing and not unexpected:
        return
    hint = "" if heads is not None else " (pass heads= to load heads.* keys)"
    raise ConecError(
        f"CONEC state mismatch: {len(missing)} missing keys {missing[:5]}, "
        f"{len(unexpected)} unexpected keys {unexpected[:5]}{hint}"
    )
