"""Grounded prompts, citations and abstention: what the answer path does with retrieved hits.

::

    hits = index.search(question, k=5)
    if not covers(hits, index.threshold):
        ...  # the sources do not cover the question: say so instead of guessing
    prompt = build_prompt(question, hits)              # passages [1]..[k] and the instruction
    text, citations, removed = resolve_citations(answer, hits)

A citation is a number in square brackets, ``[2]``, or several, ``[1, 3]`` or ``[1][3]``;
a number that points to no passage is removed from the answer and counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import attrs

from lorakit.protocols import Hit

__all__ = [
    "GROUNDED_INSTRUCTION",
    "NOT_COVERED",
    "Citation",
    "build_prompt",
    "covers",
    "format_passages",
    "grounded_context",
    "relevance",
    "resolve_citations",
]

GROUNDED_INSTRUCTION: Final = (
    "Answer the question using only the numbered passages below. After each statement, cite "
    "the passages that support it by their numbers in square brackets, like [1] or [2][3]. "
    "If the passages do not answer the question, say that the sources do not cover it."
)
NOT_COVERED: Final = (
    "The sources I can cite do not cover this question, so I will not guess. "
    "Please ask a health professional."
)
"""What the answer path says when :func:`covers` is false."""

_CITATION = re.compile(r"[ \t]?\[(\d+(?:\s*[,;]\s*\d+)*)\]")


@attrs.frozen(kw_only=True)
class Citation:
    """A citation ``[n]`` of an answer, resolved to the passage it points to."""

    n: int
    passage_id: str
    doc_id: str
    url: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """``{n, passage_id, doc_id, url, text}``, the JSON form of ``lorakit ask --json``."""
        return attrs.asdict(self)


def relevance(hit: Hit) -> float:
    """How relevant a hit is, on the scale of the abstention threshold: its ``"relevance"``
    score (the cosine of passage and question in an :class:`~lorakit.retrieval.Index`), or its
    ``score`` when a retriever gives no such score."""
    return float(hit.scores.get("relevance", hit.score))


def covers(hits: Sequence[Hit], threshold: float) -> bool:
    """Whether the hits cover the question: at least one has :func:`relevance` >= ``threshold``.

    No hits never cover a question.
    """
    return any(relevance(hit) >= threshold for hit in hits)


def format_passages(hits: Sequence[Hit]) -> str:
    """The passages numbered ``[1]``..``[k]``, each with its title and URL when it has them."""
    blocks = []
    for n, hit in enumerate(hits, 1):
        passage = hit.passage
        head = f"[{n}]"
        if passage.title:
            head += f" {passage.title}"
        if passage.url:
            head += f" ({passage.url})"
        blocks.append(f"{head}\n{passage.text.strip()}")
    return "\n\n".join(blocks)


def grounded_context(hits: Sequence[Hit], context: str = "") -> str:
    """The context of a multiple-choice item answered from passages (MedRAG style): the
    numbered passages of :func:`format_passages` under ``Passages:``, then the item's own
    ``context`` (a PubMedQA abstract) when it has one. It fills the ``Context:`` line of the
    multiple-choice prompt, so the prompt ends with ``Answer:`` as ever."""
    passages = format_passages(hits) if hits else "(no passages)"
    own = context.strip()
    return f"Passages:\n\n{passages}" + (f"\n\n{own}" if own else "")


def build_prompt(question: str, hits: Sequence[Hit]) -> str:
    """The user message of a grounded answer: the instruction, the numbered passages, the
    question. With no hits the passages block says there are none."""
    passages = format_passages(hits) if hits else "(no passages)"
    return f"{GROUNDED_INSTRUCTION}\n\nPassages:\n\n{passages}\n\nQuestion: {question.strip()}"


def resolve_citations(answer: str, hits: Sequence[Hit]) -> tuple[str, list[Citation], int]:
    """Resolve the citations of ``answer`` against the passages it was given.

    Returns:
        The answer with every citation of a number outside ``1..len(hits)`` removed (a
        bracket left empty goes, with the space before it), the citations of real passages
        in order of first use (each number once), and how many numbers were removed.
    """
    removed = 0
    used: dict[int, Citation] = {}

    def replace(match: re.Match[str]) -> str:
        nonlocal removed
        numbers = [int(part) for part in re.split(r"\s*[,;]\s*", match.group(1))]
        kept = [n for n in numbers if 1 <= n <= len(hits)]
        removed += len(numbers) - len(kept)
        for n in kept:
            if n not in used:
                passage = hits[n - 1].passage
                used[n] = Citation(
                    n=n,
                    passage_id=passage.passage_id,
                    doc_id=passage.doc_id,
                    url=passage.url,
                    text=passage.text,
                )
        if not kept:
            return ""
        if len(kept) == len(numbers):
            return match.group(0)
        lead = match.group(0)[: len(match.group(0)) - len(match.group(0).lstrip(" \t"))]
        return f"{lead}[{', '.join(str(n) for n in kept)}]"

    text = _CITATION.sub(replace, answer)
    return text, list(used.values()), removed
