"""``lorakit eval``: benchmarks, a run's own split, and grounded answers, from the command line.

Thin: it parses options, calls :mod:`lorakit.evaluate` and prints the result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from lorakit.errors import ConfigError


def _console(err: bool = False) -> Console:
    return Console(stderr=err, highlight=False, soft_wrap=err)


def _eval_table(
    title: str, results: list[Any], comparisons: dict[str, Any], into: Any = None, suffix: str = ""
) -> Any:
    from rich.table import Table

    table = into
    if table is None:
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
        table.add_row(
            result.bench + suffix, str(result.n), value, interval, acc_norm, errors, delta
        )
    return table


@click.command("eval")
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
@click.option(
    "--index",
    "index_dir",
    metavar="DIR",
    help="Retrieval index: multiple-choice items also get their K passages in the prompt "
    "(a '+ index' row); with --split, answers cite passages and are scored for citations.",
)
@click.option("--k", type=click.IntRange(min=1), default=3, show_default=True, help="Passages.")
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
    index_dir: str | None,
    k: int,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Score a model (and optionally an adapter) on medical benchmarks, with 95 % intervals.

    With RUN_DIR, the base model, quantisation, adapter and template come from the run;
    --split scores the run's own held-out split.
    """
    from lorakit.evaluate.spec import BenchSpec

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
        _score_run_split(
            Path(run_dir),
            (model_name, adapter, quant, template, options.get("template_options", {})),
            split,
            text_metrics,
            compare,
            (limit, max_new_tokens, batch_size, k),
            index_dir,
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
    _score_benches(
        (model_name, adapter, quant), benches, spec, compare, index_dir, k, as_json, no_progress
    )


def _score_run_split(
    run_dir: Path,
    model: tuple[str, str | None, str, str, Any],
    split: str,
    text_metrics: tuple[str, ...],
    compare: bool,
    sizes: tuple[int | None, int, int, int],
    index_dir: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """``--split``: the run's own held-out split, through the answer path when given ``--index``.

    ``model`` is (name, adapter, quant, template, template options); ``sizes`` is
    (limit, max new tokens, batch size, k).
    """
    limit, max_new_tokens, batch_size, k = sizes
    if index_dir is not None:
        from lorakit.evaluate.grounded import GroundedSplitSpec

        _eval_split_index(
            run_dir,
            model,
            GroundedSplitSpec(
                split=split,
                metrics=text_metrics or ("token_f1",),
                compare=compare,
                limit=limit,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                k=k,
            ),
            index_dir,
            as_json,
            no_progress,
        )
        return
    model_name, adapter, quant, _template, _template_options = model
    _eval_split(
        run_dir,
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


def _score_benches(
    model: tuple[str, str | None, str],
    benches: tuple[str, ...],
    spec: Any,
    compare: bool,
    index_dir: str | None,
    k: int,
    as_json: bool,
    no_progress: bool,
) -> None:
    """``--bench``: check everything, load the model (name, adapter, quant), score and print."""
    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.reporting import progress_for

    model_name, adapter, quant = model
    pm = make_plugin_manager()
    registries = Registries.from_plugin_manager(pm)
    parsed = _eval_preflight(benches, spec, adapter, model_name, registries)
    index = None
    if index_dir is not None:  # a bad index fails before the model loads
        from lorakit.answer import load_index
        from lorakit.evaluate.grounded import check_retrieval_benches

        check_retrieval_benches(parsed)
        index = load_index(index_dir)
        compare = compare or adapter is not None  # base, adapter, adapter + index
    loaded, tokenizer = _eval_model(model_name, adapter, quant, pm)
    with progress_for(_console(err=True), not no_progress and not as_json) as progress:
        results, compared, retrieved = _run_benches(
            (loaded, tokenizer), parsed, spec, compare, registries, index, k, progress
        )
    if as_json:
        _echo_eval_json(model_name, adapter, results, compared, retrieved)
    else:
        _print_eval(model_name, adapter, results, compared, retrieved)


def _run_benches(
    model: tuple[Any, Any],
    parsed: list[Any],
    spec: Any,
    compare: bool,
    registries: Any,
    index: Any,
    k: int,
    progress: Any,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Results, comparisons with the base and ``+ index`` results of every benchmark."""
    from lorakit.evaluate.benchmarks import run_benchmark
    from lorakit.evaluate.session import compare_with_base

    loaded, tokenizer = model
    if compare:
        compared = compare_with_base(
            loaded,
            tokenizer,
            parsed,
            spec,
            progress=progress,
            registries=registries,
            index=index,
            k=k,
        )
        with_index = [c.retrieval for c in compared if c.retrieval is not None]
        return [c.adapter for c in compared], compared, with_index
    results = [
        run_benchmark(loaded, tokenizer, b, loc, spec, progress=progress, registries=registries)
        for b, loc in parsed
    ]
    retrieved: list[Any] = []
    if index is not None:
        from lorakit.evaluate.grounded import run_with_retrieval

        retrieved = [
            run_with_retrieval(
                loaded, tokenizer, b, loc, spec, index, k=k, without=r, progress=progress
            )
            for (b, loc), r in zip(parsed, results, strict=True)
        ]
    return results, [], retrieved


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


def _eval_split_index(
    run_dir: Path,
    model: tuple[str, str | None, str, str, Any],
    spec: Any,
    index_dir: str,
    as_json: bool,
    no_progress: bool,
) -> None:
    """``--split`` with ``--index``: the run's split answered through the answer path."""
    from lorakit.answer import Answerer
    from lorakit.evaluate.generate import resolve_text_metrics
    from lorakit.evaluate.grounded import evaluate_grounded_split
    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.reporting import progress_for

    model_name, adapter, quant, template, template_options = model
    pm = make_plugin_manager()
    registries = Registries.from_plugin_manager(pm)
    resolve_text_metrics(spec.metrics, registries)  # a misspelled metric fails first
    answerer = Answerer.from_model(
        model_name,
        adapter,
        template=template,
        template_options=template_options,
        quant=quant,
        index=index_dir,
        plugin_manager=pm,
    )
    with progress_for(_console(err=True), not no_progress and not as_json) as progress:
        result = evaluate_grounded_split(
            run_dir, answerer, spec, registries=registries, progress=progress
        )
    if as_json:
        click.echo(json.dumps(result))
        return
    from lorakit.evaluate.grounded import grounded_table

    out = _console()
    for side in ("base", "adapter"):
        if side in result:
            out.print(grounded_table(f"{spec.split} {side} + index (k {spec.k})", result[side]))
            out.print(_free_text_table(f"{spec.split} {side} + index", result[side]["free_text"]))
            out.print(f"answers: {result[side]['answers_file']}")


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
    model_name: str,
    adapter: str | None,
    results: list[Any],
    compared: list[Any],
    retrieved: Sequence[Any] = (),
) -> None:
    """One JSON object per benchmark; with ``--compare`` also ``compare`` and ``base``; with
    ``--index`` also ``retrieval`` (the score with passages and its delta without)."""
    for i, result in enumerate(results):
        record = result.to_dict()
        record["model"] = model_name
        record["adapter"] = adapter
        if compared:
            record["compare"] = compared[i].comparison.to_dict()
            record["base"] = compared[i].base.to_dict()
        if retrieved:
            record["retrieval"] = retrieved[i].to_dict()
        click.echo(json.dumps(record))


def _print_eval(
    model_name: str,
    adapter: str | None,
    results: list[Any],
    compared: list[Any],
    retrieved: Sequence[Any] = (),
) -> None:
    out = _console()
    title = f"{model_name}" + (f" + {adapter}" if adapter else "")
    base_results = [c.base for c in compared]
    if compared:
        out.print(_eval_table(f"{model_name} (base)", base_results, {}))
    table = _eval_table(title, results, {c.bench: c.comparison for c in compared})
    for r in retrieved:  # one more row per benchmark: + index, delta over the row above
        _eval_table(
            title, [r.result], {r.result.bench: r.comparison}, into=table, suffix=" + index"
        )
    out.print(table)
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
