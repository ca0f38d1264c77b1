"""Citation metrics of grounded answers: precision, recall, support and abstention.

::

    from lorakit.evaluate.citations import GroundedItem, score_grounded

    items = [GroundedItem.from_answer(answer.text, answer.passages, gold_doc=row.group,
                                      abstained=answer.abstained, qtype=row.category)
             for row, answer in zip(rows, answers)]
    report = score_grounded(items)
    report["citation_precision"]["value"], report["per_qtype"]["symptoms"]

The definitions (also in the docs, "Evaluate grounded answers"):

*Cited claim*: a citation number ``[n]`` of an answer with the sentence that carries it.
Sentences end at ``.``, ``!`` or ``?`` followed by white space; citations that open a sentence,
right after the full stop before (``... pressure. [1]``), belong to the sentence before. The same number in two
sentences is two claims; a number twice in one sentence is one.

*Support*: the share of the claim's content words that occur in the cited passage. Words are
the tokens of :func:`~lorakit.evaluate.text.normalize_answer` (lowercase, no punctuation or
articles), without citation markers and without :data:`STOPWORDS`. A claim is *supported* when
its support is at least :data:`SUPPORT_THRESHOLD` (0.5): at least half of what it says in
content words is in the passage. A claim without content words is never supported.

*Citation precision*: claims whose passage comes from the row's gold document (its ``group``,
for MedQuAD the question's own document) **and** supports the claim, over all cited claims.
*Citation support*: supported claims (whatever the document) over all cited claims. Both are
ratios over claims; their 95 % intervals are percentile bootstraps over answers (an answer's
claims are resampled together, since they are not independent).

*Citation recall*: of the answers that were not abstained and whose retrieved passages include
one of the gold document, the share that cite at least one gold-document passage (Wilson
interval).

*Abstention rate*: abstained answers over all answers (Wilson interval). An answer abstains when
the answer path declined (no passage relevant enough, a guard blocked it) or when the model says
the sources do not cover the question (:data:`NOT_COVERED_PATTERN`), as the grounded
instruction asks it to.

Nothing here runs a model: the metrics take answers as text with their retrieved passages, so
they can be checked on hand-made answers. Only numpy is needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from lorakit.errors import ConfigError
from lorakit.evaluate.stats import wilson_interval
from lorakit.evaluate.text import answer_tokens, bootstrap_ci

if TYPE_CHECKING:
    from lorakit.protocols import Hit

__all__ = [
    "NOT_COVERED_PATTERN",
    "STOPWORDS",
    "SUPPORT_THRESHOLD",
    "CitedClaim",
    "GroundedItem",
    "cited_sentences",
    "content_words",
    "score_grounded",
    "strip_citations",
    "support",
]

SUPPORT_THRESHOLD: Final = 0.5
"""The least share of a claim's content words that its cited passage must hold."""

_STOPWORD_TEXT = """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers him his how i if in into is it its
    itself just me more most my no nor not now of off on once only or other our ours out over
    own same she should so some such than that the their theirs them then there these they
    this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours"""

STOPWORDS: Final = frozenset(_STOPWORD_TEXT.split())
"""English function words left out of a claim's content words (BM25's usual list, shortened)."""

NOT_COVERED_PATTERN: Final = re.compile(
    r"\bsources?\b[^.]{0,60}?\b(?:do|does|did)\s*(?:not|n't)\s+(?:cover|answer|mention)",
    re.IGNORECASE,
)
"""A model's own statement that the passages do not answer the question (an abstention)."""

_MARKER = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LEADING = re.compile(r"^\s*((?:\[\d+(?:\s*[,;]\s*\d+)*\]\s*)+)")


def strip_citations(text: str) -> str:
    """``text`` without its citation markers (``[1]``, ``[1, 3]``), spaces tidied."""
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(_MARKER.sub(" ", text).split()))


def content_words(text: str) -> frozenset[str]:
    """The content words of ``text``: normalised tokens, without citations and stopwords."""
    return frozenset(t for t in answer_tokens(_MARKER.sub(" ", text)) if t not in STOPWORDS)


def support(claim: str, passage: str) -> float:
    """The share of the content words of ``claim`` found in ``passage`` (0 for none)."""
    words = content_words(claim)
    if not words:
        return 0.0
    return len(words & set(answer_tokens(passage))) / len(words)


