"""The ``lorakit`` command. Thin: every command calls the library and prints its result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from lorakit import __version__
from lorakit.errors import ConfigError, LorakitError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TOKENIZER = "microsoft/Phi-3-mini-4k-instruct"
TINY_TOKENIZER = "tiny-phi3"


def console_for(err: bool = False) -> Console:
    """The console commands print to: stdout, or stderr with ``err=True``."""
    # Errors stay on one line (soft wrap) so that logs and tests see exactly one line.
    return Console(stderr=err, highlight=False, soft_wrap=err)


_console = console_for


class LorakitGroup(click.Group):
    """Turns a :class:`LorakitError` into one red line and exit code 2, without a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault("lorakit.argv", list(args))  # what `train --nproc` hands each rank
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        from lorakit.train import RunInterrupted

        try:
            return super().invoke(ctx)
        except RunInterrupted as exc:
            _console(err=True).print(f"[bold yellow]{escape(exc.format())}[/]", markup=True)
            ctx.exit(130)
        except LorakitError as exc:
            _console(err=True).print(f"[bold red]error:[/] {escape(exc.format())}", markup=True)
            ctx.exit(2)


@click.group(cls=LorakitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorakit")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also show the warnings and log records of the libraries underneath (always kept "
    "in RUN_DIR/lorakit.log during a run).",
)
def main(verbose: bool) -> None:
    """LoRA / QLoRA fine-tuning of small LLMs on question-answer data."""
    from lorakit._output import quiet_libraries

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS",):
        os.environ.setdefault(var, "1")
    quiet_libraries(verbose)


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
        for kind in ("sources", "cleaners", "templates", "metrics", "benchmarks", "presets")
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


def recipe_from_args(preset_or_file: str, assignments: tuple[str, ...]) -> Any:
    """A preset, recipe file (TOML, YAML, JSON) or run directory, with ``--set`` changes."""
    from lorakit.overrides import parse_assignment
    from lorakit.recipe_files import load_recipe

    recipe = load_recipe(preset_or_file, _presets())
    return recipe.with_overrides(dict(parse_assignment(text) for text in assignments))


_recipe = recipe_from_args


def _budget(text: str) -> float | str | None:
    word = text.strip().lower()
    if word in ("auto", "off"):
        return None if word == "off" else word
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a number of GiB, 'auto' nor 'off'", param_hint="--max-memory-gb"
        ) from None


@main.command("train")
@click.argument("preset", metavar="PRESET_OR_FILE")
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
@click.option(
    "--max-memory-gb",
    metavar="G|auto|off",
    help="A GPU memory budget in GiB, or 'auto' (the memory free on the GPU; medqa_phi3's "
    "default): checkpointing and micro-batch size are measured and the fastest that fits is "
    "kept. 'off' trains with the recipe's own settings (the same as --set "
    "training.max_memory_gb=G).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check, load the model, prepare the data, attach the adapter, plan memory and build "
    "the trainer; print what training would do, and stop (nothing is written).",
)
@click.option(
    "--private",
    is_flag=True,
    help="The data may hold PHI: scrub_phi runs in the cleaning chain "
    "(the same as --set data.private=true).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Train in N processes on this machine through torchrun (DDP, one per GPU; on a "
    "CPU, gloo): the same recipe and global batch, the run directory written by rank 0.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_command(
    preset: str,
    assignments: tuple[str, ...],
    run_dir: str | None,
    max_memory_gb: str | None,
    dry_run: bool,
    private: bool,
    nproc: int,
    no_progress: bool,
) -> None:
    """Fine-tune with a preset, a recipe file (TOML, YAML, JSON) or a run directory's recipe;
    an unfinished run in --run-dir resumes from its last checkpoint."""
    recipe = _recipe(preset, assignments)
    if max_memory_gb is not None:
        recipe = recipe.with_overrides({"training.max_memory_gb": _budget(max_memory_gb)})
    if private:
        recipe = recipe.with_overrides({"data.private": True})
    from lorakit.distributed import World, check_launch, launch_train, rank_errors

    if dry_run:
        from lorakit.runner import dry_run as run_dry

        if nproc > 1:
            check_launch(recipe, nproc)
        _print_dry_run(run_dry(recipe, show_progress=not no_progress))
        return

    if nproc > 1:  # each rank runs this command again, without --nproc
        code = launch_train(
            recipe,
            nproc,
            run_dir,
            click.get_current_context().meta.get("lorakit.argv", sys.argv[1:]),
        )
        if code:
            sys.exit(code)
        return
    world = World.from_env()
    with rank_errors(world):
        result = recipe.run(run_dir, show_progress=not no_progress)
    if not world.is_main:
        return  # rank 0 reports the run
    report = result.report
    ev = report.eval
    best = report.best or {}
    speed = ""
    if report.cost is not None and report.cost.tokens_per_s is not None:
        speed = f"; {report.cost.tokens_trained:,} tokens at {report.cost.tokens_per_s:,.0f}/s"
    console = _console()
    console.print(
        f"[bold green]done[/] {report.steps} steps"
        + (f" (resumed from {report.resumed_from})" if report.resumed_from else "")
        + f"; eval loss {ev.loss_before:.4f} -> {ev.loss:.4f}, perplexity {ev.perplexity:.2f}; "
        f"best {best.get('checkpoint', '-')}{speed}"
    )
    console.print(f"adapter: {result.adapter_dir}")
    console.print(f"report: {result.run_dir / 'report.md'}")


