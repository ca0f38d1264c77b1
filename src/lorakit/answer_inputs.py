"""What the answer path reads besides the model: the retrieval index, the guard policy, and
the questions of a batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError

__all__ = ["load_guards", "load_index", "read_questions"]


def load_index(path: str | Path) -> Any:
    """The retrieval index in ``path`` (:func:`lorakit.retrieval.load_index`).

    Raises:
        ConfigError: retrieval is not available in this installation.
    """
    try:
        from lorakit.retrieval import load_index as _load
    except ImportError as exc:
        raise ConfigError(
            f"retrieval is not available: {exc}",
            field="--index",
            hint="install lorakit[retrieval]",
        ) from None
    return _load(path)


def load_guards(policy: str | None, registries: Any = None) -> Any:
    """The guard set of ``policy`` (:func:`lorakit.safety.load_policy`; ``"default"``: the
    default policy).

    Raises:
        ConfigError: safety is not available in this installation.
    """
    try:
        from lorakit.safety import load_policy
    except ImportError as exc:
        raise ConfigError(
            f"the safety guards are not available: {exc}",
            field="--policy",
            hint="install lorakit[safety]",
        ) from None
    return load_policy(None if policy in (None, "default") else policy, registries=registries)


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """Questions from a JSON-lines file (``{"question": ...}``, optional ``"id"``) or a text
    file of one question a line. Every row gets an ``id`` (its line number when it has none).

    Raises:
        DataError: unreadable file, bad JSON, or a row without a question (names the line).
    """
    from lorakit.errors import DataError

    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the questions: {exc}", file=str(file)) from None
    rows: list[dict[str, Any]] = []
    jsonl = file.suffix in (".jsonl", ".json") or any(
        line.lstrip().startswith("{") for line in lines[:1]
    )
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            rows.append({"id": str(number), "question": line.strip()})
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"not JSON: {exc}", file=str(file), line=number) from None
        if not isinstance(row, dict):
            raise DataError("a line must be a JSON object", file=str(file), line=number)
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                "no question (a non-empty text)",
                file=str(file),
                line=number,
                field="question",
                hint='each line: {"id": "...", "question": "..."}',
            )
        row_id = row.get("id", str(number))
        rows.append({**row, "id": str(row_id)})
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise DataError(f"duplicate id {row['id']!r}", file=str(file), field="id")
        seen.add(row["id"])
    return rows
