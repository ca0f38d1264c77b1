"""``lorakit index build|add|info|calibrate|eval`` and ``lorakit retrieve``: thin commands
over :mod:`lorakit.retrieval`. Heavy imports (numpy, torch, bm25s) happen inside commands."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

__all__ = ["COMMANDS", "index_group", "retrieve_command"]


def _pairs(text: str | None, what: str) -> dict[str, str]:
    from lorakit.errors import ConfigError

    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(
                f"{what} {part!r} is not NAME=VALUE", hint="write it as text=body,url=link"
            )
        mapping[name.strip()] = value.strip()
    return mapping


def _ks(text: str) -> list[int]:
    from lorakit.errors import ConfigError

    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise ConfigError(
            f"--k must be whole numbers of at least 1, like 1,5,10; got {text!r}", field="k"
        )
    return ks


def _progress(enabled: bool) -> Any:
    from rich.console import Console

    from lorakit.reporting import progress_for

    return progress_for(Console(stderr=True), enabled and sys.stderr.isatty())


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group("index")
def index_group() -> None:
    """Build, extend, inspect, calibrate and evaluate retrieval indexes."""


_build_options = [
    click.option(
        "--embedder",
        default="all-MiniLM-L6-v2",
        show_default=True,
        help="Embedder name (all-MiniLM-L6-v2, hashing-256) or module:attribute.",
    ),
    click.option(
        "--fields", help="Column mapping of jsonl:/csv: documents, e.g. text=body,url=link."
    ),
    click.option(
        "--max-chars",
        type=int,
        default=2000,
        show_default=True,
        help="Longer texts are split on paragraph boundaries.",
    ),
    click.option(
        "--store",
        default="embedded",
        show_default=True,
        help="Where the vectors live: embedded, chroma, or a plugin's store.",
    ),
    click.option(
        "--store-option",
        "store_options",
        multiple=True,
        help="NAME=VALUE for the store, e.g. url=http://127.0.0.1:8000; repeatable.",
    ),
    click.option("--no-progress", is_flag=True, help="No progress bars."),
    click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON."),
]


def _with_build_options(function: Any) -> Any:
    for option in reversed(_build_options):
        function = option(function)
    return function


def _build(
    sources: tuple[str, ...],
    out: str,
    add: bool,
    embedder: str,
    fields: str | None,
    max_chars: int,
    store: str,
    store_options: tuple[str, ...],
    no_progress: bool,
    as_json: bool,
) -> None:
    from lorakit.retrieval import build_index

    options = _pairs(",".join(store_options), "store option")
    with _progress(not no_progress and not as_json) as progress:
        report = build_index(
            list(sources),
            out,
            embedder=embedder,
            fields=_pairs(fields, "field mapping"),
            max_chars=max_chars,
            add=add,
            store=store,
            store_options=options,
            progress=progress,
        )
    if as_json:
        _echo_json(report.to_dict())
        return
    click.echo(
        f"{report.path}: {report.passages:,} passages of {report.documents:,} documents; "
        f"embedded {report.embedded:,}, reused {report.reused:,}; {report.seconds:.1f} s"
    )


@index_group.command("build")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The index folder.")
@_with_build_options
def build_command(sources: tuple[str, ...], out: str, **options: Any) -> None:
    """Build the index in --out from SOURCES (medquad:DIR, jsonl:FILE, csv:FILE, pages:DIR, ...).

    Passages already in --out with the same text keep their vectors (not embedded again).
    """
    _build(sources, out, False, **options)


@index_group.command("add")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("sources", nargs=-1, required=True)
@_with_build_options
def add_command(index_dir: str, sources: tuple[str, ...], **options: Any) -> None:
    """Add the passages of SOURCES to the index in INDEX_DIR (only new ones are embedded)."""
    _build(sources, index_dir, True, **options)


@index_group.command("info")
@click.argument("index_dir", type=click.Path(file_okay=False))
def info_command(index_dir: str) -> None:
    """Print the index card of INDEX_DIR as JSON."""
    from pathlib import Path

    from lorakit.retrieval.index import read_card

    _echo_json(read_card(Path(index_dir)).to_dict())


@index_group.command("calibrate")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--questions", required=True, help="Questions the sources cover (a source URI).")
@click.option("--questions-fields", help="Field mapping of --questions.")
@click.option(
    "--off-topic", required=True, help="Questions they do not cover (a source URI, or lines:FILE)."
)
@click.option(
    "--off-topic-fields", help="Field mapping of --off-topic, e.g. question=instruction,answer=id."
)
@click.option(
    "--limit", type=int, default=500, show_default=True, help="On-topic questions sampled (seeded)."
)
@click.option("--k", type=int, default=5, show_default=True, help="Hits the answer path retrieves.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
def calibrate_command(
    index_dir: str,
    questions: str,
    questions_fields: str | None,
    off_topic: str,
    off_topic_fields: str | None,
    limit: int,
    k: int,
    as_json: bool,
) -> None:
    """Choose the abstention threshold of INDEX_DIR and store it in its card."""
    import random

    from lorakit.retrieval import load_index
    from lorakit.retrieval.evaluation import calibrate_threshold, read_questions, save_calibration

    index = load_index(index_dir)
    on = read_questions(questions, fields=_pairs(questions_fields, "field mapping"))
    if len(on) > limit:
        on = random.Random(0).sample(on, limit)
    off = read_questions(off_topic, fields=_pairs(off_topic_fields, "field mapping"))
    with _progress(not as_json) as progress:
        calibration = calibrate_threshold(
            index,
            on,
            off,
            k=k,
            sources={"on_topic": questions, "off_topic": off_topic},
            progress=progress,
        )
    save_calibration(index, calibration)
    if as_json:
        _echo_json(calibration.to_dict())
        return
    click.echo(
        f"threshold {calibration.threshold:.3f}: on-topic covered {calibration.on_topic_covered:.3f} "
        f"of {calibration.on_topic}, off-topic abstained {calibration.off_topic_abstained:.3f} "
        f"of {calibration.off_topic}"
    )


@index_group.command("eval")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option(
    "--questions", required=True, help="A source URI whose rows' group is the gold document."
)
@click.option("--fields", help="Field mapping of --questions.")
@click.option("--k", "ks", default="1,5,10", show_default=True, help="Cut-offs, comma separated.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N questions.")
@click.option("--latency-sample", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_command(
    index_dir: str,
    questions: str,
    fields: str | None,
    ks: str,
    limit: int | None,
    latency_sample: int,
    as_json: bool,
) -> None:
    """Recall@k, MRR and nDCG of the gold document: lexical, dense and fused, side by side."""
    import itertools

    from lorakit.data.sources import read_source
    from lorakit.retrieval import load_index
    from lorakit.retrieval.evaluation import evaluate_retrieval, questions_from_rows

    cutoffs = _ks(ks)
    index = load_index(index_dir)
    rows = read_source(questions, fields=_pairs(fields, "field mapping"))
    items = questions_from_rows(itertools.islice(rows, limit) if limit else rows)
    with _progress(not as_json) as progress:
        report = evaluate_retrieval(
            index, items, ks=cutoffs, latency_sample=latency_sample, progress=progress
        )
    if as_json:
        _echo_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{report['questions']:,} questions ({report['not_indexed']:,} not indexed)",
        title_justify="left",
    )
    for column in (
        "retriever",
        *[f"R@{k}" for k in cutoffs],
        "MRR",
        f"nDCG@{cutoffs[-1]}",
        "p95 ms",
    ):
        table.add_column(column)
    for mode, result in report["modes"].items():
        m = result["all"]

        def cell(name: str, m: dict[str, Any] = m) -> str:
            v = m[name]
            return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

        p95 = report["latency_ms"].get(mode, {}).get("p95", "-")
        table.add_row(
            mode,
            *[cell(f"recall@{k}") for k in cutoffs],
            cell("mrr"),
            cell(f"ndcg@{cutoffs[-1]}"),
            str(p95),
        )
    Console().print(table)


@click.command("retrieve")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("question")
@click.option("--k", type=int, default=5, show_default=True, help="Passages to return.")
@click.option(
    "--mode", type=click.Choice(["fused", "lexical", "dense"]), default="fused", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def retrieve_command(index_dir: str, question: str, k: int, mode: str, as_json: bool) -> None:
    """The passages of INDEX_DIR most relevant to QUESTION, with scores and URLs."""
    import attrs

    from lorakit.retrieval import load_index
    from lorakit.retrieval.grounding import covers

    index = load_index(index_dir)
    hits = index.search(question, k=k, mode=mode)  # type: ignore[arg-type]
    covered = covers(hits, index.threshold)
    if as_json:
        _echo_json(
            {
                "question": question,
                "covered": covered,
                "threshold": index.threshold,
                "hits": [
                    {
                        "n": n,
                        **attrs.asdict(hit.passage),
                        "score": hit.score,
                        "scores": dict(hit.scores),
                    }
                    for n, hit in enumerate(hits, 1)
                ],
            }
        )
        return
    for n, hit in enumerate(hits, 1):
        p = hit.passage
        click.echo(
            f"[{n}] {hit.scores.get('relevance', hit.score):.3f}  {p.title or p.doc_id}  {p.url or '(no URL)'}"
        )
        click.echo("    " + " ".join(p.text.split())[:200])
    if not covered:
        click.echo(
            f"(below the threshold {index.threshold:.3f}: the sources do not cover this question)"
        )


COMMANDS = (index_group, retrieve_command)
