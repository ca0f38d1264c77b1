"""Adapter minus base on one benchmark, over the same items, with a paired bootstrap interval.

::

    from lorakit.evaluate.compare import compare

    delta = compare(base_result, adapter_result)  # same benchmark, same items, same order
    print(delta.delta, delta.ci_low, delta.ci_high, delta.significant)

:func:`lorakit.evaluate.session.compare_with_base` scores both sides and compares them over a
list of benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError
from lorakit.evaluate.stats import paired_bootstrap

if TYPE_CHECKING:
    from lorakit.evaluate.benchmarks import BenchmarkResult

__all__ = ["Comparison", "compare"]


@attrs.frozen(kw_only=True)
class Comparison:
    """Adapter minus base on one benchmark, over the same items.

    Attributes:
        bench: the benchmark's name.
        n: items compared.
        measure: ``"accuracy"`` or ``"perplexity"``.
        base: the base model's value.
        adapter: the adapter's value.
        delta: ``adapter - base`` (for perplexity, negative is better).
        ci_low: the lower bound of the paired bootstrap 95 % interval of ``delta`` (``None`` for
            perplexity: per-item losses are not kept).
        ci_high: the upper bound.
        per_category: per category ``{"n", "base", "adapter", "delta", "ci_low", "ci_high"}``.
        resamples: bootstrap resamples.
        seed: the bootstrap seed.
    """

    bench: str
    n: int
    measure: str
    base: float
    adapter: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    per_category: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    resamples: int = 0
    seed: int = 0

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        if self.ci_low is None or self.ci_high is None:
            return False
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        out = attrs.asdict(self)
        out["significant"] = self.significant
        return out


def compare(
    base: BenchmarkResult,
    adapter: BenchmarkResult,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """The adapter's change over the base model, with a paired bootstrap interval.

    Both results must come from the same benchmark and the same items in the same order.

    Raises:
        ConfigError: different benchmarks or items.
    """
    if base.bench != adapter.bench:
        raise ConfigError(f"cannot compare benchmark {base.bench!r} with {adapter.bench!r}")
    if base.metric.item_ids != adapter.metric.item_ids:
        raise ConfigError(
            f"benchmark {base.bench!r}: the two runs scored different items",
            hint="run base and adapter with the same path, --limit and data",
        )
    if base.accuracy is None or adapter.accuracy is None:
        if base.perplexity is None or adapter.perplexity is None:
            raise ConfigError(f"benchmark {base.bench!r}: nothing to compare")
        return Comparison(
            bench=base.bench,
            n=base.n,
            measure="perplexity",
            base=base.perplexity,
            adapter=adapter.perplexity,
            delta=adapter.perplexity - base.perplexity,
            ci_low=None,
            ci_high=None,
        )
    boot = paired_bootstrap(
        base.metric.correct, adapter.metric.correct, resamples=resamples, seed=seed
    )
    per_category: dict[str, dict[str, Any]] = {}
    categories = base.metric.item_categories
    if categories:
        for name in sorted(set(categories)):
            index = [i for i, c in enumerate(categories) if c == name]
            part = paired_bootstrap(
                [base.metric.correct[i] for i in index],
                [adapter.metric.correct[i] for i in index],
                resamples=resamples,
                seed=seed,
            )
            per_category[name] = {
                "n": part.n,
                "base": part.mean_a,
                "adapter": part.mean_b,
                "delta": part.delta,
                "ci_low": part.ci_low,
                "ci_high": part.ci_high,
            }
    return Comparison(
        bench=base.bench,
        n=boot.n,
        measure="accuracy",
        base=boot.mean_a,
        adapter=boot.mean_b,
        delta=boot.delta,
        ci_low=boot.ci_low,
        ci_high=boot.ci_high,
        per_category=per_category,
        resamples=resamples,
        seed=seed,
    )
