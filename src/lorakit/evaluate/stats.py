"""Uncertainty for accuracies: Wilson score intervals and a paired bootstrap for differences.

Every accuracy lorakit reports carries a 95 % interval, because benchmark subsets are small:
on 50 MedQA questions a model at 50 % accuracy has a Wilson interval of about 37-63 %, so a
5-point difference between two runs means nothing on its own.

* :func:`wilson_interval` gives the interval of one proportion (``k`` correct out of ``n``). It
  behaves well near 0 and 1 and for small ``n``, unlike the normal ("Wald") interval.
* :func:`paired_bootstrap` gives the interval of the *difference* of two accuracies measured on
  the *same* items (base model vs adapter). Resampling items, not the two runs separately,
  keeps the pairing: most items are answered alike by both models, so the difference is far
  less uncertain than two independent intervals suggest.

Only :mod:`numpy` is needed; nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import attrs
import numpy as np

from lorakit.errors import ConfigError

__all__ = ["BootstrapResult", "bootstrap_means", "paired_bootstrap", "wilson_interval", "z_value"]

_MAX_CELLS = 4_000_000  # resamples x items per vectorised chunk (32 MB of int64 indices)


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise ConfigError(f"confidence must be a number, got {confidence!r}", field="confidence")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(
            f"confidence must be in (0, 1), got {confidence!r}",
            field="confidence",
            hint="e.g. 0.95 for a 95 % interval",
        )


def z_value(confidence: float = 0.95) -> float:
    """The two-sided standard normal quantile for ``confidence`` (1.959964 for 0.95).

    Raises:
        ConfigError: ``confidence`` is not in ``(0, 1)``.
    """
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n``.

    The interval solves ``|p̂ - p| = z·sqrt(p(1-p)/n)`` for ``p`` (Wilson, 1927), without the
    continuity correction::

        centre = (p̂ + z²/2n) / (1 + z²/n)
        half   = z / (1 + z²/n) · sqrt(p̂(1-p̂)/n + z²/4n²)

    It stays inside ``[0, 1]`` and is not empty at ``successes = 0`` or ``n``.

    Args:
        successes: items counted as correct, ``0 <= successes <= n``.
        n: items scored, at least 1.
        confidence: the coverage, ``0.95`` for a 95 % interval.

    Returns:
        ``(low, high)``, both in ``[0, 1]``.

    Raises:
        ConfigError: ``n`` is 0 (never an interval over zero items), or ``successes`` is out of
            range, or ``confidence`` is not in ``(0, 1)``.
    """
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be a whole number, got {value!r}", field=name)
    if n < 1:
        raise ConfigError("cannot compute an interval over zero items", field="n")
    if not 0 <= successes <= n:
        raise ConfigError(f"successes must be in 0..{n}, got {successes}", field="successes")
    z = z_value(confidence)
    p = successes / n
    z2n = z * z / n
    denominator = 1.0 + z2n
    centre = (p + z2n / 2.0) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@attrs.frozen(kw_only=True)
class BootstrapResult:
    """A difference of two means over the same items, with its paired bootstrap interval.

    Attributes:
        n: items compared.
        mean_a: the mean of the first scores (base model accuracy).
        mean_b: the mean of the second scores (adapter accuracy).
        delta: ``mean_b - mean_a``.
        ci_low: the lower percentile bound of ``delta``.
        ci_high: the upper percentile bound of ``delta``.
        confidence: the interval's coverage (0.95).
        resamples: bootstrap resamples drawn.
        seed: the seed of the generator (the same seed gives the same interval).
    """

    n: int
    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    seed: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0 (the difference is unlikely to be resampling noise)."""
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return attrs.asdict(self)


def _as_scores(values: Sequence[float] | np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ConfigError(f"{name} must be one score per item, got shape {array.shape}", field=name)
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{name} holds a NaN or infinite score", field=name)
    return array


def paired_bootstrap(
    a: Sequence[float] | np.ndarray[Any, Any],
    b: Sequence[float] | np.ndarray[Any, Any],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """The paired bootstrap percentile interval of ``mean(b) - mean(a)``.

    ``a[i]`` and ``b[i]`` are two scores of the same item ``i`` (1/0 correctness of the base
    model and of the adapter). Each resample draws ``n`` item indices with replacement, the
    same indices for both, and takes the difference of the means; the interval is the
    ``(1-confidence)/2`` and ``(1+confidence)/2`` percentiles of those differences (numpy's
    default linear interpolation). Resamples are drawn in vectorised chunks from
    ``numpy.random.default_rng(seed)``, so the result depends only on the inputs and the seed.

    Args:
        a: the first score per item.
        b: the second score per item, same length and order.
        resamples: bootstrap resamples, at least 100.
        confidence: the interval's coverage.
        seed: the generator's seed.

    Returns:
        The difference and its interval.

    Raises:
        ConfigError: no items, different lengths, a non-finite score, fewer than 100
            resamples, or ``confidence`` outside ``(0, 1)``.
    """
    _check_confidence(confidence)
    first, second = _as_scores(a, "a"), _as_scores(b, "b")
    if first.shape != second.shape:
        raise ConfigError(
            f"paired scores need the same items: {first.size} vs {second.size} scores",
            hint="score the base model and the adapter on the same rows, in the same order",
        )
    n = int(first.size)
    if n == 0:
        raise ConfigError("cannot compare accuracies over zero items")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ConfigError(
            f"resamples must be an integer >= 100, got {resamples!r}", field="resamples"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}", field="seed")
    diff = second - first
    [(low, high)] = bootstrap_means(
        diff[None, :], confidence=confidence, resamples=resamples, seed=seed
    )
    return BootstrapResult(
        n=n,
        mean_a=float(first.mean()),
        mean_b=float(second.mean()),
        delta=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        confidence=float(confidence),
        resamples=resamples,
        seed=seed,
    )


def bootstrap_means(
    values: np.ndarray[Any, Any], *, confidence: float, resamples: int, seed: int
) -> list[tuple[float, float]]:
    """Percentile intervals of the mean of each row of ``values`` (rows x items).

    Every row is resampled with the same item indices (drawn in vectorised chunks from
    ``numpy.random.default_rng(seed)``), so the intervals of several metrics, or of a paired
    difference, come from the same resampled item sets.
    """
    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples!r}", field="resamples")
    n = values.shape[1]
    rng = np.random.default_rng(seed)
    means = np.empty((values.shape[0], resamples), dtype=np.float64)
    step = max(1, _MAX_CELLS // n)
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        index = rng.integers(0, n, size=(count, n))
        for row in range(values.shape[0]):
            means[row, start : start + count] = values[row][index].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lows = np.quantile(means, tail, axis=1)
    highs = np.quantile(means, 1.0 - tail, axis=1)
    return [(float(lo), float(hi)) for lo, hi in zip(lows, highs, strict=True)]
