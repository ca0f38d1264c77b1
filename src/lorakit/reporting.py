"""Progress bars and console reports. Library code returns data; this module prints it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["NullProgress", "ProgressReporter", "RichProgress", "render_example"]

Advance = Callable[[int], None]


class ProgressReporter(Protocol):
    """Where long steps report progress: ``advance = progress.task("Reading", total)``."""

    def task(self, description: str, total: int | None = None) -> Advance: ...


class NullProgress:
    """A progress reporter that shows nothing (the library default)."""

    def task(self, description: str, total: int | None = None) -> Advance:
        return _ignore


def _ignore(_: int) -> None:
    return None


class RichProgress:
    """Rich progress bars on stderr, one per step; use as a context manager.

    On a narrow terminal the descriptions are shortened and the time-left column dropped,
    so nothing is clipped at 80 columns. Without a terminal (a log file, CI) each step
    prints one plain line when it is done instead of a live bar.
    """

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        from rich.table import Column

        self.console = console or Console(stderr=True)
        self.plain = enabled and not self.console.is_terminal
        narrow = self.console.width < 100
        self._width = max(16, self.console.width // 3) if narrow else 48
        columns: list[Any] = [
            SpinnerColumn(),
            TextColumn(
                "[bold]{task.description}",
                table_column=Column(no_wrap=True, overflow="ellipsis", max_width=self._width),
            ),
            BarColumn(bar_width=None if not narrow else 12),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        if not narrow:
            columns.append(TimeRemainingColumn())
        self._progress = Progress(
            *columns,
            console=self.console,
            transient=False,
            disable=not enabled or self.plain,
        )

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def task(self, description: str, total: int | None = None) -> Advance:
        if self.plain:
            return _plain_task(self.console, description, total)
        task_id = self._progress.add_task(_shorten(description, self._width), total=total)

        def advance(n: int) -> None:
            self._progress.advance(task_id, n)

        return advance


def _shorten(text: str, width: int) -> str:
    """Keep the start and the end of a long description (a path's file name matters)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]


def _plain_task(console: Console, description: str, total: int | None) -> Advance:
    """One line when the step is done (no live bar without a terminal)."""
    import time

    started = time.perf_counter()
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if total is not None and done >= total and done - n < total:
            seconds = time.perf_counter() - started
            console.print(f"{description}: {done:,}/{total:,} in {seconds:.1f} s", highlight=False)

    return advance


@contextlib.contextmanager
def progress_for(console: Console | None, enabled: bool) -> Iterator[ProgressReporter]:
    """A :class:`RichProgress` when ``enabled``, else a :class:`NullProgress`."""
    if not enabled:
        yield NullProgress()
        return
    with RichProgress(console) as progress:
        yield progress


def render_example(
    tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int], *, max_chars: int = 2000
) -> Text:
    """The example's text with supervised tokens (label != -100) in bold green, the prompt dimmed."""
    text = Text()
    start = 0
    while start < len(input_ids):
        supervised = labels[start] != -100
        end = start
        while end < len(input_ids) and (labels[end] != -100) == supervised:
            end += 1
        piece = tokenizer.decode(list(input_ids[start:end]), skip_special_tokens=False)
        text.append(piece, style="bold green" if supervised else "dim")
        start = end
    if len(text) > max_chars:
        text.truncate(max_chars)
        text.append(" …", style="yellow")
    return text


def counts_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Table:
    """A table with one row per mapping, the given columns in order."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("cleaner", "name", "reason") else "right"
        )
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return (
            ", ".join(
                f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in value.items()
            )
            or "-"
        )
    return str(value)
