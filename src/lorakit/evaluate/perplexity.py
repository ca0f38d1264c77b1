"""Answer-only loss and perplexity, streamed: per batch, only sums are kept, never logits."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError
from lorakit.evaluate.base import MetricResult

if TYPE_CHECKING:
    from lorakit.data.rows import QARow

__all__ = ["LossResult", "Perplexity", "answer_loss"]


@attrs.frozen
class LossResult:
    """Token-weighted mean negative log-likelihood over supervised (answer) tokens."""

    loss: float
    tokens: int
    examples: int

    @property
    def perplexity(self) -> float:
        """``exp(loss)``: the answer-token perplexity."""
        return math.exp(self.loss) if self.loss < 700 else math.inf

    def to_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "examples": self.examples,
        }


def answer_loss(
    model: Any,
    examples: Sequence[Any],
    collate: Callable[[list[dict[str, list[int]]]], dict[str, Any]],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> LossResult:
    """Mean NLL of the supervised tokens of ``examples`` under ``model``.

    Examples are scored in length-sorted batches; each token counts once, so the
    result does not depend on the batch size. Raises :class:`ConfigError` when
    there is nothing to score.
    """
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total = 0.0
    tokens = 0
    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = [examples[i] for i in order[start : start + batch_size]]
                batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
                batch = {k: v.to(device) for k, v in batch.items()}
                labels = batch.pop("labels")
                logits = model(**batch).logits
                shift_logits = logits[:, :-1, :].float()
                shift_labels = labels[:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.size(-1)),
                    shift_labels.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                )
                total += float(nll)
                tokens += int((shift_labels != -100).sum())
                del logits, shift_logits
                if progress is not None:
                    progress(len(chunk))
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ConfigError(
            "no supervised tokens to score", hint="the evaluation split is empty or fully masked"
        )
    return LossResult(loss=total / tokens, tokens=tokens, examples=len(examples))


_PERPLEXITY_OPTIONS = ("template", "max_len", "batch_size", "progress")


@attrs.frozen
class Perplexity:
    """The ``perplexity`` model metric: answer-only perplexity of rows, streamed.

    Each row is rendered with a template (the built-in ``qa`` template unless the ``template``
    option names another object), tokenised with :func:`~lorakit.data.tokenize.tokenize_rows`
    (labels only on the answer and its end-of-turn token), and scored with :func:`answer_loss`:
    the token-weighted mean negative log-likelihood of the answer tokens, whose ``exp`` is the
    perplexity. No logits outlive a batch.

    ``evaluate`` options: ``template`` (a :class:`~lorakit.protocols.Template`), ``max_len``
    (tokens per example, 1024), ``batch_size`` (8), ``progress`` (``advance(n)`` in rows).

    The result's ``value`` is the perplexity (lower is better; it has no interval), ``n`` the
    examples scored; ``errors`` counts ``answer_truncated`` (answers cut by ``max_len``) and
    ``prompt_too_long`` (rows dropped because the prompt alone fills ``max_len``); ``extra``
    holds ``loss``, ``tokens``, ``examples`` and ``rows``.
    """

    name: str = "perplexity"

    def evaluate(
        self, model: Any, tokenizer: Any, rows: Sequence[QARow], **options: Any
    ) -> MetricResult:
        """Score ``rows`` (see the class docstring).

        Raises:
            ConfigError: an unknown option, zero rows, or nothing left to score.
        """
        from lorakit.data.templates import qa_template
        from lorakit.data.tokenize import TokenizeSpec, tokenize_rows
        from lorakit.errors import did_you_mean
        from lorakit.train import QACollator

        for key in options:
            if key not in _PERPLEXITY_OPTIONS:
                raise ConfigError(
                    f"unknown option {key!r} for metric {self.name!r}",
                    field=key,
                    hint=did_you_mean(key, _PERPLEXITY_OPTIONS)
                    or f"options: {', '.join(_PERPLEXITY_OPTIONS)}",
                )
        rows = list(rows)
        if not rows:
            raise ConfigError(f"metric {self.name!r}: cannot report a score over zero items")
        template = options.get("template") or qa_template()
        spec = TokenizeSpec(max_len=options.get("max_len", 1024))
        progress: Callable[[int], None] | None = options.get("progress")
        examples, report = tokenize_rows(rows, tokenizer, template, spec)
        if not examples:
            raise ConfigError(
                f"metric {self.name!r}: every prompt fills max_len={spec.max_len}; "
                "nothing to score",
                field="max_len",
                hint="raise max_len",
            )
        pad_id = getattr(tokenizer, "pad_token_id", None)
        result = answer_loss(
            model,
            examples,
            QACollator(int(pad_id) if isinstance(pad_id, int) else 0),
            batch_size=options.get("batch_size", 8),
            progress=progress,
        )
        if progress is not None and report.zero_supervised:
            progress(report.zero_supervised)
        return MetricResult(
            name=self.name,
            value=result.perplexity,
            n=result.examples,
            errors={
                "answer_truncated": report.truncated,
                "prompt_too_long": report.zero_supervised,
            },
            extra={
                "loss": result.loss,
                "tokens": result.tokens,
                "examples": result.examples,
                "rows": len(rows),
                "max_len": spec.max_len,
            },
        )
