"""``QARow``: the one row type every source yields and every later step reads."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from lorakit.errors import DataError, did_you_mean

__all__ = ["LETTERS", "QARow", "RowKind", "parse_fields"]

LETTERS = string.ascii_uppercase
RowKind = Literal["free_text", "mcq"]

# QARow fields a generic source can map from a column (``--fields question=Question``).
MAPPABLE = (
    "question",
    "answer",
    "options",
    "answer_letter",
    "context",
    "explanation",
    "id",
    "group",
    "focus",
    "category",
)


def _to_options(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


@attrs.frozen(kw_only=True)
class QARow:
    """A question with its answer: free text, or multiple choice when ``options`` is not empty.

    Attributes:
        question: the question as asked.
        answer: the reference answer. For a multiple-choice row, the text of the
            correct option (``options[letter_index]``) unless the source gives a
            longer one.
        options: the answer options, in order; empty for a free-text row.
        answer_letter: the letter of the correct option (``"A"`` for ``options[0]``);
            ``None`` for a free-text row.
        context: passages the question is asked about (PubMedQA abstracts), or ``""``.
        explanation: a longer answer or rationale, when the dataset has one.
        id: the row's identifier in its dataset.
        group: the leakage group (a document id for MedQuAD); rows of a group never
            cross a train/eval/test boundary.
        focus: the entity the question is about (MedQuAD focus), if known.
        category: question type or subject (MedQuAD qtype, MedMCQA subject), if known.
        origin: where the row came from, ``file:line``, for messages.
        meta: other fields of the source row, as strings.
    """

    question: str
    answer: str
    options: tuple[str, ...] = attrs.field(default=(), converter=_to_options)
    answer_letter: str | None = None
    context: str = ""
    explanation: str = ""
    id: str = ""
    group: str | None = None
    focus: str | None = None
    category: str | None = None
    origin: str = ""
    meta: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.options:
            letters = LETTERS[: len(self.options)]
            if self.answer_letter is None or self.answer_letter not in letters:
                raise DataError(
                    f"answer letter {self.answer_letter!r} is not among the options {', '.join(letters)}",
                    file=self.origin or None,
                    field="answer_letter",
                    hint="fix the row or map the right column with --fields answer_letter=COLUMN",
                )
        elif self.answer_letter is not None:
            raise DataError(
                f"answer letter {self.answer_letter!r} given but the row has no options",
                file=self.origin or None,
                field="options",
                hint="map the options column with --fields options=COLUMN",
            )

    @property
    def kind(self) -> RowKind:
        """``"mcq"`` when the row has options, else ``"free_text"``."""
        return "mcq" if self.options else "free_text"

    @property
    def answer_index(self) -> int | None:
        """0-based index of the correct option, or ``None`` for a free-text row."""
        return None if self.answer_letter is None else LETTERS.index(self.answer_letter)

    @classmethod
    def from_mapping(
        cls,
        record: Mapping[str, Any],
        *,
        fields: Mapping[str, str] | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> QARow:
        """Build a row from one record of a generic source (a JSON object, a CSV row).

        Args:
            record: the record, column name to value.
            fields: QARow field to column name; unmapped fields use their own name
                (``question`` reads column ``question``). ``question`` and ``answer``
                are required unless the row is multiple choice (``options`` and
                ``answer_letter``), where ``answer`` defaults to the correct option.
            file: the file the record is from, for errors.
            line: its 1-based line or row number, for errors.

        Raises:
            DataError: a required column is missing or a value has the wrong type;
                the message names the file, line and field and suggests a column.
        """
        fields = dict(fields or {})
        if not isinstance(record, Mapping):
            raise DataError(
                f"expected an object with named fields, got {type(record).__name__}",
                file=file,
                line=line,
                hint="each record must be a JSON object or a CSV row with a header",
            )
        values: dict[str, Any] = {}
        for name in MAPPABLE:
            column = fields.get(name, name)
            if column in record:
                values[name] = record[column]
            elif name in fields:
                raise _missing(column, name, record, file, line, mapped=True)
        is_mcq = values.get("options") not in (None, "", [])
        for required in ("question",) if is_mcq else ("question", "answer"):
            if required not in values:
                raise _missing(fields.get(required, required), required, record, file, line)
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            kwargs[name] = _coerce(name, value, file, line, fields.get(name, name))
        if is_mcq:
            kwargs["options"] = _options(
                kwargs.get("options"), file, line, fields.get("options", "options")
            )
            letter = kwargs.get("answer_letter")
            kwargs["answer_letter"] = letter.strip().upper() if isinstance(letter, str) else letter
            if (
                not kwargs.get("answer")
                and kwargs["answer_letter"] in LETTERS[: len(kwargs["options"])]
            ):
                kwargs["answer"] = kwargs["options"][LETTERS.index(kwargs["answer_letter"])]
            kwargs.setdefault("answer", "")
        else:
            kwargs.pop("options", None)
            kwargs["answer_letter"] = None
        used = {fields.get(n, n) for n in MAPPABLE}
        kwargs["meta"] = {
            str(k): str(v) for k, v in record.items() if k not in used and v is not None
        }
        kwargs["origin"] = _origin(file, line)
        if not kwargs.get("id") and line is not None:
            kwargs["id"] = str(line)
        return cls(**kwargs)


def _origin(file: str | None, line: int | None) -> str:
    if file is None:
        return "" if line is None else f"row {line}"
    return file if line is None else f"{file}:{line}"


def _missing(
    column: str,
    name: str,
    record: Mapping[str, Any],
    file: str | None,
    line: int | None,
    *,
    mapped: bool = False,
) -> DataError:
    keys = [str(k) for k in record]
    suggestion = did_you_mean(column, keys)
    hint = (
        f"{suggestion} map it with --fields {name}=COLUMN"
        if suggestion
        else (
            f"the record has {', '.join(keys) or 'no fields'}; map one with --fields {name}=COLUMN"
        )
    )
    what = (
        f"column {column!r} (mapped to {name})"
        if mapped
        else f"required field {column!r} is missing"
    )
    return DataError(
        what if not mapped else f"{what} is missing", file=file, line=line, field=column, hint=hint
    )


def _coerce(name: str, value: Any, file: str | None, line: int | None, column: str) -> Any:
    if name == "options":
        return value
    if value is None:
        return "" if name in ("question", "answer", "context", "explanation", "id") else None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if name == "context" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    raise DataError(
        f"expected text, got {type(value).__name__}",
        file=file,
        line=line,
        field=column,
        hint="map a text column to this field with --fields",
    )


def _options(value: Any, file: str | None, line: int | None, column: str) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        keys = sorted(value)
        if keys != list(LETTERS[: len(keys)]):
            raise DataError(
                f"option keys {keys} are not consecutive letters from A",
                file=file,
                line=line,
                field=column,
            )
        value = [value[k] for k in keys]
    if isinstance(value, str):
        value = [part.strip() for part in value.split("|")]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (str, int, float)) for v in value
    ):
        raise DataError(
            "options must be a list of texts, an object keyed A, B, C…, or a text split by '|'",
            file=file,
            line=line,
            field=column,
        )
    if len(value) < 2:
        raise DataError(
            f"a multiple-choice row needs at least 2 options, got {len(value)}",
            file=file,
            line=line,
            field=column,
        )
    return tuple(str(v) for v in value)


def parse_fields(text: str | None) -> dict[str, str]:
    """Parse a field mapping such as ``"question=Question,answer=Answer"``.

    Raises:
        ConfigError: a part is not ``name=column`` or names an unknown QARow field.
    """
    from lorakit.errors import ConfigError

    mapping: dict[str, str] = {}
    if not text:
        return mapping
    for part in text.split(","):
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise ConfigError(
                f"field mapping {part!r} is not NAME=COLUMN",
                hint="write it as question=Question,answer=Answer",
            )
        if name not in MAPPABLE:
            raise ConfigError(
                f"unknown row field {name!r} in field mapping",
                hint=did_you_mean(name, MAPPABLE) or f"row fields: {', '.join(MAPPABLE)}",
            )
        mapping[name] = column
    return mapping
