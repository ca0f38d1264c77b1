"""The ``lorakit`` command. Thin: every command calls the library and prints its result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from lorakit import __version__
from lorakit.errors import ConfigError, LorakitError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TOKENIZER = "microsoft/Phi-3-mini-4k-instruct"
TINY_TOKENIZER = "tiny-phi3"


def _console(err: bool = False) -> Console:
    # Errors stay on one line (soft wrap) so that logs and tests see exactly one line.
    return Console(stderr=err, highlight=False, soft_wrap=err)


class LorakitGroup(click.Group):
    """Turns a :class:`LorakitError` into one red line and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LorakitError as exc:
            _console(err=True).print(f"[bold red]error:[/] {exc.format()}", markup=True)
            ctx.exit(2)


@click.group(cls=LorakitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorakit")
def main() -> None:
    """LoRA / QLoRA fine-tuning of small LLMs on question-answer data."""
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS",):
        os.environ.setdefault(var, "1")


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins, the hooks they implement and what they register."""
    from lorakit.plugins import Registries, make_plugin_manager, plugin_summary

    pm = make_plugin_manager()
    summary = plugin_summary(pm)
    registries = Registries.from_plugin_manager(pm)
    registered = {
        kind: {entry.name: entry.plugin for entry in getattr(registries, kind)}
        for kind in ("sources", "cleaners", "templates", "metrics", "presets")
    }
    if as_json:
        click.echo(json.dumps({"plugins": summary, "registered": registered}, indent=2))
        return
    from rich.table import Table

    table = Table(title="lorakit plugins", title_justify="left")
    for column in ("name", "package", "version", "hooks", "registers"):
        table.add_column(column)
    for plugin in summary:
        provides = [
            f"{kind[:-1]} {name}"
            for kind, names in registered.items()
            for name, owner in names.items()
            if owner == plugin["name"]
        ]
        table.add_row(
            plugin["name"],
            plugin["package"] or "-",
            plugin["version"] or "-",
            "\n".join(plugin["hooks"]),
            ", ".join(provides) or "-",
        )
    _console().print(table)


def _presets() -> Any:
    from lorakit.plugins import Registries

    return Registries.from_plugin_manager().presets


@main.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def presets_command(as_json: bool) -> None:
    """List the registered presets."""
    registry = _presets()
    rows = []
    for entry in registry:
        recipe = entry.obj
        rows.append(
            {
                "name": entry.name,
                "plugin": entry.plugin,
                "model": recipe.model.name,
                "data": recipe.data.source,
                "adapter": f"r {recipe.adapter.rank}, alpha {recipe.adapter.alpha}",
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from lorakit.reporting import counts_table

    _console().print(
        counts_table("lorakit presets", rows, ["name", "model", "data", "adapter", "plugin"])
    )


@main.command("train")
@click.argument("preset")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a setting by dotted path, e.g. --set adapter.rank=32 (repeatable).",
)
@click.option(
    "--run-dir", type=click.Path(file_okay=False), help="Run directory (default runs/PRESET-TIME)."
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_command(
    preset: str, assignments: tuple[str, ...], run_dir: str | None, no_progress: bool
) -> None:
    """Fine-tune with PRESET; an unfinished run in --run-dir resumes from its last checkpoint."""
    from lorakit.overrides import parse_assignment

    recipe = _presets().resolve(preset)
    overrides = dict(parse_assignment(text) for text in assignments)
    recipe = recipe.with_overrides(overrides)
    result = recipe.run(run_dir, show_progress=not no_progress)
    report = result.report
    ev = report["eval"]
    best = report["best"] or {}
    console = _console()
    console.print(
        f"[bold green]done[/] {report['steps']} steps"
        + (f" (resumed from {report['resumed_from']})" if report["resumed_from"] else "")
        + f"; eval loss {ev['loss_before']:.4f} -> {ev['loss']:.4f}, perplexity {ev['perplexity']:.2f}; "
        f"best {best.get('checkpoint', '-')}"
    )
    console.print(f"adapter: {result.adapter_dir}")
    console.print(f"report: {result.run_dir / 'report.md'}")


@main.group("data")
def data_group() -> None:
    """Look at data before training on it."""


def _load_tokenizer(name: str) -> Any:
    if name == TINY_TOKENIZER:
        from lorakit.testing import tiny_phi3_path

        name = str(tiny_phi3_path())
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise ConfigError(
            f"could not load tokenizer {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            field="--tokenizer",
            hint=f"pass a local model folder, or --tokenizer {TINY_TOKENIZER} for the built-in tiny Phi-3 tokenizer",
        ) from exc


@data_group.command("inspect")
@click.argument("source")
@click.option(
    "--fields", help="Field mapping for generic sources, e.g. question=Question,answer=Answer."
)
@click.option(
    "--tokenizer",
    default=DEFAULT_TOKENIZER,
    show_default=True,
    help=f"Model id or local folder whose tokenizer and chat template render the rows; "
    f"'{TINY_TOKENIZER}' uses lorakit's built-in tiny Phi-3 (offline).",
)
@click.option("--template", default="qa", show_default=True, help="Registered prompt template.")
@click.option("--max-len", type=click.IntRange(min=8), default=1024, show_default=True)
@click.option(
    "--cleaner",
    "cleaners",
    multiple=True,
    help="Cleaning step NAME[:opt=value,...]; repeat for a chain (replaces the default chain).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Read only the first N rows.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def inspect_command(
    source: str,
    fields: str | None,
    tokenizer: str,
    template: str,
    max_len: int,
    cleaners: tuple[str, ...],
    limit: int | None,
    as_json: bool,
) -> None:
    """Read, clean and tokenise SOURCE; report counts, lengths and one rendered example.

    Exits with code 1 when an example has no supervised (answer) token.
    """
    import attrs

    from lorakit.data.cleaners import CleanerSpec
    from lorakit.data.pipeline import DataSpec, inspect_data
    from lorakit.data.rows import parse_fields
    from lorakit.data.tokenize import TokenizeSpec
    from lorakit.reporting import progress_for

    spec = DataSpec(
        source=source,
        fields=parse_fields(fields),
        template=template,
        tokenize=attrs.evolve(TokenizeSpec(), max_len=max_len),
        limit=limit,
    )
    if cleaners:
        chain = [CleanerSpec.parse(text) for text in cleaners]
        spec = attrs.evolve(spec, cleaners=chain)
    tok = _load_tokenizer(tokenizer)
    with progress_for(_console(err=True), enabled=not as_json and sys.stderr.isatty()) as progress:
        report, examples = inspect_data(spec, tok, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_inspection(report, examples, tok)
    if report.zero_supervised:
        tok_report = report.tokenization["all"]
        where = ", ".join(tok_report.zero_supervised_origins[:5])
        _console(err=True).print(
            f"[bold red]error:[/] {report.zero_supervised:,} example(s) have no supervised token: "
            f"the prompt alone fills max_len {max_len} ({where}); raise --max-len or drop long "
            "prompts with --cleaner length_filter:max_question_chars=N",
        )
        sys.exit(1)


def _print_inspection(report: Any, examples: list[Any], tokenizer: Any) -> None:
    from lorakit.reporting import counts_table, render_example

    console = _console()
    data = report.to_dict()
    console.print(
        f"[bold]{report.source}[/]: {report.rows_read:,} rows read, {report.rows_kept:,} kept "
        f"({', '.join(f'{k} {v:,}' for k, v in report.kinds.items())})"
    )
    console.print(
        counts_table(
            "Cleaning",
            data["cleaning"]["steps"],
            ["name", "rows_in", "rows_out", "changed", "dropped"],
        )
    )
    tok = data["tokenization"]["all"]
    console.print(
        f"Tokens: {tok['examples']:,} examples, {tok['supervised_tokens']:,} supervised of "
        f"{tok['total_tokens']:,}; length p50 {tok['length']['p50']:,} p90 {tok['length']['p90']:,} "
        f"p99 {tok['length']['p99']:,} max {tok['length']['max']:,}; "
        f"truncated to {tok['max_len']:,}: {tok['truncated']:,}; no supervised token: {tok['zero_supervised']:,}"
    )
    console.print(counts_table("Token lengths", tok["histogram"], ["bucket", "count"]))
    if examples:
        console.rule(
            f"first example, {examples[0].origin}: [bold green]supervised[/], [dim]masked[/]"
        )
        console.print(render_example(tokenizer, examples[0].input_ids, examples[0].labels))
        console.rule()


if __name__ == "__main__":  # pragma: no cover
    main()
