"""Log-likelihoods of continuations given contexts, tokenised and batched as lm-evaluation-harness does.

The generic half of multiple-choice scoring (:mod:`lorakit.evaluate.mcq` builds the prompts):

* :func:`encode_pairs` splits ``context + continuation`` into token ids exactly as the harness
  does: trailing whitespace of the context moves to the front of the continuation; the context
  and the whole are encoded with the tokenizer's special tokens (the bos), unless the text
  already starts with the bos; the continuation's ids are the whole's ids after the context's
  length.
* :func:`loglikelihoods` scores ``(context_ids, continuation_ids)`` requests: a sequence longer
  than the model's context (``max_length + 1`` tokens) loses tokens on the left; requests whose
  model input is identical share one forward row; the distinct inputs are sorted by length,
  longest first, and packed ``batch_size`` at a time, left-padded, with only the continuation
  positions' logits computed (``logits_to_keep``) and freed after each batch.
* :class:`LoglikelihoodScores` holds per-item results and :func:`choose` picks an option
  (``acc``, or normalised by length: ``acc_norm``, ``acc_bytes``).

This module imports torch only inside :func:`loglikelihoods`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from lorakit.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "LoglikelihoodScores",
    "Progress",
    "choose",
    "encode_pairs",
    "encode_texts",
    "loglikelihoods",
    "pad_token_id",
    "resolve_max_length",
]

Progress = Callable[[int], None]
"""A progress callback, the project's ``advance(n)``: called after each batch with the number of
items finished in it (an item is finished when all its options are scored)."""

DEFAULT_MAX_LENGTH = 2048
"""The context length used when neither the model config nor the tokenizer states one."""

_TOKENIZER_INFINITY = int(1e30)
_SEQLEN_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")


# --------------------------------------------------------------------------- tokens


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as ``tokenizer.encode(text)`` gives them (with the bos), except
    that a text already starting with the bos token gets no second one (lm-eval's rule)."""
    bos = getattr(tokenizer, "bos_token", None)
    out: list[list[int]] = [[] for _ in texts]
    groups: dict[bool, list[int]] = {True: [], False: []}
    for i, text in enumerate(texts):
        groups[not (bos and text.startswith(bos))].append(i)
    for special, positions in groups.items():
        if not positions:
            continue
        encoded = tokenizer(
            [texts[i] for i in positions],
            add_special_tokens=special,
            return_attention_mask=False,
            verbose=False,
        )["input_ids"]
        for i, ids in zip(positions, encoded, strict=True):
            out[i] = [int(t) for t in ids]
    return out


def encode_pairs(
    tokenizer: Any, contexts: Sequence[str], continuations: Sequence[Sequence[str]]
) -> tuple[list[list[int]], list[list[list[int]]], int]:
    """Context and continuation token ids, split as lm-evaluation-harness splits them.

    For each context ``c`` and each of its continuations ``x``: trailing whitespace of ``c``
    moves to the front of ``x``; ``whole = encode(c + x)``, ``ctx = encode(c)``, and the
    continuation's ids are ``whole[len(ctx):]``. When the tokenizer merges characters across the
    boundary, ``ctx`` is not a prefix of ``whole``; the split stays at ``len(ctx)`` (as the
    reference does) and the pair is counted.

    Args:
        tokenizer: a Hugging Face tokenizer.
        contexts: one context per item.
        continuations: per item, one continuation per option.

    Returns:
        Per item the context ids, per item and option the continuation ids, and the number of
        pairs whose context ids are not a prefix of the whole's.

    Raises:
        ConfigError: a continuation encodes to no token of its own.
    """
    stripped: list[str] = []
    moved: list[str] = []
    for context in contexts:
        n_spaces = len(context) - len(context.rstrip())
        stripped.append(context[: len(context) - n_spaces])
        moved.append(context[len(context) - n_spaces :])
    context_ids = encode_texts(tokenizer, stripped)
    flat = [
        stripped[i] + moved[i] + cont for i, conts in enumerate(continuations) for cont in conts
    ]
    wholes = iter(encode_texts(tokenizer, flat))
    out: list[list[list[int]]] = []
    mismatches = 0
    for i, conts in enumerate(continuations):
        ctx = context_ids[i]
        per_option: list[list[int]] = []
        for cont in conts:
            whole = next(wholes)
            if whole[: len(ctx)] != ctx:
                mismatches += 1
            ids = whole[len(ctx) :]
            if not ids:
                raise ConfigError(
                    f"continuation {cont!r} of item {i} encodes to no token after its context",
                    field="choices",
                    hint="use choices='letters' or options with text",
                )
            per_option.append(ids)
        out.append(per_option)
    return context_ids, out, mismatches


