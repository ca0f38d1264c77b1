"""A finished run scored on its own held-out split: ``lorakit eval RUN_DIR --split test``.

The run's recipe gives the model, the adapter, the template and the data; the split is
prepared again exactly as in training (seeded, grouped) and checked against the data hash
the run recorded. Generated answers are written, one JSON object per line, next to the
run's report, so they can be read and reviewed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.plugins import Registries
    from lorakit.recipe import Recipe
    from lorakit.reporting import ProgressReporter

__all__ = ["SplitEvalSpec", "evaluate_split", "run_recipe_of"]

SPLITS = ("test", "eval")


def as_names(value: Sequence[str]) -> tuple[str, ...]:
    """A sequence of names as a tuple (an attrs converter of spec fields)."""
    return tuple(value)


@attrs.frozen(kw_only=True)
class SplitEvalSpec:
    """What to score on a run's own split.

    Attributes:
        split: ``test`` (never seen in training) or ``eval`` (chose the best checkpoint).
        metrics: text metrics for generated answers; none: answer-only loss only.
        compare: score the base model too (the same weights with the adapter off).
        limit: generate answers to the first ``limit`` rows only.
        max_new_tokens: the longest generated answer.
        batch_size: rows per batch.
    """

    split: str = attrs.field(default="test", validator=attrs.validators.in_(SPLITS))
    metrics: tuple[str, ...] = attrs.field(default=(), converter=as_names)
    compare: bool = False
    limit: int | None = None
    max_new_tokens: int = 256
    batch_size: int = 8


def run_recipe_of(run_dir: Path) -> Recipe:
    """The recipe a run trained with (its ``recipe.json``)."""
    from lorakit.plugins import Registries
    from lorakit.recipe import load_recipe_dict
    from lorakit.recipe_files import recipe_from_mapping

    presets = Registries.from_plugin_manager().presets
    return recipe_from_mapping(load_recipe_dict(run_dir), presets)


def evaluate_split(
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    spec: SplitEvalSpec,
    *,
    registries: Registries,
    progress: ProgressReporter,
) -> dict[str, Any]:
    """Answer-only loss (and generated answers scored with ``spec.metrics``) of the adapter,
    and of the base model with ``spec.compare``, on the run's own ``spec.split``."""
    from lorakit.data.pipeline import prepare_data
    from lorakit.evaluate.generate import generate_answers, resolve_text_metrics
    from lorakit.evaluate.perplexity import answer_loss
    from lorakit.evaluate.text import score_free_text
    from lorakit.runner import data_hash
    from lorakit.train import QACollator

    recipe = run_recipe_of(run_dir)
    data = prepare_data(recipe.data, tokenizer, registries=registries, progress=progress)
    notes = _data_notes(run_dir, data_hash(data.examples))
    examples = list(data.examples[spec.split])
    rows = list(getattr(data.splits, spec.split))
    if not examples:
        raise ConfigError(
            f"the run's {spec.split} split is empty",
            file=str(run_dir),
            field="data.split",
            hint="the run was trained without one; score a benchmark with --bench instead",
        )
    sides = {"adapter": _enabled} if not spec.compare else {"base": _disabled, "adapter": _enabled}
    out: dict[str, Any] = {"split": spec.split, "run_dir": str(run_dir), "notes": notes}
    collate = QACollator(tokenizer.pad_token_id)
    template = registries.templates.resolve(recipe.data.template)(**recipe.data.template_options)
    metrics = resolve_text_metrics(spec.metrics, registries) if spec.metrics else {}
    answered = rows[: spec.limit] if spec.limit else rows
    for side, context in sides.items():
        with context(model):
            loss = answer_loss(
                model,
                examples,
                collate,
                batch_size=spec.batch_size,
                progress=progress.task(f"{spec.split} loss ({side})", len(examples)),
            )
            out[side] = loss.to_dict()
            if metrics:
                generated = generate_answers(
                    model,
                    tokenizer,
                    answered,
                    template,
                    max_new_tokens=spec.max_new_tokens,
                    batch_size=spec.batch_size,
                    progress=progress.task(f"generating ({side})", len(answered)),
                )
                texts = [g.text for g in generated]
                scores = score_free_text(
                    texts,
                    [row.answer for row in answered],
                    metrics,
                    truncated=[g.truncated for g in generated],
                )
                out[side]["free_text"] = {k: v for k, v in scores.items() if k != "items"}
                out[side]["answers_file"] = str(
                    _write_answers(run_dir, spec.split, side, answered, texts, scores["items"])
                )
    return out


def _enabled(model: Any) -> Any:
    import contextlib

    return contextlib.nullcontext()


def _disabled(model: Any) -> Any:
    return model.disable_adapter()


def _data_notes(run_dir: Path, digest: str) -> list[str]:
    report = run_dir / "data_report.json"
    try:
        stored = json.loads(report.read_text(encoding="utf-8")).get("data_hash")
    except (OSError, ValueError):
        return ["the run has no readable data_report.json: the split could not be checked"]
    if stored not in (None, digest):
        return [
            "the data differs from what the run trained on (data hash changed): the split "
            "scored here is not the run's"
        ]
    return []


def _write_answers(
    run_dir: Path,
    split: str,
    side: str,
    rows: Sequence[Any],
    texts: Sequence[str],
    items: Sequence[dict[str, Any]],
) -> Path:
    from lorakit._fs import write_text_atomic

    folder = run_dir / "eval"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        from lorakit._fs import fs_error

        raise fs_error(error, "create the eval folder", folder) from None
    path = folder / f"{split}_answers_{side}.jsonl"
    lines = [
        json.dumps(
            {
                "id": row.id or row.origin,
                "question": row.question,
                "reference": row.answer,
                "category": row.category,
                "answer": text,
                "scores": item["scores"],
                "error": item["error"],
            },
            ensure_ascii=False,
        )
        for row, text, item in zip(rows, texts, items, strict=True)
    ]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path
