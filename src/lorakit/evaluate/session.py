"""One evaluation path: base and adapter over a list of benchmarks, for ``lorakit eval`` and runs.

::

    from lorakit.evaluate.session import compare_with_base
    from lorakit.evaluate.spec import BenchSpec

    peft_model = PeftModel.from_pretrained(model, "runs/x/adapter")
    for result in compare_with_base(peft_model, tokenizer, ["medqa:data/medqa.jsonl"], BenchSpec()):
        print(result.bench, result.comparison.delta, result.comparison.significant)

The base model is the very same weights with the adapter switched off (PEFT's
``disable_adapter()``), so base and adapter are scored on the same items, with the same
prompts and batches. :func:`evaluate_run` is what a training run reports under ``benchmarks``:
:func:`compare_with_base` over the recipe's benchmarks, plus the recipe's own test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError
from lorakit.evaluate.benchmarks import Benchmark, BenchmarkResult, parse_bench, run_benchmark
from lorakit.evaluate.compare import Comparison, compare
from lorakit.evaluate.generate import score_generated
from lorakit.evaluate.spec import BenchSpec

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.evaluate.grounded import RetrievalResult
    from lorakit.plugins import Registries
    from lorakit.recipe import Recipe
    from lorakit.reporting import ProgressReporter

__all__ = ["CompareResult", "compare_with_base", "evaluate_run"]


@attrs.frozen(kw_only=True)
class CompareResult:
    """One benchmark scored with the adapter off and on, and the paired difference.

    Attributes:
        base: the base model's result (adapter off).
        adapter: the adapter's result.
        comparison: adapter minus base over the same items.
        retrieval: with an index, the adapter with retrieved passages in the prompt and its
            difference from the adapter alone (``None`` without an index).
    """

    base: BenchmarkResult
    adapter: BenchmarkResult
    comparison: Comparison
    retrieval: RetrievalResult | None = None

    @property
    def bench(self) -> str:
        """The benchmark's name."""
        return self.adapter.bench

    def to_dict(self) -> dict[str, Any]:
        """``{"base": ..., "adapter": ..., "compare": ...}``, as the run report holds it, and
        ``"retrieval"`` (:meth:`RetrievalResult.to_dict
        <lorakit.evaluate.grounded.RetrievalResult.to_dict>`) with an index."""
        out = {
            "base": self.base.to_dict(),
            "adapter": self.adapter.to_dict(),
            "compare": self.comparison.to_dict(),
        }
        if self.retrieval is not None:
            out["retrieval"] = self.retrieval.to_dict()
        return out


class _Labelled:
    """A progress reporter whose task descriptions say which side is scored."""

    def __init__(self, progress: ProgressReporter, label: str) -> None:
        self.progress = progress
        self.label = label

    def task(self, description: str, total: int | None = None) -> Callable[[int], None]:
        return self.progress.task(f"{description} ({self.label})", total)


def _labelled(progress: ProgressReporter | None, label: str) -> ProgressReporter | None:
    return _Labelled(progress, label) if progress is not None else None


def _adapter_switch(model: Any) -> Any:
    switch = getattr(model, "disable_adapter", None)
    if switch is None:
        raise ConfigError(
            "comparing with the base model needs a PEFT model with an adapter",
            field="adapter",
            hint="load it with peft.PeftModel.from_pretrained(model, ADAPTER_DIR)",
        )
    return switch


def compare_with_base(
    model: Any,
    tokenizer: Any,
    benches: Sequence[str | tuple[Benchmark, str]],
    spec: BenchSpec | None = None,
    *,
    progress: ProgressReporter | None = None,
    registries: Registries | None = None,
    index: Any = None,
    k: int = 3,
) -> list[CompareResult]:
    """Score every benchmark with the adapter off (the base model) and on, and compare.

    With an ``index`` (:func:`lorakit.retrieval.load_index`), the adapter also answers with the
    ``k`` passages it retrieves for each item in the prompt
    (:func:`~lorakit.evaluate.grounded.run_with_retrieval`; multiple-choice benchmarks only).

    Args:
        model: a PEFT model with its adapter (``disable_adapter()`` gives the base model).
        tokenizer: its tokenizer.
        benches: ``NAME:PATH`` texts or parsed ``(benchmark, location)`` pairs.
        spec: how to score, the same for both sides (defaults when ``None``).
        progress: a :class:`~lorakit.reporting.ProgressReporter`; one task per side and
            benchmark, labelled ``(base)`` or ``(adapter)``.
        registries: where benchmarks, sources, templates and metrics are looked up.
        index: a retrieval index, or ``None``.
        k: passages per item with an index.

    Returns:
        One :class:`CompareResult` per benchmark, in order.

    Raises:
        ConfigError: a model without an adapter, an unknown benchmark, bad options.
        DataError: an unreadable benchmark file or a bad row.
    """
    spec = spec or BenchSpec()
    switch = _adapter_switch(model)
    out = []
    for bench, location in (
        parse_bench(b, registries) if isinstance(b, str) else b for b in benches
    ):
        with switch():  # the very same weights, adapter off
            base = run_benchmark(
                model,
                tokenizer,
                bench,
                location,
                spec,
                progress=_labelled(progress, "base"),
                registries=registries,
            )
        adapted = run_benchmark(
            model,
            tokenizer,
            bench,
            location,
            spec,
            progress=_labelled(progress, "adapter"),
            registries=registries,
        )
        retrieval = None
        if index is not None:
            from lorakit.evaluate.grounded import run_with_retrieval

            retrieval = run_with_retrieval(
                model,
                tokenizer,
                bench,
                location,
                spec,
                index,
                k=k,
                without=adapted,
                progress=_labelled(progress, "adapter"),
                registries=registries,
            )
        out.append(
            CompareResult(
                base=base,
                adapter=adapted,
                comparison=compare(base, adapted),
                retrieval=retrieval,
            )
        )
    return out


