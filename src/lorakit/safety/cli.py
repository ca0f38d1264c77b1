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
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def train_command(
    harmful: tuple[str, ...],
    benign: tuple[str, ...],
    out: str,
    holdout: float,
    max_overblock: float,
    seed: int,
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
    model = train_classifier(sets, holdout=holdout, max_overblock=max_overblock, seed=seed)
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
@click.option(
    "--harmful", "harmful", multiple=True, help="Source URI of harmful requests (repeatable)."
)
@click.option("--benign", "benign", multiple=True, help="Source URI of benign texts (repeatable).")
@click.option("--policy", default="default", show_default=True, help=_POLICY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(
    harmful: tuple[str, ...], benign: tuple[str, ...], policy: str, as_json: bool
) -> None:
    """Block rate on harmful requests and over-block rate on benign texts, with Wilson
    intervals, per source and per MedSafetyBench category."""
    from lorakit.safety.evaluate import evaluate_policy, read_prompts

    guards = _guards(policy)
    report = evaluate_policy(
        guards,
        harmful=[read_prompts(u) for u in harmful],
        benign=[read_prompts(u) for u in benign],
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
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