def _print_dry_run(report: Any) -> None:
    console = _console()
    examples = ", ".join(f"{k} {v:,}" for k, v in report.examples.items())
    console.print(f"[bold]dry run[/] {report.recipe}: nothing was trained or written")
    console.print(f"data: {report.rows_read:,} rows read, {report.rows_kept:,} kept; {examples}")
    console.print(
        f"training: {report.train_tokens:,} tokens in {report.train_rows:,} micro-batches, "
        f"{report.steps:,} optimizer steps"
    )
    console.print(
        f"adapter: {report.trainable_parameters:,} trainable parameters on "
        f"{', '.join(report.targets)}"
    )
    for note in report.notes:
        console.print(f"note: {note}")


@main.command("check")
@click.argument("preset", metavar="PRESET_OR_FILE")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a setting by dotted path before checking (repeatable).",
)
def check_command(preset: str, assignments: tuple[str, ...]) -> None:
    """Check PRESET (with --set changes) without loading a model; print every problem.

    Reads the first row of the data source and of each benchmark. Exit 2 when there is
    any problem.
    """
    recipe = _recipe(preset, assignments)
    problems = recipe.check()
    err = _console(err=True)
    for problem in problems:
        err.print(f"[bold red]error:[/] {escape(problem.format())}", markup=True)
    if problems:
        err.print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {recipe.name}")
        raise SystemExit(2)
    _console().print(f"[bold green]ok[/] {recipe.name}: no problems found")


@main.group("config")
def config_group() -> None:
    """Show resolved recipes."""


@config_group.command("show")
@click.argument("preset", metavar="PRESET_OR_FILE")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a setting by dotted path first (repeatable).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["toml", "yaml", "json"]),
    default="toml",
    show_default=True,
)
def config_show_command(preset: str, assignments: tuple[str, ...], fmt: str) -> None:
    """Print the fully resolved recipe; save it and train it with `lorakit train FILE`."""
    from lorakit.recipe_files import recipe_to_text

    click.echo(recipe_to_text(_recipe(preset, assignments), fmt), nl=False)


@main.group("data")
def data_group() -> None:
    """Get public data by name; look at data before training on it."""


def _load_tokenizer(name: str) -> Any:
    from lorakit.model import TINY_MODELS

    if name in TINY_MODELS:
        from lorakit.testing import tiny_model_path

        name = str(tiny_model_path(name))
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
    help="Cleaning step NAME[:opt=value,...], repeatable: +NAME adds to the default chain, "
    "-NAME removes from it, plain names replace it (the output says which).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Read only the first N rows.")
@click.option(
    "--private",
    is_flag=True,
    help="The data may hold PHI: scrub_phi is appended to the cleaning chain when absent.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def inspect_command(
    source: str,
    fields: str | None,
    tokenizer: str,
    template: str,
    max_len: int,
    cleaners: tuple[str, ...],
    limit: int | None,
    private: bool,
    as_json: bool,
) -> None:
    """Read, clean and tokenise SOURCE; report counts, lengths and one rendered example.

    Exits with code 1 when an example has no supervised (answer) token.
    """
    import attrs

    from lorakit.data.chains import edit_chain
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
        private=private,
    )
    chain, chain_note = edit_chain(spec.cleaners, cleaners)
    spec = attrs.evolve(spec, cleaners=chain)
    if len(spec.cleaning_chain()) > len(chain):
        chain_note += "; scrub_phi appended (private data)"
    tok = _load_tokenizer(tokenizer)
    with progress_for(_console(err=True), enabled=not as_json and sys.stderr.isatty()) as progress:
        report, examples = inspect_data(spec, tok, progress=progress)
    if (cleaners or private) and not as_json:
        _console(err=True).print(f"note: {chain_note}")
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
            "prompts with --cleaner +length_filter:max_prompt_chars=N",
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


main.add_command(__import__("lorakit.evaluate.cli").evaluate.cli.eval_command)  # lorakit eval
__import__("lorakit.serve.cli").serve.cli.add_commands(main)  # ask, generate, chat, serve, merge
main.add_command(__import__("lorakit.safety.cli").safety.cli.safety_group)  # lorakit safety
main.add_command(__import__("lorakit.search.cli").search.cli.search_command)  # lorakit search
main.add_command(__import__("lorakit.review.cli").review.cli.review_command)  # lorakit review
data_group.add_command(__import__("lorakit.data.cli").data.cli.get_command)  # lorakit data get


for _command in __import__("lorakit.retrieval.cli", fromlist=["COMMANDS"]).COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
