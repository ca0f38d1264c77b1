"""Passages with provenance, read from sources: the documents an index is built from.

A passage source is a URI, like a data source:

* ``medquad:DIR``: MedQuAD; one passage per answered QA pair, its document the MedQuAD
  document (``SUBSET/docid``), its title the document's focus, its URL the NIH page.
* ``jsonl:FILE`` / ``csv:FILE``: one document per record, read from the columns ``text``
  (required), ``title``, ``url``, ``id`` and ``source``; ``fields`` maps them to other
  column names (``{"text": "body"}``).
* ``pages:DIR``: a folder of Markdown (``.md``) or HTML (``.html``, ``.htm``) pages, one
  document per file; the title is the first ``# heading`` or ``<title>``, the URL a
  ``url:`` front-matter line or ``<link rel="canonical">``.
* any other scheme a registered source reads (``pubmedqa:``, a plugin's): one passage per
  answered row, its document the row's group (or id); a row id seen again in the source
  gets ``~2``, ``~3``... (MedQuAD repeats 8 question ids of 1_CancerGov_QA).

Texts longer than ``max_chars`` are split on paragraph boundaries (blank lines) into
passages of at most ``max_chars`` (a single longer paragraph stays whole). A passage
without a URL is allowed: it is cited without a link.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from lorakit.data.sources._files import (
    as_text,
    csv_records,
    empty_file,
    existing_path,
    json_records,
    single_file,
)
from lorakit.data.sources._uri import parse_uri
from lorakit.errors import ConfigError, DataError, did_you_mean
from lorakit.protocols import Passage

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DOCUMENT_FIELDS",
    "content_hash",
    "indexed_text",
    "read_passages",
    "split_paragraphs",
]

DEFAULT_MAX_CHARS = 2000
DOCUMENT_FIELDS = ("text", "title", "url", "id", "source")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_PAGE_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}


def indexed_text(passage: Passage) -> str:
    """What the retrievers see of a passage: its title (when there is one) and its text."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


def content_hash(title: str, text: str) -> str:
    """The first 16 hex digits of the SHA-256 of what the retrievers see (title and text)."""
    seen = f"{title}\n{text}" if title else text
    return hashlib.sha256(seen.encode("utf-8")).hexdigest()[:16]


