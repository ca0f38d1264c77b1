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
from lorakit.run_phases_report import (
    build_report,
    data_hash,
    run_cost,
    template_hash,
    verify_best_checkpoint,
)
from lorakit.run_phases_train import TrainOutcome, train

if TYPE_CHECKING:
    from lorakit.data.pipeline import PreparedData
    from lorakit.model import LoadedModel
    from lorakit.plugins import Registries
    from lorakit.recipe import Recipe, RunResult
    from lorakit.reporting import ProgressReporter
    from lorakit.train import TrainingSpec

__all__ = [
    "DryRunReport",
    "ModelSetup",
    "RunContext",
    "RunData",
    "TrainOutcome",
    "build_report",
    "build_trainer",
    "data_hash",
    "dry_run",
    "eval_before",
    "evaluate",
    "load_model",
    "open_run",
    "preflight",
    "prepare_run_data",
    "run_cost",
    "run_recipe",
    "save_adapter",
    "setup_model",
    "template_hash",
    "train",
    "verify_best_checkpoint",
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
        if note:
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
    from lorakit.train import TrainerFactory
    from lorakit.train_callbacks import metrics_callback, progress_callback

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
