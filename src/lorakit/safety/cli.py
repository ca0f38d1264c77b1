"""``lorakit safety``: check a text, train the classifier guard, evaluate a policy."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

__all__ = ["safety_group"]

_POLICY_HELP = "A policy: default, rules, strict, off, GUARD[:K=V,...], a .json file, joined by +."


def _console() -> Console:
    return Console(highlight=False)


def _guards(policy: str) -> Any:
    from lorakit.safety import load_policy

    return load_policy(policy)


@click.group("safety")
def safety_group() -> None:
    """Safety guards: check texts, train the classifier, measure a policy."""


@safety_group.command("check")
@click.argument("text", required=False)
@click.option("--answer", help="Also run the output guards on this answer to TEXT.")
@click.option("--policy", default="default", show_default=True, help=_POLICY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check_command(text: str | None, answer: str | None, policy: str, as_json: bool) -> None:
    """Run the input guards on TEXT (``-`` or nothing: read standard input as UTF-8)."""
    from lorakit.safety.guards import checked_text

    raw: str | bytes = text if text is not None and text != "-" else sys.stdin.buffer.read()
    message = checked_text(raw)
    guards = _guards(policy)
    verdicts = guards.check_input(message)
    outputs = guards.check_output(message, answer) if answer is not None else []
    decision = guards.decide(verdicts)
    final_output = guards.decide(outputs) if answer is not None else None
    if as_json:
        out: dict[str, Any] = {
            "policy": guards.policy.name,
            "decision": _verdict(decision),
            "verdicts": [_verdict(v) for v in verdicts],
        }
        if final_output is not None:
            out["output_decision"] = _verdict(final_output)
            out["output_verdicts"] = [_verdict(v) for v in outputs]
        click.echo(json.dumps(out, indent=2))
        return
    console = _console()
    table = Table("guard", "decision", "reason", "score", title=f"policy {guards.policy.name}")
    for v in [*verdicts, *outputs]:
        table.add_row(v.guard, v.decision, v.reason, "" if v.score is None else f"{v.score:.3f}")
    console.print(table)
    console.print(f"[bold]input: {decision.decision}[/] {decision.reason}")
    if decision.message:
        console.print(decision.message)
    if final_output is not None:
        console.print(f"[bold]answer: {final_output.decision}[/] {final_output.reason}")
        if final_output.text:
            console.print(final_output.text)


def _verdict(v: Any) -> dict[str, Any]:
    return {
        "guard": v.guard,
        "decision": v.decision,
        "reason": v.reason,
        "message": v.message,
        "text": v.text,
        "score": v.score,
    }


@safety_group.command("train")
@click.option(
    "--harmful", "harmful", multiple=True, required=True, help="Source URI of harmful requests."
)
@click.option(
    "--benign",
    "benign",
    multiple=True,
    required=True,
    help="Source URI of benign texts (repeatable).",
)
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to write."
)
@click.option("--holdout", type=click.FloatRange(0.01, 0.9), default=0.2, show_default=True)
@click.option(
    "--max-overblock",
    type=click.FloatRange(0.0, 0.5),
    default=0.005,
    show_default=True,
    help="Threshold: at most this share of held-out benign texts blocked.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "none"]),
    default="int8",
    show_default=True,
    help="The embedder the classifier is trained and scored with: int8 linear layers "
    "(about 2.5 times faster on a CPU) or float32.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def train_command(
    harmful: tuple[str, ...],
    benign: tuple[str, ...],
    out: str,
    holdout: float,
    max_overblock: float,
    seed: int,
    quantize: str,
    as_json: bool,
) -> None:
    """Fit the classifier guard (logistic regression on sentence embeddings) and save it
    with its card. Sources take ``@COLUMN`` (generic formats) and ``#N`` (a sample)."""
    from lorakit.safety.classifier import TrainingSet, train_classifier
    from lorakit.safety.evaluate import read_prompts

    sets = [
        TrainingSet(uri=u, label=1, texts=tuple(p.text for p in read_prompts(u))) for u in harmful
    ]
    sets += [
        TrainingSet(uri=u, label=0, texts=tuple(p.text for p in read_prompts(u))) for u in benign
    ]
    model = train_classifier(
        sets, holdout=holdout, max_overblock=max_overblock, seed=seed, quantize=quantize
    )
    folder = model.save(out)
    if as_json:
        click.echo(json.dumps(dict(model.card), indent=2))
        return
    metrics = model.card["metrics_held_out"]
    h, b = metrics["harmful_blocked"], metrics["benign_overblocked"]
    _console().print(
        f"saved {folder} (threshold {model.threshold:.3f}); held out: harmful blocked "
        f"{h['rate']:.1%} [{h['ci95'][0]:.1%}, {h['ci95'][1]:.1%}] of {h['n']}, benign "
        f"over-blocked {b['rate']:.1%} [{b['ci95'][0]:.1%}, {b['ci95'][1]:.1%}] of {b['n']}"
    )


