"""Named medical benchmarks: read the native files, score a model on them.

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
``heldout:jsonl:data/test.jsonl``), as ``lorakit eval --bench`` takes it; ``NAME`` alone scores
what ``lorakit data get`` fetched into the data home (:mod:`lorakit.data.get`). Benchmarks are
registered through the ``lorakit_register_benchmarks`` hook; this module is the built-in plugin
that registers the five above, exactly as a third party registers its own.

How a benchmark is scored (limit, shots, choices, batch size ...) is a
:class:`~lorakit.evaluate.spec.BenchSpec`. :func:`run_benchmark` reads the items and hands them
to :func:`run_mcq_benchmark` or :func:`run_perplexity_benchmark`.

*Exemplars* (``shots`` > 0). ``mmlu_medical`` takes the first rows of the same subject from
the MMLU dev split: the ``dev`` folder beside a ``test`` or ``val`` folder when the path is one,
else the benchmark's own rows; the other benchmarks take the first rows of the benchmark file
itself. In every case the item itself is never its own exemplar (lm-evaluation-harness's
``first_n`` sampler). Exemplars come from the whole file, not only the ``limit``-ed items.

*Limits*. ``limit`` keeps the first ``limit`` items in file order (after the subject filter), so
a limited MMLU run covers the first subjects only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit.errors import ConfigError, DataError, PluginError, did_you_mean
from lorakit.evaluate.base import MetricResult
from lorakit.evaluate.generate import resolve_template, score_generated
from lorakit.evaluate.mcq import score_mcq
from lorakit.evaluate.spec import BenchSpec, ChoiceStyle
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.plugins import Registries
    from lorakit.protocols import Register
    from lorakit.reporting import ProgressReporter

__all__ = [
    "BENCHMARKS",
    "MMLU_MEDICAL_SUBJECTS",
    "Benchmark",
    "BenchmarkResult",
    "check_benchmarks",
    "load_benchmark",
    "lorakit_register_benchmarks",
    "parse_bench",
    "resolve_benchmark",
    "run_benchmark",
    "run_mcq_benchmark",
    "run_perplexity_benchmark",
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


@hookimpl
def lorakit_register_benchmarks(register: Register) -> None:
    """Register the built-in benchmarks (:data:`BENCHMARKS`)."""
    for bench in BENCHMARKS.values():
        register(bench.name, bench)


def resolve_benchmark(name: str, registries: Registries | None = None) -> Benchmark:
    """The benchmark registered under ``name`` (case-insensitive for lorakit's lowercase names).

    With ``registries`` ``None``, a built-in name is answered without a plugin manager; any
    other name is looked up in the default plugin manager's registries (installed plugins).

    Raises:
        ConfigError: an unknown name, suggesting the nearest.
        PluginError: a plugin registered something that is not a :class:`Benchmark`.
    """
    key = name.strip()
    if registries is None and key.lower() in BENCHMARKS:
        return BENCHMARKS[key.lower()]
    if registries is None:
        from lorakit.plugins import Registries as _Registries

        registries = _Registries.from_plugin_manager()
    found = registries.benchmarks
    if key not in found and key.lower() in found:
        key = key.lower()
    if key not in found:
        known = found.names()
        raise ConfigError(
            f"unknown benchmark {key!r}",
            field="bench",
            hint=did_you_mean(key, known) or f"benchmarks: {', '.join(known) or 'none'}",
        )
    entry = found.entry(key)
    if not isinstance(entry.obj, Benchmark):
        raise PluginError(
            f"plugin {entry.plugin!r} registered benchmark {key!r} as a "
            f"{type(entry.obj).__name__}, not a lorakit.evaluate.benchmarks.Benchmark"
        )
    bench: Benchmark = entry.obj
    return bench if bench.name == key else attrs.evolve(bench, name=key)


def parse_bench(text: str, registries: Registries | None = None) -> tuple[Benchmark, str]:
    """Split ``NAME:PATH`` into the benchmark and its location.

    ``heldout:jsonl:data/test.jsonl`` gives ``heldout`` and the source URI ``jsonl:...``;
    ``medqa`` alone gives the file ``lorakit data get medqa`` fetched into the data home.

    Args:
        text: ``NAME:PATH``, or ``NAME`` of a benchmark ``lorakit data get`` provides.
        registries: where benchmark names are looked up (see :func:`resolve_benchmark`).

    Raises:
        ConfigError: no ``:PATH`` and no fetched data, an unknown name, or a ``heldout``
            location without a scheme.
    """
    name, sep, location = text.partition(":")
    try:
        bench = resolve_benchmark(name, registries)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} in {text!r}", field="bench", hint=exc.hint) from None
    if not sep or not location.strip():
        location = _fetched_location(bench)
    if bench.scheme is None:
        from lorakit.data.sources import parse_uri

        parse_uri(location)
    return bench, location


def _fetched_location(bench: Benchmark) -> str:
    """Where ``lorakit data get`` put the benchmark's file (``--bench medqa`` without a path)."""
    from lorakit.data.get import data_home, fetched_bench_location

    found, dataset = fetched_bench_location(bench.name)
    if found is not None:
        return found
    example = "jsonl:FILE" if bench.scheme is None else "PATH"
    if not dataset:
        raise ConfigError(
            f"benchmark {bench.name!r} needs a location: write {bench.name}:{example}",
            field="bench",
        )
    raise ConfigError(
        f"benchmark {bench.name!r} has no path and {data_home() / dataset} holds no download",
        field="bench",
        hint=f"run lorakit data get {dataset} (needs the network), or write --bench "
        f"{bench.name}:{example} for a file you have",
    )


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


def check_benchmarks(
    benches: Sequence[str | tuple[Benchmark, str]], *, registries: Registries | None = None
) -> list[tuple[Benchmark, str]]:
    """Parse every benchmark and read it once, before any model loads.

    Each benchmark is read as :func:`load_benchmark` reads it (a missing file, a wrong format,
    a row without options fail here, naming the file, line and field), so a bad ``--bench``
    costs a second, not a model load.

    Args:
        benches: ``NAME:PATH`` texts or parsed ``(benchmark, location)`` pairs.
        registries: where benchmark names and source schemes are looked up.

    Returns:
        The parsed ``(benchmark, location)`` pairs, in order.

    Raises:
        ConfigError: an unknown benchmark or a bad location.
        DataError: a file that cannot be read as its benchmark's format.
    """
    parsed = [parse_bench(b, registries) if isinstance(b, str) else b for b in benches]
    for bench, location in parsed:
        load_benchmark(bench, location, limit=1, registries=registries)
    return parsed


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

    @classmethod
    def from_mcq(
        cls, bench: str, location: str, metric: MetricResult, *, seconds: float
    ) -> BenchmarkResult:
        """The result of a multiple-choice benchmark from :func:`~lorakit.evaluate.mcq.score_mcq`'s
        metric (its ``extra`` carries the shots, choices and mode it scored with)."""
        acc_norm = metric.extra.get("acc_norm")
        return cls(
            bench=bench,
            location=location,
            n=metric.n,
            accuracy=metric.value,
            ci_low=metric.ci_low,
            ci_high=metric.ci_high,
            acc_norm=float(acc_norm) if acc_norm is not None else None,
            perplexity=None,
            per_category={k: v.to_dict() for k, v in metric.per_category.items()},
            errors=dict(metric.errors),
            shots=int(metric.extra.get("shots", 0)),
            choices=str(metric.extra.get("choices", "letters")),
            mode=str(metric.extra.get("mode", "loglikelihood")),
            seconds=seconds,
            metric=metric,
        )

    @classmethod
    def from_perplexity(
        cls,
        bench: str,
        location: str,
        metric: MetricResult,
        *,
        seconds: float,
        free_text: Mapping[str, Any] | None = None,
    ) -> BenchmarkResult:
        """The result of a free-text benchmark from the ``perplexity`` metric's result, with
        the generated answers' scores (:func:`score_generated`) when there are any."""
        return cls(
            bench=bench,
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


# --------------------------------------------------------------------------- scoring


def _task(progress: ProgressReporter | None, description: str, total: int) -> Any:
    return progress.task(description, total) if progress is not None else None


def run_mcq_benchmark(
    model: Any,
    tokenizer: Any,
    bench: Benchmark,
    items: Sequence[QARow],
    spec: BenchSpec | None = None,
    *,
    pool: Sequence[QARow] | None = None,
    location: str = "(rows)",
    progress: ProgressReporter | None = None,
) -> BenchmarkResult:
    """Score multiple-choice ``items`` of ``bench`` (its defaults where ``spec`` says ``None``).

    ``pool`` is the exemplar pool (``None``: the items); ``spec.limit`` is not applied here.

    Raises:
        ConfigError: bad options, too few exemplars.
        DataError: a row without options.
    """
    spec = (spec or BenchSpec()).for_benchmark(bench)
    advance = _task(progress, f"Scoring {bench.name}", len(items))
    started = time.perf_counter()
    metric = score_mcq(model, tokenizer, items, spec, fewshot=pool, progress=advance)
    return BenchmarkResult.from_mcq(
        bench.name, location, metric, seconds=time.perf_counter() - started
    )


def run_perplexity_benchmark(
    model: Any,
    tokenizer: Any,
    bench: Benchmark,
    items: Sequence[QARow],
    spec: BenchSpec | None = None,
    *,
    location: str = "(rows)",
    progress: ProgressReporter | None = None,
    registries: Registries | None = None,
) -> BenchmarkResult:
    """Score free-text ``items`` by answer-only perplexity, rendered with ``spec.template``;
    with ``spec.text_metrics``, also generate answers and score them (:func:`score_generated`).

    Raises:
        ConfigError: bad options, an unknown text metric, nothing left to score.
    """
    from lorakit.evaluate.perplexity import Perplexity

    spec = spec or BenchSpec()
    template = resolve_template(spec, registries)
    advance = _task(progress, f"Scoring {bench.name}", len(items))
    started = time.perf_counter()
    metric = Perplexity().evaluate(
        model,
        tokenizer,
        items,
        template=template,
        max_len=spec.max_len,
        batch_size=spec.batch_size,
        progress=advance,
    )
    free_text = None
    if spec.text_metrics:
        generating = _task(progress, f"Generating {bench.name}", len(items))
        free_text = score_generated(
            model, tokenizer, items, spec, registries=registries, progress=generating
        )
    return BenchmarkResult.from_perplexity(
        bench.name,
        location,
        metric,
        seconds=time.perf_counter() - started,
        free_text=free_text,
    )


def _target(
    bench: str | Benchmark, path: str | None, registries: Registries | None
) -> tuple[Benchmark, str | None]:
    if not isinstance(bench, str):
        return bench, path
    if ":" not in bench:
        return resolve_benchmark(bench, registries), path
    if path is not None:
        raise ConfigError(
            f"benchmark {bench!r} names its location and path={path!r} another",
            field="bench",
            hint="pass NAME:PATH alone, or NAME and path",
        )
    return parse_bench(bench, registries)


def run_benchmark(
    model: Any,
    tokenizer: Any,
    bench: str | Benchmark,
    path: str | None = None,
    spec: BenchSpec | None = None,
    *,
    rows: Sequence[QARow] | None = None,
    progress: ProgressReporter | None = None,
    registries: Registries | None = None,
) -> BenchmarkResult:
    """Score ``model`` on one benchmark.

    Args:
        model: a causal LM (transformers, or PEFT with an adapter).
        tokenizer: its tokenizer.
        bench: a :class:`Benchmark`, its name, or ``"NAME:PATH"`` (then ``path`` is ``None``).
        path: the benchmark's location; may be ``None`` when ``rows`` are given.
        spec: how to score (:class:`~lorakit.evaluate.spec.BenchSpec`; defaults when ``None``):
            ``limit`` keeps the first items, ``None`` fields take the benchmark's defaults.
        rows: the items themselves instead of reading ``path`` (the recipe's test split for
            ``heldout``); exemplars then come from these rows.
        progress: a :class:`~lorakit.reporting.ProgressReporter`; one task per benchmark.
        registries: where benchmark names, source schemes, templates and metrics are looked up.

    Returns:
        The benchmark's result.

    Raises:
        ConfigError: an unknown benchmark, bad options, no items.
        DataError: an unreadable file or a bad row, naming the file, line and field.
    """
    spec = spec or BenchSpec()
    target, path = _target(bench, path, registries)
    if rows is not None:
        items = list(rows)[: spec.limit] if spec.limit is not None else list(rows)
        pool = list(rows)
        location = path or "(rows)"
        if not items:
            raise ConfigError(f"benchmark {target.name!r}: no rows to score", field="rows")
    else:
        if path is None:
            raise ConfigError(f"benchmark {target.name!r} needs a path or rows", field="bench")
        items, pool = load_benchmark(target, path, limit=spec.limit, registries=registries)
        location = path
    if target.metric == "perplexity":
        return run_perplexity_benchmark(
            model,
            tokenizer,
            target,
            items,
            spec,
            location=location,
            progress=progress,
            registries=registries,
        )
    return run_mcq_benchmark(
        model, tokenizer, target, items, spec, pool=pool, location=location, progress=progress
    )