def _numbers(text: str) -> list[int]:
    numbers: list[int] = []
    for match in _MARKER.finditer(text):
        for part in re.split(r"\s*[,;]\s*", match.group(1)):
            if int(part) not in numbers:
                numbers.append(int(part))
    return numbers


def cited_sentences(text: str) -> list[tuple[str, list[int]]]:
    """Each sentence of ``text`` (citations removed) with the citation numbers it carries.

    Citations that open a sentence (``... acid. [2] Rest ...``) belong to the sentence before.
    """
    out: list[tuple[str, list[int]]] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        lead = _LEADING.match(sentence)
        if lead is not None and out:
            before, known = out[-1]
            out[-1] = (before, known + [n for n in _numbers(lead.group(1)) if n not in known])
            sentence = sentence[lead.end() :]
        if sentence.strip():
            out.append((strip_citations(sentence), _numbers(sentence)))
    return out


@attrs.frozen(kw_only=True)
class CitedClaim:
    """One citation ``[n]`` of an answer with the sentence carrying it.

    Attributes:
        n: the citation number (1-based position of the passage in the prompt).
        sentence: the sentence, without its citations.
        passage_id: the cited passage.
        doc_id: its document.
        gold: the passage comes from the row's gold document.
        support: :func:`support` of the sentence by the passage.
        supported: ``support >= SUPPORT_THRESHOLD``.
    """

    n: int
    sentence: str
    passage_id: str
    doc_id: str
    gold: bool
    support: float
    supported: bool

    @property
    def correct(self) -> bool:
        """Counted by citation precision: gold document and supported."""
        return self.gold and self.supported

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class GroundedItem:
    """One grounded answer, ready to score.

    Attributes:
        item_id: the row's id.
        qtype: the question type (MedQuAD's ``qtype``, the row's ``category``); ``"(none)"``.
        gold_doc: the row's gold document id (``""``: none known).
        abstained: the answer path or the model declined to answer.
        reason: why (``no_passages``, ``input_blocked``, ``output_blocked``, ``not_covered``).
        gold_retrieved: a passage of the gold document was among the retrieved passages.
        claims: the cited claims (none when abstained).
    """

    item_id: str
    qtype: str
    gold_doc: str
    abstained: bool
    reason: str
    gold_retrieved: bool
    claims: tuple[CitedClaim, ...]

    @property
    def cites_gold(self) -> bool:
        """At least one claim cites a passage of the gold document."""
        return any(claim.gold for claim in self.claims)

    @classmethod
    def from_answer(
        cls,
        text: str,
        hits: Sequence[Hit],
        *,
        gold_doc: str | None,
        abstained: bool = False,
        reason: str = "",
        qtype: str | None = None,
        item_id: str = "",
    ) -> GroundedItem:
        """Score the citations of ``text``, an answer to a prompt of ``hits`` (in prompt
        order, ``[1]`` the first). Numbers outside ``1..len(hits)`` are ignored (the answer
        path removes them and counts them as unresolved)."""
        gold = gold_doc or ""
        if not abstained and NOT_COVERED_PATTERN.search(text):
            abstained, reason = True, "not_covered"
        claims: list[CitedClaim] = []
        if not abstained:
            for sentence, numbers in cited_sentences(text):
                for n in numbers:
                    if not 1 <= n <= len(hits):
                        continue
                    passage = hits[n - 1].passage
                    share = support(sentence, passage.text)
                    claims.append(
                        CitedClaim(
                            n=n,
                            sentence=sentence,
                            passage_id=passage.passage_id,
                            doc_id=passage.doc_id,
                            gold=bool(gold) and passage.doc_id == gold,
                            support=share,
                            supported=share >= SUPPORT_THRESHOLD,
                        )
                    )
        return cls(
            item_id=item_id,
            qtype=qtype or "(none)",
            gold_doc=gold,
            abstained=abstained,
            reason=reason if abstained else "",
            gold_retrieved=bool(gold) and any(h.passage.doc_id == gold for h in hits),
            claims=tuple(claims),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written with each answer: ``claims`` and the flags."""
        return {
            "gold_doc": self.gold_doc,
            "gold_retrieved": self.gold_retrieved,
            "cites_gold": self.cites_gold,
            "abstained": self.abstained,
            "reason": self.reason,
            "claims": [claim.to_dict() for claim in self.claims],
        }


# --------------------------------------------------------------------------- summaries


def _proportion(successes: int, n: int, confidence: float) -> dict[str, Any]:
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = wilson_interval(successes, n, confidence=confidence)
    return {"value": successes / n, "ci_low": low, "ci_high": high, "n": n}


def _ratio(
    numerators: Sequence[int],
    denominators: Sequence[int],
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """``sum(numerators) / sum(denominators)`` with a percentile bootstrap over items."""
    import numpy as np

    total = sum(denominators)
    if total == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ratios: list[Any] = []
    step = max(1, 2_000_000 // len(den))
    for start in range(0, resamples, step):
        index = rng.integers(0, len(den), size=(min(step, resamples - start), len(den)))
        sums, counts = num[index].sum(axis=1), den[index].sum(axis=1)
        ratios.append(sums[counts > 0] / counts[counts > 0])
    values = np.concatenate(ratios)
    tail = (1.0 - confidence) / 2.0
    return {
        "value": float(num.sum() / total),
        "ci_low": float(np.quantile(values, tail)),
        "ci_high": float(np.quantile(values, 1.0 - tail)),
        "n": int(total),
    }


def _summary(
    items: Sequence[GroundedItem], *, confidence: float, resamples: int, seed: int
) -> dict[str, Any]:
    counts = [len(item.claims) for item in items]
    eligible = [item for item in items if not item.abstained and item.gold_retrieved]
    reasons: dict[str, int] = {}
    for item in items:
        if item.abstained:
            reasons[item.reason or "abstained"] = reasons.get(item.reason or "abstained", 0) + 1
    return {
        "n": len(items),
        "citation_precision": _ratio(
            [sum(c.correct for c in item.claims) for item in items],
            counts,
            confidence=confidence,
            resamples=resamples,
            seed=seed,
        ),
        "citation_support": _ratio(
            [sum(c.supported for c in item.claims) for item in items],
            counts,
            confidence=confidence,
            resamples=resamples,
            seed=seed,
        ),
        "citation_recall": _proportion(
            sum(item.cites_gold for item in eligible), len(eligible), confidence
        ),
        "abstention": _proportion(sum(item.abstained for item in items), len(items), confidence),
        "abstained": dict(sorted(reasons.items())),
        "cited_claims": sum(counts),
        "answers_without_citation": sum(
            1 for item in items if not item.abstained and not item.claims
        ),
    }


def score_grounded(
    items: Sequence[GroundedItem],
    free_text: Mapping[str, Any] | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Citation precision, support and recall, and abstention, overall and per question type.

    Args:
        items: the scored answers (:meth:`GroundedItem.from_answer`).
        free_text: the same answers scored against their references by
            :func:`~lorakit.evaluate.text.score_free_text` (with its ``items``), or ``None``;
            its metrics are then also given per question type.
        confidence: the intervals' coverage.
        resamples: bootstrap resamples (the ratios, the per-type text metrics).
        seed: the bootstrap seed.

    Returns:
        ``{"n", "citation_precision", "citation_support", "citation_recall", "abstention",
        "abstained", "cited_claims", "answers_without_citation", "per_qtype"}``; each rate is
        ``{"value", "ci_low", "ci_high", "n"}`` (``n`` its denominator; ``None`` values when
        it is 0); ``per_qtype`` maps each type to the same keys, plus ``free_text`` (per
        metric ``{"mean", "ci_low", "ci_high", "n"}``) when ``free_text`` is given.

    Raises:
        ConfigError: no items, or ``free_text`` scored another number of answers.
    """
    if not items:
        raise ConfigError("cannot score grounded answers over zero items")
    per_item: list[Mapping[str, float]] = []
    if free_text is not None:
        per_item = [entry["scores"] for entry in free_text.get("items", ())]
        if len(per_item) != len(items):
            raise ConfigError(
                f"{len(per_item)} text scores for {len(items)} grounded answers",
                field="free_text",
            )
    options: dict[str, Any] = {"confidence": confidence, "resamples": resamples, "seed": seed}
    out = _summary(items, **options)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.qtype, []).append(i)
    out["per_qtype"] = {}
    for qtype, index in sorted(groups.items()):
        entry = _summary([items[i] for i in index], **options)
        if per_item:
            entry["free_text"] = {}
            for name in per_item[0]:
                scores = [float(per_item[i][name]) for i in index]
                low, high = bootstrap_ci(scores, **options)
                entry["free_text"][name] = {
                    "mean": sum(scores) / len(scores),
                    "ci_low": low,
                    "ci_high": high,
                    "n": len(scores),
                }
        out["per_qtype"][qtype] = entry
    return out
