"""Prompt templates: how a :class:`~lorakit.data.rows.QARow` becomes chat messages.

A template only chooses the *words*: the system message, how the question, its context and its
options are laid out, and what the answer text is. The tokenizer's own chat template then turns
the messages into the model's format (``<|user|>`` ... ``<|end|>`` for Phi-3), so one template
works for every chat model.

This module is a built-in plugin; it registers the ``"qa"`` template::

    template = registries.templates.resolve("qa")(system="You are a careful medical assistant.")
    template.prompt(row)  # [{"role": "system", ...}, {"role": "user", ...}]
    template.answer(row)  # the text the model learns to write
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.data.rows import LETTERS
from lorakit.errors import ConfigError, did_you_mean
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.protocols import Message, Register, Template

__all__ = ["QATemplate", "format_options", "lorakit_register_templates", "qa_template"]


def _optional_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(
            f"{attribute.name} must be a text or None, got {type(value).__name__}",
            field=attribute.name,
        )


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(
            f"{attribute.name} must be true or false, got {value!r}", field=attribute.name
        )


def format_options(options: tuple[str, ...]) -> str:
    """The options of a multiple-choice row, one per line: ``"A. first\\nB. second"``."""
    return "\n".join(
        f"{letter}. {option.strip()}" for letter, option in zip(LETTERS, options, strict=False)
    )


@attrs.frozen(kw_only=True)
class QATemplate:
    """The built-in ``"qa"`` template for free-text and multiple-choice rows.

    The prompt is an optional system message and one user message. The user message is:

    * free text, no context: the question as it is;
    * with context (and ``include_context``): ``"Context:\\n<context>\\n\\nQuestion:\\n<question>"``;
    * multiple choice: the question followed by one line per option, ``"A. <option>"``,
      ``"B. <option>"``, ... (after the context block when there is one).

    The answer is the row's answer for a free-text row. For a multiple-choice row it is the
    letter and the text of the correct option, ``"B. <option text>"``, so the model learns to
    name the letter first (what letter-based scoring reads) and the option after it.

    Leading and trailing whitespace of every part is removed; inner whitespace is kept.

    Attributes:
        system: a system message put before the question, or ``None`` for none.
        include_context: put the row's ``context`` (PubMedQA abstracts) before the question.
    """

    system: str | None = attrs.field(default=None, validator=_optional_text)
    include_context: bool = attrs.field(default=True, validator=_flag)

    def user_text(self, row: QARow) -> str:
        """The content of the user message for ``row``."""
        question = row.question.strip()
        if row.options:
            question = f"{question}\n{format_options(row.options)}"
        context = row.context.strip()
        if self.include_context and context:
            return f"Context:\n{context}\n\nQuestion:\n{question}"
        return question

    def prompt(self, row: QARow) -> list[Message]:
        """The messages before the answer: the system message (if any), then the user's."""
        messages: list[Message] = []
        if self.system:
            messages.append({"role": "system", "content": self.system.strip()})
        messages.append({"role": "user", "content": self.user_text(row)})
        return messages

    def answer(self, row: QARow) -> str:
        """The answer text: the answer, or ``"<letter>. <option text>"`` for multiple choice."""
        if row.options and row.answer_index is not None:
            letter = row.answer_letter
            return f"{letter}. {row.options[row.answer_index].strip()}"
        return row.answer.strip()


_OPTIONS = tuple(field.name for field in attrs.fields(QATemplate))


def qa_template(**options: object) -> QATemplate:
    """Create a :class:`QATemplate` from keyword options (what ``"qa"`` is registered as).

    Raises:
        ConfigError: an unknown option name, or a value of the wrong type.
    """
    for name in options:
        if name not in _OPTIONS:
            raise ConfigError(
                f"unknown option {name!r} for template 'qa'",
                field=name,
                hint=did_you_mean(name, _OPTIONS) or f"options: {', '.join(_OPTIONS)}",
            )
    values: Mapping[str, Any] = options
    return QATemplate(**values)


def _grounded_qa(**options: object) -> Template:
    """``"grounded_qa"``: :func:`lorakit.retrieval.template.grounded_qa_template` (imported on use)."""
    from lorakit.retrieval.template import grounded_qa_template

    return grounded_qa_template(**options)


@hookimpl
def lorakit_register_templates(register: Register) -> None:
    """Register the built-in ``"qa"`` and ``"grounded_qa"`` templates."""
    register("qa", qa_template)
    register("grounded_qa", _grounded_qa)