def resolve_max_length(model: Any, tokenizer: Any, default: int = DEFAULT_MAX_LENGTH) -> int:
    """The model's context length: its config's ``n_positions``, ``max_position_embeddings`` or
    ``n_ctx``, else the tokenizer's ``model_max_length`` when set, else ``default`` (the order
    lm-evaluation-harness uses)."""
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        for attr in _SEQLEN_ATTRS:
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _TOKENIZER_INFINITY:
        return value
    return default


def pad_token_id(tokenizer: Any) -> int:
    """The id written into padding: the tokenizer's pad, else eos, else unk, else 0 (padding is
    masked out, so any id works)."""
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


# --------------------------------------------------------------------------- scores


@attrs.frozen(kw_only=True)
class LoglikelihoodScores:
    """Per-option log-likelihoods of every item and the options they choose.

    Attributes:
        loglikelihoods: per item, per option, the summed log-probability of the continuation.
        greedy: per item, per option, whether every continuation token was the model's argmax.
        choice_lengths: per item, per option, ``len(choice text)`` (acc_norm's divisor).
        choice_bytes: per item, per option, the UTF-8 byte length (acc_bytes's divisor).
        truncated: per item, whether some option's sequence lost tokens on the left.
        boundary_mismatches: (item, option) pairs whose context ids are not a prefix of
            the whole's ids.
        forward_rows: distinct model inputs run (fewer than requests when inputs are shared).
        requests: (item, option) pairs scored.
    """

    loglikelihoods: tuple[tuple[float, ...], ...]
    greedy: tuple[tuple[bool, ...], ...]
    choice_lengths: tuple[tuple[int, ...], ...]
    choice_bytes: tuple[tuple[int, ...], ...]
    truncated: tuple[bool, ...]
    boundary_mismatches: int = 0
    forward_rows: int = 0
    requests: int = 0

    def choices(self, normalize: Literal["none", "chars", "bytes"] = "none") -> list[int]:
        """Per item the chosen option: argmax of the log-likelihood, or of it divided by the
        choice's length in characters (``acc_norm``) or bytes (``acc_bytes``)."""
        if normalize == "none":
            return [choose(lls) for lls in self.loglikelihoods]
        lengths = self.choice_lengths if normalize == "chars" else self.choice_bytes
        return [choose(lls, ls) for lls, ls in zip(self.loglikelihoods, lengths, strict=True)]


