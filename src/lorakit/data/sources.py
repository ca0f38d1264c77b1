"""Built-in source readers, one per URI scheme, and :func:`read_source`.

A source URI is ``SCHEME:LOCATION``: ``jsonl:data/train.jsonl``,
``medquad:../shared/data/medquad``, ``hf:data/saved#validation``. Each scheme is a
:class:`~lorakit.protocols.SourceReader` registered through the
``lorakit_register_sources`` hook, so plugins add schemes the same way this module
does. Readers are lazy, read files in sorted order, and yield every row, including
rows with an empty answer (a cleaner drops and counts those). Bad input raises
:class:`~lorakit.errors.DataError` naming the file, line and field.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.parsers import expat

from lorakit.data.rows import LETTERS, MAPPABLE, QARow
from lorakit.errors import ConfigError, DataError, LorakitError, did_you_mean
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.plugins import Registries
    from lorakit.protocols import Register, SourceReader

__all__ = [
    "parse_uri",
    "read_csv",
    "read_hf",
    "read_jsonl",
    "read_medmcqa",
    "read_medqa",
    "read_medquad",
    "read_mmlu",
    "read_parquet",
    "read_pubmedqa",
    "read_source",
]

# RFC 3986 scheme syntax, at least two characters so that ``C:\data`` stays a path.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+")
_SUFFIX_SCHEMES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_UTF8_HINT = "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"


# --------------------------------------------------------------------------- URIs


def parse_uri(uri: str) -> tuple[str, str]:
    """Split a source URI at its first colon into ``(scheme, location)``.

    The scheme is lower-cased; the location is returned as written.

    Args:
        uri: a source URI such as ``"jsonl:data/train.jsonl"``.

    Returns:
        The scheme and the location, e.g. ``("jsonl", "data/train.jsonl")``.

    Raises:
        ConfigError: the URI has no scheme (a bare path) or nothing after the colon.
    """
    scheme, sep, location = uri.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ConfigError(f"source {uri!r} has no scheme", hint=_bare_path_hint(uri))
    if not location.strip():
        raise ConfigError(
            f"source {uri!r} has nothing after {scheme + ':'!r}",
            hint=f"write {scheme}:PATH",
        )
    return scheme.lower(), location


def _bare_path_hint(uri: str) -> str:
    scheme = _SUFFIX_SCHEMES.get(Path(uri).suffix.lower())
    if scheme is not None:
        return f"did you mean {scheme}:{uri}?"
    return (
        "write SCHEME:LOCATION, e.g. jsonl:PATH for JSON lines, csv:PATH, parquet:PATH, "
        "hf:NAME_OR_DIR or medquad:DIR"
    )


def read_source(
    uri: str,
    *,
    fields: Mapping[str, str] | None = None,
    registries: Registries | None = None,
) -> Iterator[QARow]:
    """Read the rows of a source URI through the reader registered for its scheme.

    Args:
        uri: ``SCHEME:LOCATION``, e.g. ``"medquad:../shared/data/medquad"``.
        fields: QARow field name to source column name, for the generic schemes
            (``jsonl``, ``csv``, ``parquet``, ``hf``); e.g. ``{"question": "Question"}``.
        registries: where to look the scheme up; ``None`` builds the default
            plugin manager's registries.

    Returns:
        A lazy iterator of rows, in the source's order.

    Raises:
        ConfigError: no scheme, an unknown scheme, or a field mapping naming an
            unknown row field.
        DataError: while iterating, when the data cannot be read.
    """
    scheme, location = parse_uri(uri)
    if registries is None:
        from lorakit.plugins import Registries as _Registries

        registries = _Registries.from_plugin_manager()
    if scheme not in registries.sources:
        known = registries.sources.names()
        hint = f"known schemes: {', '.join(known) or 'none'}"
        suggestion = did_you_mean(scheme, known)
        raise ConfigError(
            f"unknown source scheme {scheme!r} in {uri!r}",
            hint=f"{suggestion} {hint}" if suggestion else hint,
        )
    reader: SourceReader = registries.sources.resolve(scheme)
    return reader(location, fields=_checked_fields(fields))


def _checked_fields(fields: Mapping[str, str] | None) -> dict[str, str]:
    mapping = dict(fields or {})
    for name, column in mapping.items():
        if name not in MAPPABLE:
            raise ConfigError(
                f"unknown row field {name!r} in field mapping",
                hint=did_you_mean(name, MAPPABLE) or f"row fields: {', '.join(MAPPABLE)}",
            )
        if not isinstance(column, str) or not column:
            raise ConfigError(
                f"field mapping {name}={column!r} does not name a column",
                hint="write it as question=Question,answer=Answer",
            )
    return mapping


def _no_fields(scheme: str, fields: Mapping[str, str]) -> None:
    if fields:
        raise ConfigError(
            f"{scheme}: reads a fixed format and takes no field mapping "
            f"(got {', '.join(f'{k}={v}' for k, v in fields.items())})",
            hint="drop --fields, or convert the data to JSON lines and read it with jsonl:",
        )


# ------------------------------------------------------------------ files and text


def _existing(location: str, scheme: str) -> Path:
    path = Path(location).expanduser()
    if not path.exists():
        raise DataError(
            "no such file or folder",
            file=location,
            hint=f"check the path in {scheme}:{location}; relative paths start at {Path.cwd()}",
        )
    return path


def _file(location: str, scheme: str) -> Path:
    path = _existing(location, scheme)
    if path.is_dir():
        raise DataError(
            f"is a folder, but {scheme}: reads one file",
            file=location,
            hint=f"write {scheme}:{Path(location) / 'FILE'}",
        )
    return path


def _not_utf8(display: str, line: int, offset: int, byte: int) -> DataError:
    return DataError(
        f"byte 0x{byte:02x} at byte offset {offset} is not valid UTF-8",
        file=display,
        line=line,
        hint=_UTF8_HINT,
    )


def _decode(data: bytes, display: str) -> str:
    """Decode a whole file as UTF-8 (a leading BOM is dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _not_utf8(display, line, exc.start, data[exc.start]) from None


def _lines(path: Path, display: str) -> Iterator[tuple[int, str]]:
    """The file's lines with their 1-based numbers, decoded as UTF-8 one by one."""
    offset = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(display, number, offset + exc.start, raw[exc.start]) from None
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            offset += len(raw)
            yield number, text


def _empty(display: str, what: str) -> DataError:
    return DataError(
        f"file is empty ({what})", file=display, hint="check that it is the right file"
    )


def _json_records(path: Path, display: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON lines file with their line numbers; blank lines skipped."""
    count = 0
    for number, text in _lines(path, display):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = "each line must hold one complete JSON object"
            if count == 0 and text.strip() in ("[", "{"):
                hint = "this looks like one JSON document; JSON lines has one object per line"
            raise DataError(
                f"invalid JSON at column {exc.colno}: {exc.msg}",
                file=display,
                line=number,
                hint=hint,
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"expected a JSON object, got {_json_type(record)}",
                file=display,
                line=number,
                hint='each line must hold one JSON object: {"question": ..., "answer": ...}',
            )
        count += 1
        yield number, record
    if count == 0:
        raise _empty(display, "no JSON lines")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _csv_rows(path: Path, display: str) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the file line each starts on; blank lines skipped."""
    reader = csv.reader(text for _, text in _lines(path, display))
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(
                f"CSV does not parse: {exc}",
                file=display,
                line=reader.line_num,
                hint="check the quoting; cells holding commas or line breaks need double quotes",
            ) from None
        number, start = start, reader.line_num + 1
        if cells:
            yield number, cells


def _required(record: Mapping[str, Any], key: str, display: str, line: int | str | None) -> Any:
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


def _text(value: Any, key: str, display: str, line: int | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"expected text, got {_json_type(value)}", file=display, line=line, field=key)


def _meta(**values: Any) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value is not None}


# ------------------------------------------------------------- generic: jsonl, csv


def read_jsonl(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``jsonl:FILE``: one JSON object per line, mapped with ``fields``; blank lines skipped.

    Raises:
        DataError: missing file, empty file, bytes that are not UTF-8, a line that is
            not valid JSON or not an object, or a missing field (with a suggestion).
    """
    path = _file(location, "jsonl")
    return _jsonl_rows(path, location, dict(fields))


def _jsonl_rows(path: Path, display: str, fields: dict[str, str]) -> Iterator[QARow]:
    for number, record in _json_records(path, display):
        yield QARow.from_mapping(record, fields=fields, file=display, line=number)


def read_csv(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``csv:FILE``: a header row, then one row per record, mapped with ``fields``.

    Row origins are the file's line numbers (a quoted cell may span lines: the row's
    first line is reported). Column names are stripped of surrounding spaces.

    Raises:
        DataError: missing or empty file, bytes that are not UTF-8, a row whose cell
            count differs from the header's, or a missing field.
    """
    path = _file(location, "csv")
    return _csv_generic_rows(path, location, dict(fields))


def _csv_generic_rows(path: Path, display: str, fields: dict[str, str]) -> Iterator[QARow]:
    rows = _csv_rows(path, display)
    header = next(rows, None)
    if header is None:
        raise _empty(display, "no header row")
    header_line, columns = header[0], [c.strip() for c in header[1]]
    count = 0
    for number, cells in rows:
        if len(cells) != len(columns):
            raise DataError(
                f"row has {len(cells)} cells but the header (line {header_line}) "
                f"has {len(columns)} columns",
                file=display,
                line=number,
                hint="quote cells that contain commas",
            )
        count += 1
        yield QARow.from_mapping(
            dict(zip(columns, cells, strict=True)), fields=fields, file=display, line=number
        )
    if count == 0:
        raise _empty(display, "a header but no rows")


# ------------------------------------------------------------------------ parquet


def read_parquet(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``parquet:FILE``: one record per table row (numbered from 1), mapped with ``fields``.

    Needs the optional dependency pyarrow (``pip install 'lorakit[parquet]'``).

    Raises:
        LorakitError: pyarrow is not installed.
        DataError: missing or empty file, a file that is not Parquet, or a missing field.
    """
    path = _file(location, "parquet")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LorakitError(
            "parquet: needs pyarrow, which is not installed",
            file=location,
            hint="pip install 'lorakit[parquet]'",
        ) from None
    return _parquet_rows(pq, path, location, dict(fields))


def _parquet_rows(pq: Any, path: Path, display: str, fields: dict[str, str]) -> Iterator[QARow]:
    import pyarrow as pa

    if path.stat().st_size == 0:
        raise _empty(display, "0 bytes")
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"not a Parquet file: {exc}",
            file=display,
            hint="write it with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table",
        ) from None
    if table.metadata.num_rows == 0:
        raise _empty(display, "no rows")
    number = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield QARow.from_mapping(record, fields=fields, file=display, line=number)


# ----------------------------------------------------------------------------- hf

_HF_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}


def read_hf(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``hf:NAME_OR_DIR[#SPLIT]``: a dataset read with the ``datasets`` library.

    ``NAME_OR_DIR`` is, in this order: a folder written by ``save_to_disk``
    (``load_from_disk``); another local folder or a data file (``load_dataset``
    infers the format); otherwise a dataset name on the Hugging Face Hub. ``SPLIT``
    picks a split of a dataset with several; the default is ``train`` (or the only
    split). Rows are numbered from 1 within the split and mapped with ``fields``.

    Raises:
        ConfigError: an unknown split, or no split chosen among several without ``train``.
        DataError: the dataset cannot be loaded (missing path, hub unreachable or
            offline, unreadable files), has no rows, or lacks a field.
    """
    name, sep, split = location.rpartition("#")
    if not sep:
        name, split = location, ""
    elif not split:
        raise ConfigError(f"hf:{location} has an empty split after '#'", hint=f"hf:{name}#train")
    return _hf_rows(name, split or None, dict(fields))


def _hf_rows(name: str, split: str | None, fields: dict[str, str]) -> Iterator[QARow]:
    dataset, display = _hf_load(name, split)
    if dataset.num_rows == 0:
        raise DataError("dataset has no rows", file=display, hint="check the split")
    number = 0
    for batch in dataset.iter(batch_size=1000):
        columns = list(batch)
        for values in zip(*batch.values(), strict=True):
            number += 1
            record = dict(zip(columns, values, strict=True))
            yield QARow.from_mapping(record, fields=fields, file=display, line=number)


def _hf_load(name: str, split: str | None) -> tuple[Any, str]:
    try:
        import datasets
    except ImportError:
        raise LorakitError(
            "hf: needs the datasets library, which is not installed",
            file=name,
            hint="pip install datasets",
        ) from None
    path = Path(name).expanduser()
    saved = path.is_dir() and any(
        (path / marker).is_file() for marker in ("dataset_dict.json", "state.json")
    )
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path))
        elif path.is_file():
            builder = _HF_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"datasets cannot tell the format of a {path.suffix or 'suffix-less'} file",
                    file=name,
                    hint=f"name it with one of {', '.join(_HF_BUILDERS)}",
                )
            loaded = datasets.load_dataset(builder, data_files=str(path))
        else:
            loaded = datasets.load_dataset(name)
    except LorakitError:
        raise
    except Exception as exc:
        raise DataError(
            f"datasets could not load it: {type(exc).__name__}: {exc}",
            file=name,
            hint=_hf_hint(name, path, saved),
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        chosen = split
        if chosen is None:
            chosen = "train" if "train" in loaded else (splits[0] if len(splits) == 1 else None)
        if chosen is None:
            raise ConfigError(
                f"hf:{name} has splits {', '.join(splits)} and none is called 'train'",
                hint=f"choose one: hf:{name}#{splits[0]}",
            )
        if chosen not in loaded:
            known = f"splits: {', '.join(splits)}"
            suggestion = did_you_mean(chosen, splits)
            raise ConfigError(
                f"hf:{name} has no split {chosen!r}",
                hint=f"{suggestion} {known}" if suggestion else known,
            )
        return loaded[chosen], f"{name}#{chosen}"
    own = getattr(loaded, "split", None)
    if split is not None and (own is None or str(own) != split):
        raise ConfigError(
            f"hf:{name} holds one dataset without a split {split!r}",
            hint=f"write hf:{name} without '#{split}'",
        )
    return loaded, name


def _hf_hint(name: str, path: Path, saved: bool) -> str:
    if saved or path.exists():
        return "check that the folder or file holds a dataset datasets can read"
    offline = any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )
    where = f"there is no local file or folder {name!r}, so it was looked up on the Hub"
    if offline:
        return (
            f"{where} but offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): "
            "point hf: at a folder written by save_to_disk, or unset offline mode"
        )
    return f"{where}; check the name, your network, or give a local path"


