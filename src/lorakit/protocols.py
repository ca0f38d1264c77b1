"""The shapes of what plugins register: sources, cleaners, templates, metrics.

These are :class:`typing.Protocol` classes: a plugin's object needs the right
call signature, not a base class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from lorakit.data.rows import QARow

__all__ = [
    "Cleaner",
    "CleanerFactory",
    "Drop",
    "Message",
    "Metric",
    "Register",
    "SourceReader",
    "Template",
    "TemplateFactory",
]

Message = Mapping[str, str]
"""A chat message: ``{"role": "user", "content": "..."}``."""


class Register(Protocol):
    """The callback a ``lorakit_register_*`` hook receives: ``register(name, obj)``."""

    def __call__(self, name: str, obj: object, /) -> None: ...


@runtime_checkable
class SourceReader(Protocol):
    """Reads the location part of a source URI (``medquad:DIR`` -> ``DIR``) into rows.

    ``fields`` maps QARow field names to the source's column names; sources with a
    fixed native format may ignore it. Bad input raises
    :class:`~lorakit.errors.DataError` naming the file, line and field. Rows are
    yielded lazily, in the file's order; rows with an empty answer are yielded too
    (a cleaner drops and counts them).
    """

    def __call__(self, location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]: ...


@attrs.frozen
class Drop:
    """A cleaner's verdict that a row is dropped.

    ``reason`` is the category counted in the report (``"near duplicate"``);
    ``detail`` says more about this row for the report's examples (which row it duplicates).
    """

    reason: str
    detail: str = ""


class Cleaner(Protocol):
    """One step of the cleaning chain, created fresh for each pass over the data.

    Called once per row in order; returns the row (unchanged or a changed copy),
    or a :class:`Drop` (or ``None``, counted under the cleaner's name) to drop it.
    A cleaner may keep state across rows (deduplication keeps the first copy).
    """

    def __call__(self, row: QARow, /) -> QARow | Drop | None: ...


class CleanerFactory(Protocol):
    """What ``lorakit_register_cleaners`` registers: keyword options -> a fresh :class:`Cleaner`."""

    def __call__(self, **options: object) -> Cleaner: ...


class Template(Protocol):
    """Turns a row into chat messages; the tokenizer's chat template renders them.

    ``prompt(row)`` gives the messages before the answer (system, user);
    ``answer(row)`` the text the model learns to write.
    """

    def prompt(self, row: QARow) -> list[Message]: ...

    def answer(self, row: QARow) -> str: ...


class TemplateFactory(Protocol):
    """What ``lorakit_register_templates`` registers: keyword options -> a :class:`Template`."""

    def __call__(self, **options: object) -> Template: ...


class Metric(Protocol):
    """A text metric: one score per prediction against its reference, averaged by the caller.

    Registered through ``lorakit_register_metrics``; returns a float in ``[0, 1]``
    where higher is better.
    """

    def __call__(self, prediction: str, reference: str, /) -> float: ...


def mean_metric(metric: Metric, predictions: Sequence[str], references: Sequence[str]) -> float:
    """The mean of ``metric`` over paired predictions and references (never over zero items)."""
    from lorakit.errors import ConfigError

    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ConfigError("cannot score zero items")
    return sum(metric(p, r) for p, r in zip(predictions, references, strict=True)) / len(
        predictions
    )
