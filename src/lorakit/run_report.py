"""``RunReport``: what a finished run measured, as typed data.

``report.json`` in a run directory is :meth:`RunReport.to_dict`; ``report.md`` is
:meth:`RunReport.to_markdown`; :meth:`RunReport.from_run_dir` reads a finished run back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["EvalSummary", "RunCost", "RunReport", "TrainSummary"]


@attrs.frozen(kw_only=True)
class TrainSummary:
    """The training loss as logged (``final_loss``: the last record; ``mean_loss``: the mean
    of every logged loss over the whole run, resumed or not) and the examples trained on."""

    final_loss: float | None
    mean_loss: float | None
    examples: int

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], examples: int) -> TrainSummary:
        """From the records of ``metrics.jsonl``."""
        losses = [float(r["loss"]) for r in records if "loss" in r]
        return cls(
            final_loss=losses[-1] if losses else None,
            mean_loss=sum(losses) / len(losses) if losses else None,
            examples=examples,
        )


@attrs.frozen(kw_only=True)
class EvalSummary:
    """Answer-only eval loss before and after training (perplexity = exp(loss))."""

    loss_before: float
    perplexity_before: float
    loss: float
    perplexity: float
    tokens: int


def _floats(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


@attrs.frozen(kw_only=True)
class RunCost:
    """What the run cost: real (non-padding) tokens trained, throughput, wall time per
    phase, the device and its peak memory (``None`` off a GPU).

    ``tokens_trained`` counts the whole run, resumed or not; ``tokens_per_s`` is this
    process's training tokens over this process's training time. With several processes
    (``world_size``, ``lorakit train --nproc``) both count every process's tokens, the
    peak memory is rank 0's, and ``peak_gpu_allocated_gib_by_rank`` each rank's peak while
    training, by rank.
    """

    tokens_trained: int
    tokens_per_s: float | None
    wall_s: Mapping[str, float]
    device: str
    peak_gpu_allocated_gib: float | None = None
    peak_gpu_reserved_gib: float | None = None
    world_size: int = 1
    peak_gpu_allocated_gib_by_rank: tuple[float, ...] | None = attrs.field(
        default=None, converter=_floats
    )


def _train(value: TrainSummary | Mapping[str, Any]) -> TrainSummary:
    return TrainSummary(**value) if isinstance(value, Mapping) else value


def _eval(value: EvalSummary | Mapping[str, Any]) -> EvalSummary:
    return EvalSummary(**value) if isinstance(value, Mapping) else value


def _cost(value: RunCost | Mapping[str, Any] | None) -> RunCost | None:
    return RunCost(**value) if isinstance(value, Mapping) else value


def _notes(value: Any) -> tuple[str, ...]:
    return tuple(str(note) for note in value)


@attrs.frozen(kw_only=True)
class RunReport:
    """The results and run card of a finished run (``report.json``).

    ``eval_by_source``: with mixed data (``data.mix``), the answer-only eval loss after
    training of each source's own eval examples, by source name (``None`` without a mix).
    """

    status: str
    recipe: str
    run_dir: str
    started: str
    finished: str
    resumed_from: str | None
    steps: int
    train: TrainSummary = attrs.field(converter=_train)
    eval: EvalSummary = attrs.field(converter=_eval)
    test: Mapping[str, Any] | None
    benchmarks: Mapping[str, Any] | None
    best: Mapping[str, Any] | None
    adapter: Mapping[str, Any]
    data: Mapping[str, Any]
    cost: RunCost | None = attrs.field(default=None, converter=_cost)
    notes: tuple[str, ...] = attrs.field(default=(), converter=_notes)
    run_card: Mapping[str, Any]
    eval_by_source: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """From the JSON of ``report.json`` (unknown keys are ignored)."""
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> RunReport:
        """The report of the finished run in ``run_dir``."""
        from lorakit._fs import read_json_object

        return cls.from_dict(read_json_object(Path(run_dir) / "report.json", "the run report"))

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data (the keys of ``report.json``)."""
        data: dict[str, Any] = attrs.asdict(self, recurse=True)
        data["notes"] = list(self.notes)
        return data

    def to_markdown(self) -> str:
        """The report for people (``report.md``)."""
        ev, tr, best = self.eval, self.train, self.best or {}
        lines = [
            f"# Run report: {self.recipe}",
            "",
            f"Status: **{self.status}**, {self.steps} optimizer steps"
            + (f", resumed from `{self.resumed_from}`" if self.resumed_from else "")
            + ".",
            "",
            "| measure | value |",
            "|---|---|",
            f"| final train loss (last logged) | {_fmt(tr.final_loss)} |",
            f"| mean train loss | {_fmt(tr.mean_loss)} |",
            f"| eval loss before training (answer tokens) | {_fmt(ev.loss_before)} |",
            f"| eval loss after training (answer tokens) | {_fmt(ev.loss)} |",
            f"| eval perplexity = exp(eval loss) | {_fmt(ev.perplexity)} |",
            f"| eval answer tokens | {ev.tokens} |",
            f"| best checkpoint | {_fmt(best.get('checkpoint'))} (step {_fmt(best.get('step'))}, "
            f"eval loss {_fmt(best.get('eval_loss'))}, verified: {_fmt(best.get('verified'))}) |",
        ]
        if self.test:
            lines.append(
                f"| test loss / perplexity | {_fmt(self.test['loss'])} / {_fmt(self.test['perplexity'])} |"
            )
        lines += _source_lines(self.eval_by_source, self.data.get("mix"))
        lines += _cost_lines(self.cost)
        lines += _benchmark_lines(self.benchmarks or {})
        data, card = self.data, self.run_card
        lines += [
            "",
            f"Data: {data['rows_read']} rows read, {data['rows_kept']} kept ({data['kind']}); "
            "dropped per cleaner: " + ", ".join(f"{k} {v}" for k, v in data["dropped"].items()),
            "",
            f"Adapter: `{self.adapter['path']}` on {', '.join(self.adapter['targets'])}.",
            "",
            "## Run card",
            "",
            f"- device: {card['device']}, compute dtype {card['compute_dtype']}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
            f"- data hash: `{card['data_hash'][:16]}`, template hash: `{card['template_hash'][:16]}`",
        ]
        if self.notes:
            lines += ["", "## Notes", "", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _source_lines(by_source: Mapping[str, Any] | None, mix: Mapping[str, Any] | None) -> list[str]:
    """Per source of a mix: its share of the training examples and its eval loss."""
    if not by_source and not mix:
        return []
    lines = [
        "",
        "| source | weight | training examples (share, repeated, left out) | eval loss |",
        "|---|---|---|---|",
    ]
    for part in (mix or {}).get("sources", []):
        loss = (by_source or {}).get(part["name"], {}).get("loss")
        lines.append(
            f"| {part['name']} | {part['weight']:.3f} | {part['train']} "
            f"({100 * part['share']:.1f} %, {part['repeated']}, {part['left_out']}) | {_fmt(loss)} |"
        )
    return lines


def _cost_lines(cost: RunCost | None) -> list[str]:
    if cost is None:
        return []
    speed = f"{cost.tokens_per_s:,.0f}" if cost.tokens_per_s is not None else "-"
    lines = [
        f"| real tokens trained / tokens per second | {cost.tokens_trained:,} / {speed} |",
        "| wall time per phase (s) | "
        + ", ".join(f"{k} {v:.1f}" for k, v in cost.wall_s.items())
        + " |",
    ]
    if cost.world_size > 1:
        by_rank = cost.peak_gpu_allocated_gib_by_rank
        lines.append(
            f"| processes (DDP) / peak GPU memory allocated per rank while training (GiB) | "
            f"{cost.world_size} / "
            + (" · ".join(f"{v:.2f}" for v in by_rank) if by_rank else "- (no GPU)")
            + " |"
        )
    if cost.peak_gpu_allocated_gib is not None:
        lines.append(
            f"| peak GPU memory allocated / reserved (GiB) | {cost.peak_gpu_allocated_gib:.2f} / "
            f"{_fmt(cost.peak_gpu_reserved_gib)} |"
        )
    return lines


def _score(result: Mapping[str, Any]) -> str:
    if result.get("accuracy") is None:
        return f"perplexity {result.get('perplexity', float('nan')):.3f}"
    return (
        f"{100 * result['accuracy']:.1f} % "
        f"({100 * result['ci_low']:.1f}-{100 * result['ci_high']:.1f})"
    )


def _delta(comparison: Mapping[str, Any]) -> str:
    if comparison.get("measure") == "accuracy":
        return (
            f"{100 * comparison['delta']:+.1f} points ({100 * comparison['ci_low']:+.1f} to "
            f"{100 * comparison['ci_high']:+.1f})"
        )
    return f"perplexity {comparison['delta']:+.3f}"


def _benchmark_lines(benchmarks: Mapping[str, Any]) -> list[str]:
    if not benchmarks:
        return []
    lines = [
        "",
        "| benchmark | n | base | adapter | difference (95 % CI) |",
        "|---|---|---|---|---|",
    ]
    for name, entry in benchmarks.items():
        n = entry["adapter"].get("n", entry["adapter"].get("examples"))
        lines.append(
            f"| {name} | {n} | {_score(entry['base'])} | {_score(entry['adapter'])} | "
            f"{_delta(entry['compare'])} |"
        )
    heldout = benchmarks.get("heldout", {})
    if "free_text" in heldout.get("adapter", {}):
        base_text, adapter_text = heldout["base"]["free_text"], heldout["adapter"]["free_text"]
        lines += [
            "",
            f"Generated answers to {adapter_text['n']} test questions:",
            "",
            "| metric | base (95 % CI) | adapter (95 % CI) |",
            "|---|---|---|",
        ]
        for name, value in adapter_text["metrics"].items():
            b = base_text["metrics"][name]
            lines.append(
                f"| {name} | {b['mean']:.3f} ({b['ci_low']:.3f}-{b['ci_high']:.3f}) | "
                f"{value['mean']:.3f} ({value['ci_low']:.3f}-{value['ci_high']:.3f}) |"
            )
    return lines
