"""The ``medquad`` reader: MedQuAD's XML documents, in each of the forms the corpus uses.

MedQuAD (abachaa/MedQuAD) writes one document per XML file, in three forms that
mean the same thing:

- ``<Document id source url>`` holding ``<Focus>``, ``<FocusAnnotations>`` and
  ``<QAPairs><QAPair pid><Question qid qtype>``/``<Answer>`` (almost every file);
- ``<DiseaseFile fid source url>`` with the same children (one file of 9_CDC_QA);
- ``<doc docid corpus url>`` with lower-case children: ``<doctitle-focus>``,
  ``<umls>``, ``<qaPairs><pair pid><question qid qtype>``/``<answer>`` (four files of
  6_NINDS_QA).

The reader maps element and attribute names, in any case, to their role (document,
focus, pairs, pair, question, answer; document id, source, url) and checks the
structure: the root is a document and has a pairs container among its children.
Any other XML is refused with a :class:`~lorakit.errors.DataError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from xml.parsers import expat

from lorakit.data.rows import QARow
from lorakit.data.sources._files import empty_file, existing_path, not_utf8, text_meta
from lorakit.data.sources._uri import no_fields
from lorakit.errors import DataError

__all__ = ["read_medquad"]

# Lower-cased element names -> their role. The root must be a "document".
_ROLES = {
    "document": "document",
    "diseasefile": "document",
    "doc": "document",
    "focus": "focus",
    "doctitle-focus": "focus",
    "qapairs": "pairs",
    "qapair": "pair",
    "pair": "pair",
    "question": "question",
    "answer": "answer",
}
# Lower-cased attribute names of the root, by the meta key they fill, first match wins.
_DOCUMENT_ATTRIBUTES = {
    "id": ("id", "fid", "docid"),
    "source": ("source", "corpus"),
    "url": ("url",),
}
_ROOT_NAMES = "<Document>, <DiseaseFile> or <doc>"
_NOT_MEDQUAD_HINT = "medquad: reads MedQuAD's XML files; move other XML out of the folder"


def read_medquad(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``medquad:DIR``: the MedQuAD XML tree, every ``*.xml`` at any depth, sorted by path.

    Each QA pair is a row, in every form of MedQuAD's documents (``<Document>``,
    ``<DiseaseFile>``, and the lower-case ``<doc>`` of some 6_NINDS_QA files).
    ``question`` is the stripped question text; ``answer`` the answer text as XML
    parsing gives it (``""`` when missing or empty); ``id`` and ``group`` are
    ``SUBSET/qid`` and ``SUBSET/document-id`` (MedQuAD reuses document ids across
    subsets); ``focus`` the focus text; ``category`` the question's ``qtype``; ``meta``
    holds ``source``, ``url``, ``subset`` (the top-level folder under DIR),
    ``document``, ``qid`` and ``pid``. ``DIR`` may also be a single XML file. The
    origin of a row is the line of its pair's start tag.

    Raises:
        ConfigError: a field mapping is given (the format is fixed).
        DataError: DIR is missing or holds no XML, or a file is empty, not UTF-8,
            not well-formed XML, or not a MedQuAD document.
    """
    no_fields("medquad", fields)
    root = existing_path(location, "medquad")
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


def _lowered(attrs: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in attrs.items()}


class _MedQuADDocument:
    """Streams one MedQuAD XML file through expat, collecting its QA pairs with their lines."""

    def __init__(self, path: Path, display: str, subset: str) -> None:
        self.path = path
        self.display = display
        self.subset = subset
        self.rows: list[QARow] = []
        self.depth = 0
        self.root = ""
        self.root_line = 0
        self.has_pairs = False
        self.document: dict[str, str] = {}
        self.focus: str | None = None
        self.pair: dict[str, str] = {}
        self.pair_line = 0
        self.question: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.capturing: str | None = None
        self.capture_depth = 0
        self.buffer: list[str] = []
        self.parser = expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._chars

    def parse(self) -> list[QARow]:
        data = self.path.read_bytes()
        if not data.strip():
            raise empty_file(self.display, "0 bytes of XML")
        try:
            self.parser.Parse(data, True)
        except expat.ExpatError as exc:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as bad:
                line = data.count(b"\n", 0, bad.start) + 1
                raise not_utf8(self.display, line, bad.start, data[bad.start]) from None
            raise DataError(
                f"XML does not parse: {expat.ErrorString(exc.code)} at column {exc.offset + 1}",
                file=self.display,
                line=exc.lineno,
                hint="fix the file or remove it from the folder",
            ) from None
        if not self.has_pairs:
            raise DataError(
                f"not a MedQuAD document: <{self.root}> holds no <QAPairs> (or <qaPairs>)",
                file=self.display,
                line=self.root_line,
                hint=_NOT_MEDQUAD_HINT,
            )
        return self.rows

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        role = _ROLES.get(name.lower())
        if self.depth == 1:
            self._start_document(name, attrs, role)
        elif role == "pairs" and self.depth == 2:
            self.has_pairs = True
        elif role == "pair":
            self.pair, self.question, self.texts = _lowered(attrs), {}, {}
            self.pair_line = self.parser.CurrentLineNumber
        elif self.capturing is None and role in ("question", "answer", "focus"):
            if role == "question":
                self.question = _lowered(attrs)
            self.capturing, self.capture_depth, self.buffer = role, self.depth, []

    def _start_document(self, name: str, attrs: dict[str, str], role: str | None) -> None:
        self.root, self.root_line = name, self.parser.CurrentLineNumber
        if role != "document":
            raise DataError(
                f"not a MedQuAD document: the root element is <{name}>, not {_ROOT_NAMES}",
                file=self.display,
                line=self.root_line,
                hint=_NOT_MEDQUAD_HINT,
            )
        given = _lowered(attrs)
        for key, names in _DOCUMENT_ATTRIBUTES.items():
            value = next((given[n] for n in names if n in given), None)
            if value is not None:
                self.document[key] = value

    def _chars(self, data: str) -> None:
        if self.capturing is not None:
            self.buffer.append(data)

    def _end(self, name: str) -> None:
        role = _ROLES.get(name.lower())
        if self.capturing is not None and self.depth == self.capture_depth:
            text = "".join(self.buffer)
            if self.capturing == "focus":
                self.focus = text.strip() or None
            else:
                self.texts[self.capturing] = text
            self.capturing = None
        elif role == "pair":
            self.rows.append(self._row())
        self.depth -= 1

    def _row(self) -> QARow:
        doc_id = self.document.get("id") or self.path.stem
        pid = self.pair.get("pid")
        qid = self.question.get("qid") or f"{doc_id}-{pid or len(self.rows) + 1}"
        return QARow(
            question=self.texts.get("question", "").strip(),
            answer=self.texts.get("answer", ""),
            id=f"{self.subset}/{qid}",
            group=f"{self.subset}/{doc_id}",
            focus=self.focus,
            category=self.question.get("qtype") or None,
            origin=f"{self.display}:{self.pair_line}",
            meta=text_meta(
                source=self.document.get("source"),
                url=self.document.get("url"),
                subset=self.subset,
                document=doc_id,
                qid=qid,
                pid=pid,
            ),
        )
