"""The medical QA readers with a fixed format: ``pubmedqa``, ``medmcqa``, ``medqa``, ``mmlu``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lorakit.data.rows import LETTERS, QARow
from lorakit.data.sources._files import (
    as_text,
    csv_records,
    decode_utf8,
    empty_file,
    existing_path,
    json_error,
    json_records,
    json_type,
    required,
    single_file,
    text_meta,
)
from lorakit.data.sources._uri import no_fields
from lorakit.errors import DataError

__all__ = ["PUBMEDQA_OPTIONS", "read_medmcqa", "read_medqa", "read_mmlu", "read_pubmedqa"]

# ----------------------------------------------------------------------- pubmedqa

PUBMEDQA_OPTIONS = ("yes", "no", "maybe")


def read_pubmedqa(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``pubmedqa:FILE``: PubMedQA's ``ori_pqal`` JSON object keyed by PMID.

    Each item is a multiple-choice row with options ``yes``, ``no``, ``maybe``;
    ``answer`` is ``final_decision`` and ``answer_letter`` its letter; ``context``
    joins ``CONTEXTS`` by blank lines, each prefixed with its ``LABELS`` section name
    (``"BACKGROUND: ..."``); ``explanation`` is ``LONG_ANSWER``; ``id`` and ``group``
    are the PMID; ``meta`` holds ``year`` and ``meshes`` (joined by ``"; "``). The
    origin of a row is the line of its PMID key.

    Raises:
        ConfigError: a field mapping is given (the format is fixed).
        DataError: missing or empty file, not UTF-8, invalid JSON, not an object keyed
            by PMID, a missing field, or a ``final_decision`` other than yes/no/maybe.
    """
    no_fields("pubmedqa", fields)
    path = single_file(location, "pubmedqa")
    return _pubmedqa_rows(path, location)


def _pubmedqa_rows(path: Path, display: str) -> Iterator[QARow]:
    text = decode_utf8(path.read_bytes(), display)
    if not text.strip():
        raise empty_file(display, "no JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise json_error(
            exc,
            display=display,
            ends="file",
            hint="pubmedqa: reads one JSON object keyed by PMID (ori_pqal.json)",
        ) from None
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"expected a JSON object keyed by PMID, got {json_type(data) if data else 'nothing'}",
            file=display,
            hint="pubmedqa: reads PubMedQA's ori_pqal.json; other layouts: jsonl: with --fields",
        )
    locate = _key_lines(text)
    for pmid, item in data.items():
        line = locate(pmid)
        where = line if line is not None else f"PMID {pmid}"
        if not isinstance(item, dict):
            raise DataError(
                f"PMID {pmid}: expected an object, got {json_type(item)}", file=display, line=where
            )
        decision = as_text(
            required(item, "final_decision", display, where), "final_decision", display, where
        )
        if decision.strip().lower() not in PUBMEDQA_OPTIONS:
            raise DataError(
                f"PMID {pmid}: unknown decision {decision!r}",
                file=display,
                line=where,
                field="final_decision",
                hint="final_decision must be yes, no or maybe",
            )
        decision = decision.strip().lower()
        yield QARow(
            question=as_text(
                required(item, "QUESTION", display, where), "QUESTION", display, where
            ),
            answer=decision,
            options=PUBMEDQA_OPTIONS,
            answer_letter=LETTERS[PUBMEDQA_OPTIONS.index(decision)],
            context=_pubmedqa_context(item, display, where),
            explanation=as_text(item.get("LONG_ANSWER"), "LONG_ANSWER", display, where),
            id=str(pmid),
            group=str(pmid),
            origin=f"{display}:{where}",
            meta=text_meta(
                year=item.get("YEAR"),
                meshes="; ".join(_texts(item, "MESHES", display, where)),
            ),
        )


