"""What a model metric returns, and the shape of a model metric.

A *model metric* scores a model on rows: :class:`ModelMetric` has a ``name`` and an
``evaluate(model, tokenizer, rows, **options)`` method returning a :class:`MetricResult`.
lorakit's own (``mcq_accuracy``, ``perplexity``) are registered through the
``lorakit_register_metrics`` hook exactly as a third party's would be; the text metrics of the
same registry (``token_f1``, ``rouge_l``) are plain ``(prediction, reference) -> float``
callables instead (:class:`lorakit.protocols.Metric`). Tell them apart with
``isinstance(obj, ModelMetric)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from lorakit.errors import ConfigError
from lorakit.evaluate.stats import wilson_interval

if TYPE_CHECKING:
    from lorakit.data.rows import QARow

__all__ = [
    "ERROR_KINDS",
    "NO_CATEGORY",
    "CategoryScore",
    "MetricResult",
    "ModelMetric",
    "accuracy_result",
]

ERROR_KINDS = ("wrong_option", "no_parsable_answer", "refusal", "prompt_truncated")
"""The MCQ error taxonomy, in report order.

``wrong_option``: a valid option was chosen and it is not the answer. ``no_parsable_answer``:
generation mode only, the reply names no option. ``refusal``: generation mode only, the reply
names no option and matches a refusal pattern (``I cannot``, ``consult a doctor`` ...).
``prompt_truncated``: the prompt did not fit the model's context and lost tokens on the left;
this kind overlaps the others (a truncated item may still be right), the first three do not.
"""

NO_CATEGORY = "(none)"
"""The category name of rows without one, in a per-category breakdown."""


@attrs.frozen(kw_only=True)
class CategoryScore:
    """The accuracy of one category (subject, exam step) with its Wilson interval.

    Attributes:
        n: items of the category.
        correct: items answered correctly.
        accuracy: ``correct / n``.
        ci_low: the lower bound of the 95 % Wilson interval.
        ci_high: the upper bound.
    """

    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float

    @classmethod
    def from_counts(cls, correct: int, n: int, *, confidence: float = 0.95) -> CategoryScore:
        """The score of ``correct`` out of ``n`` (``n`` at least 1)."""
        low, high = wilson_interval(correct, n, confidence=confidence)
        return cls(n=n, correct=correct, accuracy=correct / n, ci_low=low, ci_high=high)

    def to_dict(self) -> dict[str, Any]:
        """``{"n", "correct", "accuracy", "ci_low", "ci_high"}``."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class MetricResult:
    """The result of a model metric over a set of rows.

    Attributes:
        name: the metric (``"mcq_accuracy"``, ``"perplexity"``).
        value: the headline number: accuracy in ``[0, 1]`` for MCQ, perplexity for perplexity.
        n: items scored (never 0).
        ci_low: the lower bound of the 95 % interval of ``value`` (Wilson for an accuracy), or
            ``None`` when the metric has none.
        ci_high: the upper bound, or ``None``.
        per_category: per category (``QARow.category``) score, empty when no row has one.
        errors: count per error kind (see :data:`ERROR_KINDS`).
        extra: further numbers (``acc_norm``, ``loss``, ``tokens`` ...).
        choices: per item, the index of the chosen option (``-1``: none), in row order.
        correct: per item, 1 when the chosen option is the answer, else 0.
        item_ids: per item, the row's ``id`` (or ``origin``), to pair items across runs.
        item_categories: per item, its category (``"(none)"`` for none); empty when no item
            has one.
    """

    name: str
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    per_category: Mapping[str, CategoryScore] = attrs.field(factory=dict)
    errors: Mapping[str, int] = attrs.field(factory=dict)
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    choices: tuple[int, ...] = ()
    correct: tuple[int, ...] = ()
    item_ids: tuple[str, ...] = ()
    item_categories: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"metric {self.name!r}: cannot report a score over zero items")

    def to_dict(self, *, per_item: bool = False) -> dict[str, Any]:
        """A JSON-able copy; ``per_item`` adds ``choices``, ``correct`` and ``item_ids``."""
        out: dict[str, Any] = {
            "name": self.name,
            "value": self.value,
            "n": self.n,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "per_category": {k: v.to_dict() for k, v in self.per_category.items()},
            "errors": dict(self.errors),
            "extra": dict(self.extra),
        }
        if per_item:
            out["choices"] = list(self.choices)
            out["correct"] = list(self.correct)
            out["item_ids"] = list(self.item_ids)
            out["item_categories"] = list(self.item_categories)
        return out


