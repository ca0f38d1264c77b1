"""The body of ``Recipe.run()``, as named phases: each takes the :class:`RunContext` and
returns what the next needs.

    preflight -> load_model -> prepare_run_data -> setup_model -> build_trainer
      -> eval_before -> train -> evaluate -> save_adapter -> evaluate_benchmarks -> report

The throughput benchmark and the tests call the same phases, so the memory budget, the
Liger kernels, the lean LoRA forward and checkpointing are applied the same way
everywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit._fs import (
    WRITE_FAILURES,
    RunLock,
    fs_error,
    read_json_object,
    write_json_atomic,
    write_text_atomic,
)
from lorakit._output import run_log
from lorakit.distributed import World
from lorakit.errors import ConfigError, LorakitError
from lorakit.train import RunInterrupted, StopRequest

if TYPE_CHECKING:
    from lorakit.data.pipeline import PreparedData
    from lorakit.model import LoadedModel
    from lorakit.plugins import Registries
    from lorakit.recipe import Recipe, RunResult
    from lorakit.reporting import ProgressReporter
    from lorakit.run_report import RunCost, RunReport
    from lorakit.train import TokenCounter, TrainingSpec

__all__ = [
    "DryRunReport",
    "ModelSetup",
    "RunContext",
    "RunData",
    "TrainOutcome",
    "build_trainer",
    "dry_run",
    "eval_before",
    "evaluate",
    "load_model",
    "open_run",
    "preflight",
    "prepare_run_data",
    "run_recipe",
    "save_adapter",
    "setup_model",
    "train",
]


@attrs.frozen(kw_only=True)
class RunContext:
    """What every phase of a run shares: the recipe, its directory and plugins, one notes
    collector and the wall time of each phase."""

    recipe: Recipe
    run_dir: Path
    plugin_manager: Any
    registries: Registries
    resuming: bool
    console: Any = attrs.field(repr=False)
    show_progress: bool = True
    started: dt.datetime = attrs.field(factory=lambda: dt.datetime.now(dt.timezone.utc))
    notes: list[str] = attrs.field(factory=list)
    wall_s: dict[str, float] = attrs.field(factory=dict)
    world: World = attrs.field(factory=World)

    def note(self, text: str) -> None:
        """Record a note for the report and show it."""
        self.notes.append(text)
        self.console.print(f"[yellow]note:[/] {text}")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase ``name``."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.wall_s[name] = self.wall_s.get(name, 0.0) + time.perf_counter() - begun

    @contextlib.contextmanager
    def progress(self) -> Iterator[ProgressReporter]:
        """Progress bars on the run's console (or none)."""
        from lorakit.reporting import progress_for

        with progress_for(self.console, self.show_progress) as progress:
            yield progress


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    plugin_manager: Any = None,
    show_progress: bool = True,
) -> RunResult:
    """Train ``recipe`` and write its run directory (see :mod:`lorakit.recipe`).

    The run holds an exclusive lock on its directory. An unfinished run of the same recipe
    there resumes from its latest complete checkpoint, and the report says so.

    Launched by torchrun (``lorakit train --nproc N``), every process runs this with the
    same recipe; see :mod:`lorakit.distributed` for what rank 0 alone does.
    """
    from lorakit.recipe import default_run_dir, make_run_dir

    world = World.from_env()
    world.start()
    folder = world.broadcast(Path(run_dir) if run_dir is not None else default_run_dir(recipe.name))
    if world.is_main:
        make_run_dir(folder)
    with world.lock(folder):
        ctx = open_run(
            recipe, folder, plugin_manager=plugin_manager, show_progress=show_progress, world=world
        )
        with run_log(folder) if world.is_main else contextlib.nullcontext():
            return _run_logged(ctx)


def _run_logged(ctx: RunContext) -> RunResult:
    """The phases between the run hooks, with failures mapped to one-line errors."""
    recipe, folder = ctx.recipe, ctx.run_dir
    hook = ctx.world.run_hooks(ctx.plugin_manager)  # trackers hear of the run from rank 0
    hook.lorakit_run_start(recipe=recipe, run_dir=folder, registries=ctx.registries)
    try:
        result = _run_phases(ctx)
    except OSError as error:  # a full disk or a folder made read-only during the run
        hook.lorakit_run_failed(recipe=recipe, run_dir=folder, error=error)
        if error.errno not in WRITE_FAILURES:
            raise
        raise fs_error(error, "write the run directory") from None
    except BaseException as error:
        hook.lorakit_run_failed(recipe=recipe, run_dir=folder, error=error)
        if type(error).__name__ == "OutOfMemoryError":
            raise _out_of_memory(error) from None
        raise
    hook.lorakit_run_end(result=result)
    return result


