"""The drift statistics on data where each must fire and where it must not (fixed seeds), and
against independent oracles (scipy's binomial, a direct MMD² sum)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats

from aads.drift.stats import (
    DriftInputError,
    _sum_of_binomials_sf,
    domain_mix_check,
    gaussian_kernel,
    mmd_check,
    parse_since,
    unknown_rate_check,
)


def captured_counts(
    n: int, field_rate: float, sample_rate: float, seed: int
) -> dict[float, tuple[int, int]]:
    """What capture keeps of `n` answers: every unknown, the sampled share of the others."""
    rng = np.random.default_rng(seed)
    unknown = rng.random(n) < field_rate
    sampled = rng.random(n) < sample_rate
    return {sample_rate: (int(unknown.sum()), int((~unknown & sampled).sum()))}


# --------------------------------------------------------------------------- unknown rate


def test_unknown_rate_three_times_the_calibrated_rate_fires():
    check = unknown_rate_check(captured_counts(4000, 0.15, 0.1, seed=1), p0=0.05)
    assert check.significant and check.p_value < 1e-6
    assert check.detail["estimated_rate"] == pytest.approx(0.15, abs=0.03)


def test_unknown_rate_at_the_calibrated_rate_does_not_fire():
    check = unknown_rate_check(captured_counts(4000, 0.05, 0.1, seed=2), p0=0.05)
    assert check.measured and not check.significant
    assert check.detail["estimated_rate"] == pytest.approx(0.05, abs=0.015)


def test_the_sampling_adjusted_null_holds_its_false_alarm_rate():
    alarms = sum(
        unknown_rate_check(captured_counts(3000, 0.05, 0.05, seed=s), p0=0.05).p_value < 0.01
        for s in range(300)
    )
    assert alarms <= 9  # alpha 0.01 -> 3 expected in 300; an unadjusted null alarms ~always


def test_ignoring_the_sample_rate_would_alarm_on_healthy_traffic():
    u, k = captured_counts(3000, 0.05, 0.05, seed=3)[0.05]
    naive = stats.binomtest(u, u + k, 0.05, alternative="greater").pvalue
    assert naive < 1e-10
    assert not unknown_rate_check({0.05: (u, k)}, p0=0.05).significant


def test_a_handful_of_unknowns_pages_nobody_even_when_unlikely():
    check = unknown_rate_check({0.05: (4, 1)}, p0=0.01, min_unknowns=10)
    assert check.p_value < 0.01 and not check.significant
    assert "alert minimums" in check.message


def test_a_small_relative_increase_is_not_an_alert_however_many_images():
    check = unknown_rate_check(captured_counts(400_000, 0.06, 0.05, seed=4), p0=0.05)
    assert check.p_value < 0.01 and not check.significant  # 1.2x < min_ratio 1.5


def test_without_sampled_answers_the_rate_is_not_measured_and_says_why():
    check = unknown_rate_check({0.0: (120, 0)}, p0=0.05)
    assert not check.measured and "sample_rate is 0" in check.message


def test_records_at_several_sample_rates_are_tested_together():
    healthy = {**captured_counts(3000, 0.05, 0.1, seed=5), **captured_counts(3000, 0.05, 0.5, 6)}
    drifted = {**captured_counts(3000, 0.2, 0.1, seed=7), **captured_counts(3000, 0.2, 0.5, 8)}
    assert not unknown_rate_check(healthy, p0=0.05).significant
    assert unknown_rate_check(drifted, p0=0.05).significant


def test_sum_of_binomials_tail_equals_scipy_for_one_group():
    for observed in (0, 7, 30):
        assert _sum_of_binomials_sf(observed, [(80, 0.2)]) == pytest.approx(
            stats.binom.sf(observed - 1, 80, 0.2), rel=1e-9
        )


def test_negative_counts_are_refused():
    with pytest.raises(DriftInputError):
        unknown_rate_check({0.1: (-1, 3)}, p0=0.05)


# --------------------------------------------------------------------------- domain mix


def draw_mix(n: int, shares: dict[str, float], seed: int) -> dict[str, int]:
    names = list(shares)
    counts = np.random.default_rng(seed).multinomial(n, list(shares.values()))
    return dict(zip(names, counts.tolist(), strict=True))


TRAINING = {"base": 400.0, "field": 400.0, "low_light": 200.0}


def test_a_shifted_domain_mix_fires():
    recent = draw_mix(300, {"base": 0.15, "field": 0.8, "low_light": 0.05}, seed=1)
    check = domain_mix_check(recent, TRAINING)
    assert check.significant and check.detail["reference_distribution"] == "chi-square"


def test_the_training_mix_itself_does_not_fire():
    recent = draw_mix(300, {"base": 0.4, "field": 0.4, "low_light": 0.2}, seed=2)
    assert not domain_mix_check(recent, TRAINING).significant


def test_small_counts_use_a_monte_carlo_null():
    check = domain_mix_check({"base": 2, "field": 19, "low_light": 0}, TRAINING, min_images=10)
    assert check.detail["reference_distribution"].startswith("Monte Carlo")
    assert check.significant


def test_a_trivial_difference_in_a_huge_sample_is_not_drift():
    check = domain_mix_check({"base": 41_000, "field": 39_000, "low_light": 20_000}, TRAINING)
    assert check.p_value < 0.01 and not check.significant


def test_an_adapter_with_one_domain_has_no_mix_to_compare():
    assert not domain_mix_check({"base": 50}, {"base": 500.0}).measured


def test_a_domain_training_never_saw_is_significant():
    check = domain_mix_check({"base": 30, "night": 10}, {"base": 1.0, "field": 1.0})
    assert check.significant and "night" in check.message


# --------------------------------------------------------------------------- feature drift


def gaussian(n: int, width: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)) + shift


def test_mmd_fires_on_shifted_features():
    check = mmd_check(gaussian(300, 32, 1), gaussian(150, 32, 2, shift=0.3), permutations=200)
    assert check.significant and check.p_value <= 1 / 201 + 1e-12


def test_mmd_does_not_fire_on_the_same_distribution():
    check = mmd_check(gaussian(300, 32, 3), gaussian(150, 32, 4), permutations=200)
    assert check.measured and not check.significant


def test_mmd_is_deterministic_for_a_seed_and_caps_its_samples():
    a, b = gaussian(900, 8, 5), gaussian(700, 8, 6, shift=0.1)
    one = mmd_check(a, b, permutations=50, max_rows=128)
    two = mmd_check(a, b, permutations=50, max_rows=128)
    assert one.p_value == two.p_value and one.statistic == two.statistic
    assert one.detail["reference_rows"] == one.detail["recent_rows"] == 128


def test_unbiased_mmd_equals_the_direct_sum():
    x, y = gaussian(12, 4, 7), gaussian(9, 4, 8, shift=1.0)
    kernel, _ = gaussian_kernel(np.concatenate([x, y]))
    kxx, kyy, kxy = kernel[:12, :12], kernel[12:, 12:], kernel[:12, 12:]
    direct = (
        (kxx.sum() - np.trace(kxx)) / (12 * 11)
        + (kyy.sum() - np.trace(kyy)) / (9 * 8)
        - 2 * kxy.mean()
    )
    check = mmd_check(x, y, permutations=10, min_rows=5)
    assert check.statistic == pytest.approx(direct, rel=1e-10)


def test_too_few_recent_images_are_not_measured():
    check = mmd_check(gaussian(100, 4, 9), gaussian(5, 4, 10))
    assert not check.measured and "5 recent" in check.message


def test_features_of_different_widths_are_refused():
    with pytest.raises(DriftInputError, match="one width"):
        mmd_check(gaussian(30, 4, 1), gaussian(30, 5, 2))


# --------------------------------------------------------------------------- windows

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", datetime(2026, 5, 3, 12, 0, tzinfo=UTC)),
        ("36h", datetime(2026, 5, 9, 0, 0, tzinfo=UTC)),
        ("2w", datetime(2026, 4, 26, 12, 0, tzinfo=UTC)),
        ("2026-05-01", datetime(2026, 5, 1, tzinfo=UTC)),
    ],
)
def test_since_accepts_lengths_and_dates(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["7", "seven days", "0d", "2027-01-01", "-3d"])
def test_since_refuses_what_is_not_a_window(text):
    with pytest.raises(DriftInputError, match="--since"):
        parse_since(text, NOW)
