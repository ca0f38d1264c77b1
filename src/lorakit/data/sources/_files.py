"""File helpers shared by the readers: paths, UTF-8, lines, JSON records, CSV records, fields.

Every helper raises :class:`~lorakit.errors.DataError` naming the file (as the user
wrote it, ``display``), the line and, where there is one, the field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lorakit.errors import DataError, did_you_mean

__all__ = [
    "UTF8_HINT",
    "as_text",
    "csv_records",
    "decode_utf8",
    "empty_file",
    "existing_path",
    "json_error",
    "json_records",
    "json_type",
    "not_utf8",
    "required",
    "single_file",
    "text_meta",
    "utf8_lines",
]

UTF8_HINT = "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"
_QUOTE_HINT = (
    "end a quoted cell with a quote followed by a comma or the line end, and write a quote "
    'inside a quoted cell twice ("")'
)
_JSON_SPACE = " \t\r\n"

# ------------------------------------------------------------------------ paths


def existing_path(location: str, scheme: str) -> Path:
    """The path of ``location``, which must exist (``~`` expanded).

    Raises:
        DataError: nothing exists there.
    """
    path = Path(location).expanduser()
    if not path.exists():
        raise DataError(
            "no such file or folder",
            file=location,
            hint=f"check the path in {scheme}:{location}; relative paths start at {Path.cwd()}",
        )
    return path


def single_file(location: str, scheme: str) -> Path:
    """The path of ``location``, which must exist and not be a folder.

    Raises:
        DataError: nothing exists there, or it is a folder.
    """
    path = existing_path(location, scheme)
    if path.is_dir():
        raise DataError(
            f"is a folder, but {scheme}: reads one file",
            file=location,
            hint=f"write {scheme}:{Path(location) / 'FILE'}",
        )
    return path


def empty_file(display: str, what: str) -> DataError:
    """The error for a file with nothing to read; ``what`` says what it lacks."""
    return DataError(
        f"file is empty ({what})", file=display, hint="check that it is the right file"
    )


# ------------------------------------------------------------------------ UTF-8


def not_utf8(display: str, line: int, offset: int, byte: int) -> DataError:
    """The error for the first byte that is not UTF-8, at a byte offset of the file."""
    return DataError(
        f"byte 0x{byte:02x} at byte offset {offset} is not valid UTF-8",
        file=display,
        line=line,
        hint=UTF8_HINT,
    )


def decode_utf8(data: bytes, display: str) -> str:
    """Decode a whole file as UTF-8 (a leading BOM is dropped).

    Raises:
        DataError: a byte that is not UTF-8, with its line and offset.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise not_utf8(display, line, exc.start, data[exc.start]) from None


def utf8_lines(path: Path, display: str) -> Iterator[tuple[int, str]]:
    """The file's lines with their 1-based numbers, decoded as UTF-8 one by one.

    Lines keep their line ends; a BOM at the start of the file is dropped.

    Raises:
        DataError: a byte that is not UTF-8, with its line and offset.
    """
    offset = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise not_utf8(display, number, offset + exc.start, raw[exc.start]) from None
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            offset += len(raw)
            yield number, text


# ------------------------------------------------------------------------- JSON


def json_error(
    exc: json.JSONDecodeError, *, display: str, first_line: int = 1, ends: str, hint: str
) -> DataError:
    """The error for JSON that does not parse, at the line and column where it fails.

    The parser skips whitespace before it reports, so data that stops early (a cut-off
    line or file) is reported by ``json`` after the last line end, at column 1 of a line
    that does not exist. This reports the end of the data instead and says so.

    Args:
        exc: the parser's error; its ``doc`` is the text given to ``json.loads``.
        display: the file, as the user named it.
        first_line: the file's line number of the first line of ``exc.doc``.
        ends: what ended, for the message: ``"line"`` or ``"file"``.
        hint: what to do.
    """
    doc, pos = exc.doc, exc.pos
    end = len(doc.rstrip(_JSON_SPACE))
    at_end = pos >= end
    if at_end:
        pos = end
    line = doc.count("\n", 0, pos) + first_line
    column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
    where = f", but the {ends} ends there" if at_end else ""
    return DataError(
        f"invalid JSON at column {column}: {exc.msg}{where}", file=display, line=line, hint=hint
    )