def _test_split(
    model: Any,
    tokenizer: Any,
    spec: BenchSpec,
    *,
    test_examples: Sequence[Any],
    test_rows: Sequence[QARow],
    collate: Callable[[list[dict[str, list[int]]]], dict[str, Any]],
    progress: ProgressReporter | None,
    registries: Registries | None,
) -> dict[str, Any]:
    """Base and adapter on the run's own test split: answer-only loss of the examples as
    trained, and with text metrics, generated answers to the first ``limit`` rows."""
    from lorakit.evaluate.perplexity import answer_loss

    def task(description: str, total: int) -> Callable[[int], None] | None:
        return progress.task(description, total) if progress is not None else None

    switch = _adapter_switch(model)
    n = len(test_examples)
    with switch():
        base_loss = answer_loss(
            model,
            test_examples,
            collate,
            batch_size=spec.batch_size,
            progress=task("Test loss (base)", n),
        )
    adapter_loss = answer_loss(
        model,
        test_examples,
        collate,
        batch_size=spec.batch_size,
        progress=task("Test loss (adapter)", n),
    )
    entry: dict[str, Any] = {
        "base": base_loss.to_dict(),
        "adapter": adapter_loss.to_dict(),
        "compare": {
            "measure": "perplexity",
            "delta": adapter_loss.perplexity - base_loss.perplexity,
        },
    }
    if spec.text_metrics:
        rows = list(test_rows)[: spec.limit] if spec.limit else list(test_rows)
        with switch():
            base_text = score_generated(
                model,
                tokenizer,
                rows,
                spec,
                registries=registries,
                progress=task("Generating (base)", len(rows)),
            )
        adapter_text = score_generated(
            model,
            tokenizer,
            rows,
            spec,
            registries=registries,
            progress=task("Generating (adapter)", len(rows)),
        )
        for side, scores in (("base", base_text), ("adapter", adapter_text)):
            entry[side]["free_text"] = {k: v for k, v in scores.items() if k != "items"}
    return entry


def evaluate_run(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    *,
    test_examples: Sequence[Any],
    test_rows: Sequence[QARow],
    collate: Callable[[list[dict[str, list[int]]]], dict[str, Any]],
    progress: ProgressReporter | None = None,
    registries: Registries | None = None,
) -> dict[str, Any]:
    """What a training run reports under ``benchmarks``: base and adapter on every benchmark of
    ``recipe.evaluation``, with the paired difference, and on the recipe's test split.

    The options are :meth:`BenchSpec.from_recipe <lorakit.evaluate.spec.BenchSpec.from_recipe>`:
    the evaluation's limit, shots and chat template, the training's eval batch size, the data's
    ``max_len``, and the run's own prompt template and its options, with which generated
    answers are prompted as the adapter was trained. The recipe's text metrics score answers
    to the test split only, not the named benchmarks.

    Args:
        model: the trained PEFT model (adapter on).
        tokenizer: its tokenizer.
        recipe: the run's recipe.
        test_examples: the test split tokenised as trained (answer-only labels).
        test_rows: the test split's rows (for generated answers).
        collate: the trainer's collator, for the test loss.
        progress: a :class:`~lorakit.reporting.ProgressReporter`.
        registries: where benchmarks, sources, templates and metrics are looked up.

    Returns:
        ``{NAME: {"base", "adapter", "compare"}}`` per benchmark and, when the test split has
        examples, ``"heldout"``: answer-only loss and perplexity of base and adapter (with
        ``free_text`` scores under each with text metrics) and the perplexity difference.
    """
    spec = BenchSpec.from_recipe(recipe)
    named = compare_with_base(
        model,
        tokenizer,
        recipe.evaluation.benchmarks,
        attrs.evolve(spec, text_metrics=()),
        progress=progress,
        registries=registries,
    )
    out: dict[str, Any] = {result.bench: result.to_dict() for result in named}
    if test_examples:
        out["heldout"] = _test_split(
            model,
            tokenizer,
            spec,
            test_examples=test_examples,
            test_rows=test_rows,
            collate=collate,
            progress=progress,
            registries=registries,
        )
    return out
