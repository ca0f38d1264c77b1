"""The results of a search: one ``TrialRow`` per trial, read back from the study's storage, so
every process sharing a study writes the same table."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["SearchResult", "TrialRow"]

# The CSV's measure columns (also the trial's user attributes that carry them).
CSV_MEASURES = (
    "eval_loss",
    "accuracy",
    "ci_low",
    "ci_high",
    "tokens_per_s",
    "peak_gpu_gib",
    "trainable_parameters",
    "steps",
)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@attrs.frozen(kw_only=True)
class TrialRow:
    """One trial: its settings, its state and what its run measured.

    ``state`` is ``complete``, ``pruned``, ``failed``, ``running`` or ``waiting``; ``note``
    says why a trial was pruned or failed, or which trial it repeats.
    """

    number: int
    state: str
    params: Mapping[str, Any]
    value: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    tokens_per_s: float | None = None
    peak_gpu_gib: float | None = None
    trainable_parameters: int | None = None
    steps: int | None = None
    run_dir: str | None = None
    note: str = ""

    @classmethod
    def from_trial(cls, trial: Any) -> TrialRow:
        """From an ``optuna.trial.FrozenTrial`` of a lorakit search."""
        attrs_ = trial.user_attrs
        params = attrs_.get("lorakit_params") or dict(trial.params)
        trainable = attrs_.get("trainable_parameters")
        steps = attrs_.get("steps")
        return cls(
            number=trial.number,
            state=trial.state.name.lower().replace("fail", "failed"),
            params=params,
            value=_float(trial.value) if trial.values else None,
            eval_loss=_float(attrs_.get("eval_loss")),
            accuracy=_float(attrs_.get("accuracy")),
            ci_low=_float(attrs_.get("ci_low")),
            ci_high=_float(attrs_.get("ci_high")),
            tokens_per_s=_float(attrs_.get("tokens_per_s")),
            peak_gpu_gib=_float(attrs_.get("peak_gpu_gib")),
            trainable_parameters=int(trainable) if isinstance(trainable, int) else None,
            steps=int(steps) if isinstance(steps, int) else None,
            run_dir=attrs_.get("run_dir"),
            note=str(attrs_.get("lorakit_note", "")),
        )


@attrs.frozen(kw_only=True)
class SearchResult:
    """Every trial of a search, the best one and the files written.

    Attributes:
        folder: the search folder.
        study: the Optuna study's name.
        storage: the study's storage URL.
        objective: ``eval_loss`` or ``bench:NAME``.
        keys: the settings searched, in ``--space`` order.
        rows: one row per trial, by number.
        best: the number of the best complete trial (``None``: none complete yet).
        best_recipe: the best trial's recipe file (``None`` when there is no best trial).
        bench: the benchmark whose accuracy the table shows (the objective's, else the
            recipe's first; ``None``: none).
    """

    folder: Path
    study: str
    storage: str
    objective: str
    keys: tuple[str, ...]
    rows: tuple[TrialRow, ...]
    best: int | None
    best_recipe: Path | None = None
    bench: str | None = None

    @property
    def shows_accuracy(self) -> bool:
        """Whether the table has a benchmark accuracy column."""
        return self.bench is not None

    def header(self) -> list[str]:
        """The table's columns."""
        columns = ["trial", "state", *self.keys, "eval loss"]
        if self.shows_accuracy:
            columns.append(f"{self.bench} accuracy [95% CI]")
        return [*columns, "tokens/s", "peak GPU GiB", "trainable params", "note"]

    def cells(self, row: TrialRow) -> list[str]:
        """One row of the table, as text."""
        best = " *" if row.number == self.best else ""
        cells = [
            f"{row.number}{best}",
            row.state,
            *(_text(row.params.get(key)) for key in self.keys),
            f"{row.eval_loss:.4f}" if row.eval_loss is not None else "-",
        ]
        if self.shows_accuracy:
            if row.accuracy is not None and row.ci_low is not None and row.ci_high is not None:
                cells.append(f"{row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]")
            else:
                cells.append("-")
        cells += [
            f"{row.tokens_per_s:,.0f}" if row.tokens_per_s is not None else "-",
            f"{row.peak_gpu_gib:.2f}" if row.peak_gpu_gib is not None else "-",
            f"{row.trainable_parameters:,}" if row.trainable_parameters is not None else "-",
            row.note,
        ]
        return cells

    def to_csv(self) -> str:
        """Machine-readable: raw numbers, one column per measure."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            ["trial", "state", *self.keys, "objective", *CSV_MEASURES, "run_dir", "note"]
        )
        for row in self.rows:
            writer.writerow(
                [
                    row.number,
                    row.state,
                    *(_text(row.params.get(key), empty="") for key in self.keys),
                    _raw(row.value),
                    *(_raw(getattr(row, name)) for name in CSV_MEASURES),
                    row.run_dir or "",
                    row.note,
                ]
            )
        return out.getvalue()

    def to_markdown(self) -> str:
        """For people: the table, the objective and the best trial."""
        header = self.header()
        lines = [
            f"# Search: {self.study}",
            "",
            f"Objective: `{self.objective}` "
            f"({'lowest' if self.objective == 'eval_loss' else 'highest'}); "
            f"{sum(r.state == 'complete' for r in self.rows)} complete, "
            f"{sum(r.state == 'pruned' for r in self.rows)} pruned, "
            f"{sum(r.state == 'failed' for r in self.rows)} failed. "
            + (f"Best: trial {self.best} (`*`)." if self.best is not None else "No best yet."),
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in self.cells(row)) + " |")
        if self.best_recipe is not None:
            lines += [
                "",
                f"Best recipe: `{self.best_recipe}` (`lorakit train {self.best_recipe}`).",
            ]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """``results.csv`` and ``results.md`` in the search folder (atomically)."""
        from lorakit._fs import write_text_atomic

        write_text_atomic(self.folder / "results.csv", self.to_csv())
        write_text_atomic(self.folder / "results.md", self.to_markdown())


def _text(value: Any, empty: str = "-") -> str:
    if value is None:
        return empty
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace(",", "+") if isinstance(value, str) else str(value)


def _raw(value: Any) -> str:
    return "" if value is None else str(value)


def best_trial(rows: Sequence[TrialRow], direction: str) -> int | None:
    """The complete trial with the best objective (ties: the earliest)."""
    done = [row for row in rows if row.state == "complete" and row.value is not None]
    if not done:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(done, key=lambda row: (sign * float(row.value or 0.0), row.number)).number