def item_id(row: QARow, index: int) -> str:
    """A row's identity for pairing runs: its ``id``, else its ``origin``, else its position."""
    return row.id or row.origin or str(index)


def accuracy_result(
    name: str,
    choices: Sequence[int],
    golds: Sequence[int],
    *,
    categories: Sequence[str | None] | None = None,
    item_ids: Sequence[str] | None = None,
    errors: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
    confidence: float = 0.95,
) -> MetricResult:
    """An accuracy :class:`MetricResult` from chosen and gold option indices.

    Every accuracy lorakit reports goes through here: the sanity anchors in the tests (a
    gold-answer oracle, an always-``A`` model, PubMedQA's majority class) use the same code as
    the scorer.

    Args:
        name: the metric's name.
        choices: per item, the chosen option index (``-1`` for no answer, always wrong).
        golds: per item, the correct option index.
        categories: per item, its category (``None`` is counted under ``"(none)"``); the
            breakdown is left empty when every item's category is ``None``.
        item_ids: per item, an identifier (for pairing runs); positions when ``None``.
        errors: counts of error kinds; ``wrong_option`` is filled in from the choices when
            absent (items with a valid but wrong choice).
        extra: further numbers to carry.
        confidence: the coverage of the Wilson intervals.

    Raises:
        ConfigError: no items, or sequences of different lengths.
    """
    n = len(golds)
    if n == 0:
        raise ConfigError(f"metric {name!r}: cannot report a score over zero items")
    if len(choices) != n:
        raise ConfigError(f"{len(choices)} choices for {n} items")
    correct = tuple(int(c == g) for c, g in zip(choices, golds, strict=True))
    hits = sum(correct)
    low, high = wilson_interval(hits, n, confidence=confidence)
    per_category: dict[str, CategoryScore] = {}
    item_categories: tuple[str, ...] = ()
    if categories is not None:
        if len(categories) != n:
            raise ConfigError(f"{len(categories)} categories for {n} items")
        if any(c is not None for c in categories):
            item_categories = tuple(c or NO_CATEGORY for c in categories)
            counts: dict[str, list[int]] = {}
            for category, ok in zip(item_categories, correct, strict=True):
                counts.setdefault(category, []).append(ok)
            per_category = {
                key: CategoryScore.from_counts(sum(v), len(v), confidence=confidence)
                for key, v in sorted(counts.items())
            }
    ids = tuple(item_ids) if item_ids is not None else tuple(str(i) for i in range(n))
    if len(ids) != n:
        raise ConfigError(f"{len(ids)} item ids for {n} items")
    counted = {kind: 0 for kind in ERROR_KINDS}
    counted.update(errors or {})
    if not errors or "wrong_option" not in errors:
        counted["wrong_option"] = sum(
            1 for c, g in zip(choices, golds, strict=True) if c >= 0 and c != g
        )
    return MetricResult(
        name=name,
        value=hits / n,
        n=n,
        ci_low=low,
        ci_high=high,
        per_category=per_category,
        errors=counted,
        extra=dict(extra or {}),
        choices=tuple(int(c) for c in choices),
        correct=correct,
        item_ids=ids,
        item_categories=item_categories,
    )


@runtime_checkable
class ModelMetric(Protocol):
    """A metric that scores a model on rows (registered through ``lorakit_register_metrics``).

    ``evaluate`` runs the model (no gradients, eval mode, the model's training flag restored
    after), keeps no logits beyond one batch, and raises
    :class:`~lorakit.errors.ConfigError` rather than report a score over zero rows. Options
    are keyword arguments; an unknown one is a ``ConfigError``.
    """

    name: str

    def evaluate(
        self, model: Any, tokenizer: Any, rows: Sequence[QARow], **options: Any
    ) -> MetricResult: ...
