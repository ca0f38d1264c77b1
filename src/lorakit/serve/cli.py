"""The commands that use a trained model: ``ask``, ``generate``, ``chat``, ``serve``, ``merge``.

Each takes a run directory (``RUN_DIR``: its base model, adapter, quantisation and template
come from its ``recipe.json``) or ``--model`` with an optional ``--adapter``. Heavy imports
happen inside the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from lorakit.errors import ConfigError

__all__ = [
    "COMMANDS",
    "add_commands",
    "ask_command",
    "chat_command",
    "generate_command",
    "merge_command",
    "serve_command",
]

F = TypeVar("F", bound=Callable[..., Any])


def _model_options(func: F) -> F:
    options = [
        click.option(
            "--model", "model_name", help="Base model id, folder or tiny-phi3 (instead of RUN_DIR)."
        ),
        click.option(
            "--adapter",
            type=click.Path(exists=True, file_okay=False),
            help="LoRA adapter folder (with --model).",
        ),
        click.option(
            "--template",
            default="qa",
            show_default=True,
            help="Prompt template (with --model; a run uses its own).",
        ),
        click.option(
            "--quant",
            type=click.Choice(["nf4", "fp4", "none"]),
            help="Base weights (default: as the run trained; nf4 with --model).",
        ),
        click.option(
            "--index",
            type=click.Path(exists=True, file_okay=False),
            help="Retrieval index folder: answers cite its passages.",
        ),
        click.option(
            "--policy", help="Safety policy (file or name; 'default' for the default policy)."
        ),
        click.option(
            "--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True
        ),
        click.option(
            "--temperature",
            type=click.FloatRange(min=0, max=5),
            default=0.0,
            show_default=True,
            help="0: greedy.",
        ),
        click.option(
            "--top-p",
            type=click.FloatRange(min=0, max=1, min_open=True),
            default=1.0,
            show_default=True,
        ),
        click.option("--seed", type=int, help="Seed of sampling."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _answerer(
    run_dir: str | None,
    model_name: str | None,
    adapter: str | None,
    template: str,
    quant: str | None,
    index: str | None,
    policy: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> Any:
    from lorakit.answer import Answerer, SamplingSpec

    sampling = SamplingSpec(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    if (run_dir is None) == (model_name is None):
        raise ConfigError(
            "give a RUN_DIR or --model, not both and not neither",
            field="RUN_DIR",
            hint="lorakit ask runs/NAME 'question', or --model M --adapter A 'question'",
        )
    if adapter is not None and model_name is None:
        raise ConfigError("--adapter needs --model", field="--adapter")
    if run_dir is not None:
        answerer = Answerer.from_run_dir(
            run_dir, index=index, policy=policy, quant=quant, sampling=sampling
        )
    else:
        assert model_name is not None
        answerer = Answerer.from_model(
            model_name,
            adapter,
            template=template,
            quant=quant or "nf4",
            index=index,
            policy=policy,
            sampling=sampling,
        )
    return answerer


def _console(err: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=err, highlight=False, soft_wrap=True)


@click.command("ask")
@click.argument("args", nargs=-1, required=True, metavar="[RUN_DIR] QUESTION")
@_model_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ask_command(args: tuple[str, ...], as_json: bool, **options: Any) -> None:
    """Answer one QUESTION with a trained run (or --model/--adapter), through the answer path.

    With --index the answer cites passages (or abstains when none is good enough); with
    --policy the safety guards check the question and the answer.
    """
    if len(args) == 2:
        run_dir, question = args
    elif len(args) == 1:
        run_dir, question = None, args[0]
    else:
        raise ConfigError(
            f"expected [RUN_DIR] QUESTION, got {len(args)} arguments", field="QUESTION"
        )
    answerer = _answerer(run_dir, **options)
    answer = answerer.answer(question)
    if as_json:
        click.echo(
            json.dumps({"model": answerer.describe(), **answer.to_dict()}, ensure_ascii=False)
        )
        return
    click.echo(answer.text)
    notes = []
    if answer.truncated:
        notes.append("the answer hit --max-new-tokens and may be cut off")
    if answer.abstained:
        notes.append(f"not answered: {answer.reason}")
    if answer.unresolved_citations:
        notes.append(f"{answer.unresolved_citations} citations name no retrieved passage")
    for note in notes:
        _console().print(f"[yellow]note:[/] {note}")


@click.command("generate")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_model_options
@click.option(
    "--input",
    "source",
    required=True,
    type=click.Path(dir_okay=False),
    help="Questions: JSON lines with 'question' (and 'id'), or one question a line.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Answers, JSON lines (resumed when it exists).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def generate_command(
    run_dir: str | None, source: str, out: str, batch_size: int, no_progress: bool, **options: Any
) -> None:
    """Answer every question of --input into --out: batched, sorted by length, resumable.

    Rows whose id is already in --out are skipped. The sampling settings, model and
    versions are written to OUT.meta.json; a rerun with other settings is refused.
    """
    from lorakit.answer import read_questions
    from lorakit.reporting import progress_for
    from lorakit.serve.batch import generate_file

    read_questions(source)  # a bad input fails before the model loads
    answerer = _answerer(run_dir, **options)
    with progress_for(_console(), not no_progress) as progress:
        advance: list[Callable[[int], None]] = []

        def on_total(total: int) -> None:
            advance.append(progress.task("Generating", total))

        report = generate_file(
            answerer,
            source,
            out,
            batch_size=batch_size,
            progress=lambda n: advance[0](n) if advance else None,
            on_total=on_total,
        )
    _console(err=False).print(
        f"[bold green]done[/] {report.answered} answered, {report.skipped} already in {report.out}"
        f" ({report.abstained} abstained, {report.truncated} hit the token limit); "
        f"settings: {report.meta}"
    )


@click.command("chat")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_model_options
@click.option(
    "--context",
    type=click.IntRange(min=16),
    help="Keep the conversation within N tokens (default: the model's context window).",
)
def chat_command(run_dir: str | None, context: int | None, **options: Any) -> None:
    """Chat with a trained run (or --model/--adapter) in the terminal, answers streamed.

    /reset forgets the conversation, /save FILE writes it as JSON, /exit leaves. The
    oldest turns are dropped (and the chat says so) when the conversation no longer fits
    the context window.
    """
    from lorakit.serve.chat import run_chat

    answerer = _answerer(run_dir, **options)
    if context is not None:
        answerer.context_window = min(answerer.context_window, context)
    run_chat(answerer, sys.stdin, sys.stdout)


@click.command("serve")
@click.argument(
    "run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR..."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8000,
    show_default=True,
    help="0: any free port (printed).",
)
@click.option(
    "--api-key",
    envvar="LORAKIT_API_KEY",
    help="Require 'Authorization: Bearer KEY' (or $LORAKIT_API_KEY).",
)
@click.option(
    "--engine", type=click.Choice(["lorakit", "vllm"]), default="lorakit", show_default=True
)
@click.option(
    "--quant",
    type=click.Choice(["nf4", "fp4", "none"]),
    help="Base weights (default: as the runs trained).",
)
@click.option(
    "--index", type=click.Path(exists=True, file_okay=False), help="Retrieval index folder."
)
@click.option("--policy", help="Safety policy (file or name; 'default').")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Most new tokens a request may ask for.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Requests decoded together.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds a request may take.",
)
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option(
    "--print-command", is_flag=True, help="With --engine vllm: print the command, do not run it."
)
def serve_command(
    run_dirs: tuple[str, ...],
    host: str,
    port: int,
    api_key: str | None,
    engine: str,
    quant: str | None,
    index: str | None,
    policy: str | None,
    max_tokens: int,
    max_batch: int,
    timeout: float,
    max_body_bytes: int,
    print_command: bool,
) -> None:
    """Serve runs' adapters on one base model with an OpenAI-compatible API.

    POST /v1/chat/completions (stream: true as server-sent events), POST /v1/completions,
    GET /v1/models, GET /health. A request's "model" is a run folder's name (or the base
    model's, for the base alone).
    """
    if engine == "vllm":
        _serve_vllm(run_dirs, host, port, api_key, print_command)
        return
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the server needs the serve extra: {exc}", hint="pip install 'lorakit[serve]'"
        ) from None
    from lorakit.serve.server import ServerLimits, create_app, load_pool, run_server

    pool = load_pool(run_dirs, quant=quant, index=index, policy=policy)
    limits = ServerLimits(
        max_tokens=max_tokens, max_batch=max_batch, timeout_s=timeout, max_body_bytes=max_body_bytes
    )
    app = create_app(pool, limits, api_key=api_key)

    def ready(bound: int) -> None:
        click.echo(f"serving {', '.join(pool.answerers)} on http://{host}:{bound}/v1", err=True)

    run_server(app, host=host, port=port, on_ready=ready)


def _serve_vllm(
    run_dirs: tuple[str, ...], host: str, port: int, api_key: str | None, print_only: bool
) -> None:
    import os
    import shutil
    from pathlib import Path

    from lorakit.model import TINY_PHI3
    from lorakit.run_source import RunSource
    from lorakit.serve.vllm import check_vllm_adapter, vllm_command

    sources = {Path(d).resolve().name: RunSource.from_run_dir(d) for d in run_dirs}
    bases = {s.model for s in sources.values()}
    if len(bases) != 1:
        raise ConfigError(
            f"the runs have different base models: {sorted(bases)}", field="model.name"
        )
    base = bases.pop()
    if base == TINY_PHI3:
        from lorakit.testing import tiny_phi3_path

        base = str(tiny_phi3_path())
    for name, source in sources.items():
        problems = check_vllm_adapter(source.adapter)
        if problems:
            raise ConfigError(
                f"vLLM cannot load run {name!r}: {problems[0]}", file=str(source.adapter)
            )
    command = vllm_command(
        base, {n: s.adapter for n, s in sources.items()}, host=host, port=port, api_key=api_key
    )
    shown = " ".join(c if c != api_key else "***" for c in command)
    if print_only:
        click.echo(shown)
        return
    if shutil.which("vllm") is None:
        raise ConfigError(
            "vLLM is not installed here",
            field="--engine",
            hint=f"on a CUDA machine: pip install vllm, then run: {shown}",
        )
    click.echo(f"running: {shown}", err=True)
    os.execvp(command[0], command)


@click.command("merge")
@click.argument("run_dir", type=click.Path(file_okay=True))
@click.option(
    "--out", required=True, type=click.Path(), help="Folder of the merged checkpoint (new)."
)
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default="bf16",
    show_default=True,
    help="dtype of the merged weights.",
)
@click.option(
    "--probe",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Eval examples the parity check scores.",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(min=0, max=1),
    help="Least argmax agreement on answer tokens (default: by base and dtype).",
)
@click.option(
    "--max-loss-delta",
    type=click.FloatRange(min=0),
    help="Largest |answer-loss difference| (default: by base and dtype).",
)
@click.option(
    "--max-logit-diff",
    type=click.FloatRange(min=0),
    help="Largest |logit difference| at answer tokens (default: fp32 unquantised only).",
)
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def merge_command(
    run_dir: str,
    out: str,
    dtype: str,
    probe: int,
    min_agreement: float | None,
    max_loss_delta: float | None,
    max_logit_diff: float | None,
    force: bool,
    no_progress: bool,
) -> None:
    """Merge a run's adapter into its base and save a plain transformers checkpoint in --out.

    The merged model (loaded back from disk) is compared with the model as trained on the
    run's first eval examples: argmax agreement, max logit difference and answer-loss delta,
    printed and saved as OUT/parity.json. A merge outside its tolerance is refused (exit 1)
    and --out is left as it was.
    """
    from lorakit.reporting import progress_for
    from lorakit.serve.merge import (
        MergeRefused,
        MergeSpec,
        ParityTolerance,
        default_tolerance,
        merge_run,
        write_parity_summary,
    )

    tolerance = None
    if (min_agreement, max_loss_delta, max_logit_diff) != (None, None, None):
        fallback = default_tolerance(dtype)
        tolerance = ParityTolerance(
            min_agreement=fallback.min_agreement if min_agreement is None else min_agreement,
            max_loss_delta=fallback.max_loss_delta if max_loss_delta is None else max_loss_delta,
            max_logit_diff=max_logit_diff,
        )
    spec = MergeSpec(dtype=dtype, probe=probe, tolerance=tolerance)  # type: ignore[arg-type]
    try:
        with progress_for(_console(), not no_progress) as progress:
            result = merge_run(run_dir, out, spec, force=force, progress=progress)
    except MergeRefused as exc:
        _console().print(f"[bold red]refused:[/] {exc.format()}", markup=True)
        sys.exit(1)
    for line in write_parity_summary(result):
        click.echo(line)
    for note in result.notes:
        _console().print(f"[yellow]note:[/] {note}")
    click.echo(f"merged checkpoint written to {result.out} (parity.json, README.md)")


COMMANDS = (ask_command, generate_command, chat_command, serve_command, merge_command)
"""The commands ``lorakit.cli`` adds to the ``lorakit`` group."""


def add_commands(group: click.Group) -> None:
    """Add :data:`COMMANDS` to the ``lorakit`` group (``lorakit.cli`` calls this)."""
    for command in COMMANDS:
        group.add_command(command)
