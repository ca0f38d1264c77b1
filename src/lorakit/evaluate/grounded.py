"""Evaluation with a retrieval index: ``lorakit eval ... --index DIR``.

Two uses, one index:

* **Multiple-choice benchmarks with retrieved passages in the prompt** (MedRAG, Xiong et al.
  2024). Each item's stem and options are the query; its ``k`` best passages, numbered as the
  answer path numbers them (:func:`~lorakit.retrieval.grounding.grounded_context`), fill the
  ``Context:`` line of the usual multiple-choice prompt, so the item is scored exactly as
  without retrieval (log-likelihood or generation, same choices, same batches).
  :func:`run_with_retrieval` gives the result and its paired bootstrap difference from the same
  model without retrieval, the same items in the same order.
* **A run's own split answered through the answer path** (:func:`evaluate_grounded_split`):
  every question is answered by an :class:`~lorakit.answer.Answerer` with the index (retrieve,
  abstain or generate, resolve citations), and the answers are scored for citation precision,
  support and recall, abstention (:mod:`lorakit.evaluate.citations`) and overlap with the
  reference (the text metrics), overall and per question type, then written one JSON object
  per line to ``RUN_DIR/eval/SPLIT_grounded_answers_SIDE.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError
from lorakit.evaluate.run_split import SPLITS, as_names

if TYPE_CHECKING:
    from lorakit.answer import Answer, Answerer
    from lorakit.data.rows import QARow
    from lorakit.evaluate.benchmarks import Benchmark, BenchmarkResult
    from lorakit.evaluate.compare import Comparison
    from lorakit.evaluate.spec import BenchSpec
    from lorakit.plugins import Registries
    from lorakit.reporting import ProgressReporter

__all__ = [
    "GroundedSplitSpec",
    "RetrievalResult",
    "check_retrieval_benches",
    "evaluate_grounded_split",
    "ground_rows",
    "grounded_table",
    "retrieval_query",
    "run_with_retrieval",
]

# --------------------------------------------------------------------------- multiple choice


@attrs.frozen(kw_only=True)
class RetrievalResult:
    """A benchmark scored with retrieved passages, and its change over the same model without.

    Attributes:
        result: the score with the passages in the prompt.
        comparison: with minus without retrieval over the same items (its ``base`` is the
            score without passages, its ``adapter`` the score with them).
        index: the index folder.
        k: passages per item.
    """

    result: BenchmarkResult
    comparison: Comparison
    index: str
    k: int

    def to_dict(self) -> dict[str, Any]:
        """``{"result", "compare", "index", "k"}``, JSON-able."""
        return {
            "result": self.result.to_dict(),
            "compare": self.comparison.to_dict(),
            "index": self.index,
            "k": self.k,
        }


def retrieval_query(row: QARow) -> str:
    """What a multiple-choice item retrieves with: its stem and its options, one a line."""
    return "\n".join([row.question.strip(), *(option.strip() for option in row.options)])


def ground_rows(rows: Sequence[QARow], index: Any, k: int) -> list[QARow]:
    """``rows`` with the ``k`` passages ``index`` retrieves for each (:func:`retrieval_query`)
    put before their own context (:func:`~lorakit.retrieval.grounding.grounded_context`)."""
    from lorakit.retrieval.grounding import grounded_context

    return [
        attrs.evolve(
            row, context=grounded_context(index.search(retrieval_query(row), k), row.context)
        )
        for row in rows
    ]


class _Suffixed:
    """A progress reporter whose task descriptions end with ``(+ index)``."""

    def __init__(self, progress: ProgressReporter) -> None:
        self.progress = progress

    def task(self, description: str, total: int | None = None) -> Callable[[int], None]:
        return self.progress.task(f"{description} (+ index)", total)


def check_retrieval_benches(parsed: Sequence[tuple[Benchmark, str]]) -> None:
    """Retrieval grounds multiple-choice benchmarks only.

    Raises:
        ConfigError: a free-text (perplexity) benchmark, naming it.
    """
    for bench, _ in parsed:
        if bench.metric != "mcq_accuracy":
            raise ConfigError(
                f"--index grounds multiple-choice benchmarks; {bench.name!r} is free text",
                field="--bench",
                hint="score a run's own free-text answers with RUN_DIR --split test --index DIR",
            )


def run_with_retrieval(
    model: Any,
    tokenizer: Any,
    bench: Benchmark,
    location: str,
    spec: BenchSpec,
    index: Any,
    *,
    k: int,
    without: BenchmarkResult,
    progress: ProgressReporter | None = None,
    registries: Registries | None = None,
) -> RetrievalResult:
    """Score ``bench`` with ``k`` retrieved passages per item and compare with ``without``,
    the same model's result without retrieval (same spec, same items).

    Exemplars (``shots``) are shown without passages; an item is never its own exemplar.

    Raises:
        ConfigError: a free-text benchmark, ``k`` below 1, bad options.
        DataError: an unreadable benchmark file.
    """
    from lorakit.evaluate.benchmarks import load_benchmark, run_mcq_benchmark
    from lorakit.evaluate.compare import compare

    check_retrieval_benches([(bench, location)])
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number of at least 1, got {k!r}", field="--k")
    items, pool = load_benchmark(bench, location, limit=spec.limit, registries=registries)
    grounded = dict(zip(map(id, items), ground_rows(items, index, k), strict=True))
    result = run_mcq_benchmark(
        model,
        tokenizer,
        bench,
        [grounded[id(row)] for row in items],
        spec,
        pool=[grounded.get(id(row), row) for row in pool],
        location=location,
        progress=_Suffixed(progress) if progress is not None else None,
    )
    return RetrievalResult(
        result=result,
        comparison=compare(without, result),
        index=str(getattr(index, "path", index)),
        k=k,
    )


# --------------------------------------------------------------------------- a run's split


@attrs.frozen(kw_only=True)
class GroundedSplitSpec:
    """What to score on a run's own split with an index.

    Attributes:
        split: ``test`` or ``eval``.
        metrics: text metrics of the answers against the references.
        compare: also answer with the base model (the adapter off), with the same index.
        limit: answer the first ``limit`` rows only.
        max_new_tokens: the longest answer.
        batch_size: questions generated together.
        k: passages retrieved per question.
    """

    split: str = attrs.field(default="test", validator=attrs.validators.in_(SPLITS))
    metrics: tuple[str, ...] = attrs.field(default=("token_f1",), converter=as_names)
    compare: bool = False
    limit: int | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    k: int = attrs.field(default=4, validator=attrs.validators.ge(1))


def split_rows(run_dir: Path, split: str, registries: Registries) -> list[QARow]:
    """The rows of the run's ``split``, drawn again as in training (read, clean, split)."""
    from lorakit.data.pipeline import QADataset
    from lorakit.evaluate.run_split import run_recipe_of

    data = run_recipe_of(run_dir).data
    dataset = (
        QADataset.from_source(
            data.source, fields=data.fields, limit=data.limit, registries=registries
        )
        .clean(data.cleaning_chain())
        .split(data.split)
    )
    assert dataset.splits is not None
    rows = list(getattr(dataset.splits, split))
    if not rows:
        raise ConfigError(
            f"the run's {split} split is empty",
            file=str(run_dir),
            field="data.split",
            hint="the run was trained without one; score a benchmark with --bench instead",
        )
    return rows


