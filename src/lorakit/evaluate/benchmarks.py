"""Named medical benchmarks: read the native files, score a model, compare base and adapter.

==============  ===========  =================================================================
benchmark       source       scored as
==============  ===========  =================================================================
``medqa``       ``medqa:``   MedQA (USMLE) JSON lines; letters; per category: ``meta_info``
``medmcqa``     ``medmcqa:`` MedMCQA JSON lines; letters; per category: ``subject_name``
``pubmedqa``    ``pubmedqa:`` PubMedQA ``ori_pqal`` JSON with its abstracts as context; the option
                             texts ``yes`` / ``no`` / ``maybe`` are scored (``choices="texts"``)
``mmlu_medical`` ``mmlu:``   MMLU CSV, the six medical subjects only (anatomy, clinical
                             knowledge, college biology, college medicine, medical genetics,
                             professional medicine); letters; per subject scores
``heldout``     any URI      free-text rows (the recipe's own test split, or ``jsonl:FILE``),
                             scored by answer-only perplexity
==============  ===========  =================================================================

A benchmark is named with its location, ``NAME:PATH`` (``medqa:../shared/data/medqa/x.jsonl``;
``heldout:jsonl:data/test.jsonl``), as ``lorakit eval --bench`` takes it.

*Exemplars* (``shots`` > 0). ``mmlu_medical`` takes the first rows of the same subject from
the MMLU dev split: the ``dev`` folder beside a ``test`` or ``val`` folder when the path is one,
else the benchmark's own rows; the other benchmarks take the first rows of the benchmark file
itself. In every case the item itself is never its own exemplar (lm-evaluation-harness's
``first_n`` sampler). Exemplars come from the whole file, not only the ``limit``-ed items.

*Limits*. ``limit`` keeps the first ``limit`` items in file order (after the subject filter), so
a limited MMLU run covers the first subjects only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit.errors import ConfigError, DataError, did_you_mean
from lorakit.evaluate.base import MetricResult
from lorakit.evaluate.mcq import ChoiceStyle, MCQSpec, score_mcq
from lorakit.evaluate.stats import paired_bootstrap

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.plugins import Registries
    from lorakit.reporting import ProgressReporter

__all__ = [
    "BENCHMARKS",
    "MMLU_MEDICAL_SUBJECTS",
    "Benchmark",
    "BenchmarkResult",
    "Comparison",
    "check_adapter_base",
    "compare",
    "load_benchmark",
    "parse_bench",
    "run_benchmark",
    "score_generated",
]

BenchMetric = Literal["mcq_accuracy", "perplexity"]

MMLU_MEDICAL_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
"""The MMLU subjects of ``mmlu_medical`` (the usual "MMLU medical" subset)."""

MMLU_DESCRIPTION = (
    "The following are multiple choice questions (with answers) about {category}.\n\n"
)
"""MMLU's task description, as lm-evaluation-harness and the original MMLU code write it."""


@attrs.frozen(kw_only=True)
class Benchmark:
    """A named benchmark: where its rows come from and how they are scored.

    Attributes:
        name: the name used in ``NAME:PATH``.
        scheme: the source scheme that reads its files (``medqa``); ``None`` when the path is
            a whole source URI (``heldout:jsonl:FILE``).
        shots: default number of exemplars (0 for all built-ins; ``--shots`` overrides).
        choices: default continuation style, ``"letters"`` or ``"texts"``.
        metric: ``"mcq_accuracy"`` or ``"perplexity"``.
        description: text before the exemplars (``{category}`` is filled in).
        subjects: keep only rows of these categories (empty: all rows).
        fewshot_by_category: exemplars of the item's category only.
        summary: one line for listings.
    """

    name: str
    scheme: str | None
    shots: int = 0
    choices: ChoiceStyle = "letters"
    metric: BenchMetric = "mcq_accuracy"
    description: str = ""
    subjects: tuple[str, ...] = ()
    fewshot_by_category: bool = False
    summary: str = ""


BENCHMARKS: Mapping[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="medqa",
            scheme="medqa",
            summary="MedQA USMLE questions; letters; per exam step (meta_info)",
        ),
        Benchmark(
            name="medmcqa",
            scheme="medmcqa",
            summary="MedMCQA (Indian medical entrance exams); letters; per subject",
        ),
        Benchmark(
            name="pubmedqa",
            scheme="pubmedqa",
            choices="texts",
            summary="PubMedQA with its abstracts; scores ' yes' / ' no' / ' maybe'",
        ),
        Benchmark(
            name="mmlu_medical",
            scheme="mmlu",
            subjects=MMLU_MEDICAL_SUBJECTS,
            fewshot_by_category=True,
            description=MMLU_DESCRIPTION,
            summary="MMLU's six medical subjects; letters; per subject",
        ),
        Benchmark(
            name="heldout",
            scheme=None,
            metric="perplexity",
            summary="free-text rows of any source URI; answer-only perplexity",
        ),
    )
}
"""The built-in benchmarks by name."""


