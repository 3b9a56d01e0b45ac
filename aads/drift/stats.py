"""The three drift statistics `aads monitor` reports, on plain counts and feature arrays.

Each returns a `DriftCheck`: whether it could be measured (enough data), the statistic, its
p-value, whether the drift is *significant* (the p-value under ``alpha`` and the effect large
enough to matter, so a large sample never pages anyone over a trivial change), and a one-line
message a person can act on.

1. `unknown_rate_check`: are more images answered ``unknown`` than the OOD check's calibrated
   rejection rate ``p0`` predicts? Capture keeps every unknown but only a hash-chosen share
   ``r`` of the other answers, and which images are sampled does not depend on the verdict, so
   under H0 each captured record is an unknown with probability ``q = p0 / (p0 + (1-p0) r)``:
   the count of unknowns among the records is binomial (a sum of binomials, one per sample
   rate, when the rate changed inside the window). One-sided exact test; the field's rate is
   estimated as ``U / (U + K / r)``.
2. `domain_mix_check`: does the share of images per CONEC domain differ from training's?
   G-test (log-likelihood ratio) against the training proportions; the chi-square reference
   distribution when every expected count is at least 5, else a seeded Monte Carlo null.
   Effect size: total variation distance between the two mixes.
3. `mmd_check`: do recent images' adapter features come from the calibration images'
   distribution? Unbiased MMD² with a Gaussian kernel (bandwidth: the median pairwise
   distance of the pooled sample) and a permutation test; both samples capped at `MAX_ROWS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from scipy import stats

from aads.errors import BadInput

ALPHA = 0.01
MAX_ROWS = 512
PERMUTATIONS = 500
MONTE_CARLO = 20_000
MIN_P0 = 1e-3


class DriftInputError(BadInput):
    """Data a drift statistic cannot be computed on (shapes, negative counts, a bad window)."""


@dataclass(frozen=True)
class DriftCheck:
    """One statistic's outcome. ``significant`` implies ``measured``."""

    name: str
    measured: bool
    significant: bool = False
    statistic: float | None = None
    p_value: float | None = None
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "significant": self.significant,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "message": self.message,
            "detail": self.detail,
        }


def not_measured(name: str, why: str, **detail: Any) -> DriftCheck:
    return DriftCheck(name, measured=False, message=f"{name} not measured: {why}", detail=detail)


# --------------------------------------------------------------------------- unknown rate


def null_unknown_share(p0: float, rate: float) -> float:
    """Probability that a captured record is an unknown when the field's rate is `p0`."""
    return p0 / (p0 + (1.0 - p0) * rate)


def field_rate(q: float, rate: float) -> float:
    """Inverse of `null_unknown_share`: the field's unknown rate behind a record share `q`."""
    return q * rate / (1.0 - q + q * rate) if q < 1 else 1.0


def unknown_rate_check(
    counts: dict[float, tuple[int, int]],
    p0: float,
    *,
    alpha: float = ALPHA,
    min_unknowns: int = 10,
    min_ratio: float = 1.5,
) -> DriftCheck:
    """`counts` maps a sample rate to (unknown records, sampled known records) at that rate;
    `p0` is the calibrated rejection rate of in-distribution images.

    Significant when the one-sided p-value is under `alpha`, at least `min_unknowns` unknowns
    were seen (three unknowns at night page nobody) and the estimated rate is at least
    `min_ratio` times `p0`.
    """
    name = "unknown rate"
    if any(u < 0 or k < 0 for u, k in counts.values()):
        raise DriftInputError("record counts cannot be negative")
    if not 0 <= p0 < 1:
        raise DriftInputError(f"calibrated rejection rate {p0} is not in [0, 1)")
    usable = {r: c for r, c in counts.items() if r > 0 and sum(c) > 0}
    blind = sum(u for r, (u, _) in counts.items() if r <= 0)
    if not usable:
        why = (
            "capture keeps no answer given by name (serving.capture.sample_rate is 0), so the "
            "share of unknowns cannot be told apart from the share kept"
            if blind
            else "no captured answers in the window"
        )
        return not_measured(name, why, unknowns_without_sample=blind)
    null_p0 = max(p0, MIN_P0)
    unknowns = sum(u for u, _ in usable.values())
    records = sum(u + k for u, k in usable.values())
    estimated_total = unknowns + sum(k / r for r, (_, k) in usable.items())
    estimate = unknowns / estimated_total if estimated_total else 0.0
    if len(usable) == 1:
        ((rate, (u, k)),) = usable.items()
        test = stats.binomtest(u, u + k, null_unknown_share(null_p0, rate), alternative="greater")
        p_value = float(test.pvalue)
        low, high = test.proportion_ci(0.95)
        interval = [field_rate(low, rate), field_rate(high, rate)]
    else:
        p_value = _sum_of_binomials_sf(
            unknowns, [(u + k, null_unknown_share(null_p0, r)) for r, (u, k) in usable.items()]
        )
        interval = None
    ratio = estimate / null_p0
    significant = p_value < alpha and unknowns >= min_unknowns and ratio >= min_ratio
    verdict = "above" if significant else "not significantly above"
    message = (
        f"unknown rate {estimate:.1%} ({unknowns} unknowns in {records} captured records) is "
        f"{verdict} the calibrated {p0:.1%} (p = {p_value:.2g})"
    )
    if p_value < alpha and not significant:
        message += (
            f"; below the alert minimums ({min_unknowns} unknowns, {min_ratio:g}x the "
            "calibrated rate)"
        )
    return DriftCheck(
        name,
        measured=True,
        significant=significant,
        statistic=estimate,
        p_value=p_value,
        message=message,
        detail={
            "calibrated_rate": p0,
            "null_rate": null_p0,
            "estimated_rate": estimate,
            "ratio": ratio,
            "interval_95": interval,
            "unknowns": unknowns,
            "records": records,
            "by_sample_rate": {str(r): {"unknown": u, "known": k} for r, (u, k) in usable.items()},
            "unknowns_without_sample": blind,
            "min_unknowns": min_unknowns,
            "min_ratio": min_ratio,
        },
    )


