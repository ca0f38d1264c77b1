"""The ``lorakit`` command. Thin: every command calls the library and prints its result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
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
        from lorakit.train import RunInterrupted

        try:
            return super().invoke(ctx)
        except RunInterrupted as exc:
            _console(err=True).print(f"[bold yellow]{exc.format()}[/]", markup=True)
            ctx.exit(130)
        except LorakitError as exc:
            _console(err=True).print(f"[bold red]error:[/] {exc.format()}", markup=True)
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


def _recipe(preset_or_file: str, assignments: tuple[str, ...]) -> Any:
    """A preset, recipe file (TOML, YAML, JSON) or run directory, with ``--set`` changes."""
    from lorakit.overrides import parse_assignment
    from lorakit.recipe_files import load_recipe

    recipe = load_recipe(preset_or_file, _presets())
    return recipe.with_overrides(dict(parse_assignment(text) for text in assignments))


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
    type=float,
    metavar="G",
    help="A GPU memory budget: checkpointing and micro-batch size are chosen to fit it "
    "(the same as --set training.max_memory_gb=G).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check, load the model, prepare the data, attach the adapter, plan memory and build "
    "the trainer; print what training would do, and stop (nothing is written).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_command(
    preset: str,
    assignments: tuple[str, ...],
    run_dir: str | None,
    max_memory_gb: float | None,
    dry_run: bool,
    no_progress: bool,
) -> None:
    """Fine-tune with a preset, a recipe file (TOML, YAML, JSON) or a run directory's recipe;
    an unfinished run in --run-dir resumes from its last checkpoint."""
    recipe = _recipe(preset, assignments)
    if max_memory_gb is not None:
        recipe = recipe.with_overrides({"training.max_memory_gb": max_memory_gb})
    if dry_run:
        from lorakit.runner import dry_run as run_dry

        _print_dry_run(run_dry(recipe, show_progress=not no_progress))
        return
    result = recipe.run(run_dir, show_progress=not no_progress)
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
        err.print(f"[bold red]error:[/] {problem.format()}", markup=True)
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


def _eval_table(title: str, results: list[Any], comparisons: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("bench", "n", "accuracy", "95% CI", "acc_norm", "errors", "delta (95% CI)"):
        table.add_column(column, justify="left" if column in ("bench", "errors") else "right")
    for result in results:
        if result.accuracy is None:
            value, interval = f"ppl {result.perplexity:.3f}", "-"
        else:
            value = f"{100 * result.accuracy:.1f}%"
            interval = f"{100 * result.ci_low:.1f}-{100 * result.ci_high:.1f}"
        errors = ", ".join(f"{k} {v}" for k, v in result.errors.items() if v) or "-"
        comp = comparisons.get(result.bench)
        delta = "-"
        if comp is not None and comp.measure == "accuracy":
            delta = f"{100 * comp.delta:+.1f} ({100 * comp.ci_low:+.1f}..{100 * comp.ci_high:+.1f})"
        elif comp is not None:
            delta = f"ppl {comp.delta:+.3f}"
        acc_norm = f"{100 * result.acc_norm:.1f}%" if result.acc_norm is not None else "-"
        table.add_row(result.bench, str(result.n), value, interval, acc_norm, errors, delta)
    return table


@main.command("eval")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--model", "model_name", help="Base model id, folder, or tiny-phi3 (default: the run's)."
)
@click.option(
    "--adapter", type=click.Path(exists=True, file_okay=False), help="LoRA adapter folder."
)
@click.option(
    "--bench",
    "benches",
    multiple=True,
    metavar="NAME:PATH",
    help="medqa:FILE, medmcqa:FILE, pubmedqa:FILE, mmlu_medical:DIR, heldout:URI or a "
    "plugin's benchmark (repeatable).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Score the first N items of each.")
@click.option("--shots", type=click.IntRange(min=0), help="Exemplars per item (default: 0).")
@click.option(
    "--choices",
    type=click.Choice(["letters", "texts"]),
    help="Continuation style (default: the benchmark's).",
)
@click.option(
    "--mode",
    type=click.Choice(["loglikelihood", "generate"]),
    default="loglikelihood",
    show_default=True,
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--quant",
    type=click.Choice(["nf4", "fp4", "none"]),
    default="nf4",
    show_default=True,
    help="Base weights as in training (QLoRA adapters were trained on the 4-bit base).",
)
@click.option(
    "--metric",
    "text_metrics",
    multiple=True,
    help="For heldout: generate answers and score them with this text metric "
    "(token_f1, rouge_l, exact_match, embedding_similarity, or a plugin's); repeatable.",
)
@click.option(
    "--template",
    default="qa",
    show_default=True,
    help="Registered prompt template that renders heldout rows (perplexity and generated "
    "answers): the one the adapter was trained with.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "eval"]),
    help="With RUN_DIR: score the run's own held-out split (answer-only loss; generated "
    "answers with --metric, written to RUN_DIR/eval/SPLIT_answers_SIDE.jsonl).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--compare", is_flag=True, help="Score the base model too; report the delta.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per benchmark.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def eval_command(
    run_dir: str | None,
    model_name: str | None,
    adapter: str | None,
    benches: tuple[str, ...],
    limit: int | None,
    shots: int | None,
    choices: str | None,
    mode: str,
    batch_size: int,
    quant: str,
    text_metrics: tuple[str, ...],
    template: str,
    split: str | None,
    max_new_tokens: int,
    compare: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Score a model (and optionally an adapter) on medical benchmarks, with 95 % intervals.

    With RUN_DIR, the base model, quantisation, adapter and template come from the run;
    --split scores the run's own held-out split.
    """
    from lorakit.evaluate.benchmarks import run_benchmark
    from lorakit.evaluate.session import compare_with_base
    from lorakit.evaluate.spec import BenchSpec
    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.reporting import progress_for

    options: dict[str, Any] = {}
    if run_dir is not None:
        model_name, adapter, quant, options = _from_run(run_dir, model_name, adapter, quant)
        template = str(options.pop("template", template))
    if model_name is None:
        raise ConfigError("give a RUN_DIR or --model", field="--model")
    if not benches and split is None:
        raise ConfigError(
            "nothing to score",
            field="--bench",
            hint="give --bench NAME:PATH or, with RUN_DIR, --split test",
        )
    if split is not None:
        if run_dir is None:
            raise ConfigError("--split needs a RUN_DIR", field="--split")
        _eval_split(
            Path(run_dir),
            model_name,
            adapter,
            quant,
            split,
            text_metrics,
            compare,
            limit,
            max_new_tokens,
            batch_size,
            as_json,
            no_progress,
        )
        if not benches:
            return
    if compare and adapter is None:
        raise ConfigError("--compare needs --adapter", field="--compare")
    spec = BenchSpec(
        limit=limit,
        shots=shots,
        choices=choices,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        batch_size=batch_size,
        text_metrics=text_metrics,
        max_new_tokens=max_new_tokens,
        template=template,
        **options,
    )
    pm = make_plugin_manager()
    registries = Registries.from_plugin_manager(pm)
    parsed = _eval_preflight(benches, spec, adapter, model_name, registries)
    model, tokenizer = _eval_model(model_name, adapter, quant, pm)
    compared: list[Any] = []
    with progress_for(_console(err=True), not no_progress and not as_json) as progress:
        if compare:
            compared = compare_with_base(
                model, tokenizer, parsed, spec, progress=progress, registries=registries
            )
            results = [c.adapter for c in compared]
        else:
            results = [
                run_benchmark(
                    model, tokenizer, b, loc, spec, progress=progress, registries=registries
                )
                for b, loc in parsed
            ]
    if as_json:
        _echo_eval_json(model_name, adapter, results, compared)
    else:
        _print_eval(model_name, adapter, results, compared)


