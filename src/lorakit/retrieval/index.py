"""The index: passages, a BM25 index and dense vectors in one folder, fused by reciprocal rank.

An index folder holds::

    card.json        the index card: format, sources, counts, embedder and dims, store, hashes,
                     the abstention threshold and how it was calibrated
    passages.jsonl   one passage per line, in row order
    vectors.npy      float32 unit vectors, one row per passage (reused by incremental builds)
    bm25/            the lexical index (bm25s)

:func:`build_index` writes the folder atomically (a temporary folder, then a rename: an
interrupted build leaves the old index or nothing); :func:`load_index` opens it as an
:class:`Index`, a :class:`~lorakit.protocols.Retriever`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit import __version__
from lorakit._fs import fs_error, make_temp_dir, replace_dir_atomic, write_json_atomic
from lorakit.errors import ConfigError, DataError, LorakitError
from lorakit.protocols import Hit, Passage
from lorakit.reporting import NullProgress, ProgressReporter
from lorakit.retrieval.embedders import Embedder, resolve_embedder
from lorakit.retrieval.lexical import LexicalIndex
from lorakit.retrieval.passages import DEFAULT_MAX_CHARS, indexed_text, read_passages
from lorakit.retrieval.stores import VECTORS_FILE, StoreFactory, VectorStore

if TYPE_CHECKING:
    from lorakit.plugins import Registries

__all__ = [
    "CARD_FILE",
    "DEFAULT_EMBEDDER",
    "FORMAT",
    "RRF_K",
    "BuildReport",
    "Index",
    "IndexCard",
    "Mode",
    "build_index",
    "load_index",
    "rrf_fuse",
]

FORMAT = "lorakit-index"
FORMAT_VERSION = 1
CARD_FILE = "card.json"
PASSAGES_FILE = "passages.jsonl"
BM25_DIR = "bm25"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_THRESHOLD = 0.35
"""The abstention threshold of an uncalibrated index (cosine of all-MiniLM-L6-v2)."""
RRF_K = 60
"""The constant of reciprocal-rank fusion (Cormack et al. 2009): a hit's fused score is the
sum over retrievers of ``1 / (RRF_K + rank)``."""
CANDIDATES = 50
"""Hits taken from each retriever before fusion (at least ``k``)."""
Mode = Literal["fused", "lexical", "dense"]
MODES: tuple[Mode, ...] = ("fused", "lexical", "dense")


@attrs.frozen(kw_only=True)
class IndexCard:
    """What an index holds and how it was made (``card.json``).

    ``threshold`` is the relevance (the best hit's cosine to the question, see
    :func:`~lorakit.retrieval.grounding.relevance`) below which the passages are taken not
    to cover a question; ``calibration`` says how it was chosen (``None``: the uncalibrated
    default).
    """

    sources: tuple[str, ...]
    passages: int
    documents: int
    embedder: str
    dims: int
    store: str = "embedded"
    store_settings: Mapping[str, Any] = attrs.field(factory=dict)
    max_chars: int = DEFAULT_MAX_CHARS
    hashes: Mapping[str, str] = attrs.field(factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    calibration: Mapping[str, Any] | None = None
    created: str = ""
    lorakit_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON values, with the format marker first."""
        data = attrs.asdict(self, recurse=False)
        data["sources"] = list(self.sources)
        data["store_settings"] = dict(self.store_settings)
        data["hashes"] = dict(self.hashes)
        data["calibration"] = None if self.calibration is None else dict(self.calibration)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str) -> IndexCard:
        """Read a card written by :meth:`to_dict`.

        Raises:
            DataError: not a lorakit index card, a newer format, or a field missing or of the
                wrong type (naming ``file`` and the field).
        """
        if data.get("format") != FORMAT:
            raise DataError(
                'not a lorakit index card (no "format": "lorakit-index")',
                file=file,
                field="format",
                hint="point at a folder written by lorakit index build",
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"index format version {data.get('format_version')!r}, this lorakit reads "
                f"{FORMAT_VERSION}",
                file=file,
                field="format_version",
                hint="rebuild the index with this lorakit",
            )
        kinds: dict[str, type | tuple[type, ...]] = {
            "sources": list,
            "passages": int,
            "documents": int,
            "embedder": str,
            "dims": int,
            "store": str,
            "store_settings": dict,
            "max_chars": int,
            "hashes": dict,
            "threshold": (int, float),
            "created": str,
        }
        for name, kind in kinds.items():
            if not isinstance(data.get(name), kind):
                raise DataError(
                    f"missing or not a {getattr(kind, '__name__', 'number')}",
                    file=file,
                    field=name,
                    hint="the index is damaged: rebuild it with lorakit index build",
                )
        return cls(
            sources=tuple(data["sources"]),
            passages=data["passages"],
            documents=data["documents"],
            embedder=data["embedder"],
            dims=data["dims"],
            store=data["store"],
            store_settings=data["store_settings"],
            max_chars=data["max_chars"],
            hashes=data["hashes"],
            threshold=float(data["threshold"]),
            calibration=data.get("calibration"),
            created=data["created"],
            lorakit_version=str(data.get("lorakit_version", "")),
        )


