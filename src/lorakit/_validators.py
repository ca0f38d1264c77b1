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

__all__ = [
    "check_recipe",
    "finite",
    "number",
    "one_of",
    "require_fraction",
    "require_int",
    "require_optional_int",
]

Validator = Callable[[Any, Any, Any], None]


def finite(section: str) -> Validator:
    """An attrs validator: the value is a finite number (not inf or nan); ``None`` passes."""

    def check(instance: Any, attribute: Any, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            raise ConfigError(
                f"must be a finite number, not {value}",
                field=f"{section}.{attribute.name}",
                hint="give an ordinary number",
            )

    return check


def number(
    section: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    optional: bool = False,
) -> Validator:
    """An attrs validator for a finite number within bounds, raising :class:`ConfigError`
    that names the setting (``section.name``); ``optional`` lets ``None`` pass."""
    bounds = [
        (bound, text, test)
        for bound, text, test in (
            (gt, "above", lambda v, b: v > b),
            (ge, "at least", lambda v, b: v >= b),
            (lt, "below", lambda v, b: v < b),
            (le, "at most", lambda v, b: v <= b),
        )
        if bound is not None
    ]
    wanted = " and ".join(f"{text} {bound:g}" for bound, text, _ in bounds)

    def check(instance: Any, attribute: Any, value: float | None) -> None:
        if value is None and optional:
            return
        field = f"{section}.{attribute.name}"
        finite(section)(instance, attribute, value)
        if not all(test(value, bound) for bound, _, test in bounds):
            raise ConfigError(f"must be {wanted}, not {value!r}", field=field)

    return check


def one_of(section: str, choices: tuple[str, ...]) -> Validator:
    """An attrs validator: the value is one of ``choices`` (the error lists them)."""

    def check(instance: Any, attribute: Any, value: str) -> None:
        if value not in choices:
            from lorakit.errors import did_you_mean

            raise ConfigError(
                f"{value!r} is not one of {', '.join(choices)}",
                field=f"{section}.{attribute.name}",
                hint=did_you_mean(str(value), choices),
            )

    return check


def require_int(cleaner: str, option: str, value: object, minimum: int) -> int:
    """A plugin option that must be an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"cleaner {cleaner!r}: option {option!r} must be an integer >= {minimum}, got {value!r}",
            field=option,
        )
    return value


def require_optional_int(cleaner: str, option: str, value: object) -> int | None:
    """A plugin option that is ``None`` or an integer of at least 0."""
    if value is None:
        return None
    return require_int(cleaner, option, value, 0)


def require_fraction(cleaner: str, option: str, value: object) -> float:
    """A plugin option that is a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(
            f"cleaner {cleaner!r}: option {option!r} must be a number in (0, 1], got {value!r}",
            field=option,
            hint="a Jaccard similarity, e.g. 0.9",
        )
    return float(value)


def _mix_checks(data: Any, registries: Registries) -> list[Callable[[], Any]]:
    """For each ``data.mix`` entry: its cleaners, its first row and its template."""
    from lorakit.data.cleaners import check_cleaners
    from lorakit.data.sources import read_source

    def cleaners(entry: Any) -> Callable[[], Any]:
        return lambda: check_cleaners(
            data.cleaning_chain(entry.cleaners or ()), registries.cleaners
        )

    def first_row(entry: Any) -> Callable[[], Any]:
        return lambda: next(
            iter(read_source(entry.source, fields=entry.fields, registries=registries)), None
        )

    def template(entry: Any) -> Callable[[], Any]:
        return lambda: registries.templates.resolve(entry.template)(**entry.template_options)

    checks: list[Callable[[], Any]] = []
    for entry in data.mix:
        checks += [cleaners(entry), first_row(entry)]
        if entry.template is not None:
            checks.append(template(entry))
    return checks


def check_recipe(recipe: Recipe, registries: Registries) -> list[LorakitError]:
    """Every problem with ``recipe`` that the plugins can find before a model loads.

    Reads the first row of the data source and of each benchmark, nothing more.
    """
    from lorakit.data.cleaners import check_cleaners
    from lorakit.data.sources import read_source
    from lorakit.distributed import check_world
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

    def tracker(name: str) -> Callable[[], Any]:
        from lorakit.tracking import check_tracker

        return lambda: check_tracker(name, registries)

    checks: list[Callable[[], Any]] = [
        lambda: check_cleaners(data.cleaning_chain(), registries.cleaners),
        first_row,
        lambda: registries.templates.resolve(data.template)(**data.template_options),
        *(_mix_checks(data, registries)),
        *(bench(text) for text in evaluation.benchmarks),
        *(metric(name) for name in evaluation.metrics),
        *(tracker(name) for name in recipe.training.report_to),
        lambda: check_world(recipe.training, 1, gpus=0),  # training.distributed
    ]
    problems: list[LorakitError] = []
    for check in checks:
        try:
            check()
        except LorakitError as error:
            problems.append(error)
    return problems
