"""CONEC-LoRA's maths on one `nn.Linear`: a shared LoRA pair, and per-domain LoRA sets routed
per sample.

CONEC-LoRA (Paeedeh et al., arXiv 2510.16077) splits the ViT: early blocks carry ONE LoRA pair
per projection that keeps training on every new domain (under distillation, so it consolidates
instead of forgetting); late blocks carry one pair per domain, each frozen once its domain is
learned. `SharedLoRALinear` and `DomainLoRALinear` are those two wrappings of a frozen Linear.

The late layer reads each sample's domain from a `DomainRouting` object shared by every late
layer of a model and filled in before the late blocks run (by the model's boundary hook, see
`model.py`). Samples of different domains can share a batch, so serving with a domain selector
is one forward pass; the layer groups rows by domain (one matmul pair per domain present, no
per-sample loop), and the grouping is computed once per forward in `DomainRouting`, not once per
layer, so a GPU pays one host sync per forward. Domain 0 is the base domain: it has no pair
and adds nothing, so routing to it reproduces the wrapped Linear bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aads.errors import BadInput

RowGroups = list[tuple[int, torch.Tensor | None]]
"""(domain, row indices) per domain present in a batch; indices None means every row."""


class ConecError(BadInput):
    """A CONEC-LoRA model, state file or selector that cannot be used as asked."""


class LoRAPair(nn.Module):
    """delta(x) = scaling * B A x with A kaiming-uniform (a=sqrt 5), B zero, scaling alpha/rank.

    ``scaling`` is a buffer so a saved pair carries its own alpha; B = 0 makes a new pair a
    no-op until trained.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rank < 1 or alpha <= 0:
            raise ConecError(f"LoRA rank must be >= 1 and alpha > 0, got rank={rank} alpha={alpha}")
        self.A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.register_buffer("scaling", torch.tensor(alpha / rank, device=device))

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A, shaped like the wrapped Linear's weight."""
        return (self.B @ self.A) * self.scaling


class DomainRouting:
    """Which late LoRA set each sample of the current forward uses.

    One object per model, shared by all its `DomainLoRALinear` layers. Assign
    ``domain_ids`` (a (N,) LongTensor) or call `route_all`; the row grouping is computed here,
    once, and every late layer reuses it.
    """

    def __init__(self) -> None:
        self._domain_ids: torch.Tensor | None = None
        self._groups: RowGroups = []

    @property
    def domain_ids(self) -> torch.Tensor | None:
        return self._domain_ids

    @domain_ids.setter
    def domain_ids(self, domain_ids: torch.Tensor | None) -> None:
        if domain_ids is None:
            self._domain_ids, self._groups = None, []
            return
        if domain_ids.ndim != 1 or domain_ids.dtype != torch.long:
            raise ConecError(
                f"domain_ids must be a 1-D LongTensor, got {domain_ids.dtype} "
                f"{tuple(domain_ids.shape)}"
            )
        present = torch.unique(domain_ids).tolist()
        if present and present[0] < 0:
            raise ConecError(f"domain ids must be >= 0, got {present[0]}")
        if len(present) == 1:
            self._groups = [(present[0], None)]
        else:
            self._groups = [(d, (domain_ids == d).nonzero().squeeze(1)) for d in present]
        self._domain_ids = domain_ids

    def route_all(self, domain: int, batch: int, device: torch.device | str) -> None:
        """Send every sample of a batch of `batch` to `domain` (no host sync)."""
        if domain < 0:
            raise ConecError(f"domain ids must be >= 0, got {domain}")
        self._domain_ids = torch.full((batch,), domain, dtype=torch.long, device=device)
        self._groups = [(domain, None)]

    def groups(self, batch: int) -> RowGroups:
        """The row groups for a batch of `batch` samples; errors if routing was not set."""
        if self._domain_ids is None:
            raise ConecError(
                "no domain routing for this forward: call state.use_domain(d), "
                "state.use_domains(ids) or state.use_selector() first"
            )
        if len(self._domain_ids) != batch:
            raise ConecError(f"routing has {len(self._domain_ids)} domain ids for {batch} samples")
        return self._groups


class SharedLoRALinear(nn.Module):
    """A frozen Linear plus one LoRA pair that stays trainable across domains."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base_layer = _frozen_linear(base_layer)
        self.lora = _pair_for(base_layer, rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora(x)

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function (for export or serving)."""
        return _merged_linear(self.base_layer, self.lora)


class DomainLoRALinear(nn.Module):
    """A frozen Linear plus one LoRA pair per domain >= 1, chosen per sample by `routing`.

    Pairs live in ``domains`` under their domain index as a string (``domains.2.A``). Only the
    newest pair is trainable: `add_domain` freezes every earlier one.
    """

    def __init__(self, base_layer: nn.Linear, routing: DomainRouting) -> None:
        super().__init__()
        self.base_layer = _frozen_linear(base_layer)
        self.domains = nn.ModuleDict()
        self.routing = routing

    @property
    def num_domains(self) -> int:
        """Domains this layer can serve, the base domain 0 included."""
        return 1 + len(self.domains)

    def add_domain(self, rank: int, alpha: float) -> int:
        """Freeze every existing pair, add a trainable one; returns the new domain index."""
        self.domains.requires_grad_(False)
        domain = self.num_domains
        self.domains[str(domain)] = _pair_for(self.base_layer, rank, alpha)
        return domain

    def pair(self, domain: int) -> LoRAPair | None:
        """The pair of `domain`; None for the base domain 0."""
        if not 0 <= domain < self.num_domains:
            raise ConecError(f"domain {domain} does not exist; this layer has {self.num_domains}")
        return None if domain == 0 else self.domains[str(domain)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        for domain, rows in self.routing.groups(x.shape[0]):
            pair = self.pair(domain)
            if pair is None:
                continue
            if rows is None:
                out = out + pair(x)
            else:
                out = out.index_add(0, rows, pair(x.index_select(0, rows)))
        return out

    def merged(self, domain: int) -> nn.Linear:
        """A plain Linear computing this layer for `domain` only (single-domain serving)."""
        return _merged_linear(self.base_layer, self.pair(domain))


def _frozen_linear(layer: nn.Module) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise ConecError(
            f"CONEC-LoRA wraps nn.Linear layers, got {type(layer).__name__}; merge earlier "
            "adapters into the backbone first (PEFT: merge_and_unload())"
        )
    return layer.requires_grad_(False)


def _pair_for(layer: nn.Linear, rank: int, alpha: float) -> LoRAPair:
    weight = layer.weight
    return LoRAPair(
        layer.in_features, layer.out_features, rank, alpha, device=weight.device, dtype=weight.dtype
    )


def _merged_linear(base: nn.Linear, pair: LoRAPair | None) -> nn.Linear:
    weight = base.weight
    merged = nn.utils.skip_init(
        nn.Linear,
        base.in_features,
        base.out_features,
        bias=base.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        delta = 0 if pair is None else pair.delta_weight().to(weight.dtype)
        merged.weight.copy_(weight + delta)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
    return merged.requires_grad_(False)
