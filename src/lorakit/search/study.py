"""``run_search``: a LoRA search on Optuna where every trial is an ordinary run.

A trial is ``recipe.with_overrides(params).run(SEARCH_DIR/trials/NAME)``: the same phases as
``lorakit train``, with one more trainer callback (from a plugin on ``lorakit_trainer_callbacks``)
that reports each evaluation's loss to Optuna's pruner. Trials are recorded in the study's
storage (a SQLite file in the search folder unless ``storage`` names another), so:

- a search stopped by Ctrl-C or killed resumes with the same command: finished trials are not
  run again, and a trial that was cut short is tried again in the same run directory, resuming
  from its last checkpoint;
- several processes (or machines, with a server database) given one storage URL and study
  name share the trials between them.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit._fs import read_json_object, write_json_atomic, write_text_atomic
from lorakit.errors import ConfigError, LorakitError
from lorakit.hookspecs import hookimpl
from lorakit.search.results import SearchResult, TrialRow, best_trial
from lorakit.search.spec import SearchSpec, trial_dir_name

if TYPE_CHECKING:
    from lorakit.recipe import Recipe
    from lorakit.run_report import RunReport

__all__ = ["TrialPruned", "default_storage", "run_search"]

SEARCH_FILE = "search.json"
BEST_RECIPE = "best.toml"
HOST = socket.gethostname()


class TrialPruned(LorakitError):
    """Raised inside training when the pruner stops a trial."""


def default_storage(folder: Path) -> str:
    """The study's default storage: ``study.db`` (SQLite) in the search folder."""
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise LorakitError(
            "lorakit search needs optuna, which is not installed",
            hint="pip install 'lorakit[search]'",
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def run_search(
    recipe: Recipe,
    spec: SearchSpec,
    folder: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    plugin_manager: Any = None,
    show_progress: bool = True,
    on_trial: Callable[[TrialRow], None] | None = None,
) -> SearchResult:
    """Run (or resume, or join) a search; write its table and best recipe; return the result.

    Args:
        recipe: the base recipe every trial changes.
        spec: the space, objective, sampler, pruner and number of trials.
        folder: the search folder (trial run directories, the table, ``best.toml``).
        storage: an Optuna storage URL; ``None``: ``sqlite:///FOLDER/study.db``.
        study_name: the study's name; ``None``: the recipe's name.
        plugin_manager: the plugins of every trial (``None``: the installed ones).
        show_progress: progress bars in each trial.
        on_trial: called with each trial this process finishes.
    """
    optuna = _optuna()
    folder = Path(folder)
    spec.check(recipe)
    from lorakit.recipe import make_run_dir

    make_run_dir(folder)
    identity = spec.identity(recipe)
    _check_folder(folder, identity)
    url = storage or default_storage(folder)
    name = study_name or recipe.name
    study = _open_study(optuna, spec, url, name, identity)
    _retry_cut_short(optuna, study)
    if plugin_manager is None:
        from lorakit.plugins import make_plugin_manager

        plugin_manager = make_plugin_manager()
    objective = _Objective(optuna, study, recipe, spec, folder, plugin_manager, show_progress)
    while _used(optuna, study) < spec.n_trials:
        study.optimize(objective, n_trials=1, catch=(_TrialFailed,))
        if on_trial is not None and objective.last is not None:
            on_trial(TrialRow.from_trial(study._storage.get_trial(objective.last)))
    return _finish(optuna, study, recipe, spec, folder, url)


def _check_folder(folder: Path, identity: dict[str, Any]) -> None:
    path = folder / SEARCH_FILE
    if path.exists():
        earlier = read_json_object(path, "the search record")
        changed = [key for key in identity if earlier.get(key) != identity[key]]
        if changed:
            raise ConfigError(
                f"the search folder holds another search (its {changed[0].replace('_', ' ')} "
                "differs)",
                file=str(folder),
                hint="resume it with the same recipe, --set, --space and --objective, "
                "or choose another --dir",
            )
    else:
        write_json_atomic(path, identity)


def _open_study(
    optuna: Any, spec: SearchSpec, url: str, name: str, identity: dict[str, Any]
) -> Any:
    sampler = _sampler(optuna, spec)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
        if spec.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):  # processes starting together race to create the tables
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                direction=spec.direction,
                load_if_exists=True,
            )
            break
        except Exception as error:
            text = str(error).lower()
            transient = any(k in text for k in ("locked", "already exists", "unique constraint"))
            if attempt == 2 or not transient:
                raise LorakitError(
                    f"cannot open the study {name!r}: {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}",
                    field="--storage",
                    hint="check the storage URL (sqlite:///FILE, postgresql://..., mysql://...)",
                ) from None
            time.sleep(1.0 + attempt)
    stored = study.user_attrs.get("lorakit_search")
    if stored is None:
        study.set_user_attr("lorakit_search", identity)
    elif stored != identity:
        raise ConfigError(
            f"the study {name!r} in this storage is another search (other recipe, space or "
            "objective)",
            field="--study",
            hint="join it with the same settings, or name another study with --study",
        )
    return study