def choose(loglikelihoods: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """The index of the highest score, the first on ties (``numpy.argmax``'s rule).

    With ``lengths``, the score of option ``j`` is ``loglikelihoods[j] / lengths[j]``.

    Raises:
        ConfigError: no options, or a length of 0.
    """
    if not loglikelihoods:
        raise ConfigError("cannot choose among zero options")
    scores = list(loglikelihoods)
    if lengths is not None:
        if any(n <= 0 for n in lengths):
            raise ConfigError("an option of length 0 cannot be length-normalised")
        scores = [ll / n for ll, n in zip(loglikelihoods, lengths, strict=True)]
    best = 0
    for j in range(1, len(scores)):
        if scores[j] > scores[best]:
            best = j
    return best


# --------------------------------------------------------------------------- the forward passes


@attrs.frozen
class _Plan:
    """Requests deduplicated into distinct model inputs (the rows of the batches)."""

    inputs: list[tuple[int, ...]]
    members: list[list[int]]  # per input, the requests it serves
    targets: list[list[int]]  # per request, its continuation ids
    cut: list[bool]  # per request, whether it lost tokens on the left
    order: list[int]  # inputs, longest first


def _plan(requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> _Plan:
    keys: dict[tuple[int, ...], int] = {}
    row_of: list[int] = []
    targets: list[list[int]] = []
    cut: list[bool] = []
    for n, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ConfigError(f"request {n}: empty context or continuation")
        if len(continuation) > max_length:
            raise ConfigError(
                f"request {n}: a continuation of {len(continuation)} tokens does not fit the "
                f"model's {max_length}-token context",
                field="max_length",
            )
        whole = [*context, *continuation]
        cut.append(len(whole) > max_length + 1)
        whole = whole[-(max_length + 1) :]
        row_of.append(keys.setdefault(tuple(whole[:-1]), len(keys)))
        targets.append(list(continuation))
    inputs = list(keys)
    members: list[list[int]] = [[] for _ in inputs]
    for n, row in enumerate(row_of):
        members[row].append(n)
    order = sorted(range(len(inputs)), key=lambda r: (-len(inputs[r]), inputs[r]))
    return _Plan(inputs=inputs, members=members, targets=targets, cut=cut, order=order)


def _device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(p.device for p in model.parameters())


class _Forward:
    """Runs left-padded batches, asking for the last ``keep`` positions' logits only when the
    model accepts ``logits_to_keep``; returns float32 log-probabilities of those positions."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = _device(model)
        self.keep_supported = True

    def __call__(self, seqs: Sequence[Sequence[int]], keep: int) -> Any:
        import torch

        width = max(len(seq) for seq in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, seq in enumerate(seqs):
            ids[b, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[b, width - len(seq) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "use_cache": False,
        }
        logits = None
        if self.keep_supported:
            try:
                logits = self.model(**kwargs, logits_to_keep=keep).logits
            except TypeError:
                self.keep_supported = False
        if logits is None:
            logits = self.model(**kwargs).logits
        return torch.log_softmax(logits[:, -keep:, :].float(), dim=-1)


def loglikelihoods(
    model: Any,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 8,
    max_length: int,
    pad_id: int = 0,
    item_of: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> tuple[list[float], list[bool], list[bool], int]:
    """Summed log-probabilities of continuation tokens given context tokens.

    Each request ``(context_ids, continuation_ids)`` becomes the sequence
    ``(context + continuation)[-(max_length + 1):]`` whose last token is dropped to form the
    model input; the continuation's tokens are scored at the input's last positions. Requests
    with the same input share one row of the batch. Rows are sorted longest first and run
    ``batch_size`` at a time, left-padded (with position ids that start at 0 on the first real
    token), and only the continuation positions' logits are computed when the model accepts
    ``logits_to_keep``; they are turned into float32 log-probabilities and freed per batch.

    Args:
        model: a causal LM (transformers or PEFT); put in eval mode for the call and restored.
        requests: context and continuation token ids; both non-empty.
        batch_size: rows per forward pass.
        max_length: the model's context length (see :func:`resolve_max_length`).
        pad_id: the id written into padding (masked out; any id works).
        item_of: per request, the item it belongs to; ``progress`` then counts items whose
            requests are all scored, else it counts requests.
        progress: called after each batch with the number of items (or requests) finished.

    Returns:
        Per request the log-likelihood and whether it was the greedy continuation; per request
        whether its sequence was cut on the left; and the number of forward rows.

    Raises:
        ConfigError: an empty context or continuation, a continuation longer than
            ``max_length``, or a ``batch_size`` below 1.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")
    plan = _plan(requests, max_length)
    total = len(requests)
    results: list[float] = [0.0] * total
    greedy: list[bool] = [False] * total
    owner = list(item_of) if item_of is not None else list(range(total))
    if len(owner) != total:
        raise ConfigError(f"item_of has {len(owner)} entries for {total} requests")
    pending: dict[int, int] = {}
    for item in owner:
        pending[item] = pending.get(item, 0) + 1
    forward = _Forward(model, pad_id)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(plan.order), batch_size):
                batch_rows = plan.order[start : start + batch_size]
                keep = max(len(plan.targets[n]) for r in batch_rows for n in plan.members[r])
                logprobs = forward([plan.inputs[r] for r in batch_rows], keep)
                for b, r in enumerate(batch_rows):
                    for n in plan.members[r]:
                        target = torch.tensor(
                            plan.targets[n], dtype=torch.long, device=logprobs.device
                        )
                        rows = logprobs[b, keep - len(target) :, :]
                        results[n] = float(rows.gather(1, target[:, None]).sum())
                        greedy[n] = bool((rows.argmax(dim=-1) == target).all())
                del logprobs
                finished = 0
                for r in batch_rows:
                    for n in plan.members[r]:
                        pending[owner[n]] -= 1
                        finished += pending[owner[n]] == 0
                if progress is not None and finished:
                    progress(finished)
    finally:
        model.train(was_training)
    return results, greedy, plan.cut, len(plan.inputs)
