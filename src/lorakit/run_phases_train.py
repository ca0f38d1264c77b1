"""The ``train`` phase of a run: training with resume from the latest complete checkpoint,
a Ctrl-C that stops at the next checkpoint, and the :class:`TrainOutcome` it leaves."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit._fs import read_json_object
from lorakit.errors import LorakitError
from lorakit.train import RunInterrupted, StopRequest

if TYPE_CHECKING:
    from lorakit.runner import RunContext
    from lorakit.train_data import TokenCounter

__all__ = ["TrainOutcome", "train"]


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