def _from_run(
    run_dir: str, model_name: str | None, adapter: str | None, quant: str
) -> tuple[str, str, str, dict[str, Any]]:
    """Model, adapter, quantisation and template options of a finished run."""
    from lorakit.evaluate.run_split import run_recipe_of

    recipe = run_recipe_of(Path(run_dir))
    adapter_dir = Path(run_dir) / "adapter"
    if adapter is None and not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(
            "the run has no adapter: it did not finish",
            file=str(run_dir),
            hint="resume it with lorakit train, or give --adapter",
        )
    return (
        model_name or recipe.model.name,
        adapter or str(adapter_dir),
        quant if quant != "nf4" else recipe.model.quant.method,
        {"template": recipe.data.template, "template_options": dict(recipe.data.template_options)},
    )


def _eval_split(
    run_dir: Path,
    model_name: str,
    adapter: str | None,
    quant: str,
    split: str,
    text_metrics: tuple[str, ...],
    compare: bool,
    limit: int | None,
    max_new_tokens: int,
    batch_size: int,
    as_json: bool,
    no_progress: bool,
) -> None:
    from lorakit.evaluate.generate import resolve_text_metrics
    from lorakit.evaluate.run_split import SplitEvalSpec, evaluate_split
    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.reporting import progress_for

    spec = SplitEvalSpec(
        split=split,
        metrics=text_metrics,
        compare=compare,
        limit=limit,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    pm = make_plugin_manager()
    registries = Registries.from_plugin_manager(pm)
    if text_metrics:  # a misspelled metric fails before the model loads
        resolve_text_metrics(text_metrics, registries)
    model, tokenizer = _eval_model(model_name, adapter, quant, pm)
    with progress_for(_console(err=True), not no_progress and not as_json) as progress:
        result = evaluate_split(
            run_dir, model, tokenizer, spec, registries=registries, progress=progress
        )
    if as_json:
        click.echo(json.dumps(result))
        return
    out = _console()
    for note in result["notes"]:
        out.print(f"[yellow]note:[/] {note}")
    for side in ("base", "adapter"):
        if side in result:
            entry = result[side]
            out.print(
                f"{split} split, {side}: answer-only loss {entry['loss']:.4f}, perplexity "
                f"{entry['perplexity']:.2f} ({entry['tokens']:,} answer tokens)"
            )
            if "free_text" in entry:
                out.print(_free_text_table(f"{split} {side}", entry["free_text"]))
                out.print(f"answers: {entry['answers_file']}")


def _eval_preflight(
    benches: tuple[str, ...],
    spec: Any,
    adapter: str | None,
    model_name: str,
    registries: Any,
) -> list[Any]:
    """Everything ``lorakit eval`` can check before the model loads: every benchmark file reads,
    the template and text metrics exist, and the adapter fits the model (name and shapes)."""
    from lorakit.evaluate.adapter_check import check_adapter_base, check_adapter_shapes
    from lorakit.evaluate.benchmarks import check_benchmarks
    from lorakit.evaluate.generate import resolve_template, resolve_text_metrics

    parsed = check_benchmarks(benches, registries=registries)
    resolve_template(spec, registries)
    if spec.text_metrics:
        resolve_text_metrics(spec.text_metrics, registries)
    if adapter is not None:
        check_adapter_base(adapter, model_name)
        check_adapter_shapes(adapter, model_name)
    return parsed


def _eval_model(model_name: str, adapter: str | None, quant: str, pm: Any) -> tuple[Any, Any]:
    from lorakit.model import ModelSpec, QuantizedModelBuilder, QuantSpec

    loaded = QuantizedModelBuilder(
        ModelSpec(name=model_name, quant=QuantSpec(method=quant)),  # type: ignore[arg-type]
        plugin_manager=pm,
    ).build()
    model = loaded.model
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    console = _console(err=True)
    for note in loaded.notes:
        console.print(f"[yellow]note:[/] {note}")
    return model, loaded.tokenizer


def _echo_eval_json(
    model_name: str, adapter: str | None, results: list[Any], compared: list[Any]
) -> None:
    """One JSON object per benchmark; with ``--compare`` also ``compare`` and ``base``."""
    for i, result in enumerate(results):
        record = result.to_dict()
        record["model"] = model_name
        record["adapter"] = adapter
        if compared:
            record["compare"] = compared[i].comparison.to_dict()
            record["base"] = compared[i].base.to_dict()
        click.echo(json.dumps(record))


def _print_eval(
    model_name: str, adapter: str | None, results: list[Any], compared: list[Any]
) -> None:
    out = _console()
    title = f"{model_name}" + (f" + {adapter}" if adapter else "")
    base_results = [c.base for c in compared]
    if compared:
        out.print(_eval_table(f"{model_name} (base)", base_results, {}))
    out.print(_eval_table(title, results, {c.bench: c.comparison for c in compared}))
    for label, group in (("base", base_results), ("", results)):
        for result in group:
            if result.free_text:
                out.print(_free_text_table(f"{result.bench} {label}".strip(), result.free_text))


def _free_text_table(title: str, scores: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"{title}: generated answers (n {scores['n']})", title_justify="left")
    for column in ("metric", "mean", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in scores["metrics"].items():
        table.add_row(name, f"{value['mean']:.3f}", f"{value['ci_low']:.3f}-{value['ci_high']:.3f}")
    errors = ", ".join(f"{k} {v}" for k, v in scores["errors"].items() if v) or "none"
    table.caption = f"errors: {errors}"
    return table


@main.group("data")
def data_group() -> None:
    """Look at data before training on it."""


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
    )
    chain, chain_note = edit_chain(spec.cleaners, cleaners)
    spec = attrs.evolve(spec, cleaners=chain)
    tok = _load_tokenizer(tokenizer)
    with progress_for(_console(err=True), enabled=not as_json and sys.stderr.isatty()) as progress:
        report, examples = inspect_data(spec, tok, progress=progress)
    if cleaners and not as_json:
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


__import__("lorakit.serve.cli").serve.cli.add_commands(main)  # ask, generate, chat, serve, merge
main.add_command(__import__("lorakit.safety.cli").safety.cli.safety_group)  # lorakit safety


for _command in __import__("lorakit.retrieval.cli", fromlist=["COMMANDS"]).COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
