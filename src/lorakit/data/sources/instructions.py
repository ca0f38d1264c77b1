"""The ``instructions:`` source: general (non-medical) instruction data in JSON lines.

Three upstream layouts, decided per record by its keys:

- Alpaca seed tasks (tatsu-lab/stanford_alpaca ``seed_tasks.jsonl``): ``id``, ``name``,
  ``instruction``, ``instances`` (a list of ``{input, output}``); one row per instance;
- Alpaca data: ``instruction``, ``input``, ``output``;
- Dolly (databricks-dolly-15k): ``instruction``, ``context``, ``response``, ``category``.

Mixed into medical QA (``data.mix``), they keep a fine-tuned model's general abilities.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lorakit.data.rows import QARow
from lorakit.data.sources._files import as_text, existing_path, json_records
from lorakit.data.sources._uri import no_fields
from lorakit.errors import DataError

__all__ = ["read_instructions"]


def read_instructions(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``instructions:PATH``: a ``.jsonl`` file, or every ``*.jsonl`` under a folder, sorted.

    ``question`` is the instruction, followed by its input (or Dolly's context) after a blank
    line when there is one; ``answer`` the output (Dolly: ``response``). ``group`` is the
    task (a seed task's instances stay in one split), ``category`` its name or Dolly's
    category, ``id`` the record's id (``ID/N`` per instance) or its line.

    Raises:
        ConfigError: a field mapping is given (the layouts are fixed).
        DataError: the path is missing or holds no ``.jsonl``; a record has no
            ``instruction`` or no output, or a value of the wrong type.
    """
    no_fields("instructions", fields)
    root = existing_path(location, "instructions")
    files = [root] if root.is_file() else sorted(root.rglob("*.jsonl"))
    if not files:
        raise DataError(
            "holds no *.jsonl files",
            file=location,
            hint="point instructions: at an Alpaca or Dolly JSON lines file",
        )
    return _rows(files)


def _rows(files: list[Path]) -> Iterator[QARow]:
    for path in files:
        display = str(path)
        for line, record in json_records(path, display):
            yield from _record_rows(record, display, line)


def _record_rows(record: Mapping[str, Any], display: str, line: int) -> Iterator[QARow]:
    if "instruction" not in record:
        raise DataError(
            "no 'instruction' field",
            file=display,
            line=line,
            field="instruction",
            hint="instructions: reads Alpaca (instruction, input, output), Alpaca seed tasks "
            "(instruction, instances) or Dolly (instruction, context, response)",
        )
    instruction = as_text(record["instruction"], "instruction", display, line).strip()
    task = str(record.get("id") or line)
    category = record.get("name") or record.get("category")
    if "instances" in record:
        instances = record["instances"]
        if not isinstance(instances, list) or not all(isinstance(i, Mapping) for i in instances):
            raise DataError(
                "'instances' must be a list of {input, output} objects",
                file=display,
                line=line,
                field="instances",
            )
        pairs = [(i.get("input"), i.get("output"), f"{task}/{n}") for n, i in enumerate(instances)]
    elif "response" in record:
        pairs = [(record.get("context"), record["response"], task)]
    elif "output" in record:
        pairs = [(record.get("input"), record["output"], task)]
    else:
        raise DataError(
            "no output: expected 'output', 'response' or 'instances'",
            file=display,
            line=line,
            hint="each record needs the answer to its instruction",
        )
    for given, output, row_id in pairs:
        extra = as_text(given or "", "input", display, line).strip()
        yield QARow(
            question=f"{instruction}\n\n{extra}" if extra else instruction,
            answer=as_text(output or "", "output", display, line),
            id=row_id,
            group=f"instructions/{task}",
            category=None if category is None else str(category),
            origin=f"{display}:{line}",
        )
