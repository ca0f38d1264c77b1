"""Retrieval evaluation (recall@k, MRR, nDCG of the gold document) and threshold calibration.

The gold document of a question is its row's ``group`` (MedQuAD: the question's own
document, ``SUBSET/docid``), else its ``id``. Metrics read the ranked *passages* of each
retriever: recall@k is 1 when a passage of the gold document is among the first ``k``;
the reciprocal rank and nDCG@k use the rank ``r`` of the first such passage (one relevant
document: nDCG@k = 1 / log2(1 + r) when ``r <= k``); MRR is cut at the largest ``k``.
Recalls carry 95 % Wilson intervals, MRR and nDCG seeded bootstrap intervals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError, DataError
from lorakit.reporting import NullProgress, ProgressReporter

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.retrieval.index import Index, Mode

__all__ = [
    "Calibration",
    "EvalQuestion",
    "calibrate_threshold",
    "evaluate_retrieval",
    "questions_from_rows",
    "read_questions",
    "save_calibration",
]

_BATCH = 64
_EVAL_MODES: tuple[Mode, ...] = ("lexical", "dense", "fused")


@attrs.frozen
class EvalQuestion:
    """A question with its gold document and the subset it is reported under."""

    question: str
    gold: str
    subset: str = "all"


def questions_from_rows(rows: Iterable[QARow], *, answered_only: bool = True) -> list[EvalQuestion]:
    """Evaluation questions from source rows (rows with an empty answer are skipped when
    ``answered_only``: their document has no passage)."""
    out = []
    for row in rows:
        if answered_only and not row.answer.strip():
            continue
        if row.question.strip():
            out.append(
                EvalQuestion(
                    question=row.question.strip(),
                    gold=row.group or row.id,
                    subset=row.meta.get("subset", "all"),
                )
            )
    return out


def read_questions(uri: str, *, fields: Mapping[str, str] | None = None) -> list[str]:
    """The questions of a source: ``lines:FILE`` (one question per line) or any row source."""
    from pathlib import Path

    from lorakit.data.sources import read_source

    if uri.startswith("lines:"):
        path = Path(uri[len("lines:") :])
        if not path.is_file():
            raise DataError("no such file", file=str(path), hint="lines: reads one question a line")
        return [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    return [row.question.strip() for row in read_source(uri, fields=fields) if row.question.strip()]


def _embed_all(index: Index, texts: Sequence[str], progress: ProgressReporter) -> Any:
    import numpy as np

    advance = progress.task(f"Embedding questions ({index.card.embedder})", len(texts))
    parts = []
    for start in range(0, len(texts), _BATCH):
        chunk = list(texts[start : start + _BATCH])
        parts.append(np.asarray(index.embedder.embed(chunk), dtype=np.float32))
        advance(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, index.card.dims), dtype=np.float32)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[position]


def evaluate_retrieval(
    index: Index,
    questions: Sequence[EvalQuestion],
    *,
    ks: Sequence[int] = (1, 5, 10),
    latency_sample: int = 200,
    progress: ProgressReporter | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall@k, MRR and nDCG@k of the gold document for lexical, dense and fused retrieval.

    Questions whose gold document is not in the index are left out and counted
    (``not_indexed``). Latency is measured on the first ``latency_sample`` questions, one
    :meth:`~lorakit.retrieval.Index.search` call per question and mode, modes interleaved
    (query embedding included): wall-clock and CPU time (all threads of the process).

    Returns:
        ``{"questions", "not_indexed", "ks", "modes": {mode: {"all": metrics,
        "subsets": {subset: metrics}}}, "latency_ms": {mode: {p50, p95, mean}}}`` where
        metrics are ``{"n", "recall@k": {value, low, high}, "mrr": {...}, "ndcg@k": {...}}``.

    Raises:
        ConfigError: no k, or a k below 1.
        DataError: no question has its gold document in the index.
    """
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ConfigError(f"ks must be whole numbers of at least 1, got {ks!r}", field="k")
    progress = progress or NullProgress()
    indexed = {p.doc_id for p in index.passages}
    kept = [q for q in questions if q.gold in indexed]
    if not kept:
        raise DataError(
            f"none of {len(questions):,} questions has its gold document in the index",
            file=str(index.path),
            hint="evaluate with questions from the corpus the index was built from",
        )
    first = _first_gold_ranks(index, kept, max(max(ks), 10), progress)
    subsets = sorted({q.subset for q in kept})
    report: dict[str, Any] = {
        "index": str(index.path),
        "questions": len(kept),
        "not_indexed": len(questions) - len(kept),
        "ks": ks,
        "modes": {},
        "latency_ms": {},
    }
    for mode in _EVAL_MODES:
        ranks = first[mode]
        report["modes"][mode] = {
            "all": _rank_metrics(ranks, ks, seed),
            "subsets": {
                s: _rank_metrics(
                    [r for r, q in zip(ranks, kept, strict=True) if q.subset == s], ks, seed
                )
                for s in subsets
            },
        }
    sample = kept[: max(0, latency_sample)]
    if sample:
        report["latency_ms"] = _latency(index, sample, max(ks), progress)
    return report