@attrs.frozen(kw_only=True)
class DryRunReport:
    """What a run would do, from its real data, model and trainer, stopped before training."""

    recipe: str
    rows_read: int
    rows_kept: int
    examples: Mapping[str, int]
    train_tokens: int
    train_rows: int
    steps: int
    trainable_parameters: int
    targets: tuple[str, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """As JSON-able data."""
        data: dict[str, Any] = attrs.asdict(self)
        data["targets"], data["notes"] = list(self.targets), list(self.notes)
        return data


def dry_run(
    recipe: Recipe, *, plugin_manager: Any = None, show_progress: bool = True
) -> DryRunReport:
    """Run every phase up to training (checks, model, data, adapter, memory plan, trainer)
    in a temporary run directory, and say what training would do. Nothing is kept."""
    import tempfile

    from lorakit.recipe import make_run_dir
    from lorakit.train import total_steps

    with tempfile.TemporaryDirectory(prefix="lorakit-dry-run-") as tmp:
        folder = Path(tmp) / "run"
        make_run_dir(folder)
        with RunLock(folder):
            ctx = open_run(
                recipe, folder, plugin_manager=plugin_manager, show_progress=show_progress
            )
            preflight(ctx)
            loaded = load_model(ctx)
            data = prepare_run_data(ctx, loaded.tokenizer)
            setup = setup_model(ctx, loaded)
            train_examples = list(data.prepared.examples["train"])
            trainer = build_trainer(ctx, setup, train_examples, data.eval_examples)
            training = setup.training
            rows = len(trainer.train_dataset)
            counted = attrs.evolve(training, batch_size=1) if training.packing else training
            report = data.prepared.report
            return DryRunReport(
                recipe=recipe.name,
                rows_read=report.rows_read,
                rows_kept=report.rows_kept,
                examples={k: len(v) for k, v in data.prepared.examples.items()},
                train_tokens=sum(len(e.input_ids) for e in train_examples),
                train_rows=rows,
                steps=total_steps(counted, rows),
                trainable_parameters=sum(
                    p.numel() for p in setup.model.parameters() if p.requires_grad
                ),
                targets=setup.targets,
                notes=tuple(ctx.notes),
            )


def _out_of_memory(error: BaseException) -> LorakitError:
    first = str(error).split(".")[0]
    return LorakitError(
        f"the GPU ran out of memory ({first})",
        field="training.max_memory_gb",
        hint="set --max-memory-gb to the memory your GPU has free (lorakit then picks "
        "checkpointing and the micro-batch size that fit), or lower training.tokens_per_batch "
        "and training.eval_batch_size; the run resumes from its last checkpoint",
    )


def _run_phases(ctx: RunContext) -> RunResult:
    from lorakit.recipe import RunResult

    preflight(ctx)
    loaded = load_model(ctx)
    data = prepare_run_data(ctx, loaded.tokenizer)
    setup = setup_model(ctx, loaded)
    trainer = build_trainer(ctx, setup, data.prepared.examples["train"], data.eval_examples)
    before = eval_before(ctx, setup.model, data.eval_examples)
    outcome = train(ctx, trainer)
    if not ctx.world.is_main:  # rank 0 evaluates, saves and reports; this rank waits
        return ctx.world.finished_run(ctx.run_dir, setup.model, setup.tokenizer)
    results = evaluate(ctx, setup, data, outcome)
    adapter_dir = save_adapter(ctx, setup)
    benchmarks = evaluate_benchmarks(ctx, setup, data)
    report = build_report(ctx, loaded, setup, data, before, outcome, results, benchmarks)
    write_text_atomic(ctx.run_dir / "report.md", report.to_markdown())
    write_json_atomic(ctx.run_dir / "report.json", report.to_dict())  # last: the run is done
    ctx.world.barrier()  # the other ranks return the finished run
    return RunResult(
        run_dir=ctx.run_dir,
        adapter_dir=adapter_dir,
        report=report,
        model=setup.model,
        tokenizer=loaded.tokenizer,
    )


def open_run(
    recipe: Recipe,
    run_dir: Path,
    *,
    plugin_manager: Any = None,
    show_progress: bool = True,
    world: World | None = None,
) -> RunContext:
    """Check or start the run directory (its lock already held, by rank 0) and build the
    context. Only rank 0 touches the directory, prints and shows progress."""
    from rich.console import Console

    from lorakit._fs import remove_stale_temporaries
    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.recipe import make_run_dir, prepare_run_dir

    world = world if world is not None else World()
    pm = plugin_manager if plugin_manager is not None else make_plugin_manager()
    removed: list[str] = []
    resuming = False
    if world.is_main:
        make_run_dir(run_dir)
        removed = remove_stale_temporaries(run_dir)
        resuming = prepare_run_dir(run_dir, recipe)
    ctx = RunContext(
        recipe=recipe,
        run_dir=run_dir,
        plugin_manager=pm,
        registries=Registries.from_plugin_manager(pm),
        resuming=world.broadcast(resuming),
        console=Console(stderr=True, quiet=not world.is_main),
        show_progress=show_progress and world.is_main,
        world=world,
    )
    if removed:
        ctx.note(f"removed what an interrupted run left half-written: {', '.join(removed)}")
    return ctx


def preflight(ctx: RunContext) -> None:
    """Fail on bad data and evaluation settings in a second, not after the model has loaded
    (the first problem :meth:`Recipe.check` finds; ``lorakit check`` lists them all)."""
    problems = ctx.recipe.check(ctx.registries)
    if problems:
        raise problems[0]
    ctx.world.check(ctx.recipe.training)


def load_model(ctx: RunContext) -> LoadedModel:
    """The quantised base model and its tokenizer (plugins' loaders first)."""
    from lorakit.model import QuantizedModelBuilder

    with ctx.phase("load"):
        loaded = QuantizedModelBuilder(ctx.recipe.model, plugin_manager=ctx.plugin_manager).build()
    for note in loaded.notes:
        ctx.note(note)
    return loaded


@attrs.frozen(kw_only=True)
class RunData:
    """The prepared data of a run and the hash that pins it to its checkpoints."""

    prepared: PreparedData
    digest: str

    @property
    def eval_examples(self) -> list[Any]:
        return list(self.prepared.examples["eval"])

    @property
    def test_examples(self) -> list[Any]:
        return list(self.prepared.examples["test"])


def prepare_run_data(ctx: RunContext, tokenizer: Any) -> RunData:
    """Read, clean, split and tokenise; write ``data_report.json``; refuse to resume on
    data that changed since the run started."""
    from lorakit.data.pipeline import prepare_data

    recipe = ctx.recipe
    with ctx.phase("data"), ctx.progress() as progress:
        prepared = prepare_data(
            recipe.data, tokenizer, registries=ctx.registries, progress=progress
        )
    digest = data_hash(prepared.examples)
    ctx.world.check_same(digest, what="training data", field="data.source")
    if ctx.world.is_main:
        _write_data_report(ctx, prepared, digest)
    max_len = recipe.data.tokenize.max_len
    if prepared.report.zero_supervised:
        ctx.note(
            f"{prepared.report.zero_supervised} examples dropped: the prompt alone fills "
            f"data.tokenize.max_len={max_len} (see data_report.json)"
        )
    truncated = sum(r.truncated for r in prepared.report.tokenization.values())
    if truncated:
        ctx.note(
            f"{truncated} answers truncated at data.tokenize.max_len={max_len}; "
            "their end token is not trained"
        )
    return RunData(prepared=prepared, digest=digest)


def _write_data_report(ctx: RunContext, prepared: PreparedData, digest: str) -> None:
    """``data_report.json``; a resumed run refuses data that changed since it started."""
    report_file = ctx.run_dir / "data_report.json"
    if ctx.resuming and report_file.exists():
        earlier = read_json_object(report_file, "the data report").get("data_hash")
        if earlier not in (None, digest):
            raise ConfigError(
                "the data changed since this run started: the checkpoints were trained on "
                "other examples",
                file=str(ctx.run_dir),
                field="data.source",
                hint="restore the data the run started with, or start a new --run-dir",
            )
    write_json_atomic(report_file, {**prepared.report.to_dict(), "data_hash": digest})


@attrs.frozen(kw_only=True)
class ModelSetup:
    """The model as it trains: the PEFT model, its LoRA targets, the training settings
    after the memory budget, and the model's pad id and compute dtype."""

    model: Any = attrs.field(repr=False)
    tokenizer: Any = attrs.field(repr=False)
    targets: tuple[str, ...]
    training: TrainingSpec
    pad_id: int
    compute_dtype: str


def setup_model(ctx: RunContext, loaded: LoadedModel) -> ModelSetup:
    """Seed, then Liger, the LoRA adapter, checkpointing, the lean LoRA forward and the
    memory budget, in that order."""
    from transformers import set_seed

    from lorakit.adapter import apply_adapter
    from lorakit.fast import apply_liger, fuse_lora, set_checkpointing

    recipe = ctx.recipe
    training = recipe.training
    pad_id = loaded.tokenizer.pad_token_id
    for config in (loaded.model.config, getattr(loaded.model, "generation_config", None)):
        if config is not None:
            config.pad_token_id = pad_id
    liger_note = apply_liger(loaded.model, training.liger)
    if liger_note:
        ctx.note(liger_note)
    # The memory budget may choose checkpointing even when the recipe has it off.
    checkpointing = training.gradient_checkpointing or training.max_memory_gb is not None
    set_seed(training.seed)  # the adapter's initialisation follows the run's seed
    model, targets = apply_adapter(
        loaded.model, recipe.adapter, gradient_checkpointing=checkpointing
    )
    if checkpointing:
        set_checkpointing(
            model, training.checkpoint_every if training.gradient_checkpointing else None
        )
    if training.fused_lora:
        ctx.note(f"lean LoRA forward on {fuse_lora(model)} layers")
    if training.max_memory_gb is not None:
        from lorakit.fast import fit_memory_budget

        with ctx.world.main_first():  # rank 0 measures and writes the plan; the others read it
            training, note = fit_memory_budget(
                model, training, recipe.data.tokenize.max_len, ctx.run_dir / "memory_plan.json"
            )
        ctx.note(note)
    return ModelSetup(
        model=model,
        tokenizer=loaded.tokenizer,
        targets=tuple(targets),
        training=training,
        pad_id=pad_id,
        compute_dtype=loaded.compute_dtype,
    )


def build_trainer(
    ctx: RunContext,
    setup: ModelSetup,
    train_examples: list[Any],
    eval_examples: list[Any],
    *,
    callbacks: list[Any] | None = None,
) -> Any:
    """The ``Trainer`` of the run, with the metrics log, progress, plugins' callbacks and
    ``callbacks``."""
    from lorakit.train import TrainerFactory, metrics_callback, progress_callback

    recipe, pm = ctx.recipe, ctx.plugin_manager

    def on_log(record: dict[str, Any], step: int) -> None:
        pm.hook.lorakit_log_metrics(metrics=record, step=step, run_dir=ctx.run_dir)

    factory = TrainerFactory(
        setup.training,
        ctx.run_dir / "checkpoints",
        setup.compute_dtype,
        order=recipe.data.order,
        curriculum_share=recipe.data.curriculum_share,
        world_size=ctx.world.size,
    )
    metrics_file = ctx.run_dir / "metrics.jsonl"
    factory.callbacks.append(metrics_callback(metrics_file, on_log, factory.counter))
    if ctx.show_progress:
        factory.callbacks.append(progress_callback(ctx.console))
    for extra in pm.hook.lorakit_trainer_callbacks(recipe=recipe):
        factory.callbacks.extend(extra or [])
    factory.callbacks.extend(callbacks or [])
    trainer = factory.create(
        setup.model,
        setup.tokenizer,
        train_examples,
        eval_examples,
        pad_id=setup.pad_id,
        max_len=recipe.data.tokenize.max_len,
    )
    for note in factory.notes:
        ctx.note(note)
    return trainer


def eval_before(ctx: RunContext, model: Any, eval_examples: list[Any]) -> dict[str, Any]:
    """Answer-only eval loss of the base model (stored, so a resumed run keeps it); rank 0
    computes it while the others wait."""
    return ctx.world.on_main(lambda: _eval_before(ctx, model, eval_examples))


def _eval_before(ctx: RunContext, model: Any, eval_examples: list[Any]) -> dict[str, Any]:
    from lorakit.evaluate.perplexity import answer_loss
    from lorakit.train import QACollator

    path = ctx.run_dir / "eval_before.json"
    if path.exists():
        return read_json_object(path, "the eval loss before training")
    with ctx.phase("eval"), ctx.progress() as progress:
        before = answer_loss(
            model,
            eval_examples,
            QACollator(model.config.pad_token_id),
            batch_size=ctx.recipe.training.eval_batch_size,
            progress=progress.task("Eval loss before training", len(eval_examples)),
        ).to_dict()
    write_json_atomic(path, before)
    return before


@attrs.frozen(kw_only=True)
class TrainOutcome:
    """What training left: where it resumed from, the optimizer steps of the whole run,
    the best checkpoint and its eval loss, and the tokens counted."""

    resumed_from: str | None
    steps: int
    best_checkpoint: str | None
    best_metric: float | None
    counter: TokenCounter
    peak_gpu_gib_by_rank: tuple[float, ...] | None = None


def train(ctx: RunContext, trainer: Any) -> TrainOutcome:
    """Train, resuming from the latest complete checkpoint of an unfinished run.

    A run stopped after its final checkpoint is not trained further: its best adapter is
    loaded and its trainer state read back.
    """
    from lorakit.checkpoints import CHECKPOINT_MARKER, latest_checkpoint

    folder = ctx.run_dir / "checkpoints"
    resume_from = ctx.world.on_main(lambda: _resume_point(ctx, folder))
    if resume_from is not None:
        marker = read_json_object(resume_from / CHECKPOINT_MARKER, "the checkpoint record")
        trainer.lorakit_counter.tokens = int(marker.get("tokens", 0))
        if _finished(resume_from):
            _restore_finished(trainer, resume_from)
            return _outcome(ctx, trainer, resume_from)
    stop = StopRequest()
    if ctx.world.distributed:  # before the stop callback: a stop on any rank stops every rank
        trainer.add_callback(ctx.world.step_sync(stop, trainer.lorakit_counter))
    trainer.add_callback(stop.callback())
    with ctx.phase("train"), _stop_on_ctrl_c(ctx, stop):
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            if resume_from is None or isinstance(error, LorakitError):
                raise
            raise LorakitError(
                f"cannot resume from {resume_from.name}: {error}",
                file=str(resume_from),
                hint="a file in it was changed or damaged: remove that checkpoint folder to "
                "resume from the one before, or start a new --run-dir",
            ) from None
    if stop.requested:
        latest = latest_checkpoint(folder)
        raise RunInterrupted(trainer.state.global_step, latest.name if latest else None)
    return _outcome(ctx, trainer, resume_from)


def _resume_point(ctx: RunContext, folder: Path) -> Path | None:
    """The latest complete checkpoint of an unfinished run; the metrics logged and the
    checkpoints begun after it are removed (they are logged and saved again)."""
    from lorakit.checkpoints import checkpoint_step, keep_metrics_until, latest_checkpoint

    if not ctx.resuming:
        return None
    resume_from = latest_checkpoint(folder)
    finished = resume_from is not None and _finished(resume_from)
    # Records logged after the checkpoint (all, without one) are logged again now.
    step = checkpoint_step(resume_from) if resume_from is not None else 0
    keep_metrics_until(ctx.run_dir / "metrics.jsonl", step, summaries=finished)
    _remove_incomplete_checkpoints(ctx, folder, after=step)
    return resume_from


@contextlib.contextmanager
def _stop_on_ctrl_c(ctx: RunContext, stop: StopRequest) -> Iterator[None]:
    """The first Ctrl-C stops training at the next step with a checkpoint; the second now."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        if stop.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.request()
        ctx.console.print(
            "[yellow]stopping after this step with a checkpoint (Ctrl-C again to stop now)[/]"
        )

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _outcome(ctx: RunContext, trainer: Any, resume_from: Path | None) -> TrainOutcome:
    state = trainer.state
    return TrainOutcome(
        resumed_from=None if resume_from is None else resume_from.name,
        steps=state.global_step,
        best_checkpoint=state.best_model_checkpoint,
        best_metric=state.best_metric,
        counter=trainer.lorakit_counter,
        peak_gpu_gib_by_rank=ctx.world.peak_memory_gib(),
    )


def _finished(checkpoint: Path) -> bool:
    state = read_json_object(checkpoint / "trainer_state.json", "the checkpoint's trainer state")
    steps, done = state.get("max_steps"), state.get("global_step")
    return isinstance(steps, int) and isinstance(done, int) and steps > 0 and done >= steps


def _restore_finished(trainer: Any, checkpoint: Path) -> None:
    """The state of a run that finished training: its trainer state and best adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    chosen = trainer.state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    source = Path(chosen) if chosen else checkpoint
    weights = source / "adapter_model.safetensors"
    try:
        state = load_file(str(weights))
    except (OSError, ValueError) as error:
        raise LorakitError(
            f"cannot read the adapter weights: {error}",
            file=str(weights),
            hint="remove that checkpoint folder to resume from the one before",
        ) from None
    set_peft_model_state_dict(trainer.model, state)


def _remove_incomplete_checkpoints(ctx: RunContext, folder: Path, *, after: int) -> None:
    from lorakit.checkpoints import checkpoint_step, is_complete

    if not folder.is_dir():
        return
    for path in sorted(folder.glob("checkpoint-*")):
        if checkpoint_step(path) > after or not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            ctx.note(f"removed the incomplete checkpoint {path.name} (its save was cut short)")


def evaluate(
    ctx: RunContext, setup: ModelSetup, data: RunData, outcome: TrainOutcome
) -> dict[str, Any]:
    """Verify the best checkpoint, then answer-only loss after training on eval and test."""
    from lorakit.evaluate.perplexity import answer_loss
    from lorakit.train import QACollator

    model, batch = setup.model, ctx.recipe.training.eval_batch_size
    collate = QACollator(setup.pad_id)
    with ctx.phase("eval"):
        best = verify_best_checkpoint(outcome, model) if setup.training.load_best else None
        with ctx.progress() as progress:
            after = answer_loss(
                model,
                data.eval_examples,
                collate,
                batch_size=batch,
                progress=progress.task("Eval loss after training", len(data.eval_examples)),
            )
            test = (
                answer_loss(
                    model,
                    data.test_examples,
                    collate,
                    batch_size=batch,
                    progress=progress.task("Test loss", len(data.test_examples)),
                ).to_dict()
                if data.test_examples
                else None
            )
            by_source = {
                name: answer_loss(
                    model,
                    own["eval"],
                    collate,
                    batch_size=batch,
                    progress=progress.task(f"Eval loss of {name}", len(own["eval"])),
                ).to_dict()
                for name, own in data.prepared.by_source.items()
                if own["eval"]
            }
    return {"after": after.to_dict(), "test": test, "best": best, "by_source": by_source or None}


def save_adapter(ctx: RunContext, setup: ModelSetup) -> Path:
    """Write ``adapter/`` whole or not at all (a temporary folder, then a rename)."""
    from lorakit._fs import make_temp_dir, replace_dir_atomic

    adapter_dir = ctx.run_dir / "adapter"
    with ctx.phase("save"):
        tmp = make_temp_dir(ctx.run_dir, ".adapter-")
        try:
            setup.model.save_pretrained(tmp)
            setup.tokenizer.save_pretrained(tmp)
            replace_dir_atomic(tmp, adapter_dir)
        except OSError as error:
            raise fs_error(error, "save the adapter", adapter_dir) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return adapter_dir


def evaluate_benchmarks(ctx: RunContext, setup: ModelSetup, data: RunData) -> dict[str, Any] | None:
    """Base and adapter on the recipe's benchmarks and test split (``None`` when none)."""
    from lorakit.evaluate.session import evaluate_run
    from lorakit.train import QACollator

    spec = ctx.recipe.evaluation
    if not (spec.benchmarks or spec.metrics):
        return None
    with ctx.phase("eval"), ctx.progress() as progress:
        return evaluate_run(
            setup.model,
            setup.tokenizer,
            ctx.recipe,
            test_examples=data.test_examples,
            test_rows=list(data.prepared.splits.test),
            collate=QACollator(setup.pad_id),
            progress=progress,
            registries=ctx.registries,
        )


def build_report(
    ctx: RunContext,
    loaded: LoadedModel,
    setup: ModelSetup,
    data: RunData,
    before: Mapping[str, Any],
    outcome: TrainOutcome,
    results: Mapping[str, Any],
    benchmarks: Mapping[str, Any] | None,
) -> RunReport:
    """The typed report of the finished run."""
    from lorakit.recipe import versions
    from lorakit.run_report import EvalSummary, RunReport, TrainSummary

    records = _read_metrics(ctx.run_dir / "metrics.jsonl")
    after = results["after"]
    data_report = data.prepared.report.to_dict()
    return RunReport(
        status="complete",
        recipe=ctx.recipe.name,
        run_dir=str(ctx.run_dir),
        started=ctx.started.isoformat(timespec="seconds"),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        resumed_from=outcome.resumed_from,
        steps=outcome.steps,
        train=TrainSummary.from_records(records, len(data.prepared.examples["train"])),
        eval=EvalSummary(
            loss_before=before["loss"],
            perplexity_before=before["perplexity"],
            loss=after["loss"],
            perplexity=after["perplexity"],
            tokens=after["tokens"],
        ),
        test=results["test"],
        eval_by_source=results.get("by_source"),
        benchmarks=benchmarks,
        best=results["best"],
        adapter={
            "path": str(ctx.run_dir / "adapter"),
            "targets": list(setup.targets),
            "trainable_parameters": sum(
                p.numel() for p in setup.model.parameters() if p.requires_grad
            ),
        },
        data={
            k: data_report[k] for k in ("rows_read", "rows_kept", "kind", "dropped", "split", "mix")
        },
        cost=run_cost(ctx, outcome.counter, outcome.peak_gpu_gib_by_rank),
        notes=tuple(ctx.notes),
        run_card={
            "versions": versions(),
            "device": loaded.device,
            "compute_dtype": loaded.compute_dtype,
            "data_hash": data.digest,
            "template_hash": template_hash(loaded.tokenizer, ctx.recipe),
        },
    )


def run_cost(
    ctx: RunContext,
    counter: TokenCounter | None,
    peak_by_rank: tuple[float, ...] | None = None,
) -> RunCost:
    """Tokens, throughput, wall time per phase, the device and its peak memory; with
    several processes, their number and each one's peak GPU memory while training."""
    import torch

    from lorakit.run_report import RunCost

    gib = 2**30
    cuda = torch.cuda.is_available()
    wall = {k: round(v, 3) for k, v in ctx.wall_s.items()}
    wall["total"] = round((dt.datetime.now(dt.timezone.utc) - ctx.started).total_seconds(), 3)
    rate = counter.rate() if counter is not None else None
    return RunCost(
        tokens_trained=counter.tokens if counter is not None else 0,
        tokens_per_s=round(rate, 1) if rate is not None else None,
        wall_s=wall,
        device=torch.cuda.get_device_name() if cuda else "cpu",
        peak_gpu_allocated_gib=round(torch.cuda.max_memory_allocated() / gib, 3) if cuda else None,
        peak_gpu_reserved_gib=round(torch.cuda.max_memory_reserved() / gib, 3) if cuda else None,
        world_size=ctx.world.size,
        peak_gpu_allocated_gib_by_rank=peak_by_rank if ctx.world.distributed else None,
    )


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def verify_best_checkpoint(outcome: TrainOutcome, model: Any) -> dict[str, Any]:
    """Check that the adapter in memory equals the best checkpoint's adapter, bit for bit."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lorakit.checkpoints import checkpoint_step

    best_dir = outcome.best_checkpoint
    if best_dir is None:
        raise LorakitError(
            "training kept no best checkpoint", hint="set training.eval_steps below the run's steps"
        )
    saved = load_file(str(Path(best_dir) / "adapter_model.safetensors"))
    current = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    mismatched = [
        k
        for k, v in saved.items()
        if k not in current or not torch.equal(current[k].to(v.dtype), v)
    ]
    if mismatched or len(saved) != len(current):
        raise LorakitError(
            f"the adapter in memory differs from the best checkpoint {best_dir} in {len(mismatched)} tensors",
            hint="this is a bug in checkpoint loading; the checkpoints are intact on disk",
        )
    return {
        "checkpoint": Path(best_dir).name,
        "step": checkpoint_step(best_dir),
        "eval_loss": outcome.best_metric,
        "verified": True,
        "tensors_compared": len(saved),
    }


def data_hash(examples: Mapping[str, list[Any]]) -> str:
    """SHA-256 over the token ids and labels of every split, in order."""
    digest = hashlib.sha256()
    for name in sorted(examples):
        digest.update(name.encode())
        for example in examples[name]:
            digest.update(json.dumps([example.input_ids, example.labels]).encode())
    return digest.hexdigest()


def template_hash(tokenizer: Any, recipe: Recipe) -> str:
    """SHA-256 over the tokenizer's chat template and the recipe's template settings."""
    text = json.dumps(
        {
            "chat_template": getattr(tokenizer, "chat_template", None),
            "template": recipe.data.template,
            "options": dict(recipe.data.template_options),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()