def _answer_all(
    answerer: Answerer,
    rows: Sequence[QARow],
    spec: GroundedSplitSpec,
    adapter: str | None,
    advance: Callable[[int], None],
) -> list[Answer]:
    from lorakit.decoding import SamplingSpec

    sampling = SamplingSpec(max_new_tokens=spec.max_new_tokens)
    answers: list[Answer] = []
    for start in range(0, len(rows), spec.batch_size):
        batch = rows[start : start + spec.batch_size]
        prepared = [
            answerer.prepare(row.question, max_new_tokens=spec.max_new_tokens) for row in batch
        ]
        answers += answerer.generate(prepared, sampling, adapter=adapter)
        advance(len(batch))
    return answers


def evaluate_grounded_split(
    run_dir: Path,
    answerer: Answerer,
    spec: GroundedSplitSpec,
    *,
    registries: Registries,
    progress: ProgressReporter,
) -> dict[str, Any]:
    """Answer the run's ``spec.split`` through ``answerer`` (which holds the index) and score
    the answers: citations, abstention and overlap with the reference, per question type.

    Returns:
        ``{"split", "run_dir", "index", "k", "adapter": {...}}`` and ``"base"`` with
        ``spec.compare``; each side is :func:`~lorakit.evaluate.citations.score_grounded`'s
        report plus ``free_text`` (the text metrics, overall) and ``answers_file``.

    Raises:
        ConfigError: an answerer without an index, an empty split, an unknown metric.
    """
    from lorakit.evaluate.citations import GroundedItem, score_grounded, strip_citations
    from lorakit.evaluate.generate import resolve_text_metrics
    from lorakit.evaluate.text import score_free_text

    if answerer.index is None:
        raise ConfigError("grounded evaluation needs an answerer with an index", field="--index")
    metrics = resolve_text_metrics(spec.metrics, registries)
    answerer.top_k = spec.k
    rows = split_rows(run_dir, spec.split, registries)
    rows = rows[: spec.limit] if spec.limit else rows
    sides = {"adapter": None} if not spec.compare else {"base": "", "adapter": None}
    out: dict[str, Any] = {
        "split": spec.split,
        "run_dir": str(run_dir),
        "index": str(answerer.index.path),
        "k": spec.k,
    }
    for side, adapter in sides.items():
        advance = progress.task(f"answering {spec.split} (+ index, {side})", len(rows))
        answers = _answer_all(answerer, rows, spec, adapter, advance)
        items = [
            GroundedItem.from_answer(
                answer.text,
                answer.passages,
                gold_doc=row.group,
                abstained=answer.abstained,
                reason=answer.reason,
                qtype=row.category,
                item_id=row.id or row.origin or "",
            )
            for row, answer in zip(rows, answers, strict=True)
        ]
        text = score_free_text(
            [strip_citations(a.text) for a in answers],
            [row.answer for row in rows],
            metrics,
            truncated=[a.truncated for a in answers],
        )
        entry = score_grounded(items, text)
        entry["free_text"] = {k: v for k, v in text.items() if k != "items"}
        entry["unresolved_citations"] = sum(a.unresolved_citations for a in answers)
        entry["answers_file"] = str(
            _write_answers(run_dir, spec.split, side, rows, answers, items, text["items"])
        )
        out[side] = entry
    return out


