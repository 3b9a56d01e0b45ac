"""SD-LoRA maths on one linear layer: a frozen base plus magnitude-scaled unit directions.

SD-LoRA (Wu et al., ICLR 2025) learns class-incremental task t as a new low-rank pair whose
product is used only as a direction: W = W0 + sum_i alpha_i * B_i A_i / ||B_i A_i||_F. Old
pairs are frozen (fixed directions), every magnitude alpha_i keeps training, so later tasks
re-weight earlier knowledge instead of overwriting it. This module holds that maths for one
`nn.Linear` so it can be tested alone; `model.py` wires it into a network.

Cost: the forward never builds a d_out x d_in matrix. Each A_i is scaled by
alpha_i / ||B_i A_i||_F and the pairs are stacked, so any number of pairs costs two thin
matmuls, and the norms come from r x r products: ||BA||_F^2 = <B^T B, A A^T>_F.

Opening and closing a task. `model.start_task` adds the task's pair *open*: LoRA-style, B = 0
and un-normalised, contributing alpha_t * B_t A_t, so the task starts exactly at the previous
model (no jump) and trains like a LoRA (as the reference code does). `close_pair` ends the task
without changing the function: alpha_t becomes alpha_t * ||B_t A_t||_F and from then on the
pair is a frozen unit direction with a trainable magnitude. `add_pair(open=False)` instead adds
a pair normalised from its first step with a random B (kaiming-uniform like A): A, B and alpha
then all get non-zero gradients at once, but the layer jumps by alpha_init in Frobenius norm
along a random direction; that is too large a jump for small backbones, hence not the default.
A product that is exactly zero is divided by a floor of 1e-12 and adds nothing instead of NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aads.errors import BadInput

_NORM_FLOOR = 1e-12


class SDLoRAError(BadInput):
    """An SD-LoRA operation that cannot be done as asked; the message says what and where."""


class SDLoRALinear(nn.Module):
    """A frozen `nn.Linear` plus SD-LoRA pairs (``A[i]``: r_i x d_in, ``B[i]``: d_out x r_i)
    and one magnitude per pair (``alphas``, a vector).

    Only the newest pair (from `add_pair`) and all magnitudes train. Adapter tensors are at
    least float32 whatever the base dtype: alpha and the normalisation lose too much in bf16.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise SDLoRAError(f"SD-LoRA wraps nn.Linear, got {type(base).__name__}")
        self.base_layer = base.requires_grad_(False)
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        self.alphas = nn.Parameter(torch.empty(0, **self._factory()))
        self.open = False  # whether the newest pair is still un-normalised (its task runs)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def num_pairs(self) -> int:
        return len(self.A)

    @property
    def ranks(self) -> list[int]:
        return [a.shape[0] for a in self.A]

    def extra_repr(self) -> str:
        return f"ranks={self.ranks}"

    def _factory(self) -> dict[str, Any]:
        weight = self.base_layer.weight
        return {"device": weight.device, "dtype": torch.promote_types(weight.dtype, torch.float32)}

    # ------------------------------------------------------------------ pairs

    def add_pair(
        self,
        rank: int,
        alpha_init: float = 0.8,
        generator: torch.Generator | None = None,
        *,
        open: bool = False,
    ) -> None:
        """Close and freeze every existing pair and append a trainable one (magnitude
        `alpha_init`). A is kaiming-uniform (a = sqrt(5)) drawn on the CPU from `generator`
        (the global RNG when None); B is zero for an `open` pair, else kaiming-uniform too
        (see the module docstring)."""
        if rank < 1:
            raise SDLoRAError(f"rank must be >= 1, got {rank}")
        self.close_pair()
        for p in (*self.A, *self.B):
            p.requires_grad_(False)
        factory = self._factory()
        a = _kaiming_uniform((rank, self.in_features), generator)
        b = (
            torch.zeros(self.out_features, rank)
            if open
            else _kaiming_uniform((self.out_features, rank), generator)
        )
        self.A.append(nn.Parameter(a.to(**factory)))
        self.B.append(nn.Parameter(b.to(**factory)))
        new_alpha = torch.tensor([alpha_init], **factory)
        self._set_alphas(torch.cat([self.alphas.detach(), new_alpha]))
        self.open = open

    @torch.no_grad()
    def close_pair(self) -> None:
        """End the open pair's task without changing the function: alpha_t *= ||B_t A_t||_F,
        so alpha_t * (unit direction) equals the alpha_t * B_t A_t it contributed."""
        if not self.open:
            return
        alphas = self.alphas.detach().clone()
        alphas[-1] = alphas[-1] * self.pair_norms()[-1]
        self._set_alphas(alphas)
        self.open = False

    def check_pairs(self, A: Sequence[Tensor], B: Sequence[Tensor], alphas: Tensor) -> None:
        """Raise `SDLoRAError` unless the tensors are pairs that fit this layer."""
        if len(A) != len(B) or alphas.shape != (len(A),):
            raise SDLoRAError(
                f"{len(A)} A, {len(B)} B and alphas of shape {tuple(alphas.shape)} do not "
                "describe the same number of pairs"
            )
        for i, (a, b) in enumerate(zip(A, B, strict=True)):
            r = a.shape[0]
            if a.shape != (r, self.in_features) or b.shape != (self.out_features, r):
                raise SDLoRAError(
                    f"pair {i}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a "
                    f"{self.in_features} -> {self.out_features} layer (want A (r, "
                    f"{self.in_features}), B ({self.out_features}, r))"
                )

    def set_pairs(self, A: Sequence[Tensor], B: Sequence[Tensor], alphas: Tensor) -> None:
        """Replace all pairs by copies of these (a checkpoint's finished tasks): the pairs are
        frozen, the magnitudes trainable; `add_pair` starts the next task."""
        self.check_pairs(A, B, alphas)
        factory = self._factory()
        self.A = nn.ParameterList(_frozen_copy(a, factory) for a in A)
        self.B = nn.ParameterList(_frozen_copy(b, factory) for b in B)
        self._set_alphas(alphas.detach())
        self.open = False

    def adapter_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``A.<i>``, ``B.<i>`` and ``alphas``: everything SD-LoRA adds, none of the base."""
        return [
            *((f"A.{i}", a) for i, a in enumerate(self.A)),
            *((f"B.{i}", b) for i, b in enumerate(self.B)),
            ("alphas", self.alphas),
        ]

    def _set_alphas(self, values: Tensor) -> None:
        self.alphas = nn.Parameter(values.to(**self._factory()).clone())

    # ------------------------------------------------------------------ maths

    def pair_norms(self) -> Tensor:
        """||B_i A_i||_F per pair from r x r products (floored at 1e-12 so 0 / 0 cannot occur)."""
        squares = torch.stack(
            [_frobenius_inner(a, b, a, b) for a, b in zip(self.A, self.B, strict=True)]
        )
        return squares.clamp_min(_NORM_FLOOR**2).sqrt()

    def _scales(self) -> Tensor:
        """Per-pair factor on B_i A_i: alpha_i / ||B_i A_i||_F, or alpha_t for the open pair."""
        scales = self.alphas / self.pair_norms()
        if self.open:
            scales = torch.cat([scales[:-1], self.alphas[-1:]])
        return scales

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if not self.num_pairs:
            return out
        scales = self._scales()
        a = torch.cat([a * s for a, s in zip(self.A, scales, strict=True)])
        b = torch.cat(tuple(self.B), dim=1)
        return out + F.linear(F.linear(x.to(a.dtype), a), b).to(out.dtype)

    def directions(self) -> list[Tensor]:
        """B_i A_i / ||B_i A_i||_F for every pair (d_out x d_in, unit Frobenius norm)."""
        return [(b @ a) / n for a, b, n in zip(self.A, self.B, self.pair_norms(), strict=True)]

    def delta_weight(self) -> Tensor:
        """sum_i alpha_i * direction_i (the open pair: alpha_t B_t A_t), the change to W0."""
        delta = torch.zeros(self.out_features, self.in_features, **self._factory())
        for scale, a, b in zip(self._scales(), self.A, self.B, strict=True):
            delta = delta + scale * (b @ a)
        return delta

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain frozen `nn.Linear` with weight W0 + delta (for serving); self is unchanged."""
        base = self.base_layer
        weight = (base.weight.to(self.alphas.dtype) + self.delta_weight()).to(base.weight.dtype)
        # Built on "meta" so no random init runs and the global RNG is left alone.
        has_bias = base.bias is not None
        merged = nn.Linear(self.in_features, self.out_features, bias=has_bias, device="meta")
        merged.weight = nn.Parameter(weight, requires_grad=False)
        if has_bias:
            merged.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        return merged

    # ------------------------------------------------------------------ -KD

    @torch.no_grad()
    def fold_if_spanned(self, threshold: float) -> dict[str, Any]:
        """-KD for the newest pair: fold it into the old magnitudes when the old directions
        span it, and drop it.

        Least squares (float64) of the newest unit direction d_t on the old ones gives
        coefficients c and a residual r = d_t - sum_i c_i d_i. ``explained`` is
        1 - ||r||_F / ||d_t||_F (= 1 - ||r||_F): folding (alpha_i += alpha_t * c_i) changes the
        layer's weight by exactly alpha_t * r, so ``fold_error`` = |alpha_t| * (1 - explained)
        is the Frobenius norm of that change. It folds when ``explained >= threshold``.
        """
        if not 0 < threshold <= 1:
            raise SDLoRAError(f"kd threshold must be in (0, 1], got {threshold}")
        if not self.num_pairs:
            raise SDLoRAError("no pair to fold: add_pair starts a task")
        self.close_pair()
        alpha_t = float(self.alphas[-1])
        if self.num_pairs == 1:
            return {
                "folded": False,
                "explained": 0.0,
                "coefficients": [],
                "fold_error": abs(alpha_t),
            }
        gram = self._direction_gram()
        coef = torch.linalg.pinv(gram[:-1, :-1], hermitian=True) @ gram[:-1, -1]
        residual = (gram[-1, -1] - gram[:-1, -1] @ coef).clamp_min(0).sqrt()
        explained = float(1 - residual)
        folded = explained >= threshold
        if folded:
            self._fold_newest(coef)
        return {
            "folded": folded,
            "explained": explained,
            "coefficients": coef.tolist(),
            "fold_error": abs(alpha_t) * float(residual),
        }

    def _direction_gram(self) -> Tensor:
        """<d_i, d_j>_F of the unit directions, in float64, from r_i x r_j products."""
        A = [a.double() for a in self.A]
        B = [b.double() for b in self.B]
        n = self.num_pairs
        inner = torch.empty(n, n, dtype=torch.float64, device=self.alphas.device)
        for i in range(n):
            for j in range(i, n):
                inner[i, j] = inner[j, i] = _frobenius_inner(A[i], B[i], A[j], B[j])
        norms = inner.diagonal().clamp_min(_NORM_FLOOR**2).sqrt()
        return inner / torch.outer(norms, norms)

    def _fold_newest(self, coef: Tensor) -> None:
        alphas = self.alphas.detach()
        folded = alphas[:-1] + alphas[-1] * coef.to(alphas.dtype)
        self.A = nn.ParameterList(list(self.A)[:-1])
        self.B = nn.ParameterList(list(self.B)[:-1])
        self._set_alphas(folded)


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator | None) -> Tensor:
    return nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5), generator=generator)


def _frozen_copy(t: Tensor, factory: dict[str, Any]) -> nn.Parameter:
    return nn.Parameter(t.detach().to(**factory, copy=True), requires_grad=False)


def _frobenius_inner(a_i: Tensor, b_i: Tensor, a_j: Tensor, b_j: Tensor) -> Tensor:
    """<B_i A_i, B_j A_j>_F = sum((B_i^T B_j) * (A_i A_j^T)), without the d_out x d_in products."""
    return ((b_i.T @ b_j) * (a_i @ a_j.T)).sum()