def parse_bench(text: str) -> tuple[Benchmark, str]:
    """Split ``NAME:PATH`` into the benchmark and its location.

    ``heldout:jsonl:data/test.jsonl`` gives ``heldout`` and the source URI ``jsonl:...``.

    Raises:
        ConfigError: no ``:PATH``, an unknown name, or a ``heldout`` location without a scheme.
    """
    name, sep, location = text.partition(":")
    name = name.strip().lower()
    if name not in BENCHMARKS:
        known = sorted(BENCHMARKS)
        raise ConfigError(
            f"unknown benchmark {name!r} in {text!r}",
            field="bench",
            hint=did_you_mean(name, known) or f"benchmarks: {', '.join(known)}",
        )
    bench = BENCHMARKS[name]
    if not sep or not location.strip():
        example = "jsonl:FILE" if bench.scheme is None else "PATH"
        raise ConfigError(
            f"benchmark {name!r} needs a location: write {name}:{example}",
            field="bench",
        )
    if bench.scheme is None:
        from lorakit.data.sources import parse_uri

        parse_uri(location)
    return bench, location


def _read(uri: str, registries: Registries | None) -> list[QARow]:
    from lorakit.data.sources import read_source

    return list(read_source(uri, registries=registries))


def _dev_folder(location: str) -> Path | None:
    path = Path(location)
    if path.is_dir() and path.name in ("test", "val"):
        dev = path.parent / "dev"
        if dev.is_dir():
            return dev
    return None


def load_benchmark(
    bench: Benchmark,
    location: str,
    *,
    limit: int | None = None,
    registries: Registries | None = None,
) -> tuple[list[QARow], list[QARow]]:
    """The items of a benchmark and its exemplar pool.

    Args:
        bench: the benchmark.
        location: its path (or, for ``heldout``, a source URI).
        limit: keep the first ``limit`` items.
        registries: where source schemes are looked up (default plugins when ``None``).

    Returns:
        ``(items, pool)``; ``pool`` is where exemplars come from (see the module docstring).

    Raises:
        DataError: the file cannot be read as the benchmark's format (from its source), has no
            rows of the benchmark's subjects, or an MCQ benchmark row has no options.
        ConfigError: ``limit`` below 1, or no items.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(
            f"limit must be a whole number of at least 1, got {limit!r}", field="limit"
        )
    uri = location if bench.scheme is None else f"{bench.scheme}:{location}"
    rows = _read(uri, registries)
    if bench.subjects:
        wanted = set(bench.subjects)
        rows = [row for row in rows if row.category in wanted]
        if not rows:
            raise DataError(
                f"holds no rows of the {bench.name} subjects ({', '.join(bench.subjects)})",
                file=location,
                hint="point it at MMLU CSV files named SUBJECT_dev.csv / SUBJECT_test.csv",
            )
    if bench.metric == "mcq_accuracy":
        for row in rows:
            if not row.options:
                raise DataError(
                    f"benchmark {bench.name!r} needs multiple-choice rows; this row has no options",
                    file=row.origin or location,
                    field="options",
                )
    pool = rows
    dev = _dev_folder(location) if bench.scheme == "mmlu" else None
    if dev is not None:
        pool = _read(f"mmlu:{dev}", registries)
        if bench.subjects:
            pool = [row for row in pool if row.category in set(bench.subjects)]
    items = rows[:limit] if limit is not None else rows
    if not items:
        raise ConfigError(
            f"benchmark {bench.name!r} at {location!r} has no items to score",
            field="bench",
        )
    return items, pool


@attrs.frozen(kw_only=True)
class BenchmarkResult:
    """One benchmark's score.

    Attributes:
        bench: the benchmark's name.
        location: where its rows were read.
        n: items scored.
        accuracy: ``acc`` (``None`` for a perplexity benchmark).
        ci_low: the lower bound of the 95 % Wilson interval of the accuracy.
        ci_high: the upper bound.
        acc_norm: the length-normalised accuracy (log-likelihood mode), else ``None``.
        perplexity: the answer-only perplexity (``heldout``), else ``None``.
        per_category: per category: ``{"n", "correct", "accuracy", "ci_low", "ci_high"}``.
        errors: count per error kind.
        shots: exemplars per item.
        choices: ``"letters"`` or ``"texts"``.
        mode: ``"loglikelihood"``, ``"generate"`` or ``"perplexity"``.
        seconds: time spent scoring (reading the files not included).
        metric: the full :class:`~lorakit.evaluate.base.MetricResult` (per-item choices).
        free_text: for ``heldout`` with text metrics: generated answers scored against the
            references (:func:`score_generated`), else ``None``.
    """

    bench: str
    location: str
    n: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    acc_norm: float | None
    perplexity: float | None
    per_category: Mapping[str, Mapping[str, Any]]
    errors: Mapping[str, int]
    shots: int
    choices: str
    mode: str
    seconds: float
    metric: MetricResult
    free_text: Mapping[str, Any] | None = None

    @property
    def items_per_second(self) -> float:
        """Items scored per second."""
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: ``bench``, ``n``, ``accuracy``, ``ci_low``, ``ci_high`` first."""
        out: dict[str, Any] = {
            "bench": self.bench,
            "n": self.n,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "acc_norm": self.acc_norm,
            "perplexity": self.perplexity,
            "per_category": {k: dict(v) for k, v in self.per_category.items()},
            "errors": dict(self.errors),
            "shots": self.shots,
            "choices": self.choices,
            "mode": self.mode,
            "location": self.location,
            "seconds": round(self.seconds, 3),
        }
        for key in ("acc_norm_ci_low", "acc_norm_ci_high", "loss", "tokens"):
            if key in self.metric.extra:
                out[key] = self.metric.extra[key]
        if self.free_text is not None:
            out["free_text"] = {k: v for k, v in self.free_text.items() if k != "items"}
        return out