def json_records(path: Path, display: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON lines file with their line numbers; blank lines skipped.

    Raises:
        DataError: a byte that is not UTF-8, a line that is not JSON (with its column)
            or not an object, or no JSON line at all.
    """
    count = 0
    for number, text in utf8_lines(path, display):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = "each line must hold one complete JSON object"
            if count == 0 and text.strip() in ("[", "{"):
                hint = "this looks like one JSON document; JSON lines has one object per line"
            raise json_error(
                exc, display=display, first_line=number, ends="line", hint=hint
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"expected a JSON object, got {json_type(record)}",
                file=display,
                line=number,
                hint='each line must hold one JSON object: {"question": ..., "answer": ...}',
            )
        count += 1
        yield number, record
    if count == 0:
        raise empty_file(display, "no JSON lines")


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, with its article: ``"an array"``."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


# -------------------------------------------------------------------------- CSV


def csv_records(path: Path, display: str) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the file line each starts on; blank lines skipped.

    The CSV is parsed strictly: a quote that is never closed, or a closing quote
    followed by more text, is an error naming the line where the quoted cell starts
    (a lenient parser would silently read the following rows into that cell).

    Raises:
        DataError: a byte that is not UTF-8, or a record that does not parse.
    """
    pending: list[tuple[int, str]] = []  # the lines of the record being read
    read_all = False

    def feed() -> Iterator[str]:
        nonlocal read_all
        for number, text in utf8_lines(path, display):
            pending.append((number, text))
            yield text
        read_all = True

    reader = csv.reader(feed(), strict=True)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(exc, pending, display, reader.line_num, at_end=read_all) from None
        if cells:
            yield pending[0][0], cells
        pending.clear()


def _csv_error(
    exc: csv.Error, lines: Sequence[tuple[int, str]], display: str, line: int, *, at_end: bool
) -> DataError:
    opened, unclosed = _open_quote(lines)
    if opened is None:
        return DataError(
            f"CSV does not parse: {exc}",
            file=display,
            line=line,
            hint="check the quoting; cells holding commas or line breaks need double quotes",
        )
    if unclosed and at_end:
        message = (
            "the quoted cell that starts on this line is never closed: it runs to the end "
            f"of the file (line {line}), taking in every row after it"
        )
    elif unclosed:
        message = f"the quoted cell that starts on this line is still open at line {line}: {exc}"
    elif opened == line:
        message = "text follows the closing quote of a quoted cell"
    else:
        message = (
            f"the quoted cell that starts on this line closes only on line {line}, where text "
            "follows its closing quote (is a closing quote missing on this line?)"
        )
    return DataError(f"CSV does not parse: {message}", file=display, line=opened, hint=_QUOTE_HINT)


def _open_quote(lines: Sequence[tuple[int, str]]) -> tuple[int | None, bool]:
    """Where the quoted cell being read starts, and whether it is still open at the end.

    Follows the csv module's default dialect over the lines of one record, up to the
    first character that breaks it (text after a closing quote). Returns ``(None,
    False)`` when the record has no quoted cell to blame.
    """
    opened: int | None = None
    cell_start, quoted, after_quote = True, False, False
    for number, text in lines:
        for char in text:
            if quoted:
                if char == '"':
                    quoted, after_quote = False, True
            elif after_quote:
                if char == '"':  # "" inside a quoted cell
                    quoted, after_quote = True, False
                elif char in ",\r\n":
                    after_quote, cell_start = False, True
                else:
                    return opened, False
            elif char == '"' and cell_start:
                quoted, opened, cell_start = True, number, False
            else:
                cell_start = char in ",\r\n"
    return (opened, True) if quoted else (None, False)


# ------------------------------------------------------------------- record fields


def required(record: Mapping[str, Any], key: str, display: str, line: int | str | None) -> Any:
    """``record[key]``; a missing key suggests the closest one.

    Raises:
        DataError: the key is missing, naming the field.
    """
    if key in record:
        return record[key]
    keys = [str(k) for k in record]
    raise DataError(
        f"required field {key!r} is missing",
        file=display,
        line=line,
        field=key,
        hint=did_you_mean(key, keys) or f"the record has {', '.join(keys) or 'no fields'}",
    )


def as_text(value: Any, key: str, display: str, line: int | str | None) -> str:
    """A field's value as text: ``None`` is ``""``, numbers are written out.

    Raises:
        DataError: the value is a list, an object or a boolean, naming the field.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"expected text, got {json_type(value)}", file=display, line=line, field=key)


def text_meta(**values: Any) -> dict[str, str]:
    """A row's ``meta``: the values that are not ``None``, as text."""
    return {key: str(value) for key, value in values.items() if value is not None}
