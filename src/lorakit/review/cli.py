"""``lorakit review``: grade a sample of generated answers on a local page, export, summarise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["review_command"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from lorakit.review.grades import GRADE_LABELS, GRADES

    console = Console(highlight=False)
    console.print(f"{summary['graded_items']} of {summary['items']} answers graded")
    table = Table("reviewer", "n", *(GRADE_LABELS[g] for g in GRADES), title="Grades (95 % Wilson)")
    for name, rates in [*summary["reviewers"].items(), ("all", summary["pooled"])]:
        cells = [
            f"{_pct(rates[g]['rate'])} [{_pct(rates[g]['ci_low'])}, {_pct(rates[g]['ci_high'])}]"
            for g in GRADES
        ]
        table.add_row(name, str(rates["n"]), *cells)
    console.print(table)
    if summary["kappa"]:
        kappa = Table(
            "reviewers", "items", "agreement", "Cohen's kappa [95 %]", title="Reviewer agreement"
        )
        for row in summary["kappa"]:
            kappa.add_row(
                " / ".join(row["reviewers"]),
                str(row["n"]),
                _pct(row["agreement"]),
                f"{_num(row['kappa'])} [{_num(row['ci_low'])}, {_num(row['ci_high'])}]",
            )
        console.print(kappa)
    if summary["metrics"]:
        metrics = Table(
            "metric",
            "items",
            "mean",
            "Spearman rho with grade [95 %]",
            title="Metric agreement with the grades",
        )
        for name, row in summary["metrics"].items():
            metrics.add_row(
                name,
                str(row["n"]),
                _num(row["mean"]),
                f"{_num(row['spearman'])} [{_num(row['ci_low'])}, {_num(row['ci_high'])}]",
            )
        console.print(metrics)


@click.command("review")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    help="Answers to draw (default 50; a sheet keeps its size).",
)
@click.option("--seed", type=int, help="Sampling seed (default 0; a sheet keeps its seed).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8765,
    show_default=True,
    help="Serve the page on 127.0.0.1:PORT.",
)
@click.option(
    "--export",
    "export_kind",
    type=click.Choice(["csv", "html"]),
    help="Write the sheet and its grades as CSV or HTML instead of serving.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where --export writes (default: the sheet's folder).",
)
@click.option(
    "--summary",
    is_flag=True,
    help="Report grade rates, kappa and metric agreement instead of serving.",
)
@click.option(
    "--metric",
    "metric_names",
    multiple=True,
    help="With --summary: also score the graded answers with this text metric (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="With --summary: print one JSON object.")
@click.option("--no-serve", is_flag=True, help="Draw (or check) the sheet and stop.")
def review_command(
    target: Path,
    sample: int | None,
    seed: int | None,
    port: int,
    export_kind: str | None,
    out: Path | None,
    summary: bool,
    metric_names: tuple[str, ...],
    as_json: bool,
    no_serve: bool,
) -> None:
    """Grade generated answers on a local web page.

    TARGET is a run directory (its eval/*_answers_*.jsonl from `lorakit eval --split test`) or
    a JSON-lines file from `lorakit generate`. A sample, stratified by question type, is drawn
    once into review-<answers>/sheet.json beside the answers; grades go to grades.jsonl there as
    they are made. Run it again to resume.
    """
    from lorakit.errors import ConfigError
    from lorakit.review.grades import GradeStore
    from lorakit.review.sheet import ReviewSheet

    if (as_json or metric_names) and not summary:
        raise ConfigError("--json and --metric go with --summary", field="--summary")
    sheet = ReviewSheet.open(target, sample=sample, seed=seed)
    store = GradeStore(sheet.folder, {item.id for item in sheet.items})
    for note in sheet.notes:
        click.echo(f"note: {note}", err=True)
    if summary:
        from lorakit.evaluate.generate import resolve_text_metrics
        from lorakit.plugins import Registries
        from lorakit.review.summary import summarize

        metrics = (
            resolve_text_metrics(metric_names, Registries.from_plugin_manager())
            if metric_names
            else {}
        )
        result = summarize(sheet, store.read(), metrics=metrics)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            _print_summary(result)
        return
    if export_kind:
        from lorakit.review.export import export_sheet

        click.echo(str(export_sheet(sheet, store.read(), export_kind, out)))
        return
    click.echo(f"sheet: {sheet.path} ({len(sheet.items)} answers); grades: {store.path}")
    if no_serve:
        return
    try:
        from lorakit.review.server import serve_review
    except ImportError as error:
        raise ConfigError(
            f"the review page needs FastAPI and uvicorn ({error})",
            hint='pip install "lorakit[review]", or use --export html',
        ) from None

    click.echo(
        f"review page: http://127.0.0.1:{port}/  (Ctrl+C to stop; grades are saved as you go)"
    )
    serve_review(sheet, store, port=port)