def _sampler(optuna: Any, spec: SearchSpec) -> Any:
    if spec.resolved_sampler == "grid":
        grid = {param.key: list(param.choices) for param in spec.space}
        return optuna.samplers.GridSampler(grid, seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True)


def _is_retried(trials: list[Any], number: int) -> bool:
    return any(t.user_attrs.get("lorakit_retry_of") == number for t in trials)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry_cut_short(optuna: Any, study: Any) -> None:
    """Queue again the trials a killed or interrupted process of this machine left unfinished;
    each resumes in its run directory from its last checkpoint."""
    state = optuna.trial.TrialState
    storage = study._storage
    trials = storage.get_all_trials(study._study_id, deepcopy=False)
    for trial in trials:
        mine = trial.user_attrs.get("lorakit_host") == HOST
        stale = (
            trial.state == state.RUNNING
            and mine
            and not _alive(trial.user_attrs.get("lorakit_pid"))
        )
        stopped = trial.state == state.FAIL and trial.user_attrs.get("lorakit_interrupted")
        if not (stale or stopped) or _is_retried(trials, trial.number):
            continue
        if stale:
            storage.set_trial_user_attr(trial._trial_id, "lorakit_note", "cut short; retried")
            storage.set_trial_state_values(trial._trial_id, state.FAIL)
        # As enqueue_trial does, keeping the grid point: Optuna's grid sampler needs it.
        grid = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}
        study.add_trial(
            optuna.trial.create_trial(
                state=state.WAITING,
                system_attrs={"fixed_params": dict(trial.params), **grid},
                user_attrs={"lorakit_retry_of": trial.number},
            )
        )


def _used(optuna: Any, study: Any) -> int:
    """Trials that count towards ``--trials``: finished, running or queued, but not those
    cut short and queued again."""
    state = optuna.trial.TrialState
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    return sum(1 for t in trials if t.state != state.FAIL or not _is_retried(trials, t.number))


class _TrialFailed(Exception):
    """A trial's run failed with a LorakitError: recorded, and the search goes on."""


