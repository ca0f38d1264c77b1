"""The shapes of what plugins register: sources, cleaners, templates, metrics, retrievers
and guards, and the values the answer path passes between them (passages, hits, verdicts).

These are :class:`typing.Protocol` classes: a plugin's object needs the right
call signature, not a base class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from lorakit.data.rows import QARow

__all__ = [
    "Cleaner",
    "CleanerFactory",
    "Decision",
    "Drop",
    "Guard",
    "Hit",
    "Message",
    "Metric",
    "Passage",
    "Register",
    "Retriever",
    "SourceReader",
    "Template",
    "TemplateFactory",
    "Verdict",
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


# --------------------------------------------------------------------------- the answer path
# retrieve -> input guards -> generate -> output guards (lorakit.answer). Retrieval
# (lorakit.retrieval) and safety (lorakit.safety) produce these values; every front end
# (ask, chat, generate, serve) consumes them through the answer path.


@attrs.frozen(kw_only=True)
class Passage:
    """A piece of a vetted document, with its provenance.

    ``passage_id`` is unique in its index and stable across rebuilds of the same text;
    ``url`` may be empty (the passage is then cited without a link).
    """

    passage_id: str
    doc_id: str
    text: str
    source: str = ""
    title: str = ""
    url: str = ""
    content_hash: str = ""


@attrs.frozen(kw_only=True)
class Hit:
    """A passage a retriever returned for a query; a higher ``score`` is more relevant.
    ``scores`` keeps each retriever's own score (``{"bm25": ..., "dense": ...}``)."""

    passage: Passage
    score: float
    scores: Mapping[str, float] = attrs.field(factory=dict)


@runtime_checkable
class Retriever(Protocol):
    """What ``lorakit_register_retrievers`` provides: passages for a question, best first."""

    def search(self, query: str, k: int = 5) -> Sequence[Hit]: ...


Decision = Literal["allow", "flag", "block", "rewrite"]
"""What a guard decides: let the text through, let it through with a note, refuse it, or
replace it (``Verdict.text``)."""


@attrs.frozen(kw_only=True)
class Verdict:
    """A guard's decision on one text, with a reason code a user can look up.

    ``message`` is what the user is shown for ``flag`` and ``block`` (an urgent-care notice,
    a refusal); ``text`` is the replacement for ``rewrite``; ``score`` a classifier's.
    """

    guard: str
    decision: Decision
    reason: str = ""
    message: str = ""
    text: str | None = None
    score: float | None = None


@runtime_checkable
class Guard(Protocol):
    """An input guard (``stage == "input"``: sees the user's message before generation) or
    an output guard (``"output"``: sees the answer before it is returned).

    ``check(text, question=...)``: for an output guard ``text`` is the answer and
    ``question`` the user's message; for an input guard ``question`` is ``None``.
    """

    name: str
    stage: Literal["input", "output"]

    def check(self, text: str, *, question: str | None = None) -> Verdict: ...
