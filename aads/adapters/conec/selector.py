"""Domain selectors: which CONEC-LoRA domain (late LoRA set + head) an image belongs to.

A selector reads the pooled hidden state at the shared/late boundary (CLS concatenated with the
mean patch token of the last shared block's output), L2-normalised, and returns one domain
index per image. Both kinds have ``fit(features, domain_ids)``, ``add_domain(features)``,
``predict(features)`` and a ``state_dict()`` of plain tensors (safetensors, no pickle).

``mahalanobis`` (the default) models each domain as a Gaussian with one shared covariance,
Ledoit-Wolf shrunk, and picks the nearest mean in Mahalanobis distance. It is the default
because it is the OOD detector's maths (DESIGN.md s4: shared covariance, shrinkage, L2
features; one implementation, `aads.gaussians`), needs no training, and adding a domain needs
no old data: it keeps, per domain, the count and feature sum, and, pooled over domains, the
within-domain scatter matrix and the sum of fourth powers of the residual norms. Those are
exactly the sufficient statistics of `sklearn.covariance.LedoitWolf` fit on the pooled
within-domain residuals, so the shrinkage is re-estimated exactly when a domain arrives,
without the old images; adding domains one by one equals fitting them all at once, up to float
rounding. The covariance divides by ``n`` as sklearn does (not ``n - D``).

``linear`` is a multinomial logistic regression on the same features, for domains the shared
covariance separates poorly. Being discriminative it must see every domain when it trains, so
`add_domain` replays old domains as samples drawn from the same stored Gaussians (as the
CONEC-LoRA reference code trains its domain classifiers on sampled embeddings).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from aads.gaussians import (
    STATS_KEYS,
    SharedCovarianceGaussians,
    precision_factor,
    squared_distances,
)

from .layer import ConecError


class DomainSelector(Protocol):
    kind: str

    @property
    def num_domains(self) -> int: ...

    def fit(self, features: torch.Tensor, domain_ids: torch.Tensor) -> DomainSelector: ...

    def add_domain(self, features: torch.Tensor) -> int: ...

    def predict(self, features: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class GaussianDomainStats(SharedCovarianceGaussians):
    """Per-domain statistics of L2-normalised boundary features (the selector's space)."""

    @property
    def num_domains(self) -> int:
        return self.num_groups

    def sample(self, domain: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """`n` L2-normalised draws from `domain`'s Gaussian (replay for discriminative fits)."""
        return F.normalize(super().sample(domain, n, generator), dim=1)


class MahalanobisDomainSelector:
    """Nearest domain mean in Mahalanobis distance under the shared shrunk covariance.

    ``means_`` (D, F) and ``precision_`` (F, F) are float64; `scores` is vectorised over
    N samples x D domains (`aads.gaussians.squared_distances`).
    """

    kind = "mahalanobis"

    def __init__(self) -> None:
        self.stats = GaussianDomainStats()
        self.means_: torch.Tensor | None = None
        self.precision_: torch.Tensor | None = None
        self.shrinkage_: float | None = None
        self._factor: torch.Tensor | None = None

    @property
    def num_domains(self) -> int:
        return self.stats.num_domains

    def fit(self, features: torch.Tensor, domain_ids: torch.Tensor) -> MahalanobisDomainSelector:
        """Fit domains 0..D-1 from scratch (equivalent to adding them in order)."""
        self.stats = _stats_by_domain(features, domain_ids)
        self._refresh()
        return self

    def add_domain(self, features: torch.Tensor) -> int:
        domain = self.stats.add(unit_features(features))
        self._refresh()
        return domain

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) float64 Mahalanobis distances of each sample to each domain mean."""
        if self.means_ is None or self._factor is None:
            raise ConecError("the domain selector is not fitted: fit() or add_domain() first")
        return squared_distances(unit_features(features), self.means_, self._factor).sqrt()

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores(features).argmin(1).to(features.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats = GaussianDomainStats.from_state_dict(state)
        self._refresh()

    def _refresh(self) -> None:
        if self.stats.num_domains == 0:
            self.means_ = self.precision_ = self.shrinkage_ = self._factor = None
            return
        self.precision_, self.shrinkage_ = self.stats.precision()
        self.means_ = self.stats.means()
        self._factor = precision_factor(self.precision_)


class LinearDomainSelector:
    """Multinomial logistic regression (full-batch L-BFGS, float64) on standardised features.

    ``weight_`` (D, F), ``bias_`` (D,), and the standardisation ``shift_``/``scale_`` (F,) are
    the model; ``stats`` are the Gaussians used to replay old domains in `add_domain`.
    Training is deterministic: zero initialisation and a seeded replay generator.
    """

    kind = "linear"

    def __init__(self, weight_decay: float = 1e-4, max_iter: int = 200, seed: int = 0) -> None:
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.seed = seed
        self.stats = GaussianDomainStats()
        self.weight_: torch.Tensor | None = None
        self.bias_: torch.Tensor | None = None
        self.shift_: torch.Tensor | None = None
        self.scale_: torch.Tensor | None = None

    @property
    def num_domains(self) -> int:
        return self.stats.num_domains

    def fit(self, features: torch.Tensor, domain_ids: torch.Tensor) -> LinearDomainSelector:
        self.stats = _stats_by_domain(features, domain_ids)
        self._train(unit_features(features), domain_ids.to("cpu", torch.long))
        return self

    def add_domain(self, features: torch.Tensor) -> int:
        """Add a domain; old domains are replayed as `len(features)` Gaussian draws each."""
        x = unit_features(features)
        domain = self.stats.add(x)
        generator = torch.Generator().manual_seed(self.seed + domain)
        replay = [self.stats.sample(d, len(x), generator) for d in range(domain)]
        labels = torch.arange(domain + 1).repeat_interleave(len(x))
        self._train(torch.cat([*replay, x]), labels)
        return domain

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) float64 domain logits."""
        if self.weight_ is None:
            raise ConecError("the domain selector is not fitted: fit() or add_domain() first")
        x = (unit_features(features) - self.shift_) / self.scale_
        return x @ self.weight_.T + self.bias_

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(1).to(features.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.weight_ is None:
            return {}
        model = {
            "weight": self.weight_,
            "bias": self.bias_,
            "shift": self.shift_,
            "scale": self.scale_,
        }
        return {**self.stats.state_dict(), **{k: v.clone() for k, v in model.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.stats = GaussianDomainStats()
            self.weight_ = self.bias_ = self.shift_ = self.scale_ = None
            return
        model_keys = ("weight", "bias", "shift", "scale")
        _check_keys(state, (*STATS_KEYS, *model_keys), "linear selector")
        stats = GaussianDomainStats.from_state_dict({k: state[k] for k in STATS_KEYS})
        weight, bias, shift, scale = (state[k].to("cpu", torch.float64) for k in model_keys)
        d, f = stats.num_domains, stats.dim
        if (weight.shape, bias.shape, shift.shape, scale.shape) != ((d, f), (d,), (f,), (f,)):
            raise ConecError(f"linear selector tensors do not match {d} domains x {f} features")
        self.stats = stats
        self.weight_, self.bias_, self.shift_, self.scale_ = weight, bias, shift, scale

    def _train(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.shift_ = x.mean(0)
        self.scale_ = x.std(0, correction=0).clamp(min=1e-6)
        self.weight_, self.bias_ = _fit_logistic(
            (x - self.shift_) / self.scale_,
            labels,
            self.num_domains,
            self.weight_decay,
            self.max_iter,
        )


SELECTORS: dict[str, type[MahalanobisDomainSelector] | type[LinearDomainSelector]] = {
    "mahalanobis": MahalanobisDomainSelector,
    "linear": LinearDomainSelector,
}


def build_selector(kind: str) -> DomainSelector:
    """A fresh selector of `kind` (``mahalanobis`` or ``linear``, as `CONECSettings.selector`)."""
    try:
        return SELECTORS[kind]()
    except KeyError:
        raise ConecError(f"unknown domain selector '{kind}'; use {', '.join(SELECTORS)}") from None


def unit_features(features: torch.Tensor) -> torch.Tensor:
    """(N, F) features as float64 CPU rows of unit L2 norm."""
    if features.ndim != 2:
        raise ConecError(f"selector features must be (N, F), got {tuple(features.shape)}")
    return F.normalize(features.detach().to("cpu", torch.float64), dim=1)


def _stats_by_domain(features: torch.Tensor, domain_ids: torch.Tensor) -> GaussianDomainStats:
    ids = domain_ids.to("cpu", torch.long)
    if ids.shape != (len(features),):
        raise ConecError(f"{len(features)} features but domain_ids of shape {tuple(ids.shape)}")
    counts = torch.bincount(ids)
    empty = (counts == 0).nonzero().flatten().tolist()
    if len(ids) == 0 or empty or int(ids.min()) < 0:
        raise ConecError(f"domain ids must cover 0..D-1 with samples each; empty: {empty}")
    return GaussianDomainStats.from_groups(unit_features(features), ids)


def _fit_logistic(
    x: torch.Tensor, labels: torch.Tensor, classes: int, weight_decay: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone()
        weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        if classes > 1:
            optimiser = torch.optim.LBFGS(
                [weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe"
            )

            def closure() -> torch.Tensor:
                optimiser.zero_grad()
                loss = F.cross_entropy(x @ weight.T + bias, labels)
                loss = loss + 0.5 * weight_decay * weight.square().sum()
                loss.backward()
                return loss

            optimiser.step(closure)
    return weight.detach(), bias.detach()


def _check_keys(state: dict[str, torch.Tensor], expected: tuple[str, ...], what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConecError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")