# ------------------------------------------------------------------------ medquad


def read_medquad(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``medquad:DIR``: the MedQuAD XML tree, every ``*.xml`` at any depth, sorted by path.

    Each ``<QAPair>`` is a row. ``question`` is the stripped ``<Question>`` text;
    ``answer`` the ``<Answer>`` text as XML parsing gives it (``""`` when missing or
    empty); ``id`` and ``group`` are ``SUBSET/qid`` and ``SUBSET/document-id`` (MedQuAD
    reuses document ids across subsets); ``focus`` the ``<Focus>`` text; ``category``
    the question's ``qtype``; ``meta`` holds ``source``, ``url``, ``subset`` (the
    top-level folder under DIR), ``document``, ``qid`` and ``pid``. ``DIR`` may also
    be a single XML file. The origin of a row is its ``<QAPair>`` line.

    Raises:
        ConfigError: a field mapping is given (the format is fixed).
        DataError: DIR is missing or holds no XML, or a file is empty, not UTF-8,
            not well-formed XML, or not a MedQuAD ``<Document>``.
    """
    _no_fields("medquad", fields)
    root = _existing(location, "medquad")
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*.xml") if p.is_file())
        if not files:
            raise DataError(
                "holds no MedQuAD XML files (*.xml, at any depth)",
                file=location,
                hint="point medquad: at the MedQuAD folder holding 1_CancerGov_QA, 2_GARD_QA, ...",
            )
    return _medquad_rows(root, files)


def _medquad_rows(root: Path, files: list[Path]) -> Iterator[QARow]:
    fallback = (root.parent if root.is_file() else root).resolve().name
    for path in files:
        parts = path.relative_to(root).parts if path != root else ()
        subset = parts[0] if len(parts) > 1 else fallback
        yield from _MedQuADDocument(path, str(path), subset).parse()


class _MedQuADDocument:
    """Streams one MedQuAD XML file through expat, collecting its QA pairs with their lines."""

    def __init__(self, path: Path, display: str, subset: str) -> None:
        self.path = path
        self.display = display
        self.subset = subset
        self.rows: list[QARow] = []
        self.depth = 0
        self.document: dict[str, str] = {}
        self.focus: str | None = None
        self.pair: dict[str, str] = {}
        self.pair_line = 0
        self.question: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.capturing: str | None = None
        self.buffer: list[str] = []
        self.parser = expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._chars

    def parse(self) -> list[QARow]:
        data = self.path.read_bytes()
        if not data.strip():
            raise _empty(self.display, "0 bytes of XML")
        try:
            self.parser.Parse(data, True)
        except expat.ExpatError as exc:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as bad:
                line = data.count(b"\n", 0, bad.start) + 1
                raise _not_utf8(self.display, line, bad.start, data[bad.start]) from None
            raise DataError(
                f"XML does not parse: {expat.ErrorString(exc.code)} at column {exc.offset + 1}",
                file=self.display,
                line=exc.lineno,
                hint="fix the file or remove it from the folder",
            ) from None
        return self.rows

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth == 1:
            if name != "Document":
                raise DataError(
                    f"not a MedQuAD document: the root element is <{name}>, not <Document>",
                    file=self.display,
                    line=self.parser.CurrentLineNumber,
                    hint="medquad: reads MedQuAD's XML files; move other XML out of the folder",
                )
            self.document = attrs
        elif name == "QAPair":
            self.pair, self.question, self.texts = attrs, {}, {}
            self.pair_line = self.parser.CurrentLineNumber
        elif self.capturing is None and name in ("Question", "Answer", "Focus"):
            if name == "Question":
                self.question = attrs
            self.capturing, self.buffer = name, []

    def _chars(self, data: str) -> None:
        if self.capturing is not None:
            self.buffer.append(data)

    def _end(self, name: str) -> None:
        self.depth -= 1
        if name == self.capturing:
            text = "".join(self.buffer)
            if name == "Focus":
                self.focus = text.strip() or None
            else:
                self.texts[name] = text
            self.capturing = None
        elif name == "QAPair":
            self.rows.append(self._row())

    def _row(self) -> QARow:
        doc_id = self.document.get("id") or self.path.stem
        pid = self.pair.get("pid")
        qid = self.question.get("qid") or f"{doc_id}-{pid or len(self.rows) + 1}"
        return QARow(
            question=self.texts.get("Question", "").strip(),
            answer=self.texts.get("Answer", ""),
            id=f"{self.subset}/{qid}",
            group=f"{self.subset}/{doc_id}",
            focus=self.focus,
            category=self.question.get("qtype") or None,
            origin=f"{self.display}:{self.pair_line}",
            meta=_meta(
                source=self.document.get("source"),
                url=self.document.get("url"),
                subset=self.subset,
                document=doc_id,
                qid=qid,
                pid=pid,
            ),
        )


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
    _no_fields("pubmedqa", fields)
    path = _file(location, "pubmedqa")
    return _pubmedqa_rows(path, location)


def _pubmedqa_rows(path: Path, display: str) -> Iterator[QARow]:
    text = _decode(path.read_bytes(), display)
    if not text.strip():
        raise _empty(display, "no JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON at column {exc.colno}: {exc.msg}",
            file=display,
            line=exc.lineno,
            hint="pubmedqa: reads one JSON object keyed by PMID (ori_pqal.json)",
        ) from None
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"expected a JSON object keyed by PMID, got {_json_type(data) if data else 'nothing'}",
            file=display,
            hint="pubmedqa: reads PubMedQA's ori_pqal.json; other layouts: jsonl: with --fields",
        )
    locate = _key_lines(text)
    for pmid, item in data.items():
        line = locate(pmid)
        where = line if line is not None else f"PMID {pmid}"
        if not isinstance(item, dict):
            raise DataError(
                f"PMID {pmid}: expected an object, got {_json_type(item)}", file=display, line=where
            )
        decision = _text(
            _required(item, "final_decision", display, where), "final_decision", display, where
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
            question=_text(_required(item, "QUESTION", display, where), "QUESTION", display, where),
            answer=decision,
            options=PUBMEDQA_OPTIONS,
            answer_letter=LETTERS[PUBMEDQA_OPTIONS.index(decision)],
            context=_pubmedqa_context(item, display, where),
            explanation=_text(item.get("LONG_ANSWER"), "LONG_ANSWER", display, where),
            id=str(pmid),
            group=str(pmid),
            origin=f"{display}:{where}",
            meta=_meta(
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
            f"expected a list of texts, got {_json_type(value)}",
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
    _no_fields("medmcqa", fields)
    path = _file(location, "medmcqa")
    return _medmcqa_rows(path, location)


def _medmcqa_rows(path: Path, display: str) -> Iterator[QARow]:
    for number, record in _json_records(path, display):
        question = _text(
            _required(record, "question", display, number), "question", display, number
        )
        options = tuple(
            _text(_required(record, key, display, number), key, display, number)
            for key in ("opa", "opb", "opc", "opd")
        )
        cop = _required(record, "cop", display, number)
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
            explanation=_text(record.get("exp"), "exp", display, number),
            id=_text(record.get("id"), "id", display, number) or str(number),
            category=_text(record.get("subject_name"), "subject_name", display, number) or None,
            origin=f"{display}:{number}",
            meta=_meta(topic_name=record.get("topic_name"), choice_type=record.get("choice_type")),
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
    _no_fields("medqa", fields)
    path = _file(location, "medqa")
    return _medqa_rows(path, location)


def _medqa_rows(path: Path, display: str) -> Iterator[QARow]:
    for number, record in _json_records(path, display):
        question = _text(
            _required(record, "question", display, number), "question", display, number
        )
        raw = _required(record, "options", display, number)
        keys = sorted(raw) if isinstance(raw, dict) else []
        if len(keys) < 2 or keys != list(LETTERS[: len(keys)]):
            raise DataError(
                "options must be an object keyed by consecutive letters from A",
                file=display,
                line=number,
                field="options",
                hint='e.g. "options": {"A": "...", "B": "...", "C": "...", "D": "..."}',
            )
        options = tuple(_text(raw[k], "options", display, number) for k in keys)
        idx = _text(_required(record, "answer_idx", display, number), "answer_idx", display, number)
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
            and _text(answer, "answer", display, number).strip() != correct.strip()
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
            category=_text(record.get("meta_info"), "meta_info", display, number) or None,
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
    _no_fields("mmlu", fields)
    path = _existing(location, "mmlu")
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
        for number, cells in _csv_rows(path, display):
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
            raise _empty(display, "no rows")


# ------------------------------------------------------------------------- plugin


@hookimpl
def lorakit_register_sources(register: Register) -> None:
    """Register the built-in schemes: generic files, ``hf``, and the medical QA datasets."""
    register("jsonl", read_jsonl)
    register("csv", read_csv)
    register("parquet", read_parquet)
    register("hf", read_hf)
    register("medquad", read_medquad)
    register("pubmedqa", read_pubmedqa)
    register("medmcqa", read_medmcqa)
    register("medqa", read_medqa)
    register("mmlu", read_mmlu)
