"""``Recipe``: model + adapter + data + training, and ``run()`` which wires them together.

The recipe is the only place where data and model meet. ``run()`` writes one run
directory::

    RUN_DIR/
      recipe.json        the resolved recipe
      data_report.json   rows read, dropped per cleaner, split, truncation, lengths
      eval_before.json   answer-only eval loss of the base model (before training)
      checkpoints/       trainer checkpoints (resume from the latest)
      metrics.jsonl      every logged training / eval record
      adapter/           the final (best) adapter and tokenizer, written atomically
      report.json        results and run card; written last: a run is complete iff it exists
      report.md          the same, for people
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit._fs import LOCK_FILE, fs_error, read_json_object, write_json_atomic
from lorakit._validators import number
from lorakit.adapter import AdapterSpec
from lorakit.data.pipeline import DataSpec
from lorakit.errors import ConfigError, LorakitError
from lorakit.model import ModelSpec
from lorakit.overrides import apply_overrides
from lorakit.train import TrainingSpec

if TYPE_CHECKING:
    from lorakit.plugins import Registries
    from lorakit.run_report import RunReport

__all__ = ["EvalSpec", "Recipe", "RunResult", "load_recipe_dict"]

RUN_FILES = ("recipe.json", "report.json")


def _benchmarks(value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    from lorakit.evaluate.benchmarks import parse_bench

    for text in items:
        parse_bench(text)
    return items


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class EvalSpec:
    """What a run evaluates after training, besides answer-only loss and perplexity.

    Attributes:
        benchmarks: ``NAME:PATH`` benchmarks (``medqa:FILE``, ``mmlu_medical:DIR`` ...) scored
            for the base model and the adapter, with 95 % intervals and the paired difference;
            when any is named, the recipe's test split is compared too (``heldout``).
        limit: score only the first ``limit`` items of each benchmark.
        shots: exemplars per item (``None``: each benchmark's default).
        chat_template: render multiple-choice prompts with the tokenizer's chat template, as
            the adapter was trained (off: the plain ``Question ... Answer:`` format of
            lm-evaluation-harness, comparable with published scores).
        metrics: text metrics (``token_f1``, ``rouge_l`` ...) for answers that base and adapter
            generate to the test split's questions (the first ``limit``).
        max_new_tokens: the longest generated answer.
    """

    benchmarks: tuple[str, ...] = attrs.field(default=(), converter=_benchmarks)
    limit: int | None = attrs.field(
        default=None, validator=number("evaluation", ge=1, optional=True)
    )
    shots: int | None = attrs.field(
        default=None, validator=number("evaluation", ge=0, optional=True)
    )
    chat_template: bool = True
    metrics: tuple[str, ...] = attrs.field(default=(), converter=_names)
    max_new_tokens: int = attrs.field(default=256, validator=number("evaluation", ge=1))


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _name(instance: Any, attribute: Any, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(
            f"{value!r} is not a name: a recipe name is letters, digits, '.', '_' and '-' "
            "(it prefixes run directories, so it may not be a path)",
            field="name",
            hint="choose the folder with --run-dir, not with the name",
        )


@attrs.frozen(kw_only=True, repr=False)
class Recipe:
    """Everything a fine-tuning run needs, as frozen data (building one does no I/O).

    Attributes:
        name: the recipe's name (presets use their own); prefixes run directories.
        model: the base model and its quantisation.
        adapter: the LoRA adapter.
        data: the data pipeline.
        training: optimizer, schedule, batch sizes, evaluation and checkpoints.
        evaluation: benchmarks scored for base and adapter at the end of the run.
    """

    name: str = attrs.field(validator=_name)
    model: ModelSpec
    adapter: AdapterSpec = attrs.field(factory=AdapterSpec)
    data: DataSpec
    training: TrainingSpec = attrs.field(factory=TrainingSpec)
    evaluation: EvalSpec = attrs.field(factory=EvalSpec)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Recipe:
        """A copy with settings changed by dotted path: ``{"adapter.rank": 32}``.

        String values (from the command line) are parsed to the setting's type.
        An unknown key raises :class:`ConfigError` suggesting the closest one.
        """
        return apply_overrides(self, overrides)

    def __repr__(self) -> str:
        """Every setting on its own line, by dotted path (what ``--set`` takes)."""
        from lorakit.overrides import dotted_keys

        lines = [f"Recipe({self.name!r})"]
        for key in dotted_keys(self):
            value: Any = self
            for part in key.split("."):
                value = getattr(value, part)
            if isinstance(value, tuple) and value and not isinstance(value[0], str):
                value = tuple(str(v) for v in value)
            lines.append(f"  {key} = {value!r}")
        return "\n".join(lines)

    def check(self, registries: Registries | None = None) -> list[LorakitError]:
        """Every problem the plugins find before a model loads, all at once (empty: none).

        Unknown cleaners, sources, templates, benchmarks or metrics, bad options, a data
        source or benchmark file that cannot be read. ``lorakit check`` prints them.
        """
        from lorakit._validators import check_recipe

        if registries is None:
            from lorakit.plugins import Registries, make_plugin_manager

            registries = Registries.from_plugin_manager(make_plugin_manager())
        return check_recipe(self, registries)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-able data (what ``recipe.json`` holds)."""
        data: dict[str, Any] = _jsonable(attrs.asdict(self, recurse=True))
        return data

    def run(
        self,
        run_dir: str | Path | None = None,
        *,
        plugin_manager: Any = None,
        show_progress: bool = True,
    ) -> RunResult:
        """Train and evaluate; return the result. See :func:`lorakit.runner.run_recipe`."""
        from lorakit.runner import run_recipe

        return run_recipe(self, run_dir, plugin_manager=plugin_manager, show_progress=show_progress)


@attrs.frozen(kw_only=True)
class RunResult:
    """What a finished run produced: its directory, adapter and report."""

    run_dir: Path
    adapter_dir: Path
    report: RunReport
    model: Any = attrs.field(default=None, repr=False, eq=False)
    """The trained PEFT model, still in memory (the best adapter loaded)."""
    tokenizer: Any = attrs.field(default=None, repr=False, eq=False)

    @property
    def eval_loss(self) -> float:
        """Answer-only eval loss of the final adapter."""
        return self.report.eval.loss


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def recipe_hash(recipe: Recipe) -> str:
    """A short hash of the resolved recipe, to recognise a run directory on resume."""
    text = json.dumps(recipe.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_run_dir(name: str) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` under the current directory."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def prepare_run_dir(run_dir: Path, recipe: Recipe) -> bool:
    """Create or check ``run_dir``; return True when it holds an unfinished run of this recipe.

    Call it while holding the directory's :class:`lorakit._fs.RunLock` (the runner does).

    Raises:
        ConfigError: the directory holds a finished run, another recipe's run, or
            files that are not a lorakit run.
        LorakitError: the directory cannot be created or written, or its ``recipe.json``
            is damaged.
    """
    recipe_file = run_dir / "recipe.json"
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        if (run_dir / "report.json").exists():
            raise ConfigError(
                "the run directory already holds a finished run",
                file=str(run_dir),
                hint="choose another --run-dir: runs never overwrite a finished run",
            )
        if not recipe_file.exists():
            raise ConfigError(
                "the run directory exists and is not a lorakit run",
                file=str(run_dir),
                hint="choose an empty or new --run-dir",
            )
        stored = read_json_object(recipe_file, "the run's recipe.json")
        if stored.get("hash") == recipe_hash(recipe):
            return True
        if any((run_dir / "checkpoints").glob("checkpoint-*")):
            raise ConfigError(
                "the run directory holds an unfinished run of a different recipe",
                file=str(run_dir),
                hint="resume it with the same preset and --set values, or choose another --run-dir",
            )
        # An earlier attempt stopped before its first checkpoint (a bad setting, say):
        # nothing to resume, so start over with this recipe.
        for name in ("data_report.json", "eval_before.json", "metrics.jsonl", "memory_plan.json"):
            (run_dir / name).unlink(missing_ok=True)
    make_run_dir(run_dir)
    write_json_atomic(recipe_file, {"hash": recipe_hash(recipe), "recipe": recipe.to_dict()})
    return False


def make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and its parents; a one-line error when that cannot be done."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            "the run directory is a file",
            file=str(run_dir),
            hint="choose another --run-dir",
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            "a part of the run directory's path is a file, not a folder",
            file=str(run_dir),
            hint="choose another --run-dir",
        ) from None
    except OSError as error:
        raise fs_error(error, "create the run directory", run_dir) from None


def load_recipe_dict(run_dir: str | Path) -> dict[str, Any]:
    """The resolved recipe stored in a run directory."""
    path = Path(run_dir) / "recipe.json"
    if not path.is_file():
        raise LorakitError(
            "no recipe.json here", file=str(path), hint="is this a lorakit run directory?"
        )
    recipe = read_json_object(path, "the run's recipe.json").get("recipe")
    if not isinstance(recipe, dict):
        raise LorakitError(
            "recipe.json has no 'recipe' object",
            file=str(path),
            field="recipe",
            hint="the file was damaged: restore it, or start a new run",
        )
    return recipe


def versions() -> dict[str, str]:
    """Versions of lorakit and the libraries a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "lorakit",
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "accelerate",
        "tokenizers",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