def split_paragraphs(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """``text`` in parts of at most ``max_chars``, cut only at blank lines; ``[]`` for blank text.

    Consecutive paragraphs are packed greedily; a paragraph longer than ``max_chars`` is a
    part of its own. Each part is stripped; inner line breaks are kept.
    """
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    parts: list[str] = []
    current = ""
    for paragraph in paragraphs:
        if current and len(current) + 2 + len(paragraph) > max_chars:
            parts.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        parts.append(current)
    return parts


def _passages(
    *,
    base_id: str,
    doc_id: str,
    text: str,
    title: str,
    url: str,
    source: str,
    max_chars: int,
) -> Iterator[Passage]:
    parts = split_paragraphs(text, max_chars)
    for n, part in enumerate(parts, 1):
        yield Passage(
            passage_id=base_id if len(parts) == 1 else f"{base_id}#{n}",
            doc_id=doc_id,
            text=part,
            source=source,
            title=title,
            url=url,
            content_hash=content_hash(title, part),
        )


def read_passages(
    uri: str,
    *,
    fields: Mapping[str, str] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Iterator[Passage]:
    """The passages of one source URI, in the source's order (see the module docs).

    Raises:
        ConfigError: a bad URI, an unknown field name, or ``max_chars`` below 100.
        DataError: the source is missing, empty or malformed (naming file, line, field),
            or two passages share an id.
    """
    if not isinstance(max_chars, int) or max_chars < 100:
        raise ConfigError(f"max_chars must be at least 100, got {max_chars!r}", field="max_chars")
    scheme, location = parse_uri(uri)
    if scheme in ("jsonl", "csv"):
        mapping = _document_fields(fields or {})
        records = _jsonl_documents if scheme == "jsonl" else _csv_documents
        stream = _from_records(records(location), mapping, location, scheme, max_chars)
    elif scheme == "pages":
        stream = _from_pages(location, max_chars)
    else:
        stream = _from_rows(uri, fields, max_chars)
    return _unique(stream, uri)


def _unique(passages: Iterable[Passage], uri: str) -> Iterator[Passage]:
    seen: set[str] = set()
    for passage in passages:
        if passage.passage_id in seen:
            raise DataError(
                f"two passages have the id {passage.passage_id!r}",
                file=uri,
                field="id",
                hint="give every document a distinct id",
            )
        seen.add(passage.passage_id)
        yield passage


def _document_fields(fields: Mapping[str, str]) -> dict[str, str]:
    for name in fields:
        if name not in DOCUMENT_FIELDS:
            raise ConfigError(
                f"unknown document field {name!r}",
                field=name,
                hint=did_you_mean(name, DOCUMENT_FIELDS) or f"fields: {', '.join(DOCUMENT_FIELDS)}",
            )
    return {name: fields.get(name, name) for name in DOCUMENT_FIELDS}


def _jsonl_documents(location: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    yield from json_records(single_file(location, "jsonl"), location)


def _csv_documents(location: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    rows = csv_records(single_file(location, "csv"), location)
    header = next(rows, None)
    if header is None:
        raise empty_file(location, "no header row")
    columns = [c.strip() for c in header[1]]
    for number, cells in rows:
        if len(cells) != len(columns):
            raise DataError(
                f"row has {len(cells)} cells but the header has {len(columns)} columns",
                file=location,
                line=number,
                hint="quote cells that contain commas",
            )
        yield number, dict(zip(columns, cells, strict=True))


def _from_records(
    records: Iterator[tuple[int, Mapping[str, Any]]],
    mapping: Mapping[str, str],
    location: str,
    scheme: str,
    max_chars: int,
) -> Iterator[Passage]:
    name = Path(location).name
    for line, record in records:
        column = mapping["text"]
        if column not in record:
            hint = did_you_mean(column, [str(k) for k in record])
            raise DataError(
                f"record has no column {column!r}",
                file=location,
                line=line,
                field="text",
                hint=hint or "map the text column with --fields text=COLUMN",
            )

        def value(key: str, record: Mapping[str, Any] = record, line: int = line) -> str:
            got = record.get(mapping[key])
            return "" if got is None else as_text(got, mapping[key], location, line).strip()

        doc_id = value("id") or f"{name}:{line}"
        yield from _passages(
            base_id=doc_id,
            doc_id=doc_id,
            text=value("text"),
            title=value("title"),
            url=value("url"),
            source=value("source") or f"{scheme}:{name}",
            max_chars=max_chars,
        )


def _from_rows(uri: str, fields: Mapping[str, str] | None, max_chars: int) -> Iterator[Passage]:
    from lorakit.data.sources import read_source

    seen: dict[str, int] = {}
    for row in read_source(uri, fields=fields):
        if not row.answer.strip():
            continue
        meta = row.meta
        base_id = row.id or row.origin
        seen[base_id] = seen.get(base_id, 0) + 1
        if seen[base_id] > 1:  # MedQuAD reuses a few question ids within a subset
            base_id = f"{base_id}~{seen[base_id]}"
        yield from _passages(
            base_id=base_id,
            doc_id=row.group or row.id or row.origin,
            text=row.answer,
            title=row.focus or "",
            url=meta.get("url", ""),
            source=meta.get("source", "") or uri.partition(":")[0],
            max_chars=max_chars,
        )


# --------------------------------------------------------------------------- pages


class _HTMLText(HTMLParser):
    """The visible text of an HTML page by block, its <title> and canonical URL."""

    _BLOCKS = frozenset(
        [
            "p",
            "div",
            "section",
            "article",
            "li",
            "ul",
            "ol",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "br",
            "tr",
            "table",
            "pre",
            "blockquote",
        ]
    )
    _SKIP = frozenset({"script", "style", "nav", "header", "footer", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.title = ""
        self.url = ""
        self.skipping = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "title":
            self.in_title = True
        elif tag == "link" and values.get("rel", "").lower() == "canonical":
            self.url = values.get("href", "")
        elif tag == "meta" and values.get("property", "").lower() == "og:url" and not self.url:
            self.url = values.get("content", "")
        if tag in self._SKIP:
            self.skipping += 1
        if tag in self._BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1
        if tag in self._BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        elif not self.skipping:
            self.current.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self.current).split())
        if text:
            self.blocks.append(text)
        self.current = []


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)
_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)


def _markdown(text: str) -> tuple[str, str, str]:
    title = url = ""
    front = _FRONT_MATTER.match(text)
    if front:
        for line in front.group(1).splitlines():
            key, _, value = line.partition(":")
            value = value.strip().strip("\"'")
            if key.strip().lower() == "url":
                url = value
            elif key.strip().lower() == "title":
                title = value
        text = text[front.end() :]
    heading = _HEADING.search(text)
    if heading and not title:
        title = heading.group(1).strip()
    return text, title, url


def _html(text: str) -> tuple[str, str, str]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return "\n\n".join(parser.blocks), html.unescape(" ".join(parser.title.split())), parser.url


def _from_pages(location: str, max_chars: int) -> Iterator[Passage]:
    root = existing_path(location, "pages")
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _PAGE_SUFFIXES)
    if not files:
        raise DataError(
            "holds no Markdown or HTML pages (*.md, *.html, *.htm)",
            file=location,
            hint="point pages: at a folder of .md or .html files",
        )
    base = root.parent if root.is_file() else root
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            line = raw.count(b"\n", 0, bad.start) + 1
            raise DataError(
                f"byte 0x{raw[bad.start]:02x} is not UTF-8",
                file=str(path),
                line=line,
                hint="save the page as UTF-8",
            ) from None
        kind = _PAGE_SUFFIXES[path.suffix.lower()]
        body, title, url = _markdown(text) if kind == "markdown" else _html(text)
        doc_id = path.relative_to(base).as_posix()
        yield from _passages(
            base_id=doc_id,
            doc_id=doc_id,
            text=body,
            title=title,
            url=url,
            source=f"pages:{base.name}",
            max_chars=max_chars,
        )
