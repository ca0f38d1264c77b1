"""The ``medsafetybench:`` source: MedSafetyBench's harmful medical requests and safe responses.

MedSafetyBench (Han et al., NeurIPS 2024 Datasets and Benchmarks) ships one CSV per category,
``med_safety_demonstrations_category_N.csv`` (N = 1..9, the nine principles of the AMA Code of
Medical Ethics), in a folder per generator (``gpt4/``, ``llama2/``). Each CSV has a blank-named
index column, then ``harmful_medical_request`` and ``safe_response``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from lorakit.data.rows import QARow
from lorakit.data.sources._files import csv_records, existing_path
from lorakit.data.sources._uri import no_fields
from lorakit.errors import DataError

__all__ = ["MEDSAFETYBENCH_COLUMNS", "read_medsafetybench"]

MEDSAFETYBENCH_COLUMNS = ("harmful_medical_request", "safe_response")
"""The two named columns every MedSafetyBench CSV has (after a blank-named index column)."""

_FILE_NAME = re.compile(r"med_safety_(?:demonstrations|test|train)?_?category_(\d+)\.csv")


def read_medsafetybench(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``medsafetybench:DIR``: every ``*category_N.csv`` at any depth under DIR, sorted by path.

    Each CSV row is a row: ``question`` is ``harmful_medical_request``, ``answer`` is
    ``safe_response``; ``category`` is N from the file name (``"1"`` .. ``"9"``); ``meta``
    holds ``category``, ``generator`` (the CSV's folder name, ``gpt4`` or ``llama2``) and
    ``index`` (the index column); ``id`` is ``GENERATOR/N/INDEX`` and ``group`` is
    ``GENERATOR/N``. DIR may also be one CSV file.

    Raises:
        ConfigError: a field mapping is given (the format is fixed).
        DataError: DIR is missing or holds no category CSV, a file name has no category
            number, or a file is empty, not UTF-8, not valid CSV, lacks a column, or has a
            row with the wrong number of cells.
    """
    no_fields("medsafetybench", fields)
    root = existing_path(location, "medsafetybench")
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*.csv") if p.is_file())
        if not files:
            raise DataError(
                "holds no *.csv files",
                file=location,
                hint="point medsafetybench: at a folder of med_safety_demonstrations_category_N.csv",
            )
    return _rows(files)


def _category(path: Path) -> str:
    match = _FILE_NAME.fullmatch(path.name)
    if match is None:
        raise DataError(
            "the file name has no category number",
            file=str(path),
            hint="MedSafetyBench files are named med_safety_demonstrations_category_N.csv",
        )
    return match.group(1)


def _rows(files: Iterable[Path]) -> Iterator[QARow]:
    for path in files:
        display = str(path)
        category = _category(path)
        generator = path.parent.name
        records = csv_records(path, display)
        header = next(records, None)
        if header is None:
            raise DataError("the file is empty", file=display, hint="expected a header row")
        columns = [cell.strip() for cell in header[1]]
        for name in MEDSAFETYBENCH_COLUMNS:
            if name not in columns:
                raise DataError(
                    f"required column {name!r} is missing",
                    file=display,
                    line=header[0],
                    field=name,
                    hint=f"the header has {', '.join(repr(c) for c in columns)}",
                )
        request_at = columns.index("harmful_medical_request")
        response_at = columns.index("safe_response")
        for number, cells in records:
            if len(cells) != len(columns):
                raise DataError(
                    f"expected {len(columns)} cells, got {len(cells)}",
                    file=display,
                    line=number,
                    hint="quote cells that contain commas or line breaks",
                )
            index = cells[0].strip() if columns[0] == "" else str(number)
            yield QARow(
                question=cells[request_at].strip(),
                answer=cells[response_at].strip(),
                id=f"{generator}/{category}/{index}",
                group=f"{generator}/{category}",
                category=category,
                origin=f"{display}:{number}",
                meta={"category": category, "generator": generator, "index": index},
            )
