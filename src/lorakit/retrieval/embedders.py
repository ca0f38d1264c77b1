"""Embedders: texts -> unit-length vectors, the dense half of an index.

An embedder is any object with a ``name``, a ``dims`` and ``embed(texts)`` returning a float32
numpy array of shape ``(len(texts), dims)`` with unit rows (:class:`Embedder`). Built in:

* ``"all-MiniLM-L6-v2"``: :class:`~lorakit.embeddings.SentenceEmbedder` (extra
  ``lorakit[embeddings]``), the default;
* ``"hashing-256"``: :class:`HashingEmbedder`, signed feature hashing of words: no model, no
  torch, for tests and for machines without the model (lexical in disguise: it sees no synonyms).

``resolve_embedder(name)`` also accepts ``"package.module:attribute"``, a class or factory
called without arguments, so a plugin's embedder needs no registration.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from lorakit.errors import ConfigError, did_you_mean

__all__ = ["BUILTIN_EMBEDDERS", "Embedder", "HashingEmbedder", "resolve_embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of ``dims`` dimensions."""

    @property
    def name(self) -> str:
        """The embedder's name, kept in the index card."""
        ...

    @property
    def dims(self) -> int:
        """The length of each vector."""
        ...

    def embed(self, texts: Sequence[str]) -> Any: ...


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Signed feature hashing of lower-cased words into ``dims`` dimensions, unit length.

    Deterministic across processes (BLAKE2 of each word), no model and no torch.
    """

    def __init__(self, dims: int = 256) -> None:
        if not isinstance(dims, int) or dims < 2:
            raise ConfigError(f"dims must be at least 2, got {dims!r}", field="embedder.dims")
        self.dims = dims
        self.name = f"hashing-{dims}"

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dims] += 1.0 if (value >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def _minilm() -> Embedder:
    from lorakit.embeddings import SentenceEmbedder

    class RetrievalEmbedder(SentenceEmbedder):
        _field = "retrieval.embedder"

    embedder: Embedder = RetrievalEmbedder(batch_size=64)
    return embedder


BUILTIN_EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "all-MiniLM-L6-v2": _minilm,
    "hashing-256": lambda: HashingEmbedder(256),
}


def resolve_embedder(name: str) -> Embedder:
    """The embedder called ``name``: a built-in, or ``"module:attribute"`` (called with no
    arguments).

    Raises:
        ConfigError: an unknown name, an import that fails, or an object that is no embedder.
    """
    if name in BUILTIN_EMBEDDERS:
        return BUILTIN_EMBEDDERS[name]()
    if ":" not in name:
        raise ConfigError(
            f"unknown embedder {name!r}",
            field="embedder",
            hint=did_you_mean(name, BUILTIN_EMBEDDERS)
            or f"embedders: {', '.join(BUILTIN_EMBEDDERS)}, or module:attribute",
        )
    module_name, _, attribute = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cannot import embedder {name!r}: {exc}", field="embedder", hint="check the name"
        ) from None
    embedder = factory()
    if not isinstance(embedder, Embedder):
        raise ConfigError(
            f"{name!r} made a {type(embedder).__name__}, which has no name, dims and embed()",
            field="embedder",
        )
    return embedder
