"""The parity check of ``lorakit merge``: how far two causal LMs differ on answer tokens.

:func:`compare_models` runs the same examples through both models and measures, on the
answer tokens only (labels other than -100), the largest and mean absolute logit difference,
how often both pick the same most likely next token, and each model's answer-only loss
(:class:`ParityReport`). :class:`ParityTolerance` says how far apart they may be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from lorakit.errors import ConfigError

__all__ = ["ParityReport", "ParityTolerance", "compare_models"]


def _fraction(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"must be between 0 and 1, got {value!r}", field=attribute.name)


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"must be a number of at least 0, got {value!r}", field=attribute.name)


@attrs.frozen(kw_only=True)
class ParityTolerance:
    """How far the merged model may be from the model as trained.

    Attributes:
        min_agreement: the least share of answer tokens on which both models pick the same
            most likely next token.
        max_loss_delta: the largest absolute difference of their answer-only losses (nats).
        max_logit_diff: the largest absolute logit difference at an answer token; ``None``:
            not checked (logit scales differ between models, the other two do not).
    """

    min_agreement: float = attrs.field(validator=_fraction)
    max_loss_delta: float = attrs.field(validator=_non_negative)
    max_logit_diff: float | None = attrs.field(default=None, validator=_non_negative)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-able data."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class ParityReport:
    """How two models differ on the answer tokens of the same examples.

    ``reference`` is the model as trained, ``candidate`` the other one; ``loss_delta`` is
    candidate minus reference.
    """

    examples: int
    answer_tokens: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    argmax_agreement: float
    loss_reference: float
    loss_candidate: float

    @property
    def loss_delta(self) -> float:
        """The candidate's answer-only loss minus the reference's."""
        return self.loss_candidate - self.loss_reference

    def failures(self, tolerance: ParityTolerance) -> list[str]:
        """What is outside ``tolerance``, one phrase each (empty: within it)."""
        out = []
        if self.argmax_agreement < tolerance.min_agreement:
            out.append(
                f"argmax agreement {self.argmax_agreement:.4f} < {tolerance.min_agreement:g}"
            )
        if abs(self.loss_delta) > tolerance.max_loss_delta:
            out.append(f"|loss delta| {abs(self.loss_delta):.3g} > {tolerance.max_loss_delta:g}")
        if tolerance.max_logit_diff is not None and (
            self.max_abs_logit_diff > tolerance.max_logit_diff
        ):
            out.append(
                f"max |logit diff| {self.max_abs_logit_diff:.3g} > {tolerance.max_logit_diff:g}"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """As JSON-able data (with ``loss_delta``)."""
        return {**attrs.asdict(self), "loss_delta": self.loss_delta}


def compare_models(
    reference: Any,
    candidate: Any,
    examples: Sequence[Any],
    pad_id: int,
    *,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> ParityReport:
    """Compare two causal LMs on the answer tokens (labels other than -100) of ``examples``.

    Each batch runs through both models (each on its own device) and only sums and maxima
    are kept, never the logits of more than one batch.

    Raises:
        ConfigError: no answer token to compare.
    """
    import torch

    from lorakit.train import QACollator

    collate = QACollator(pad_id)
    ref_device = next(reference.parameters()).device
    cand_device = next(candidate.parameters()).device
    max_diff = 0.0
    abs_sum = 0.0
    agree = 0
    tokens = 0
    nll_ref = 0.0
    nll_cand = 0.0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
            labels = batch.pop("labels")
            targets = labels[:, 1:]
            keep = targets != -100

            ref = _answer_logits(reference, ref_device, batch, keep)
            cand = _answer_logits(candidate, cand_device, batch, keep)
            wanted = targets[keep]
            diff = (ref - cand).abs()
            if diff.numel():
                max_diff = max(max_diff, float(diff.max()))
                abs_sum += float(diff.mean(dim=-1).sum())
            agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
            tokens += int(wanted.numel())
            ce = torch.nn.functional.cross_entropy
            nll_ref += float(ce(ref, wanted, reduction="sum"))
            nll_cand += float(ce(cand, wanted, reduction="sum"))
            if progress is not None:
                progress(len(chunk))
    if tokens == 0:
        raise ConfigError(
            "the probe examples have no answer tokens to compare",
            field="--probe",
            hint="the run's eval split is empty or fully masked",
        )
    return ParityReport(
        examples=len(examples),
        answer_tokens=tokens,
        max_abs_logit_diff=max_diff,
        mean_abs_logit_diff=abs_sum / tokens,
        argmax_agreement=agree / tokens,
        loss_reference=nll_ref / tokens,
        loss_candidate=nll_cand / tokens,
    )


def _answer_logits(model: Any, device: Any, batch: Mapping[str, Any], keep: Any) -> Any:
    inputs = {k: v.to(device) for k, v in batch.items()}
    logits = model(**inputs).logits[:, :-1, :]
    return logits[keep.to(device)].float().cpu()
