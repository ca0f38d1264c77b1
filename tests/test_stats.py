"""Wilson score intervals and the paired bootstrap, against published and analytic values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lorakit.errors import ConfigError
from lorakit.evaluate.stats import paired_bootstrap, wilson_interval, z_value

# Newcombe, "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17:857-872 (1998), Table I, method 3 (Wilson score, no
# continuity correction), to four decimals.
NEWCOMBE = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), NEWCOMBE)
def test_wilson_matches_newcombe_1998(k, n, low, high):
    got_low, got_high = wilson_interval(k, n)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_pubmedqa_majority_class_interval():
    # 276 of PubMedQA's 500 PQA-L train items are "yes" (55.2 %).
    low, high = wilson_interval(276, 500)
    assert (round(low, 5), round(high, 5)) == (0.50818, 0.59503)


def test_wilson_formula_by_hand():
    k, n, z = 7, 10, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))


def test_wilson_edges_stay_in_unit_interval_and_are_not_empty():
    assert wilson_interval(0, 1) == (0.0, pytest.approx(0.7934, abs=1e-4))
    low, high = wilson_interval(29, 29)
    assert high == 1.0 and low == pytest.approx(0.8830, abs=1e-4)
    for k in range(0, 11):
        low, high = wilson_interval(k, 10)
        assert 0.0 <= low <= k / 10 <= high <= 1.0
        assert low < high


def test_wilson_narrows_with_n_and_widens_with_confidence():
    assert np.diff(wilson_interval(50, 100)) > np.diff(wilson_interval(500, 1000))
    assert np.diff(wilson_interval(50, 100, confidence=0.99)) > np.diff(wilson_interval(50, 100))


def test_z_value():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.99) == pytest.approx(2.575829, abs=1e-6)


@pytest.mark.parametrize(
    ("k", "n", "confidence", "message"),
    [
        (0, 0, 0.95, "zero items"),
        (5, 4, 0.95, "successes must be in 0..4"),
        (-1, 4, 0.95, "successes must be in 0..4"),
        (1, 4, 1.0, "confidence must be in"),
        (1.5, 4, 0.95, "whole number"),
    ],
)
def test_wilson_rejects_bad_input(k, n, confidence, message):
    with pytest.raises(ConfigError, match=message):
        wilson_interval(k, n, confidence=confidence)


def test_paired_bootstrap_of_identical_runs_is_exactly_zero():
    a = np.array([1, 0, 1, 1, 0] * 40)
    result = paired_bootstrap(a, a)
    assert (result.delta, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)
    assert not result.significant


def test_paired_bootstrap_matches_the_binomial_it_approximates():
    # b gains 40 items over a and loses none: each resampled difference is Binomial(n, 40/n)/n,
    # so the 95 % interval is about 0.08 +- 1.96 * sqrt(0.08 * 0.92 / 500).
    rng = np.random.default_rng(1)
    a = (rng.random(500) < 0.5).astype(int)
    b = a.copy()
    flip = np.flatnonzero(a == 0)[:40]
    b[flip] = 1
    result = paired_bootstrap(a, b, resamples=20_000, seed=3)
    sd = math.sqrt(0.08 * 0.92 / 500)
    assert result.delta == pytest.approx(0.08)
    assert result.mean_b - result.mean_a == pytest.approx(0.08)
    assert result.ci_low == pytest.approx(0.08 - 1.96 * sd, abs=0.004)
    assert result.ci_high == pytest.approx(0.08 + 1.96 * sd, abs=0.004)
    assert result.significant


def test_paired_bootstrap_is_much_tighter_than_unpaired_intervals():
    # Two runs that agree on all but 10 of 400 items: the paired interval of the difference is
    # far narrower than the width of either accuracy's own interval.
    a = np.array([1] * 200 + [0] * 200)
    b = a.copy()
    b[200:210] = 1
    paired = paired_bootstrap(a, b)
    low, high = wilson_interval(int(a.sum()), a.size)
    assert paired.ci_high - paired.ci_low < (high - low) / 2
    assert paired.ci_low > 0


def test_paired_bootstrap_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(list(a), list(b), seed=5)
    assert paired_bootstrap(a, b, seed=5) != paired_bootstrap(a, b, seed=6)


def test_paired_bootstrap_handles_many_items_in_chunks():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 50_000)
    b = np.where(rng.random(50_000) < 0.9, a, 1 - a)
    result = paired_bootstrap(a, b, resamples=1_000)
    assert result.ci_low <= result.delta <= result.ci_high
    assert result.ci_high - result.ci_low < 0.01


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        ([], [], {}, "zero items"),
        ([1, 0], [1], {}, "same items"),
        ([1, 0], [1, 0], {"resamples": 10}, "resamples"),
        ([1, float("nan")], [1, 0], {}, "NaN"),
        ([1, 0], [1, 0], {"confidence": 0}, "confidence"),
    ],
)
def test_paired_bootstrap_rejects_bad_input(a, b, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        paired_bootstrap(a, b, **kwargs)
