"""Group-conditional Gaussians with one shared Ledoit-Wolf covariance, kept as sufficient
statistics so groups (classes, domains) can be added one at a time without earlier data."""

from __future__ import annotations

import torch

from aads.errors import BadInput


class GaussianStatsError(BadInput):
    """Statistics that are empty, inconsistent or of the wrong width."""


STATS_KEYS = ("counts", "sums", "scatter", "fourth_power_sum")


class SharedCovarianceGaussians:
    """Sufficient statistics of per-group Gaussians sharing one Ledoit-Wolf covariance.

    Groups are domains (CONEC's selector) or classes (phase 2's classifier alignment, OOD
    prototypes). Only counts, sums, the pooled within-group scatter and the sum of squared
    residual norms are kept, which is all Ledoit-Wolf needs: a group can be added later
    without the data of earlier ones (rehearsal-free). Everything is float64 on the CPU.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(0, dtype=torch.long)
        self.sums: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None
        self.fourth_power_sum = torch.zeros((), dtype=torch.float64)

    @property
    def num_groups(self) -> int:
        return len(self.counts)

    def add(self, features: torch.Tensor) -> int:
        """Add one group's features (all of them at once); returns its index."""
        if len(features) == 0:
            raise GaussianStatsError("a new group needs at least one feature vector")
        if self.sums is not None and features.shape[1] != self.sums.shape[1]:
            raise GaussianStatsError(f"features have {features.shape[1]} dims, expected {self.dim}")
        total = features.sum(0)
        residual = features - total / len(features)
        scatter = residual.T @ residual
        self.counts = torch.cat([self.counts, torch.tensor([len(features)])])
        self.sums = total[None] if self.sums is None else torch.cat([self.sums, total[None]])
        self.scatter = scatter if self.scatter is None else self.scatter + scatter
        self.fourth_power_sum = self.fourth_power_sum + residual.square().sum(1).square().sum()
        return self.num_groups - 1

    @property
    def dim(self) -> int:
        return 0 if self.sums is None else self.sums.shape[1]

    def means(self) -> torch.Tensor:
        """(G, F) group means."""
        return self._fitted_sums() / self.counts[:, None]

    def covariance(self) -> tuple[torch.Tensor, float]:
        """The shared Ledoit-Wolf covariance (F, F) and its shrinkage, as sklearn computes them
        on the pooled within-group residuals."""
        self._fitted_sums()
        n, p = float(self.counts.sum()), self.dim
        emp = self.scatter / n
        if p == 1:
            return emp, 0.0
        trace = torch.trace(emp)
        mu = trace / p
        delta_ = emp.square().sum()
        beta = (self.fourth_power_sum / n - delta_) / (p * n)
        delta = (delta_ - 2.0 * mu * trace + p * mu**2) / p
        beta = torch.minimum(beta, delta)
        shrinkage = 0.0 if beta == 0 or delta == 0 else float(beta / delta)
        shrunk = (1.0 - shrinkage) * emp
        shrunk.diagonal().add_(shrinkage * mu)
        return shrunk, shrinkage

    def sample(self, group: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """`n` draws from `group`'s Gaussian (replay for discriminative fits, no stored data)."""
        covariance, _ = self.covariance()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        root = eigenvectors * eigenvalues.clamp(min=0).sqrt()
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means()[group] + noise @ root.T

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.sums is None:
            return {}
        values = (self.counts, self.sums, self.scatter, self.fourth_power_sum)
        return {k: v.clone() for k, v in zip(STATS_KEYS, values, strict=True)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> SharedCovarianceGaussians:
        stats = cls()
        if not state:
            return stats
        _check_keys(state, STATS_KEYS, "Gaussian statistics")
        counts, sums, scatter, fourth = (state[k] for k in STATS_KEYS)
        d, f = len(counts), sums.shape[-1]
        if sums.shape != (d, f) or scatter.shape != (f, f) or fourth.shape != ():
            raise GaussianStatsError(
                f"inconsistent Gaussian statistics: counts {tuple(counts.shape)}, sums "
                f"{tuple(sums.shape)}, scatter {tuple(scatter.shape)}, fourth {tuple(fourth.shape)}"
            )
        stats.counts = counts.to("cpu", torch.long)
        stats.sums, stats.scatter, stats.fourth_power_sum = (
            t.to("cpu", torch.float64) for t in (sums, scatter, fourth)
        )
        return stats

    def _fitted_sums(self) -> torch.Tensor:
        if self.sums is None:
            raise GaussianStatsError("no group statistics yet: add() first")
        return self.sums


def _check_keys(state: dict[str, torch.Tensor], expected: tuple[str, ...], what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise GaussianStatsError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")