class _Objective:
    """One trial: suggest the settings, run the recipe, record what it measured."""

    def __init__(
        self,
        optuna: Any,
        study: Any,
        recipe: Recipe,
        spec: SearchSpec,
        folder: Path,
        plugin_manager: Any,
        show_progress: bool,
    ) -> None:
        self.optuna, self.study, self.recipe, self.spec = optuna, study, recipe, spec
        self.folder = folder
        self.pm, self.show_progress = plugin_manager, show_progress
        self.last: int | None = None

    def __call__(self, trial: Any) -> float:
        self.last = trial._trial_id
        trial.set_user_attr("lorakit_host", HOST)
        trial.set_user_attr("lorakit_pid", os.getpid())
        params = self._suggest(trial)
        trial.set_user_attr("lorakit_params", params)
        earlier = self._earlier(trial, params)
        if earlier is not None:
            return earlier
        recipe = self.recipe.with_overrides(params)
        run_dir = self.folder / "trials" / trial_dir_name(params)
        trial.set_user_attr("run_dir", str(run_dir))
        report = self._run(trial, recipe, run_dir)
        for key, value in _measures(report, self.spec.bench or _first_bench(recipe)).items():
            trial.set_user_attr(key, value)
        return _objective_value(report, self.spec)

    def _suggest(self, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for param in self.spec.space:
            if not param.is_range:
                params[param.key] = trial.suggest_categorical(param.key, list(param.choices))
            elif param.integer:
                low, high = int(param.low or 0), int(param.high or 0)
                params[param.key] = trial.suggest_int(param.key, low, high, log=param.log)
            else:
                low_f, high_f = float(param.low or 0), float(param.high or 0)
                params[param.key] = trial.suggest_float(param.key, low_f, high_f, log=param.log)
        return params

    def _earlier(self, trial: Any, params: dict[str, Any]) -> float | None:
        """A trial repeating settings already tried takes the earlier value (complete) or is
        pruned (running elsewhere) instead of training again."""
        state = self.optuna.trial.TrialState
        trials = self.study._storage.get_all_trials(self.study._study_id, deepcopy=False)
        for other in trials:
            if other.number == trial.number or other.user_attrs.get("lorakit_params") != params:
                continue
            if other.user_attrs.get("lorakit_note", "").startswith("same settings"):
                continue
            if other.state == state.COMPLETE:
                trial.set_user_attr("lorakit_note", f"same settings as trial {other.number}")
                for key in ("eval_loss", "accuracy", "ci_low", "ci_high", "run_dir"):
                    if key in other.user_attrs:
                        trial.set_user_attr(key, other.user_attrs[key])
                return float(other.value)
            if other.state == state.RUNNING:
                trial.set_user_attr("lorakit_note", f"same settings as trial {other.number}")
                raise self.optuna.TrialPruned()
        return None

    def _run(self, trial: Any, recipe: Recipe, run_dir: Path) -> RunReport:
        from lorakit.run_report import RunReport
        from lorakit.train import RunInterrupted

        if (run_dir / "report.json").exists():  # finished before the study recorded it
            return RunReport.from_run_dir(run_dir)
        _reset_peak_memory()
        plugin = _PrunePlugin(trial, self.spec.direction, self.spec.pruner != "none")
        self.pm.register(plugin)
        try:
            result = recipe.run(run_dir, plugin_manager=self.pm, show_progress=self.show_progress)
            report = result.report
            del result  # the model: free it before the next trial
        except TrialPruned as pruned:
            trial.set_user_attr("lorakit_note", pruned.message)
            raise self.optuna.TrialPruned(pruned.message) from None
        except (RunInterrupted, KeyboardInterrupt):
            trial.set_user_attr("lorakit_interrupted", True)
            raise
        except LorakitError as error:
            trial.set_user_attr("lorakit_note", error.format()[:500])
            raise _TrialFailed(error.format()) from None
        finally:
            self.pm.unregister(plugin)
            gc.collect()
            _empty_cache()
        return report


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _PrunePlugin:
    """Reports every evaluation's loss to the trial and stops the run when the pruner says so."""

    def __init__(self, trial: Any, direction: str, prune: bool) -> None:
        self.trial, self.prune = trial, prune
        # The pruner compares values in the study's direction; a maximised objective gets the
        # negated loss, so that a high loss is still the bad end.
        self.sign = 1.0 if direction == "minimize" else -1.0

    @hookimpl
    def lorakit_trainer_callbacks(self, recipe: Recipe) -> list[Any]:
        from transformers import TrainerCallback

        plugin = self

        class ReportToPruner(TrainerCallback):
            def on_evaluate(
                self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any
            ) -> None:
                loss = (metrics or {}).get("eval_loss")
                if loss is None:
                    return
                step = int(state.global_step)
                plugin.trial.report(plugin.sign * float(loss), step)
                if plugin.prune and plugin.trial.should_prune():
                    raise TrialPruned(f"pruned at step {step} (eval loss {float(loss):.4f})")

        return [ReportToPruner()]


def _first_bench(recipe: Recipe) -> str | None:
    benches = recipe.evaluation.benchmarks
    return benches[0].split(":", 1)[0] if benches else None


def _measures(report: RunReport, bench: str | None) -> dict[str, Any]:
    """What the results table shows of a finished trial's report."""
    cost = report.cost
    out: dict[str, Any] = {
        "eval_loss": report.eval.loss,
        "steps": report.steps,
        "tokens_per_s": cost.tokens_per_s if cost is not None else None,
        "peak_gpu_gib": cost.peak_gpu_allocated_gib if cost is not None else None,
        "trainable_parameters": report.adapter.get("trainable_parameters"),
        "run_dir": report.run_dir,
    }
    scored = ((report.benchmarks or {}).get(bench) or {}).get("adapter") if bench else None
    if scored:
        out.update({key: scored.get(key) for key in ("accuracy", "ci_low", "ci_high")})
    return out


def _objective_value(report: RunReport, spec: SearchSpec) -> float:
    if spec.bench is None:
        return float(report.eval.loss)
    scored = ((report.benchmarks or {}).get(spec.bench) or {}).get("adapter") or {}
    accuracy = scored.get("accuracy")
    if not isinstance(accuracy, (int, float)):
        raise _TrialFailed(f"the run's report has no accuracy for benchmark {spec.bench!r}")
    return float(accuracy)


def _finish(
    optuna: Any, study: Any, recipe: Recipe, spec: SearchSpec, folder: Path, url: str
) -> SearchResult:
    """The table from the storage (every process's trials), ``best.toml`` and the files."""
    from lorakit.recipe_files import recipe_to_text

    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    rows = tuple(TrialRow.from_trial(t) for t in sorted(trials, key=lambda t: t.number))
    best = best_trial(rows, spec.direction)
    best_file = None
    if best is not None:
        params = next(row.params for row in rows if row.number == best)
        best_file = folder / BEST_RECIPE
        write_text_atomic(best_file, recipe_to_text(recipe.with_overrides(params), "toml"))
    result = SearchResult(
        folder=folder,
        study=study.study_name,
        storage=url,
        objective=spec.objective,
        keys=tuple(param.key for param in spec.space),
        rows=rows,
        best=best,
        best_recipe=best_file,
        bench=spec.bench or _first_bench(recipe),
    )
    result.write()
    return result