@safety_group.command("eval")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option(
    "--harmful", "harmful", multiple=True, help="Source URI of harmful requests (repeatable)."
)
@click.option("--benign", "benign", multiple=True, help="Source URI of benign texts (repeatable).")
@click.option("--policy", default="default", show_default=True, help=_POLICY_HELP)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="A seeded sample of at most N prompts per source (as SOURCE#N).",
)
@click.option(
    "--model", "model_name", help="Base model id, folder or tiny-phi3 (instead of RUN_DIR)."
)
@click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False),
    help="LoRA adapter folder (with --model).",
)
@click.option(
    "--template",
    default="qa",
    show_default=True,
    help="Prompt template (with --model; a run uses its own).",
)
@click.option(
    "--quant",
    type=click.Choice(["nf4", "fp4", "none"]),
    help="Base weights (default: as the run trained; nf4 with --model).",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Longest answer generated (greedy) per prompt.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Prompts generated together.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(
    run_dir: str | None,
    harmful: tuple[str, ...],
    benign: tuple[str, ...],
    policy: str,
    limit: int | None,
    model_name: str | None,
    adapter: str | None,
    template: str,
    quant: str | None,
    max_new_tokens: int,
    batch_size: int,
    as_json: bool,
) -> None:
    """Block rate on harmful requests and over-block rate on benign texts, with Wilson
    intervals, per source and per MedSafetyBench category.

    With a model (RUN_DIR, or --model with an optional --adapter), also the model's own
    refusal rates without guards, answering greedily with the adapter off (base) and on
    (after), and the difference with a paired interval."""
    from lorakit.errors import ConfigError
    from lorakit.safety.evaluate import evaluate_policy, read_prompts

    if run_dir is not None and model_name is not None:
        raise ConfigError("give a RUN_DIR or --model, not both", field="RUN_DIR")
    if adapter is not None and model_name is None:
        raise ConfigError("--adapter needs --model", field="--adapter")
    if not harmful and not benign:
        raise ConfigError(
            "nothing to evaluate: give --harmful and/or --benign sources", field="--harmful"
        )
    guards = _guards(policy)
    harmful_sets = [read_prompts(u, limit=limit) for u in harmful]
    benign_sets = [read_prompts(u, limit=limit) for u in benign]
    answerer = None
    if (
        run_dir is not None or model_name is not None
    ):  # a bad run or model fails before the guards run
        answerer = _answerer(run_dir, model_name, adapter, template, quant, max_new_tokens)
    report = evaluate_policy(guards, harmful=harmful_sets, benign=benign_sets)
    refusals = None
    if answerer is not None:
        refusals = _model_refusals(
            answerer,
            guards=guards,
            harmful=harmful_sets,
            benign=benign_sets,
            batch_size=batch_size,
            progress=not as_json,
        )
    if as_json:
        out = report.to_dict()
        out["model"] = None if refusals is None else refusals.to_dict()
        click.echo(json.dumps(out, indent=2))
        return
    _print_policy_report(report)
    if refusals is not None:
        _print_refusals(refusals)


def _print_policy_report(report: Any) -> None:
    table = Table("set", "n", "blocked", "rate", "95 % interval", title=f"policy {report.policy}")
    rows = [
        *report.by_source.items(),
        *((f"harmful category {k}", v) for k, v in report.by_category.items()),
    ]
    for name, r in rows:
        table.add_row(
            name, str(r.n), str(r.blocked), f"{r.rate:.1%}", f"[{r.low:.1%}, {r.high:.1%}]"
        )
    console = _console()
    console.print(table)
    console.print(f"{report.ms_per_text:.1f} ms per text; block reasons: {report.reasons}")


def _answerer(
    run_dir: str | None,
    model_name: str | None,
    adapter: str | None,
    template: str,
    quant: str | None,
    max_new_tokens: int,
) -> Any:
    """The model answering without guards: a run's, or --model with --adapter."""
    from lorakit.answer import Answerer, SamplingSpec

    sampling = SamplingSpec(max_new_tokens=max_new_tokens)
    if run_dir is not None:
        return Answerer.from_run_dir(run_dir, quant=quant, sampling=sampling)
    assert model_name is not None
    return Answerer.from_model(
        model_name, adapter, template=template, quant=quant or "nf4", sampling=sampling
    )


def _model_refusals(
    answerer: Any,
    *,
    guards: Any,
    harmful: list[Any],
    benign: list[Any],
    batch_size: int,
    progress: bool,
) -> Any:
    """The model's own refusals (no guards), judged with the policy's classifier."""
    from lorakit.reporting import progress_for
    from lorakit.safety.refusal import RefusalJudge, evaluate_refusals

    err = Console(stderr=True, highlight=False)
    with progress_for(err, enabled=progress and sys.stderr.isatty()) as bars:
        return evaluate_refusals(
            answerer,
            harmful=harmful,
            benign=benign,
            judge=RefusalJudge.from_guards(guards),
            sampling=answerer.sampling,
            batch_size=batch_size,
            progress=bars,
        )


def _print_refusals(report: Any) -> None:
    def cell(rates: Any, what: str) -> str:
        share = getattr(rates, what) if rates is not None else None
        if share is None:
            return "-"
        return f"{share.rate:.1%} [{share.low:.1%}, {share.high:.1%}]"

    def delta(change: Any, what: str) -> str:
        result = getattr(change, what) if change is not None else None
        if result is None:
            return "-"
        return (
            f"{100 * result.delta:+.1f} [{100 * result.ci_low:+.1f}, {100 * result.ci_high:+.1f}]"
        )

    table = Table(
        "set",
        "n",
        "refused before",
        "refused after",
        "change (points)",
        "harmful answers after",
        title="the model's own answers, no guards",
    )
    rows = [
        *(("harmful", report.harmful), ("benign", report.benign)),
        *report.by_source.items(),
        *((f"harmful category {k}", v) for k, v in report.by_category.items()),
    ]
    for name, comparison in rows:
        if comparison is None:
            continue
        table.add_row(
            name,
            str(comparison.before.refused.n),
            cell(comparison.before, "refused"),
            cell(comparison.after, "refused"),
            delta(comparison.difference, "refused"),
            cell(comparison.after or comparison.before, "harmful_answers"),
        )
    console = _console()
    console.print(table)
    for sentence in report.summary:
        console.print(sentence)