def _write_answers(
    run_dir: Path,
    split: str,
    side: str,
    rows: Sequence[QARow],
    answers: Sequence[Answer],
    items: Sequence[Any],
    scores: Sequence[dict[str, Any]],
) -> Path:
    from lorakit._fs import fs_error, write_text_atomic

    folder = run_dir / "eval"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise fs_error(error, "create the eval folder", folder) from None
    path = folder / f"{split}_grounded_answers_{side}.jsonl"
    lines = []
    for row, answer, item, score in zip(rows, answers, items, scores, strict=True):
        record = {
            "id": row.id or row.origin,
            "qtype": row.category,
            "question": row.question,
            "reference": row.answer,
            "answer": answer.text,
            "citations": [c.to_dict() for c in answer.citations],
            "unresolved_citations": answer.unresolved_citations,
            "retrieved": [h.passage.passage_id for h in answer.passages],
            **item.to_dict(),
            "scores": score["scores"],
            "error": score["error"],
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def _rate(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "-"
    return f"{100 * entry['value']:.1f}% ({100 * entry['ci_low']:.1f}-{100 * entry['ci_high']:.1f})"


def grounded_table(title: str, report: dict[str, Any]) -> Any:
    """A rich table of one side of :func:`evaluate_grounded_split`: a row for all answers, then
    one per question type; rates with their 95 % intervals, the first text metric's mean."""
    from rich.table import Table

    metric = next(iter(report["free_text"]["metrics"]), None)
    table = Table(title=title, title_justify="left")
    columns = ["qtype", "n", "citation precision", "support", "citation recall", "abstention"]
    for column in [*columns, metric or "overlap"]:
        table.add_column(column, justify="left" if column == "qtype" else "right")
    rows = [("all", report), *report["per_qtype"].items()]
    for name, entry in rows:
        overlap = report["free_text"]["metrics"] if entry is report else entry["free_text"]
        mean = overlap.get(metric, {}).get("mean") if metric else None
        table.add_row(
            name,
            str(entry["n"]),
            _rate(entry["citation_precision"]),
            _rate(entry["citation_support"]),
            _rate(entry["citation_recall"]),
            _rate(entry["abstention"]),
            f"{mean:.3f}" if mean is not None else "-",
        )
    table.caption = (
        f"{report['cited_claims']} cited claims; {report['answers_without_citation']} answers "
        f"without a citation; {report['unresolved_citations']} citations of no passage removed"
    )
    return table
