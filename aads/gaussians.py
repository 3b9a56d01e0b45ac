"""Class-conditional Gaussians with a shared covariance: the one implementation behind the OOD
estimators (`aads.ood.mahalanobis`), classifier alignment (`aads.adapters.alignment`) and
CONEC's domain selector (`aads.adapters.conec.selector`).

Groups (classes, domains) are kept as sufficient statistics: per group the count and feature
sum; pooled over groups the within-group scatter matrix and the sum of fourth powers of the
residual norms. That is all Ledoit-Wolf needs (its shrinkage depends on ``n``, the scatter and
``sum ||r||^4`` only), so a group can be added later without the data of earlier ones
(rehearsal-free), and adding groups one by one equals fitting them together up to rounding.

From the statistics: the covariance as scikit-learn estimates it on the pooled within-group
residuals (``ledoit_wolf``: `LedoitWolf(assume_centered=True)`; ``empirical``:
`EmpiricalCovariance(assume_centered=True)`, dividing by ``n``, not ``n - groups``), its
pseudo-inverse as `scipy.linalg.pinvh` computes it (the precision both estimators report), a
factor L with P = L L^T computed once, and squared Mahalanobis distances of N samples to G
means as matrix products (d = ||L^T x||^2 - 2 (L^T x).(L^T m) + ||L^T m||^2), with no loop over
samples or groups. Equal to scikit-learn to 1e-6 (tests).

Everything is torch float64 on the CPU: `benchmarks/gaussians.py` times the same algorithm in
numpy and in torch on the shapes the three users see, and torch was as fast to fit and faster to
score (`benchmarks/results/gaussians.json`); the selector and the alignment hold torch tensors
already, and the OOD estimator converts its numpy arrays without copying (`torch.from_numpy`).
"""

from __future__ import annotations

from typing import Literal

import torch

from aads.errors import BadInput

STATS_KEYS = ("counts", "sums", "scatter", "fourth_power_sum")
"""The statistics' tensors in `SharedCovarianceGaussians.state_dict` (on disk in
``class_stats.safetensors`` and ``conec.safetensors``: keep these names and dtypes)."""
Covariance = Literal["ledoit_wolf", "empirical"]
PER_GROUP_CHUNK_BYTES = 64 * 2**20
"""Peak bytes of the (chunk, G, F) float64 block `squared_distances` builds for per-group
factors; samples are scored in chunks that fit it."""


class GaussianStatsError(BadInput):
    """Statistics that are empty, inconsistent or of the wrong width."""


class SharedCovarianceGaussians:
    """Sufficient statistics of per-group Gaussians sharing one covariance (float64, CPU)."""

    def __init__(self) -> None:
        self.counts = torch.zeros(0, dtype=torch.long)
        self.sums: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None
        self.fourth_power_sum = torch.zeros((), dtype=torch.float64)

    @classmethod
    def from_groups(cls, features: torch.Tensor, groups: torch.Tensor) -> SharedCovarianceGaussians:
        """All groups 0..G-1 at once from (N, F) features and their (N,) group indices; every
        group needs a sample. One pass: residuals from each sample's group mean, one product."""
        x, ids = _as_float64(features), groups.to("cpu", torch.long)
        if ids.shape != (len(x),):
            raise GaussianStatsError(f"{len(x)} features but groups of shape {tuple(ids.shape)}")
        if len(x) == 0:
            raise GaussianStatsError("no features: every group needs at least one")
        if int(ids.min()) < 0:
            raise GaussianStatsError(f"group indices must be >= 0, got {int(ids.min())}")
        counts = torch.bincount(ids)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise GaussianStatsError(f"every group needs samples; groups {empty} have none")
        stats = cls()
        stats.sums = torch.zeros(len(counts), x.shape[1], dtype=torch.float64).index_add_(0, ids, x)
        residual = x - (stats.sums / counts[:, None])[ids]
        stats.counts = counts
        stats.scatter = residual.T @ residual
        stats.fourth_power_sum = residual.square().sum(1).square().sum()
        return stats

    @property
    def num_groups(self) -> int:
        return len(self.counts)

    @property
    def dim(self) -> int:
        return 0 if self.sums is None else self.sums.shape[1]

    def add(self, features: torch.Tensor) -> int:
        """Add one group's features (all of them at once); returns its index."""
        features = _as_float64(features)
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

    def means(self) -> torch.Tensor:
        """(G, F) group means."""
        return self._fitted_sums() / self.counts[:, None]

    def covariance(self, kind: Covariance = "ledoit_wolf") -> tuple[torch.Tensor, float]:
        """The shared (F, F) covariance and its shrinkage (0 for ``empirical``), as
        scikit-learn's `LedoitWolf` / `EmpiricalCovariance` compute them on the pooled
        within-group residuals."""
        self._fitted_sums()
        n, p = float(self.counts.sum()), self.dim
        emp = self.scatter / n
        if kind == "empirical" or p == 1:
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

    def precision(self, kind: Covariance = "ledoit_wolf") -> tuple[torch.Tensor, float]:
        """(precision, shrinkage): the pseudo-inverse of `covariance(kind)`."""
        covariance, shrinkage = self.covariance(kind)
        return pinvh(covariance), shrinkage

    def variances(self) -> torch.Tensor:
        """(F,) pooled within-group variances: the covariance's diagonal, dividing by ``n``."""
        return self.scatter.diagonal() / float(self._fitted_counts().sum())

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

    def _fitted_counts(self) -> torch.Tensor:
        self._fitted_sums()
        return self.counts