def _first_gold_ranks(
    index: Index, kept: Sequence[EvalQuestion], depth: int, progress: ProgressReporter
) -> dict[str, list[int | None]]:
    """Per mode, the rank of each question's first gold passage (``None``: not in ``depth``)."""
    doc_of = [p.doc_id for p in index.passages]
    vectors = _embed_all(index, [q.question for q in kept], progress)
    first: dict[str, list[int | None]] = {m: [] for m in _EVAL_MODES}
    advance = progress.task("Searching", len(kept))
    for question, vector in zip(kept, vectors, strict=True):
        ranked = index.rankings(question.question, vector, max(depth, 50))
        for mode in _EVAL_MODES:
            rank = next(
                (
                    r
                    for r, (row, _) in enumerate(ranked[mode][:depth], 1)
                    if doc_of[row] == question.gold
                ),
                None,
            )
            first[mode].append(rank)
        advance(1)
    return first


def _rank_metrics(ranks: Sequence[int | None], ks: Sequence[int], seed: int) -> dict[str, Any]:
    """Recall@k (Wilson intervals), MRR and nDCG@k (bootstrap intervals) of first-gold ranks;
    ``ks`` sorted."""
    import numpy as np

    from lorakit.evaluate.stats import bootstrap_means, wilson_interval

    n = len(ranks)
    out: dict[str, Any] = {"n": n}
    for k in ks:
        hits = sum(1 for r in ranks if r is not None and r <= k)
        low, high = wilson_interval(hits, n)
        out[f"recall@{k}"] = {"value": hits / n, "low": low, "high": high}
    rows = [[1.0 / r if r is not None and r <= max(ks) else 0.0 for r in ranks]]
    names = ["mrr"]
    for k in ks:
        rows.append([1.0 / math.log2(1 + r) if r is not None and r <= k else 0.0 for r in ranks])
        names.append(f"ndcg@{k}")
    values = np.asarray(rows, dtype=np.float64)
    intervals = bootstrap_means(values, confidence=0.95, resamples=1000, seed=seed)
    for name, row, (low, high) in zip(names, values, intervals, strict=True):
        out[name] = {"value": float(row.mean()), "low": low, "high": high}
    return out


def _latency(
    index: Index, sample: Sequence[EvalQuestion], k: int, progress: ProgressReporter
) -> dict[str, dict[str, Any]]:
    """Per mode, wall-clock and CPU milliseconds of one search of ``k`` hits per question."""
    advance = progress.task("Latency", len(sample) * len(_EVAL_MODES))
    times: dict[str, list[float]] = {m: [] for m in _EVAL_MODES}
    cpu: dict[str, list[float]] = {m: [] for m in _EVAL_MODES}
    index.search(sample[0].question, k=k)  # warm up (first-call costs)
    for question in sample:  # modes interleaved: a busy machine slows all three alike
        for mode in _EVAL_MODES:
            wall, used = time.perf_counter(), time.process_time()
            index.search(question.question, k=k, mode=mode)
            times[mode].append((time.perf_counter() - wall) * 1000)
            cpu[mode].append((time.process_time() - used) * 1000)
            advance(1)
    return {
        mode: {
            "p50": round(_percentile(times[mode], 50), 3),
            "p95": round(_percentile(times[mode], 95), 3),
            "mean": round(sum(times[mode]) / len(times[mode]), 3),
            "cpu_p50": round(_percentile(cpu[mode], 50), 3),
            "cpu_p95": round(_percentile(cpu[mode], 95), 3),
            "n": len(times[mode]),
        }
        for mode in _EVAL_MODES
    }