def _texts(item: Mapping[str, Any], key: str, display: str, line: int | str) -> list[str]:
    value = item.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(
            f"expected a list of texts, got {json_type(value)}",
            file=display,
            line=line,
            field=key,
        )
    return value


def _pubmedqa_context(item: Mapping[str, Any], display: str, line: int | str) -> str:
    contexts = _texts(item, "CONTEXTS", display, line)
    labels = _texts(item, "LABELS", display, line)
    parts = []
    for index, passage in enumerate(contexts):
        label = labels[index].strip() if index < len(labels) else ""
        parts.append(f"{label}: {passage}" if label else passage)
    return "\n\n".join(parts)


def _key_lines(text: str) -> Callable[[str], int | None]:
    """A function giving the line of each top-level key, asked for in file order."""
    pos, line = 0, 1

    def locate(key: str) -> int | None:
        nonlocal pos, line
        found = text.find(json.dumps(key, ensure_ascii=False), pos)
        if found < 0:
            return None
        line += text.count("\n", pos, found)
        pos = found
        return line

    return locate


# ------------------------------------------------------------------ medmcqa, medqa


def read_medmcqa(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``medmcqa:FILE``: MedMCQA JSON lines.

    ``options`` are ``opa``..``opd``; ``cop`` is the 1-based correct option
    (1 = ``opa``), giving ``answer_letter`` and ``answer`` (the option's text);
    ``exp`` is the ``explanation``, ``subject_name`` the ``category``, ``id`` the
    ``id``; ``meta`` holds ``topic_name`` and ``choice_type`` when not null.

    Raises:
        ConfigError: a field mapping is given (the format is fixed).
        DataError: the common file errors, a missing field, or ``cop`` not in 1-4.
    """
    no_fields("medmcqa", fields)
    path = single_file(location, "medmcqa")
    return _medmcqa_rows(path, location)


def _medmcqa_rows(path: Path, display: str) -> Iterator[QARow]:
    for number, record in json_records(path, display):
        question = as_text(
            required(record, "question", display, number), "question", display, number
        )
        options = tuple(
            as_text(required(record, key, display, number), key, display, number)
            for key in ("opa", "opb", "opc", "opd")
        )
        cop = required(record, "cop", display, number)
        if isinstance(cop, str) and cop.strip().isdigit():
            cop = int(cop)
        if isinstance(cop, bool) or not isinstance(cop, int) or not 1 <= cop <= 4:
            raise DataError(
                f"correct option {cop!r} is not 1, 2, 3 or 4",
                file=display,
                line=number,
                field="cop",
                hint="cop is 1-based: 1 = opa ... 4 = opd (a copy counting from 0 needs +1)",
            )
        yield QARow(
            question=question,
            answer=options[cop - 1],
            options=options,
            answer_letter=LETTERS[cop - 1],
            explanation=as_text(record.get("exp"), "exp", display, number),
            id=as_text(record.get("id"), "id", display, number) or str(number),
            category=as_text(record.get("subject_name"), "subject_name", display, number) or None,
            origin=f"{display}:{number}",
            meta=text_meta(
                topic_name=record.get("topic_name"), choice_type=record.get("choice_type")
            ),
        )


def read_medqa(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``medqa:FILE``: MedQA (USMLE) JSON lines.

    ``options`` is an object keyed ``A``, ``B``, ...; ``answer_idx`` the correct
    letter; ``answer`` its text (checked against ``options[answer_idx]``);
    ``meta_info`` the ``category`` (e.g. ``step1``); ``id`` the line number.

    Raises:
        ConfigError: a field mapping is given (the format is fixed).
        DataError: the common file errors, a missing field, options not keyed by
            consecutive letters, or an ``answer`` that is not ``options[answer_idx]``
            (reported on field ``answer_idx``).
    """
    no_fields("medqa", fields)
    path = single_file(location, "medqa")
    return _medqa_rows(path, location)


def _medqa_rows(path: Path, display: str) -> Iterator[QARow]:
    for number, record in json_records(path, display):
        question = as_text(
            required(record, "question", display, number), "question", display, number
        )
        raw = required(record, "options", display, number)
        keys = sorted(raw) if isinstance(raw, dict) else []
        if len(keys) < 2 or keys != list(LETTERS[: len(keys)]):
            raise DataError(
                "options must be an object keyed by consecutive letters from A",
                file=display,
                line=number,
                field="options",
                hint='e.g. "options": {"A": "...", "B": "...", "C": "...", "D": "..."}',
            )
        options = tuple(as_text(raw[k], "options", display, number) for k in keys)
        idx = as_text(
            required(record, "answer_idx", display, number), "answer_idx", display, number
        )
        letter = idx.strip().upper()
        if letter not in keys:
            raise DataError(
                f"answer letter {idx!r} is not one of {', '.join(keys)}",
                file=display,
                line=number,
                field="answer_idx",
            )
        correct = options[LETTERS.index(letter)]
        answer = record.get("answer")
        if (
            answer is not None
            and as_text(answer, "answer", display, number).strip() != correct.strip()
        ):
            raise DataError(
                f"answer {answer!r} is not option {letter} ({correct!r})",
                file=display,
                line=number,
                field="answer_idx",
                hint="fix answer_idx or answer so that options[answer_idx] is the answer text",
            )
        yield QARow(
            question=question,
            answer=correct,
            options=options,
            answer_letter=letter,
            id=str(number),
            category=as_text(record.get("meta_info"), "meta_info", display, number) or None,
            origin=f"{display}:{number}",
        )


# --------------------------------------------------------------------------- mmlu

_MMLU_SPLIT = re.compile(r"_(dev|val|test)$")
_MMLU_LETTERS = ("A", "B", "C", "D")


def read_mmlu(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``mmlu:DIR_OR_CSV``: MMLU's headerless CSV (question, A, B, C, D, answer letter).

    A folder reads every ``*.csv`` in it (not below it), sorted by name. ``category``
    is the subject, the file name without ``.csv`` and a trailing ``_dev``, ``_val``
    or ``_test``; ``id`` and ``group`` are ``SUBJECT-N`` for the file's N-th row.

    Raises:
        ConfigError: a field mapping is given (the format is fixed).
        DataError: the common file errors, a folder without CSV files, a row without
            exactly 6 columns, or an answer letter other than A-D.
    """
    no_fields("mmlu", fields)
    path = existing_path(location, "mmlu")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.csv") if p.is_file())
        if not files:
            raise DataError(
                "holds no *.csv files",
                file=location,
                hint="point mmlu: at a folder of MMLU CSV files (e.g. data/dev) or at one file",
            )
    else:
        files = [path]
    return _mmlu_rows(files)


def _mmlu_rows(files: Iterable[Path]) -> Iterator[QARow]:
    for path in files:
        display = str(path)
        subject = _MMLU_SPLIT.sub("", path.stem)
        count = 0
        for number, cells in csv_records(path, display):
            if len(cells) != 6:
                raise DataError(
                    f"expected 6 columns (question, A, B, C, D, answer), got {len(cells)}",
                    file=display,
                    line=number,
                    hint="MMLU files have no header; quote cells that contain commas",
                )
            letter = cells[5].strip().upper()
            if letter not in _MMLU_LETTERS:
                raise DataError(
                    f"answer {cells[5]!r} is not A, B, C or D",
                    file=display,
                    line=number,
                    field="answer",
                )
            count += 1
            row_id = f"{subject}-{count}"
            options = tuple(cells[1:5])
            yield QARow(
                question=cells[0],
                answer=options[_MMLU_LETTERS.index(letter)],
                options=options,
                answer_letter=letter,
                id=row_id,
                group=row_id,
                category=subject,
                origin=f"{display}:{number}",
            )
        if count == 0:
            raise empty_file(display, "no rows")
