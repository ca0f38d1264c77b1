"""Vector stores: where the dense vectors of an index live and are searched.

A store is registered through the ``lorakit_register_retrievers`` hook as a
:class:`StoreFactory` under a name; the index card records the name and the store's
settings, and :func:`~lorakit.retrieval.load_index` opens it again. The built-in
``"embedded"`` store keeps the vectors in the index folder (``vectors.npy``) and searches
them with one matrix product; ``"chroma"`` (:mod:`lorakit.retrieval.chroma`) keeps them on a
Chroma server. Every store sees unit-length vectors and scores by cosine (inner product).

The index folder always keeps ``vectors.npy``: it is what incremental builds reuse (a
passage whose content hash is unchanged is not embedded again), whatever the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lorakit.hookspecs import hookimpl
from lorakit.protocols import Register

__all__ = ["EmbeddedStore", "StoreFactory", "VectorStore", "lorakit_register_retrievers"]

VECTORS_FILE = "vectors.npy"


@runtime_checkable
class VectorStore(Protocol):
    """An open store: nearest rows of the index to a query vector, by cosine."""

    def search(self, vector: Any, k: int) -> list[tuple[int, float]]:
        """The ``k`` rows nearest to ``vector`` (unit length) with their cosines, best first."""
        ...


@runtime_checkable
class StoreFactory(Protocol):
    """What ``lorakit_register_retrievers`` registers: writes and opens one kind of store.

    ``write`` is called inside the temporary folder of an index build, with the vectors of
    every passage in row order and the passage ids; it returns the settings the card keeps
    (JSON values) for ``open``. ``options`` are the user's (``--store-option url=...``).
    """

    def write(
        self,
        folder: Path,
        vectors: Any,
        passage_ids: Sequence[str],
        options: Mapping[str, str],
    ) -> dict[str, Any]: ...

    def open(self, folder: Path, settings: Mapping[str, Any]) -> VectorStore: ...


class _MatrixStore:
    def __init__(self, vectors: Any) -> None:
        self.vectors = vectors

    def search(self, vector: Any, k: int) -> list[tuple[int, float]]:
        import numpy as np

        scores = self.vectors @ vector
        k = min(k, len(scores))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top]


class EmbeddedStore:
    """The default store: the vectors in ``vectors.npy`` of the index folder, memory-mapped,
    searched exactly (one matrix product, no approximation)."""

    def write(
        self,
        folder: Path,
        vectors: Any,
        passage_ids: Sequence[str],
        options: Mapping[str, str],
    ) -> dict[str, Any]:
        return {}  # the index always writes vectors.npy

    def open(self, folder: Path, settings: Mapping[str, Any]) -> VectorStore:
        import numpy as np

        return _MatrixStore(np.load(folder / VECTORS_FILE, mmap_mode="r"))


@hookimpl
def lorakit_register_retrievers(register: Register) -> None:
    """Register the built-in stores: ``"embedded"`` (this module) and ``"chroma"``."""
    from lorakit.retrieval.chroma import ChromaStore

    register("embedded", EmbeddedStore())
    register("chroma", ChromaStore())
