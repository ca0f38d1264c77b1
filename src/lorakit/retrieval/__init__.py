"""Retrieval over vetted sources: passages with provenance, BM25 + dense search fused by
reciprocal rank, index stores, grounded prompts and citations.

::

    from lorakit.retrieval import build_index, load_index
    from lorakit.retrieval.grounding import build_prompt, covers, resolve_citations

    build_index(["medquad:../shared/data/medquad"], "indexes/medquad")
    index = load_index("indexes/medquad")
    hits = index.search("What are the symptoms of glaucoma?", k=5)
    if covers(hits, index.threshold):
        prompt = build_prompt("What are the symptoms of glaucoma?", hits)

Importing this package imports neither torch nor numpy; the embedder loads on first use.
"""

from __future__ import annotations

from lorakit.retrieval.index import (
    BuildReport,
    Index,
    IndexCard,
    build_index,
    load_index,
    rrf_fuse,
)
from lorakit.retrieval.passages import read_passages

__all__ = [
    "BuildReport",
    "Index",
    "IndexCard",
    "build_index",
    "load_index",
    "read_passages",
    "rrf_fuse",
]