@attrs.frozen(kw_only=True)
class BuildReport:
    """What :func:`build_index` did: passages read, kept from before, embedded now, and time."""

    path: Path
    passages: int
    documents: int
    embedded: int
    reused: int
    seconds: float
    embed_seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["path"] = str(self.path)
        data["passages_per_second"] = (
            round(self.embedded / self.embed_seconds, 1) if self.embed_seconds > 0 else None
        )
        return data


def rrf_fuse(rankings: Mapping[str, Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of ranked row lists: ``(row, sum of 1 / (k + rank))``, best first.

    Ranks start at 1; ties keep the order in which rows were first seen.
    """
    fused: dict[int, float] = {}
    for ranking in rankings.values():
        for rank, row in enumerate(ranking, 1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


class Index:
    """An index opened by :func:`load_index`: lexical, dense and fused search over its passages.

    ``search(query, k)`` is the fused search the answer path uses; each hit's ``scores``
    holds ``"bm25"`` (0 when BM25 did not find it), ``"dense"`` (its cosine to the query),
    ``"rrf"`` (also its ``score``) and ``"relevance"``: the cosine, the value the abstention
    threshold is compared with (:func:`~lorakit.retrieval.grounding.covers`).
    """

    def __init__(
        self,
        path: Path,
        card: IndexCard,
        passages: Sequence[Passage],
        lexical: LexicalIndex,
        store: VectorStore,
        vectors: Any,
        embedder: Embedder,
    ) -> None:
        self.path = path
        self.card = card
        self.passages = list(passages)
        self.lexical = lexical
        self.store = store
        self.vectors = vectors
        self.embedder = embedder

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, {len(self.passages):,} passages, "
            f"embedder {self.card.embedder!r}, store {self.card.store!r})"
        )

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def threshold(self) -> float:
        """The calibrated relevance below which the sources are taken not to cover a question."""
        return self.card.threshold

    def embed_query(self, query: str) -> Any:
        """The query's unit vector (checked against the index's dimensions)."""
        vector = self.embedder.embed([query])[0]
        if vector.shape != (self.card.dims,):
            raise ConfigError(
                f"the embedder gives {vector.shape[-1]} dimensions, the index has {self.card.dims}",
                file=str(self.path / CARD_FILE),
                field="dims",
                hint=f"use the index's embedder {self.card.embedder!r}",
            )
        return vector

    def rankings(
        self, query: str, vector: Any, depth: int = CANDIDATES
    ) -> dict[Mode, list[tuple[int, float]]]:
        """Rows and scores of the ``depth`` best passages of each retriever, and their fusion.

        ``vector`` is the query's unit vector (:meth:`embed_query`); the fused list holds
        reciprocal-rank scores. Evaluation uses this to compare the three on one embedding.
        """
        lexical = self.lexical.search(query, depth)
        dense = self.store.search(vector, depth)
        fused = rrf_fuse({"bm25": [r for r, _ in lexical], "dense": [r for r, _ in dense]})
        return {"lexical": lexical, "dense": dense, "fused": fused[:depth]}

    def search(self, query: str, k: int = 5, *, mode: Mode = "fused") -> list[Hit]:
        """The ``k`` passages most relevant to ``query``, best first (``mode``: ``"fused"``,
        ``"lexical"`` or ``"dense"``)."""
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be at least 1, got {k!r}", field="k")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
        vector = self.embed_query(query)
        ranked = self.rankings(query, vector, max(k, CANDIDATES))
        return self.hits(ranked, vector, k, mode)

    def hits(
        self, ranked: Mapping[Mode, list[tuple[int, float]]], vector: Any, k: int, mode: Mode
    ) -> list[Hit]:
        """The first ``k`` rows of ``ranked[mode]`` as hits with all their scores."""
        top = ranked[mode][:k]
        bm25 = dict(ranked["lexical"])
        rows = [row for row, _ in top]
        cosines = (self.vectors[rows] @ vector).tolist() if rows else []
        hits = []
        for (row, score), cosine in zip(top, cosines, strict=True):
            scores = {"bm25": bm25.get(row, 0.0), "dense": float(cosine)}
            if mode == "fused":
                scores["rrf"] = score
            scores["relevance"] = float(cosine)
            hits.append(Hit(passage=self.passages[row], score=float(score), scores=scores))
        return hits


# --------------------------------------------------------------------------- load


def read_card(path: Path) -> IndexCard:
    card_file = path / CARD_FILE
    if not path.is_dir():
        raise DataError(
            "no such index folder" if not path.exists() else "is a file, not an index folder",
            file=str(path),
            hint="build one with lorakit index build SOURCE --out DIR",
        )
    if not card_file.is_file():
        raise DataError(
            f"not a lorakit index: no {CARD_FILE}",
            file=str(path),
            hint="point at a folder written by lorakit index build",
        )
    try:
        data = json.loads(card_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"the index card is not JSON ({exc})",
            file=str(card_file),
            hint="the index is damaged: rebuild it with lorakit index build",
        ) from None
    if not isinstance(data, dict):
        raise DataError("the index card is not a JSON object", file=str(card_file))
    return IndexCard.from_dict(data, file=str(card_file))


def _read_passages(path: Path) -> list[Passage]:
    file = path / PASSAGES_FILE
    passages: list[Passage] = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read the passages ({exc})", file=str(file), hint="rebuild the index"
        ) from None
    for number, line in enumerate(lines, 1):
        try:
            passages.append(Passage(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(
                f"not a passage ({exc})", file=str(file), line=number, hint="rebuild the index"
            ) from None
    return passages


def _stores(registries: Registries | None) -> Any:
    from lorakit.plugins import Registries

    return (registries or Registries.from_plugin_manager()).retrievers


def load_index(
    path: str | Path,
    *,
    embedder: Embedder | None = None,
    registries: Registries | None = None,
) -> Index:
    """Open the index in folder ``path``.

    Args:
        path: a folder written by :func:`build_index`.
        embedder: embeds the queries; ``None`` resolves the card's embedder by name. Its
            dimensions must be the index's.
        registries: where the card's store is looked up (the default plugins when ``None``).

    Raises:
        DataError: the folder is missing, not an index, damaged (its card, passages, vectors
            or BM25 files do not agree), naming the file and field.
        ConfigError: the embedder's dimensions differ from the index's.
    """
    import numpy as np

    folder = Path(path)
    card = read_card(folder)
    passages = _read_passages(folder)
    if len(passages) != card.passages:
        raise DataError(
            f"{len(passages):,} passages, the card says {card.passages:,}",
            file=str(folder / PASSAGES_FILE),
            hint="the index is damaged: rebuild it",
        )
    try:
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read the vectors ({exc})",
            file=str(folder / VECTORS_FILE),
            hint="the index is damaged: rebuild it",
        ) from None
    if vectors.shape != (card.passages, card.dims):
        raise DataError(
            f"vectors of shape {vectors.shape}, the card says ({card.passages}, {card.dims})",
            file=str(folder / VECTORS_FILE),
            field="dims",
            hint="the index is damaged: rebuild it",
        )
    embedder = embedder if embedder is not None else resolve_embedder(card.embedder)
    if embedder.dims != card.dims:
        raise ConfigError(
            f"embedder {embedder.name!r} gives {embedder.dims} dimensions, the index has "
            f"{card.dims} ({card.embedder})",
            file=str(folder / CARD_FILE),
            field="dims",
            hint=f"query with the index's embedder {card.embedder!r} or rebuild the index",
        )
    try:
        lexical = LexicalIndex.load(folder / BM25_DIR)
    except LorakitError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read the BM25 index ({type(exc).__name__}: {exc})",
            file=str(folder / BM25_DIR),
            hint="the index is damaged: rebuild it",
        ) from None
    factory: StoreFactory = _stores(registries).resolve(card.store)
    store = factory.open(folder, card.store_settings)
    return Index(folder, card, passages, lexical, store, vectors, embedder)


# --------------------------------------------------------------------------- build


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _previous(out: Path, embedder: Embedder) -> tuple[list[Passage], dict[str, Any], IndexCard]:
    """The passages and vectors (by content hash) of an existing index at ``out``."""
    import numpy as np

    card = read_card(out)
    passages = _read_passages(out)
    if card.embedder != embedder.name or card.dims != embedder.dims:
        return passages, {}, card
    vectors = np.load(out / VECTORS_FILE)
    if vectors.shape != (len(passages), card.dims):
        return passages, {}, card
    return passages, {p.content_hash: vectors[i] for i, p in enumerate(passages)}, card


def build_index(
    sources: Sequence[str],
    out: str | Path,
    *,
    embedder: Embedder | str = DEFAULT_EMBEDDER,
    fields: Mapping[str, str] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    add: bool = False,
    store: str = "embedded",
    store_options: Mapping[str, str] | None = None,
    registries: Registries | None = None,
    progress: ProgressReporter | None = None,
) -> BuildReport:
    """Build (or rebuild, or extend) the index in folder ``out`` from passage sources.

    Passages whose content hash (title and text) is already in an index at ``out`` with the
    same embedder keep their vectors: only new and changed passages are embedded. With
    ``add``, the passages already in ``out`` are kept and those of ``sources`` added (a
    passage id seen again replaces the old one); without it, the index holds exactly the
    passages of ``sources``. The card's calibration is kept when ``add`` is set.

    The folder is written atomically: a temporary folder beside ``out``, moved into place
    when complete.

    Raises:
        ConfigError: no source, a bad option or an unknown store or embedder.
        DataError: a source is missing or malformed, no passage at all (an empty corpus), or
            ``out`` holds something that is not a lorakit index.
    """
    import time

    started = time.perf_counter()
    if not sources:
        raise ConfigError("no source to index", field="sources", hint="give at least one SOURCE")
    progress = progress or NullProgress()
    embedder = resolve_embedder(embedder) if isinstance(embedder, str) else embedder
    factory: StoreFactory = _stores(registries).resolve(store)
    out = Path(out)
    old: list[Passage] = []
    cache: dict[str, Any] = {}
    old_card: IndexCard | None = None
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        old, cache, old_card = _previous(out, embedder)
    kept = old_card if add else None
    ordered, all_sources = _collect_passages(
        sources, old if add else [], kept, fields, max_chars, progress
    )
    vectors, missing, embed_seconds = _embed_missing(ordered, cache, embedder, progress)
    lexical = _build_lexical(ordered, sources, progress)
    card = IndexCard(
        sources=tuple(all_sources),
        passages=len(ordered),
        documents=len({p.doc_id for p in ordered}),
        embedder=embedder.name,
        dims=embedder.dims,
        store=store,
        store_settings={},
        max_chars=max_chars,
        hashes={},
        threshold=kept.threshold if kept else DEFAULT_THRESHOLD,
        calibration=kept.calibration if kept else None,
        created="",
    )
    card = _write_index(out, ordered, vectors, lexical, factory, store_options, card)
    return BuildReport(
        path=out,
        passages=len(ordered),
        documents=card.documents,
        embedded=len(missing),
        reused=len(ordered) - len(missing),
        seconds=round(time.perf_counter() - started, 3),
        embed_seconds=round(embed_seconds, 3),
    )


def _collect_passages(
    sources: Sequence[str],
    old: list[Passage],
    kept: IndexCard | None,
    fields: Mapping[str, str] | None,
    max_chars: int,
    progress: ProgressReporter,
) -> tuple[list[Passage], list[str]]:
    """The passages of ``old`` and ``sources`` (a passage id seen again replaces the old one),
    and the sources of ``kept`` with ``sources`` added.

    Raises:
        DataError: no passage at all.
    """
    passages: dict[str, Passage] = {p.passage_id: p for p in old}
    all_sources = list(kept.sources) if kept else []
    for uri in sources:
        advance = progress.task(f"Reading {uri}")
        for passage in read_passages(uri, fields=fields, max_chars=max_chars):
            passages[passage.passage_id] = passage
            advance(1)
        if uri not in all_sources:
            all_sources.append(uri)
    if not passages:
        raise DataError(
            "no passage to index: the sources hold no text",
            file=", ".join(sources),
            hint="check the sources (MedQuAD subset 12 has no answers)",
        )
    return list(passages.values()), all_sources


def _embed_missing(
    ordered: list[Passage], cache: dict[str, Any], embedder: Embedder, progress: ProgressReporter
) -> tuple[Any, list[int], float]:
    """The vectors of ``ordered`` (from ``cache`` by content hash, else embedded), the rows
    embedded and the seconds spent embedding.

    Raises:
        ConfigError: the embedder returned vectors of the wrong shape.
    """
    import time

    import numpy as np

    missing = [i for i, p in enumerate(ordered) if p.content_hash not in cache]
    vectors = np.zeros((len(ordered), embedder.dims), dtype=np.float32)
    for i, p in enumerate(ordered):
        if p.content_hash in cache:
            vectors[i] = cache[p.content_hash]
    advance = progress.task(f"Embedding ({embedder.name})", len(missing))
    embed_started = time.perf_counter()
    batch = 256
    for start in range(0, len(missing), batch):
        rows = missing[start : start + batch]
        got = np.asarray(embedder.embed([indexed_text(ordered[i]) for i in rows]))
        if got.shape != (len(rows), embedder.dims):
            raise ConfigError(
                f"embedder {embedder.name!r} returned shape {got.shape}, expected "
                f"({len(rows)}, {embedder.dims})",
                field="embedder.dims",
            )
        vectors[rows] = got
        advance(len(rows))
    return vectors, missing, time.perf_counter() - embed_started


def _build_lexical(
    ordered: list[Passage], sources: Sequence[str], progress: ProgressReporter
) -> LexicalIndex:
    """The BM25 index of ``ordered``.

    Raises:
        DataError: no passage has an indexable word.
    """
    advance = progress.task("BM25", 1)
    try:
        lexical = LexicalIndex.build([indexed_text(p) for p in ordered])
    except ValueError:
        raise DataError(
            "no passage has a word BM25 can index (only stopwords or punctuation)",
            file=", ".join(sources),
        ) from None
    advance(1)
    return lexical


def _write_index(
    out: Path,
    ordered: list[Passage],
    vectors: Any,
    lexical: LexicalIndex,
    factory: StoreFactory,
    store_options: Mapping[str, str] | None,
    card: IndexCard,
) -> IndexCard:
    """Write the index folder atomically; returns ``card`` with the store settings, hashes and
    creation time filled in.

    Raises:
        LorakitError: the folder could not be written (from :func:`fs_error`).
    """
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    temp = make_temp_dir(out.parent, f".{out.name}.building-")
    try:
        passages_blob = "".join(
            json.dumps(attrs.asdict(p), ensure_ascii=False) + "\n" for p in ordered
        ).encode("utf-8")
        (temp / PASSAGES_FILE).write_bytes(passages_blob)
        np.save(temp / VECTORS_FILE, vectors)
        lexical.save(temp / BM25_DIR)
        settings = factory.write(
            temp, vectors, [p.passage_id for p in ordered], dict(store_options or {})
        )
        card = attrs.evolve(
            card,
            store_settings=settings,
            hashes={
                "passages": _sha(passages_blob),
                "vectors": _sha(vectors.tobytes()),
            },
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        write_json_atomic(temp / CARD_FILE, card.to_dict())
        replace_dir_atomic(temp, out)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise fs_error(error, "write the index", out) from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return card


def write_card(path: Path, card: IndexCard) -> None:
    """Replace the card of the index at ``path`` (atomically)."""
    write_json_atomic(path / CARD_FILE, card.to_dict())
