"""``lorakit search``: thin; :func:`lorakit.search.run_search` does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["search_command"]


@click.command("search")
@click.argument("preset", metavar="PRESET_OR_FILE")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a setting of every trial, e.g. --set training.max_steps=200 (repeatable).",
)
@click.option(
    "--space",
    "spaces",
    multiple=True,
    required=True,
    metavar="KEY=VALUES",
    help="A setting to search: KEY=A,B,C (choices), KEY=A|B+C (choices of lists, '+' joins "
    "items), KEY=LOW..HIGH[:log] (a range). Repeatable.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    help="Trials to finish (default: every combination of a grid; needed for TPE).",
)
@click.option(
    "--objective",
    default="eval_loss",
    show_default=True,
    help="eval_loss (lowest answer-only eval loss) or bench:NAME (highest accuracy on the "
    "recipe's benchmark NAME).",
)
@click.option(
    "--sampler",
    type=click.Choice(["auto", "grid", "tpe"]),
    default="auto",
    show_default=True,
    help="auto: grid when every --space is a list of choices, else TPE.",
)
@click.option(
    "--pruner",
    type=click.Choice(["median", "none"]),
    default="median",
    show_default=True,
    help="median: stop a trial whose eval loss is worse than the median of earlier trials at "
    "the same step (after 5 trials).",
)
@click.option("--seed", type=int, help="The sampler's seed (default: random).")
@click.option(
    "--storage",
    metavar="URL",
    help="Optuna storage URL shared by every process of the search "
    "(default: sqlite:///DIR/study.db).",
)
@click.option("--study", "study_name", metavar="NAME", help="Study name (default: the recipe's).")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    help="Search folder: trial runs, results.csv/.md, best.toml (default: searches/STUDY).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars inside trials.")
def search_command(
    preset: str,
    assignments: tuple[str, ...],
    spaces: tuple[str, ...],
    trials: int | None,
    objective: str,
    sampler: str,
    pruner: str,
    seed: int | None,
    storage: str | None,
    study_name: str | None,
    folder: str | None,
    no_progress: bool,
) -> None:
    """Search LoRA settings with Optuna: every trial is an ordinary run in the search folder.

    The same command resumes a stopped search (finished trials are not run again); several
    processes given one --storage and --study share the trials.
    """
    from lorakit.cli import console_for, recipe_from_args
    from lorakit.search import SearchParam, SearchSpec, run_search

    recipe = recipe_from_args(preset, assignments)
    spec = SearchSpec(
        space=tuple(SearchParam.parse(text, recipe) for text in spaces),
        objective=objective,
        trials=trials,
        sampler=sampler,  # type: ignore[arg-type]
        pruner=pruner,  # type: ignore[arg-type]
        seed=seed,
    )
    name = study_name or recipe.name
    where = Path(folder) if folder else Path("searches") / name
    console = console_for(err=True)

    def on_trial(row: Any) -> None:
        settings = " ".join(f"{key}={value}" for key, value in row.params.items())
        loss = f"eval loss {row.eval_loss:.4f}" if row.eval_loss is not None else ""
        console.print(f"trial {row.number} {row.state}: {settings} {loss} {row.note}".rstrip())

    result = run_search(
        recipe,
        spec,
        where,
        storage=storage,
        study_name=name,
        show_progress=not no_progress,
        on_trial=on_trial,
    )
    _print_table(result)


def _print_table(result: Any) -> None:
    from rich.table import Table

    from lorakit.cli import console_for

    console = console_for()
    if not console.is_terminal:  # a log or a pipe: the Markdown table, never cut to 80 columns
        click.echo(result.to_markdown())
    else:
        table = Table(title=f"search {result.study}: objective {result.objective}")
        for column in result.header():
            table.add_column(column)
        for row in result.rows:
            table.add_row(*result.cells(row))
        console.print(table)
    console.print(f"table: {result.folder / 'results.md'} and results.csv")
    if result.best_recipe is not None:
        console.print(f"best: trial {result.best}; recipe {result.best_recipe}")
