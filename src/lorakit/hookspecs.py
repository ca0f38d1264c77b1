"""Every hook a lorakit plugin can implement.

A plugin is a module or object with functions named like these hooks and marked
with :data:`hookimpl`; it is found through the ``lorakit`` entry-point group.
Hooks are called with keyword arguments; an implementation may accept any
subset of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from lorakit.protocols import Register

if TYPE_CHECKING:
    from lorakit.model import LoadedModel, ModelSpec
    from lorakit.plugins import Registries
    from lorakit.recipe import Recipe, RunResult

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("lorakit")
hookimpl = pluggy.HookimplMarker("lorakit")


@hookspec
def lorakit_register_sources(register: Register) -> None:
    """Register source readers under their URI scheme.

    Call ``register(scheme, reader)`` once per scheme, where ``reader`` is a
    :class:`~lorakit.protocols.SourceReader`. ``register("jsonl", read_jsonl)``
    makes ``jsonl:path/to/file.jsonl`` readable. Return nothing; a scheme
    registered twice is a :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_cleaners(register: Register) -> None:
    """Register row cleaners by name.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a fresh
    :class:`~lorakit.protocols.Cleaner`. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_templates(register: Register) -> None:
    """Register prompt templates by name.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a
    :class:`~lorakit.protocols.Template`. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_metrics(register: Register) -> None:
    """Register evaluation metrics by name.

    Call ``register(name, metric)`` where ``metric`` is a
    :class:`~lorakit.protocols.Metric`. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_vocabularies(register: Register) -> None:
    """Register medical vocabularies by name, for the ``medical_concepts`` metric.

    Call ``register(name, vocabulary)`` where ``vocabulary`` is a
    :class:`~lorakit.evaluate.concepts.Vocabulary` (``name``, ``version`` and
    ``terms()`` yielding :class:`~lorakit.evaluate.concepts.ConceptTerm`). Return nothing;
    a duplicate name is a :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_benchmarks(register: Register) -> None:
    """Register evaluation benchmarks by name.

    Call ``register(name, benchmark)`` where ``benchmark`` is a
    :class:`~lorakit.evaluate.benchmarks.Benchmark`: the source scheme that reads
    its files and how its items are scored. ``lorakit eval --bench NAME:PATH`` and
    ``evaluation.benchmarks`` then accept it. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_presets(register: Register) -> None:
    """Register training presets by name.

    Call ``register(name, preset)``; ``lorakit presets`` lists them and
    ``lorakit train NAME`` runs one. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_retrievers(register: Register) -> None:
    """Register index stores (where an index's dense vectors live and are searched) by name.

    Call ``register(name, factory)`` where ``factory`` is a
    :class:`~lorakit.retrieval.stores.StoreFactory`: ``write(folder, vectors, passage_ids,
    options)`` stores the vectors of a new index and returns the settings its card keeps;
    ``open(folder, settings)`` returns a :class:`~lorakit.retrieval.stores.VectorStore` that
    finds the rows nearest to a query vector. ``lorakit index build --store NAME`` and
    :func:`~lorakit.retrieval.load_index` then use it. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_guards(register: Register) -> None:
    """Register safety guards by name.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a
    :class:`~lorakit.protocols.Guard` (``name``, ``stage`` ``"input"`` or ``"output"``,
    ``check(text, *, question=None) -> Verdict``). A policy (``--policy``,
    :func:`~lorakit.safety.load_policy`) names the guards it runs, with their options.
    Return nothing; a duplicate name is a :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_trackers(register: Register) -> None:
    """Register experiment trackers by name.

    Call ``register(name, factory)`` where ``factory`` is a
    :class:`~lorakit.tracking.TrackerFactory`: ``requires`` (modules it imports), ``install``
    (what to install when one is missing) and ``create(recipe, run_dir)`` returning a
    :class:`~lorakit.tracking.Tracker` (``log_params``, ``log_metrics``, ``log_artifacts``,
    ``finish``). A run whose ``training.report_to`` names it then reports to it. Return
    nothing; a duplicate name is a :class:`~lorakit.errors.PluginError`.
    """


@hookspec(firstresult=True)
def lorakit_load_model(spec: ModelSpec) -> LoadedModel | None:
    """Load the base model and tokenizer for ``spec``, or return ``None`` to pass.

    The first implementation that returns a :class:`~lorakit.model.LoadedModel`
    wins; lorakit's built-in Hugging Face + bitsandbytes loader runs last. Use it
    to load from a private store or another quantisation backend.
    """


@hookspec
def lorakit_trainer_callbacks(recipe: Recipe) -> list[Any]:
    """Return extra ``transformers.TrainerCallback`` objects for a run of ``recipe``.

    Return a list (possibly empty); lorakit attaches every returned callback to
    the trainer, after its own.
    """
    return []


@hookspec
def lorakit_run_start(recipe: Recipe, run_dir: Path, registries: Registries) -> None:
    """Called once a run directory is ready, before the model loads, with what the run's
    plugins registered. Return nothing."""


@hookspec
def lorakit_log_metrics(metrics: dict[str, Any], step: int, run_dir: Path) -> None:
    """Called with every logged record (``loss``, ``eval_loss``, ``learning_rate`` ...),
    the optimizer step and the run's directory, as it is appended to ``metrics.jsonl``.
    Return nothing."""


@hookspec
def lorakit_run_failed(recipe: Recipe, run_dir: Path, error: BaseException) -> None:
    """Called when a run that started stops with an error (including ``KeyboardInterrupt``),
    before the error propagates; no report is written. Return nothing."""


@hookspec
def lorakit_run_end(result: RunResult) -> None:
    """Called after a run finished and its report is written. Return nothing."""