def _sum_of_binomials_sf(observed: int, groups: list[tuple[int, float]]) -> float:
    """P(sum of independent Binomial(n_i, q_i) >= observed), by exact convolution."""
    pmf = np.ones(1)
    for n, q in groups:
        pmf = np.convolve(pmf, stats.binom.pmf(np.arange(n + 1), n, q))
    return float(min(1.0, pmf[observed:].sum()))


# --------------------------------------------------------------------------- domain mix


def domain_mix_check(
    observed: dict[str, int],
    training: dict[str, float],
    *,
    alpha: float = ALPHA,
    min_effect: float = 0.1,
    min_images: int = 20,
    seed: int = 0,
) -> DriftCheck:
    """Recent images per domain (`observed`) against the training mix (counts or shares).

    Significant when the p-value is under `alpha` and the mixes differ by at least
    `min_effect` in total variation distance (the share of images that would have to move).
    """
    name = "domain mix"
    domains = [d for d, w in training.items() if w > 0]
    if len(domains) < 2:
        return not_measured(name, "the adapter was trained on one domain", training=training)
    unexpected = {d: n for d, n in observed.items() if d not in domains and n > 0}
    counts = np.asarray([observed.get(d, 0) for d in domains], dtype=np.float64)
    n = int(counts.sum()) + sum(unexpected.values())
    if n < min_images:
        return not_measured(
            name, f"{n} recent images with a domain (at least {min_images} needed)", images=n
        )
    expected_share = np.asarray([training[d] for d in domains], dtype=np.float64)
    expected_share /= expected_share.sum()
    share = counts / n
    effect = 0.5 * (np.abs(share - expected_share).sum() + sum(unexpected.values()) / n)
    detail: dict[str, Any] = {
        "observed": {d: int(c) for d, c in zip(domains, counts, strict=True)},
        "observed_share": {d: float(s) for d, s in zip(domains, share, strict=True)},
        "training_share": {d: float(s) for d, s in zip(domains, expected_share, strict=True)},
        "unexpected_domains": unexpected,
        "total_variation": float(effect),
        "min_effect": min_effect,
    }
    if unexpected:
        return DriftCheck(
            name,
            measured=True,
            significant=True,
            statistic=float("inf"),
            p_value=0.0,
            message=f"answers name domains the adapter was not trained on: {sorted(unexpected)}",
            detail=detail,
        )
    g = _g_statistic(counts, expected_share)
    if (expected_share * n).min() >= 5:
        p_value, method = float(stats.chi2.sf(g, len(domains) - 1)), "chi-square"
    else:
        draws = np.random.default_rng(seed).multinomial(int(n), expected_share, size=MONTE_CARLO)
        null = _g_statistic(draws.astype(np.float64), expected_share)
        p_value = float((1 + np.count_nonzero(null >= g - 1e-9)) / (1 + MONTE_CARLO))
        method = f"Monte Carlo ({MONTE_CARLO} draws)"
    detail["reference_distribution"] = method
    significant = p_value < alpha and effect >= min_effect
    mix = ", ".join(
        f"{d} {s:.0%} (trained {e:.0%})"
        for d, s, e in zip(domains, share, expected_share, strict=True)
    )
    message = (
        f"domain mix {'differs' if significant else 'does not differ significantly'} from "
        f"training: {mix}; G = {g:.1f}, p = {p_value:.2g}, TVD {effect:.2f}"
    )
    return DriftCheck(name, True, significant, float(g), p_value, message, detail)


def _g_statistic(counts: np.ndarray, expected_share: np.ndarray) -> np.ndarray | float:
    """G = 2 sum o ln(o / e) over the last axis (0 ln 0 = 0)."""
    n = counts.sum(axis=-1, keepdims=True)
    expected = n * expected_share
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log(counts / expected), 0.0)
    g = 2.0 * terms.sum(axis=-1)
    return float(g) if np.ndim(g) == 0 else g


