"""Trainer callbacks: checkpoint bookkeeping, the ``metrics.jsonl`` log and the progress
display."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorakit.train_data import TokenCounter

__all__ = ["bookkeeping_callback", "metrics_callback", "progress_callback"]


def bookkeeping_callback(counter: TokenCounter) -> Any:
    """Times this process's training and marks each checkpoint complete once it is saved."""
    from transformers import TrainerCallback

    class Bookkeeping(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            counter.started = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            counter.stop()

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            from lorakit.distributed import World

            World.from_env().barrier()  # every rank's files (its RNG state) are written
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                from lorakit.checkpoints import mark_checkpoint_complete

                mark_checkpoint_complete(folder, tokens=counter.tokens)

    return Bookkeeping()


def metrics_callback(
    path: Path,
    on_log: Callable[[dict[str, Any], int], None] | None = None,
    counter: TokenCounter | None = None,
) -> Any:
    """A callback appending every log line (loss, eval loss, learning rate) to ``metrics.jsonl``.

    With ``counter``, each training-loss record also gets the real tokens trained so far
    (``tokens``) and this process's training throughput (``tokens_per_s``).
    """
    from transformers import TrainerCallback

    class MetricsLog(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            if not logs:
                return
            if counter is not None and isinstance(logs.get("eval_runtime"), (int, float)):
                counter.eval_seconds += float(logs["eval_runtime"])
            if not state.is_world_process_zero:
                return
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            if counter is not None and "loss" in logs:
                rate = counter.rate()
                record["tokens"] = counter.tokens
                record["tokens_per_s"] = round(rate, 1) if rate is not None else None
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if on_log is not None:
                on_log(record, state.global_step)

    return MetricsLog()


def progress_callback(console: Any | None = None) -> Any:
    """Rich progress bar over optimizer steps with a live loss / eval-loss line.

    Without a terminal (a log file, CI), one plain line per logged record instead:
    ``step 10/60 · loss 8.1736 · lr 8.64e-03``. On a narrow terminal the time-left column is
    dropped and the loss line shortened, so nothing is clipped at 80 columns.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    out = console or Console(stderr=True)

    def describe(logs: dict[str, Any], short: bool) -> str:
        parts = []
        if "loss" in logs:
            parts.append(f"loss {logs['loss']:.4f}")
        if "eval_loss" in logs:
            parts.append(
                f"eval {logs['eval_loss']:.4f}" if short else f"eval loss {logs['eval_loss']:.4f}"
            )
        if "learning_rate" in logs and not short:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        return " · ".join(parts)

    class RichTraining(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None
            self.task: Any = None
            self.line = ""
            self.narrow = out.width < 100

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero or not out.is_terminal:
                return
            columns: list[Any] = [
                TextColumn("[bold]training"),
                BarColumn(bar_width=12 if self.narrow else None),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            ]
            if not self.narrow:
                columns.append(TimeRemainingColumn())
            columns.append(TextColumn("{task.fields[line]}"))
            self.progress = Progress(*columns, console=out)
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=state.max_steps, completed=state.global_step, line=""
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step, line=self.line)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            if not logs or not state.is_world_process_zero:
                return
            if self.progress is None:  # no terminal: one plain line per record
                line = describe(logs, short=False)
                if line:
                    out.print(
                        f"step {state.global_step}/{state.max_steps} · {line}", highlight=False
                    )
                return
            line = describe(logs, short=self.narrow)
            if line:
                self.line = line
                self.progress.update(self.task, line=self.line)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichTraining()