def pinvh(matrix: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of a symmetric matrix as `scipy.linalg.pinvh` computes it (and with it
    scikit-learn's covariance estimators): eigenvalues at or below ``F * eps * max |lambda|``
    are directions without variance, ignored rather than inverted."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    cutoff = matrix.shape[0] * torch.finfo(matrix.dtype).eps * eigenvalues.abs().max()
    keep = eigenvalues.abs() > cutoff
    kept = eigenvectors[:, keep]
    return (kept / eigenvalues[keep]) @ kept.T


def precision_factor(precision: torch.Tensor) -> torch.Tensor:
    """L with P = L L^T, for scoring by matrix products; a (F,) diagonal precision (inverse
    variances) gives its (F,) square root, a (G, F, F) stack one factor per group."""
    if precision.ndim == 1:
        return precision.sqrt()
    if precision.ndim == 3:
        return torch.stack([precision_factor(p) for p in precision])
    eigenvalues, eigenvectors = torch.linalg.eigh((precision + precision.T) / 2)
    return eigenvectors * eigenvalues.clamp(min=0).sqrt()


def squared_distances(x: torch.Tensor, means: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """(N, G) squared Mahalanobis distances of (N, F) samples to (G, F) means under the
    precision L L^T (`precision_factor`): one shared (F, F) or (F,) diagonal factor, or a
    (G, F, F) factor per group (scored in memory-bounded chunks of samples)."""
    if factor.ndim == 3:
        return _per_group_squared_distances(x, means, factor)
    z, mz = _project(x, factor), _project(means, factor)
    d = z.square().sum(1)[:, None] - 2.0 * (z @ mz.T) + mz.square().sum(1)[None, :]
    return d.clamp(min=0.0)


def _project(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x * factor if factor.ndim == 1 else x @ factor


def _per_group_squared_distances(
    x: torch.Tensor, means: torch.Tensor, factors: torch.Tensor
) -> torch.Tensor:
    groups, width, _ = factors.shape
    mz = torch.einsum("gf,gfh->gh", means, factors)
    chunk = max(1, PER_GROUP_CHUNK_BYTES // (8 * groups * width))
    out = torch.empty(len(x), groups, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        z = torch.einsum("nf,gfh->ngh", x[start : start + chunk], factors)
        out[start : start + chunk] = (z - mz[None]).square().sum(-1)
    return out


def _as_float64(features: torch.Tensor) -> torch.Tensor:
    if features.ndim != 2:
        raise GaussianStatsError(f"features must be (N, F), got shape {tuple(features.shape)}")
    return features.detach().to("cpu", torch.float64)


def _check_keys(state: dict[str, torch.Tensor], expected: tuple[str, ...], what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise GaussianStatsError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")
