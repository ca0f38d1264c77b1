"""Experiment tracking: ``training.report_to = ["tensorboard", "mlflow"]``.

Trackers are registered by name through ``lorakit_register_trackers`` (TensorBoard and MLflow
are built in, as ordinary plugins) and driven by the run hooks of this module, so a third-party
tracker (W&B, Aim, ...) gets exactly what the built-ins get::

    run start   -> TrackerFactory.create(recipe, run_dir) and Tracker.log_params(recipe)
    every log   -> Tracker.log_metrics(record, step)      (the records of metrics.jsonl)
    run end     -> Tracker.log_artifacts(report, adapter) and Tracker.finish("complete")
    run failed  -> Tracker.finish("failed")
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lorakit.errors import ConfigError
from lorakit.hookspecs import hookimpl
from lorakit.protocols import Register

if TYPE_CHECKING:
    from lorakit.plugins import Registries
    from lorakit.recipe import Recipe, RunResult

__all__ = [
    "Tracker",
    "TrackerFactory",
    "check_tracker",
    "flat_params",
    "numeric_metrics",
]


@runtime_checkable
class Tracker(Protocol):
    """One run as a tracker sees it. Every method returns nothing."""

    def log_params(self, params: Mapping[str, str]) -> None:
        """The resolved recipe, by dotted key (``adapter.rank`` -> ``"16"``)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """The numbers of one ``metrics.jsonl`` record at optimizer step ``step``."""

    def log_artifacts(self, run_dir: Path, files: Iterable[Path]) -> None:
        """Files and folders of the finished run (``report.json``, ``report.md``, ``adapter/``)."""

    def finish(self, status: str) -> None:
        """Close the run: ``status`` is ``"complete"`` or ``"failed"``."""


@runtime_checkable
class TrackerFactory(Protocol):
    """What ``lorakit_register_trackers`` registers.

    Attributes:
        requires: the modules the tracker imports (checked before the model loads).
        install: what to install when one is missing (``pip install 'lorakit[mlflow]'``).
    """

    requires: tuple[str, ...]
    install: str

    def create(self, recipe: Recipe, run_dir: Path) -> Tracker:
        """Open (or, for a resumed run, reopen) the tracker's run for ``run_dir``."""


def _missing(modules: Iterable[str]) -> list[str]:
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            missing.append(module)
    return missing


def check_tracker(name: str, registries: Registries) -> TrackerFactory:
    """The registered tracker ``name``, with its packages installed, or a one-line error."""
    factory: TrackerFactory = registries.trackers.resolve(name)
    missing = _missing(getattr(factory, "requires", ()))
    if missing:
        raise ConfigError(
            f"tracker {name!r} needs {', '.join(missing)}, which is not installed",
            field="training.report_to",
            hint=getattr(factory, "install", "") or f"install {', '.join(missing)}",
        )
    return factory


def flat_params(recipe: Recipe) -> dict[str, str]:
    """The resolved recipe as ``{dotted key: text}`` (what ``--set`` takes)."""
    out: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, Mapping) and value and prefix.count(".") < 3:
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(value, (list, tuple)):
            out[prefix] = ",".join(str(item) for item in value)
        else:
            out[prefix] = "none" if value is None else str(value)

    walk({"name": recipe.name, **recipe.to_dict()}, "")
    return out


def numeric_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a ``metrics.jsonl`` record, without ``step``."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step"
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


# Open trackers by run directory: the run hooks of one run find them again by its directory.
_OPEN: dict[Path, list[Tracker]] = {}


@hookimpl
def lorakit_register_trackers(register: Register) -> None:
    from lorakit.tracking.mlflow import MlflowFactory
    from lorakit.tracking.tensorboard import TensorBoardFactory

    register("tensorboard", TensorBoardFactory())
    register("mlflow", MlflowFactory())


@hookimpl
def lorakit_run_start(recipe: Recipe, run_dir: Path, registries: Registries) -> None:
    names = recipe.training.report_to
    if not names:
        return
    factories = [check_tracker(name, registries) for name in names]  # all checked first
    trackers = _OPEN.setdefault(run_dir.resolve(), [])
    params = flat_params(recipe)
    try:
        for factory in factories:
            tracker = factory.create(recipe, run_dir)
            trackers.append(tracker)
            tracker.log_params(params)
    except BaseException:
        for tracker in _OPEN.pop(run_dir.resolve(), []):
            tracker.finish("failed")
        raise


@hookimpl
def lorakit_log_metrics(metrics: dict[str, Any], step: int, run_dir: Path) -> None:
    numbers = numeric_metrics(metrics)
    for tracker in _OPEN.get(run_dir.resolve(), ()):
        tracker.log_metrics(numbers, step)


@hookimpl
def lorakit_run_end(result: RunResult) -> None:
    run_dir = result.run_dir.resolve()
    files = [run_dir / name for name in ("report.json", "report.md")] + [result.adapter_dir]
    trackers = _OPEN.pop(run_dir, [])
    for tracker in trackers:
        tracker.log_metrics(_summary(result), result.report.steps)
        tracker.log_artifacts(run_dir, [path for path in files if path.exists()])
        tracker.finish("complete")


@hookimpl
def lorakit_run_failed(recipe: Recipe, run_dir: Path, error: BaseException) -> None:
    for tracker in _OPEN.pop(run_dir.resolve(), []):
        tracker.finish("failed")


def _summary(result: RunResult) -> dict[str, float]:
    """The report's headline numbers, logged once at the end (``final_*``)."""
    report = result.report
    out = {
        "final_eval_loss": report.eval.loss,
        "final_eval_perplexity": report.eval.perplexity,
        "eval_loss_before": report.eval.loss_before,
    }
    if report.cost is not None and report.cost.tokens_per_s is not None:
        out["final_tokens_per_s"] = report.cost.tokens_per_s
    for name, bench in (report.benchmarks or {}).items():
        accuracy = (bench.get("adapter") or {}).get("accuracy")
        if isinstance(accuracy, (int, float)):
            out[f"final_{name}_accuracy"] = float(accuracy)
    return numeric_metrics(out)