# --------------------------------------------------------------------------- feature drift


def mmd_check(
    reference: np.ndarray,
    recent: np.ndarray,
    *,
    alpha: float = ALPHA,
    permutations: int = PERMUTATIONS,
    max_rows: int = MAX_ROWS,
    min_rows: int = 20,
    seed: int = 0,
) -> DriftCheck:
    """Two-sample test between `reference` (calibration) and `recent` feature rows."""
    name = "feature drift"
    reference, recent = np.asarray(reference), np.asarray(recent)
    if reference.ndim != 2 or recent.ndim != 2 or reference.shape[1] != recent.shape[1]:
        raise DriftInputError(
            f"feature arrays must be (rows, features) of one width: {reference.shape} vs "
            f"{recent.shape}"
        )
    if len(recent) < min_rows or len(reference) < min_rows:
        return not_measured(
            name,
            f"{len(recent)} recent and {len(reference)} reference images (at least {min_rows} "
            "of each needed)",
            recent=len(recent),
            reference=len(reference),
        )
    rng = np.random.default_rng(seed)
    x, y = _capped(reference, max_rows, rng), _capped(recent, max_rows, rng)
    kernel, bandwidth = gaussian_kernel(np.concatenate([x, y]))
    n, m = len(x), len(y)
    observed = float(_mmd2_unbiased(kernel, _indicator(np.arange(n), n + m)[None])[0])
    null = np.concatenate(
        [
            _mmd2_unbiased(
                kernel, np.stack([_indicator(rng.permutation(n + m)[:n], n + m) for _ in range(b)])
            )
            for b in _chunks(permutations, 100)
        ]
    )
    p_value = float((1 + np.count_nonzero(null >= observed)) / (1 + permutations))
    significant = p_value < alpha
    message = (
        f"recent images' features {'differ' if significant else 'do not differ significantly'} "
        f"from the calibration images' (MMD² {observed:.4f}, null 95th percentile "
        f"{np.percentile(null, 95):.4f}, p = {p_value:.2g}; {m} recent vs {n} reference)"
    )
    return DriftCheck(
        name,
        measured=True,
        significant=significant,
        statistic=observed,
        p_value=p_value,
        message=message,
        detail={
            "mmd2": observed,
            "bandwidth": bandwidth,
            "reference_rows": n,
            "recent_rows": m,
            "permutations": permutations,
            "null_quantiles": {q: float(np.percentile(null, q)) for q in (50, 95, 99)},
            "null": [float(v) for v in null],
        },
    )


def gaussian_kernel(z: np.ndarray) -> tuple[np.ndarray, float]:
    """exp(-d² / (2 s²)) over all pairs of rows, s = the median pairwise distance."""
    z = np.asarray(z, dtype=np.float64)
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[~np.eye(len(z), dtype=bool)]
    median = float(np.median(off)) if off.size else 0.0
    s2 = median if median > 0 else (float(off.mean()) if off.size and off.mean() > 0 else 1.0)
    return np.exp(-d2 / (2.0 * s2)), float(np.sqrt(s2))


def _indicator(rows: np.ndarray, size: int) -> np.ndarray:
    w = np.zeros(size)
    w[rows] = 1.0
    return w


def _mmd2_unbiased(kernel: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each row of `wx` (B, N): 1 marks the first sample, 0 the second.

    With r = K 1 and T = 1'K1: Sxx = wx'K wx, Sxy = wx'r - Sxx, Syy = T - 2 wx'r + Sxx, so a
    batch of permutations costs one (B, N) x (N, N) product.
    """
    n = wx[0].sum()
    m = wx.shape[1] - n
    diag = np.diag(kernel)
    wk = wx @ kernel
    sxx = (wk * wx).sum(1)
    wr = wk.sum(1)
    total = kernel.sum()
    sxy = wr - sxx
    syy = total - 2.0 * wr + sxx
    dx = wx @ diag
    dy = diag.sum() - dx
    return (sxx - dx) / (n * (n - 1)) + (syy - dy) / (m * (m - 1)) - 2.0 * sxy / (n * m)


def _capped(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return rows[np.sort(rng.choice(len(rows), limit, replace=False))]


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


# --------------------------------------------------------------------------- windows


_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d`` / ``24h`` / ``90m`` / ``2w`` before `now`, or an ISO date or time (UTC if naive)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    value = text.strip().lower()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        amount = int(value[:-1])
        if amount <= 0:
            raise DriftInputError(f"--since {text!r}: the window must be longer than zero")
        return now - timedelta(seconds=amount * _UNITS[value[-1]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DriftInputError(
            f"--since {text!r}: use a length such as 7d, 24h, 90m or 2w, or an ISO date"
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when > now:
        raise DriftInputError(f"--since {text!r} is in the future")
    return when
