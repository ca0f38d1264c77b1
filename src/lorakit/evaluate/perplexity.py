"""Answer-only loss and perplexity, streamed: per batch, only sums are kept, never logits."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from lorakit.errors import ConfigError

__all__ = ["LossResult", "answer_loss"]


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
