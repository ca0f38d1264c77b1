"""Exports of a sheet and its grades, for review outside the page: CSV and a static HTML page.

The CSV has one row per (item, reviewer) grade, and one row with empty grade columns per item
no one graded yet, so it can be filled in a spreadsheet. Cells that a spreadsheet would run as a
formula (starting with ``=``, ``+``, ``-``, ``@``) are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.review.grades import GRADE_LABELS, Grade, latest_grades

if TYPE_CHECKING:
    import jinja2

    from lorakit.review.sheet import ReviewSheet

__all__ = ["CSV_COLUMNS", "export_sheet", "templates"]

CSV_COLUMNS = (
    "item",
    "category",
    "question",
    "reference",
    "answer",
    "citations",
    "verdicts",
    "reviewer",
    "grade",
    "note",
    "revision",
    "graded_at",
)
FORMATS = ("csv", "html")


def templates() -> jinja2.Environment:
    """The page templates (``review/templates``), HTML-escaped."""
    from lorakit.errors import ConfigError

    try:
        import jinja2
    except ImportError:
        raise ConfigError(
            "the review page needs jinja2", hint='pip install "lorakit[review]"'
        ) from None
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lorakit.review", "templates"),
        autoescape=True,
    )


def _cell(value: str) -> str:
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def _by_item(grades: list[Grade]) -> dict[str, list[Grade]]:
    out: dict[str, list[Grade]] = {}
    for grade in sorted(latest_grades(grades).values(), key=lambda g: g.reviewer):
        out.setdefault(grade.item, []).append(grade)
    return out


def to_csv(sheet: ReviewSheet, grades: list[Grade]) -> str:
    """The sheet and its latest grades as CSV text."""
    graded = _by_item(grades)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for item in sheet.items:
        citations = "; ".join(
            f"[{c.get('n', '')}] {c.get('doc_id', '')} {c.get('url', '')}".strip()
            for c in item.citations
        )
        verdicts = "; ".join(f"{v.get('guard', '')}:{v.get('decision', '')}" for v in item.verdicts)
        base = [
            item.id,
            item.category,
            item.question,
            item.reference,
            item.answer,
            citations,
            verdicts,
        ]
        rows: list[list[Any]] = [
            [g.reviewer, g.grade, g.note, g.revision, g.at] for g in graded.get(item.id, [])
        ] or [["", "", "", "", ""]]
        for tail in rows:
            writer.writerow([_cell(str(v)) for v in (*base, *tail)])
    return buffer.getvalue()


def to_html(sheet: ReviewSheet, grades: list[Grade]) -> str:
    """The sheet and its latest grades as one static, printable page."""
    return (
        templates()
        .get_template("export.html")
        .render(
            source=str(sheet.source),
            items=sheet.items,
            graded=_by_item(grades),
            labels=GRADE_LABELS,
        )
    )


def export_sheet(
    sheet: ReviewSheet, grades: list[Grade], kind: str, out: Path | None = None
) -> Path:
    """Write the ``csv`` or ``html`` export (default ``<sheet folder>/grades.<kind>``), atomically."""
    from lorakit._fs import write_text_atomic
    from lorakit.errors import ConfigError

    if kind not in FORMATS:
        raise ConfigError(f"unknown export format {kind!r}", field="--export", hint="csv or html")
    path = out or sheet.folder / f"grades.{kind}"
    write_text_atomic(path, to_csv(sheet, grades) if kind == "csv" else to_html(sheet, grades))
    return path
