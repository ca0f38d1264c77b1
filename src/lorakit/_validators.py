"""Validation of a recipe: field validators shared by the specs, and the checks that need
the plugins (sources, cleaners, templates, benchmarks, metrics), collected all at once.

A spec's own fields are checked when it is built (a bad value never makes a spec);
:func:`check_recipe` checks what only the registered plugins can tell, and returns every
problem instead of stopping at the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lorakit.errors import ConfigError, LorakitError

if TYPE_CHECKING:
    from lorakit.plugins import Registries
    from lorakit.recipe import Recipe

__all__ = ["check_recipe", "finite"]


def finite(section: str) -> Callable[[Any, Any, float | None], None]:
    """An attrs validator: the value is a finite number (not inf or nan)."""

    def check(instance: Any, attribute: Any, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            raise ConfigError(
                f"must be a finite number, not {value}",
                field=f"{section}.{attribute.name}",
                hint="give an ordinary number",
            )

    return check


def check_recipe(recipe: Recipe, registries: Registries) -> list[LorakitError]:
    """Every problem with ``recipe`` that the plugins can find before a model loads.

    Reads the first row of the data source and of each benchmark, nothing more.
    """
    from lorakit.data.cleaners import check_cleaners
    from lorakit.data.sources import read_source
    from lorakit.evaluate.benchmarks import load_benchmark, parse_bench

    data, evaluation = recipe.data, recipe.evaluation

    def first_row() -> Any:
        return next(iter(read_source(data.source, fields=data.fields, registries=registries)), None)

    def bench(text: str) -> Callable[[], Any]:
        return lambda: load_benchmark(
            *parse_bench(text, registries), limit=1, registries=registries
        )

    def metric(name: str) -> Callable[[], Any]:
        return lambda: registries.metrics.resolve(name)

    checks: list[Callable[[], Any]] = [
        lambda: check_cleaners(data.cleaners, registries.cleaners),
        first_row,
        lambda: registries.templates.resolve(data.template)(**data.template_options),
        *(bench(text) for text in evaluation.benchmarks),
        *(metric(name) for name in evaluation.metrics),
    ]
    problems: list[LorakitError] = []
    for check in checks:
        try:
            check()
        except LorakitError as error:
            problems.append(error)
    return problems