def score_generated(
    model: Any,
    tokenizer: Any,
    rows: Sequence[QARow],
    metric_names: Sequence[str],
    *,
    registries: Registries | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Generate an answer to every row (greedy, the ``qa`` template) and score it against the
    row's reference answer with the named text metrics: mean, 95 % interval, error counts.

    Raises:
        ConfigError: a name that is not a registered text metric (``perplexity`` and
            ``mcq_accuracy`` score a model, not a text).
    """
    from lorakit.data.templates import qa_template
    from lorakit.evaluate.generate import generate_answers
    from lorakit.evaluate.text import score_free_text

    if registries is None:
        from lorakit.plugins import Registries as _Registries

        registries = _Registries.from_plugin_manager()
    text_names = [
        n
        for n in registries.metrics.names()
        if not hasattr(registries.metrics.resolve(n), "evaluate")
    ]
    metrics = {}
    for name in metric_names:
        metric = registries.metrics.resolve(name)
        if hasattr(metric, "evaluate"):
            raise ConfigError(
                f"{name!r} scores a model, not a generated text",
                field="metric",
                hint=f"text metrics: {', '.join(text_names)}",
            )
        metrics[name] = metric
    generations = generate_answers(
        model,
        tokenizer,
        rows,
        qa_template(),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    return score_free_text(
        [g.text for g in generations],
        [row.answer for row in rows],
        metrics,
        truncated=[g.truncated for g in generations],
    )


def run_benchmark(
    model: Any,
    tokenizer: Any,
    bench: str | Benchmark,
    path: str | None = None,
    *,
    rows: Sequence[QARow] | None = None,
    limit: int | None = None,
    shots: int | None = None,
    choices: ChoiceStyle | None = None,
    mode: Literal["loglikelihood", "generate"] = "loglikelihood",
    batch_size: int = 8,
    max_length: int | None = None,
    chat_template: bool = False,
    max_len: int = 1024,
    text_metrics: Sequence[str] = (),
    max_new_tokens: int = 256,
    progress: ProgressReporter | None = None,
    registries: Registries | None = None,
) -> BenchmarkResult:
    """Score ``model`` on one benchmark.

    Args:
        model: a causal LM (transformers, or PEFT with an adapter).
        tokenizer: its tokenizer.
        bench: a :class:`Benchmark`, its name, or ``"NAME:PATH"`` (then ``path`` is ``None``).
        path: the benchmark's location; may be ``None`` when ``rows`` are given.
        rows: the items themselves instead of reading ``path`` (the recipe's test split for
            ``heldout``); exemplars then come from these rows.
        limit: score the first ``limit`` items only.
        shots: exemplars per item (default: the benchmark's).
        choices: continuation style (default: the benchmark's).
        mode: ``"loglikelihood"`` (default) or ``"generate"``; ignored by ``heldout``.
        batch_size: sequences per forward pass.
        max_length: the model's context length for MCQ scoring (default: from its config).
        chat_template: render MCQ prompts with the tokenizer's chat template.
        max_len: tokens per example for perplexity (``heldout``).
        text_metrics: for ``heldout``: also generate answers and score them with these
            registered text metrics (``token_f1``, ``rouge_l`` ...).
        max_new_tokens: the longest generated answer, with ``text_metrics``.
        progress: a :class:`~lorakit.reporting.ProgressReporter`; one task per benchmark.
        registries: where source schemes are looked up.

    Returns:
        The benchmark's result.

    Raises:
        ConfigError: an unknown benchmark, bad options, no items.
        DataError: an unreadable file or a bad row, naming the file, line and field.
    """
    if isinstance(bench, str):
        if ":" in bench:
            if path is not None:
                raise ConfigError(
                    f"benchmark {bench!r} names its location and path={path!r} another",
                    field="bench",
                    hint="pass NAME:PATH alone, or NAME and path",
                )
            bench, path = parse_bench(bench)
        else:
            name = bench.strip().lower()
            if name not in BENCHMARKS:
                parse_bench(f"{name}:x")  # raises the unknown-benchmark error
            bench = BENCHMARKS[name]
    if rows is not None:
        items = list(rows)[:limit] if limit is not None else list(rows)
        pool = list(rows)
        location = path or "(rows)"
        if not items:
            raise ConfigError(f"benchmark {bench.name!r}: no rows to score", field="rows")
    else:
        if path is None:
            raise ConfigError(f"benchmark {bench.name!r} needs a path or rows", field="bench")
        items, pool = load_benchmark(bench, path, limit=limit, registries=registries)
        location = path
    advance = progress.task(f"Scoring {bench.name}", len(items)) if progress is not None else None
    started = time.perf_counter()
    if bench.metric == "perplexity":
        from lorakit.evaluate.perplexity import Perplexity

        metric = Perplexity().evaluate(
            model, tokenizer, items, max_len=max_len, batch_size=batch_size, progress=advance
        )
        free_text = None
        if text_metrics:
            generating = (
                progress.task(f"Generating {bench.name}", len(items))
                if progress is not None
                else None
            )
            free_text = score_generated(
                model,
                tokenizer,
                items,
                text_metrics,
                registries=registries,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                progress=generating,
            )
        seconds = time.perf_counter() - started
        return BenchmarkResult(
            bench=bench.name,
            location=location,
            n=metric.n,
            accuracy=None,
            ci_low=None,
            ci_high=None,
            acc_norm=None,
            perplexity=metric.value,
            per_category={},
            errors=dict(metric.errors),
            shots=0,
            choices="",
            mode="perplexity",
            seconds=seconds,
            metric=metric,
            free_text=free_text,
        )
    spec = MCQSpec(
        choices=choices or bench.choices,
        shots=bench.shots if shots is None else shots,
        fewshot_by_category=bench.fewshot_by_category,
        description=bench.description,
        batch_size=batch_size,
        max_length=max_length,
        mode=mode,
        chat_template=chat_template,
    )
    metric = score_mcq(
        model, tokenizer, items, spec, fewshot=pool, progress=advance, name="mcq_accuracy"
    )
    seconds = time.perf_counter() - started
    acc_norm = metric.extra.get("acc_norm")
    return BenchmarkResult(
        bench=bench.name,
        location=location,
        n=metric.n,
        accuracy=metric.value,
        ci_low=metric.ci_low,
        ci_high=metric.ci_high,
        acc_norm=float(acc_norm) if acc_norm is not None else None,
        perplexity=None,
        per_category={k: v.to_dict() for k, v in metric.per_category.items()},
        errors=dict(metric.errors),
        shots=spec.shots,
        choices=spec.choices,
        mode=spec.mode,
        seconds=seconds,
        metric=metric,
    )


# --------------------------------------------------------------------------- comparison


@attrs.frozen(kw_only=True)
class Comparison:
    """Adapter minus base on one benchmark, over the same items.

    Attributes:
        bench: the benchmark's name.
        n: items compared.
        measure: ``"accuracy"`` or ``"perplexity"``.
        base: the base model's value.
        adapter: the adapter's value.
        delta: ``adapter - base`` (for perplexity, negative is better).
        ci_low: the lower bound of the paired bootstrap 95 % interval of ``delta`` (``None`` for
            perplexity: per-item losses are not kept).
        ci_high: the upper bound.
        per_category: per category ``{"n", "base", "adapter", "delta", "ci_low", "ci_high"}``.
        resamples: bootstrap resamples.
        seed: the bootstrap seed.
    """

    bench: str
    n: int
    measure: str
    base: float
    adapter: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    per_category: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    resamples: int = 0
    seed: int = 0

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        if self.ci_low is None or self.ci_high is None:
            return False
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        out = attrs.asdict(self)
        out["significant"] = self.significant
        return out


def compare(
    base: BenchmarkResult,
    adapter: BenchmarkResult,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """The adapter's change over the base model, with a paired bootstrap interval.

    Both results must come from the same benchmark and the same items in the same order.

    Raises:
        ConfigError: different benchmarks or items.
    """
    if base.bench != adapter.bench:
        raise ConfigError(f"cannot compare benchmark {base.bench!r} with {adapter.bench!r}")
    if base.metric.item_ids != adapter.metric.item_ids:
        raise ConfigError(
            f"benchmark {base.bench!r}: the two runs scored different items",
            hint="run base and adapter with the same path, --limit and data",
        )
    if base.accuracy is None or adapter.accuracy is None:
        if base.perplexity is None or adapter.perplexity is None:
            raise ConfigError(f"benchmark {base.bench!r}: nothing to compare")
        return Comparison(
            bench=base.bench,
            n=base.n,
            measure="perplexity",
            base=base.perplexity,
            adapter=adapter.perplexity,
            delta=adapter.perplexity - base.perplexity,
            ci_low=None,
            ci_high=None,
        )
    boot = paired_bootstrap(
        base.metric.correct, adapter.metric.correct, resamples=resamples, seed=seed
    )
    per_category: dict[str, dict[str, Any]] = {}
    categories = base.metric.item_categories
    if categories:
        for name in sorted(set(categories)):
            index = [i for i, c in enumerate(categories) if c == name]
            part = paired_bootstrap(
                [base.metric.correct[i] for i in index],
                [adapter.metric.correct[i] for i in index],
                resamples=resamples,
                seed=seed,
            )
            per_category[name] = {
                "n": part.n,
                "base": part.mean_a,
                "adapter": part.mean_b,
                "delta": part.delta,
                "ci_low": part.ci_low,
                "ci_high": part.ci_high,
            }
    return Comparison(
        bench=base.bench,
        n=boot.n,
        measure="accuracy",
        base=boot.mean_a,
        adapter=boot.mean_b,
        delta=boot.delta,
        ci_low=boot.ci_low,
        ci_high=boot.ci_high,
        per_category=per_category,
        resamples=resamples,
        seed=seed,
    )


# --------------------------------------------------------------------------- adapters


def _same_model(a: str, b: str) -> bool:
    from lorakit.model import resolve_model_path

    a, b = resolve_model_path(a.strip()), resolve_model_path(b.strip())
    if a.rstrip("/") == b.rstrip("/"):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return False


def check_adapter_base(adapter_dir: str | Path, model: str) -> str | None:
    """Check that an adapter was trained on ``model``; return the base it names.

    The rule: read ``base_model_name_or_path`` from the adapter's ``adapter_config.json``. The
    two names match when they are the same text (ignoring surrounding whitespace and a trailing
    ``/``), when both are existing local folders that resolve to the same folder (symlinks and
    relative paths resolved), or when both name lorakit's built-in ``tiny-phi3``. A hub id never
    matches a local folder, even a copy of that model: pass the name the adapter was trained
    with. An adapter that records no base cannot be checked and passes (``None`` is returned).

    Args:
        adapter_dir: the adapter folder (``save_pretrained`` output).
        model: the ``--model`` given: a hub id, a local folder or ``tiny-phi3``.

    Returns:
        The adapter's recorded base model, or ``None`` when it records none.

    Raises:
        ConfigError: no ``adapter_config.json``, unreadable JSON, or a different base model.
    """
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise ConfigError(
            "is not an adapter folder (no adapter_config.json)",
            file=str(adapter_dir),
            field="adapter",
            hint="pass the adapter folder a training run wrote (RUN_DIR/adapter)",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"cannot read the adapter config: {exc}", file=str(config_path), field="adapter"
        ) from None
    recorded = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not recorded:
        return None
    if not _same_model(str(recorded), model):
        raise ConfigError(
            f"the adapter was trained on {recorded!r}, not on --model {model!r}",
            file=str(config_path),
            field="base_model_name_or_path",
            hint=f"pass --model {recorded}",
        )
    return str(recorded)
