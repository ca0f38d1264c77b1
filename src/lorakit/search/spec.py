"""What a search explores: ``SearchParam`` (one ``--space``) and ``SearchSpec`` (the whole search).

``--space`` forms::

    adapter.rank=8,16,32                       choices (comma separated)
    adapter.targets=attention|attention+mlp    choices separated by '|'; '+' joins list items
    training.learning_rate=1e-4..3e-4:log      a range (log scale); an int setting gives ints
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.recipe import Recipe

__all__ = ["SearchParam", "SearchSpec", "trial_dir_name"]

Sampler = Literal["auto", "grid", "tpe"]
Pruner = Literal["median", "none"]


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a number",
            field=f"--space {key}",
            hint="a range is LOW..HIGH, e.g. 1e-4..3e-4:log",
        ) from None


@attrs.frozen(kw_only=True)
class SearchParam:
    """One dimension of the search: a setting and its choices, or a numeric range.

    Attributes:
        key: the dotted setting (``adapter.rank``).
        choices: the values tried, as ``--set`` would take them (empty for a range).
        low: the range's lower bound (``None`` for choices).
        high: the range's upper bound.
        log: sample the range on a log scale.
        integer: the range gives integers (the setting is an integer).
    """

    key: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @classmethod
    def parse(cls, text: str, recipe: Recipe) -> SearchParam:
        """A ``--space`` value, checked against ``recipe`` (every value must be a valid setting)."""
        key, sep, body = text.partition("=")
        key, body = key.strip(), body.strip()
        if not sep or not key or not body:
            raise ConfigError(
                f"--space {text!r} is not KEY=VALUES",
                field="--space",
                hint="e.g. --space adapter.rank=8,16,32 or --space training.learning_rate=1e-4..3e-4:log",
            )
        current = _current(recipe, key)
        range_match = re.fullmatch(r"(.+?)\.\.(.+?)(:log)?", body)
        if range_match and "," not in body and "|" not in body:
            low = _number(range_match.group(1), key)
            high = _number(range_match.group(2), key)
            if not low < high:
                raise ConfigError(
                    f"the range {body!r} is empty: LOW must be below HIGH", field=f"--space {key}"
                )
            is_log = range_match.group(3) is not None
            if is_log and low <= 0:
                raise ConfigError(
                    "a log range must be above 0", field=f"--space {key}", hint="drop ':log'"
                )
            integer = (
                isinstance(current, int)
                and not isinstance(current, bool)
                and low.is_integer()
                and high.is_integer()
            )
            param = cls(key=key, low=low, high=high, log=is_log, integer=integer)
        else:
            separator = "|" if "|" in body else ","
            choices = tuple(part.strip() for part in body.split(separator) if part.strip())
            if isinstance(current, tuple):  # list settings: '+' joins the items of one choice
                choices = tuple(choice.replace("+", ",") for choice in choices)
            if len(set(choices)) != len(choices):
                raise ConfigError(f"{body!r} repeats a value", field=f"--space {key}")
            param = cls(key=key, choices=choices)
        param.check(recipe)
        return param

    @property
    def is_range(self) -> bool:
        return not self.choices

    def values_to_check(self) -> tuple[Any, ...]:
        if self.is_range:
            return (self.low, self.high)
        return self.choices

    def check(self, recipe: Recipe) -> None:
        """Every choice (or both bounds) is a valid value of the setting."""
        for value in self.values_to_check():
            sample = int(value) if self.integer and value is not None else value
            try:
                recipe.with_overrides({self.key: sample})
            except ConfigError as error:
                raise ConfigError(
                    f"{value!r} is not a valid value: {error.message}",
                    field=f"--space {self.key}",
                    hint=error.hint,
                ) from None

    def to_text(self) -> str:
        """As ``--space`` takes it."""
        if self.is_range:
            low: Any = int(self.low) if self.integer and self.low is not None else self.low
            high: Any = int(self.high) if self.integer and self.high is not None else self.high
            return f"{self.key}={low}..{high}" + (":log" if self.log else "")
        return f"{self.key}=" + "|".join(choice.replace(",", "+") for choice in self.choices)


def _current(recipe: Recipe, key: str) -> Any:
    from lorakit.overrides import dotted_keys

    value: Any = recipe
    for part in key.split("."):
        if not attrs.has(type(value)) or not hasattr(value, part):
            from lorakit.errors import did_you_mean

            raise ConfigError(
                f"unknown setting {key!r}",
                field="--space",
                hint=did_you_mean(key, dotted_keys(recipe)) or "see lorakit config show",
            )
        value = getattr(value, part)
    return value


def _params(value: Iterable[SearchParam]) -> tuple[SearchParam, ...]:
    return tuple(value)


def _objective(value: str) -> str:
    if value == "eval_loss" or (value.startswith("bench:") and len(value) > len("bench:")):
        return value
    raise ConfigError(
        f"unknown objective {value!r}",
        field="--objective",
        hint="eval_loss (lowest answer-only eval loss) or bench:NAME (highest accuracy)",
    )


@attrs.frozen(kw_only=True)
class SearchSpec:
    """A LoRA search.

    Attributes:
        space: the settings explored.
        objective: ``eval_loss`` (minimised) or ``bench:NAME`` (the adapter's accuracy on the
            recipe's benchmark NAME, maximised).
        trials: trials to finish (``None``: the size of the grid).
        sampler: ``grid`` (every combination of choices), ``tpe`` (Optuna's TPE; needed for
            ranges) or ``auto`` (grid when every dimension is a list of choices).
        pruner: ``median`` stops a trial whose intermediate eval loss is worse than the median
            of earlier trials at the same step; ``none`` never stops one.
        seed: the sampler's seed (``None``: random).
    """

    space: tuple[SearchParam, ...] = attrs.field(converter=_params)
    objective: str = attrs.field(default="eval_loss", converter=_objective)
    trials: int | None = None
    sampler: Sampler = "auto"
    pruner: Pruner = "median"
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        if not self.space:
            raise ConfigError("a search needs at least one --space", field="--space")
        keys = [param.key for param in self.space]
        if len(set(keys)) != len(keys):
            raise ConfigError("a setting is given twice", field="--space")
        if self.sampler == "grid" and any(param.is_range for param in self.space):
            raise ConfigError(
                "the grid sampler needs lists of choices, not ranges",
                field="--sampler",
                hint="use --sampler tpe, or list the values: --space KEY=A,B,C",
            )
        if self.trials is not None and self.trials < 1:
            raise ConfigError("must be at least 1", field="--trials")
        if self.resolved_sampler == "tpe" and self.trials is None:
            raise ConfigError(
                "a TPE search needs --trials", field="--trials", hint="e.g. --trials 20"
            )

    @property
    def resolved_sampler(self) -> str:
        if self.sampler != "auto":
            return self.sampler
        return "tpe" if any(param.is_range for param in self.space) else "grid"

    @property
    def grid_size(self) -> int | None:
        if any(param.is_range for param in self.space):
            return None
        size = 1
        for param in self.space:
            size *= len(param.choices)
        return size

    @property
    def n_trials(self) -> int:
        """Trials to finish: ``trials``, at most the grid's size for a grid."""
        grid = self.grid_size if self.resolved_sampler == "grid" else None
        if self.trials is None:
            return int(grid or 0)
        return min(self.trials, grid) if grid is not None else self.trials

    @property
    def direction(self) -> str:
        return "minimize" if self.objective == "eval_loss" else "maximize"

    @property
    def bench(self) -> str | None:
        """The benchmark the objective scores (``None`` for ``eval_loss``)."""
        return self.objective.split(":", 1)[1] if self.objective.startswith("bench:") else None

    def check(self, recipe: Recipe) -> None:
        """The objective's benchmark is one the recipe evaluates."""
        bench = self.bench
        if bench is None:
            return
        names = [text.split(":", 1)[0] for text in recipe.evaluation.benchmarks]
        if bench not in names:
            raise ConfigError(
                f"the recipe does not evaluate benchmark {bench!r}"
                + (f" (it evaluates {', '.join(names)})" if names else ""),
                field="--objective",
                hint=f"add --set evaluation.benchmarks={bench}:PATH",
            )

    def identity(self, recipe: Recipe) -> dict[str, Any]:
        """What must not change when a search is resumed: the recipe, space and objective."""
        from lorakit.recipe import recipe_hash

        return {
            "recipe": recipe.name,
            "recipe_hash": recipe_hash(recipe),
            "space": [param.to_text() for param in self.space],
            "objective": self.objective,
            "sampler": self.resolved_sampler,
        }


def trial_dir_name(params: Mapping[str, Any]) -> str:
    """A folder name for a trial's settings: readable, and the same for the same settings
    (a retried trial resumes the run of the one it replaces)."""
    digest = hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:8]
    parts = []
    for key, value in sorted(params.items()):
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={text.replace(',', '+')}")
    readable = re.sub(r"[^A-Za-z0-9.+=_-]", "", "_".join(parts))[:60]
    return f"{readable}-{digest}" if readable else f"trial-{digest}"
