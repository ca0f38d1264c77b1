"""The lexical half of an index: BM25 (``bm25s``) over words, English stopwords removed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError

__all__ = ["RETRIEVAL_EXTRA_HINT", "LexicalIndex"]

RETRIEVAL_EXTRA_HINT = 'pip install "lorakit[retrieval]"'


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:
        raise ConfigError(
            "lexical retrieval needs the package bm25s (optional extra 'retrieval'), "
            "which is not installed",
            field="retrieval",
            hint=RETRIEVAL_EXTRA_HINT,
        ) from exc
    return bm25s


class LexicalIndex:
    """BM25 (Lucene's variant, k1 1.5, b 0.75) over the texts of the passages, in order."""

    def __init__(self, model: Any) -> None:
        self._model = model

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        """Index ``texts`` (row ``i`` of the index is ``texts[i]``)."""
        bm25s = _bm25s()
        tokens = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
        model = bm25s.BM25()
        model.index(tokens, show_progress=False)
        return cls(model)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        """Load an index saved with :meth:`save`."""
        return cls(_bm25s().BM25.load(str(folder)))

    def save(self, folder: Path) -> None:
        """Save the index into ``folder`` (a few numpy arrays and JSON files)."""
        self._model.save(str(folder))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The rows of the ``k`` best passages with their BM25 scores, best first; passages
        sharing no word with the query are left out."""
        bm25s = _bm25s()
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        size = int(self._model.scores["num_docs"])
        if not tokens[0] or size == 0:
            return []
        rows, scores = self._model.retrieve(tokens, k=min(k, size), show_progress=False)
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if s > 0]