@attrs.frozen(kw_only=True)
class Calibration:
    """The abstention threshold chosen from on-topic and off-topic questions.

    ``threshold`` maximises Youden's J, the rate of on-topic questions covered minus the
    rate of off-topic questions covered (ties: the highest threshold). Rates carry 95 %
    Wilson intervals.
    """

    threshold: float
    on_topic: int
    off_topic: int
    on_topic_covered: float
    on_topic_covered_interval: tuple[float, float]
    off_topic_abstained: float
    off_topic_abstained_interval: tuple[float, float]
    k: int
    sources: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["on_topic_covered_interval"] = list(self.on_topic_covered_interval)
        data["off_topic_abstained_interval"] = list(self.off_topic_abstained_interval)
        data["sources"] = dict(self.sources)
        return data


def _top_relevance(
    index: Index, questions: Sequence[str], k: int, progress: ProgressReporter
) -> list[float]:
    from lorakit.retrieval.grounding import relevance

    vectors = _embed_all(index, questions, progress)
    out = []
    for question, vector in zip(questions, vectors, strict=True):
        ranked = index.rankings(question, vector, max(k, 50))
        hits = index.hits(ranked, vector, k, "fused")
        out.append(max((relevance(h) for h in hits), default=0.0))
    return out


def calibrate_threshold(
    index: Index,
    on_topic: Sequence[str],
    off_topic: Sequence[str],
    *,
    k: int = 5,
    sources: Mapping[str, str] | None = None,
    progress: ProgressReporter | None = None,
) -> Calibration:
    """Choose the abstention threshold of ``index`` from questions its passages cover
    (``on_topic``) and questions they do not (``off_topic``), on the best relevance among the
    first ``k`` fused hits (what :func:`~lorakit.retrieval.grounding.covers` reads).

    Raises:
        ConfigError: either list is empty.
    """
    from lorakit.evaluate.stats import wilson_interval

    if not on_topic or not off_topic:
        raise ConfigError(
            "calibration needs on-topic and off-topic questions",
            field="questions" if not on_topic else "off_topic",
        )
    progress = progress or NullProgress()
    on = _top_relevance(index, on_topic, k, progress)
    off = _top_relevance(index, off_topic, k, progress)
    candidates = sorted(set(on) | set(off))
    best, best_j = candidates[0], -2.0
    for threshold in candidates:
        j = sum(s >= threshold for s in on) / len(on) - sum(s >= threshold for s in off) / len(off)
        if j >= best_j:
            best, best_j = threshold, j
    lower = [c for c in candidates if c < best]
    if lower:  # halfway to the next lower score: the same rates here, a margin for new questions
        best = (best + lower[-1]) / 2
    covered = sum(s >= best for s in on)
    abstained = sum(s < best for s in off)
    return Calibration(
        threshold=round(float(best), 6),
        on_topic=len(on),
        off_topic=len(off),
        on_topic_covered=covered / len(on),
        on_topic_covered_interval=wilson_interval(covered, len(on)),
        off_topic_abstained=abstained / len(off),
        off_topic_abstained_interval=wilson_interval(abstained, len(off)),
        k=k,
        sources=dict(sources or {}),
    )


def save_calibration(index: Index, calibration: Calibration) -> None:
    """Store the calibrated threshold in the card of ``index`` (on disk and in memory)."""
    from lorakit.retrieval.index import write_card

    card = attrs.evolve(
        index.card, threshold=calibration.threshold, calibration=calibration.to_dict()
    )
    write_card(index.path, card)
    index.card = card
