"""Multiple-choice accuracy by log-likelihood, as lm-evaluation-harness scores it.

For each item the scorer builds one *context* (the prompt) and one *continuation* per option,
and asks the model for the summed log-probability of each continuation's tokens given the
context. The chosen option is the one with the highest sum (``acc``), or the highest sum
divided by the option's length in characters (``acc_norm``, lm-evaluation-harness's
definition: ``len(choice)`` of the choice text without the leading space; ``acc_bytes`` divides
by the UTF-8 byte length instead). No text is generated, so the model cannot fail to answer.

The prompt (:class:`MCQPrompt`)::

    [description]                      e.g. "The following are multiple choice questions
                                        (with answers) about anatomy.\\n\\n" (MMLU)
    [k exemplars, each a question block + " <answer>" + "\\n\\n"]
    Context: <context>                  only for rows with a context (PubMedQA)
    Question: <question>                "Question: " only after a context
    A. <option>                         options listed only when choices="letters"
    B. <option>
    Answer:

``choices="letters"`` scores the continuations ``" A"``, ``" B"`` ... (what lm-evaluation-harness
does for MMLU, MedQA and MedMCQA); ``choices="texts"`` does not list the options and scores each
option's text, ``" yes"``, ``" no"``, ``" maybe"`` (the "cloze" form, what it does for PubMedQA).

Tokenisation follows lm-evaluation-harness exactly, so the two agree item by item: trailing
whitespace of the context moves to the front of the continuation; the context and the whole
``context + continuation`` are encoded with the tokenizer's special tokens (the bos), unless the
text already starts with the bos; the continuation's tokens are the whole's tokens after the
context's length. A sequence longer than the model's context (``max_length + 1`` tokens) loses
tokens on the left and the item counts as ``prompt_truncated``.

Scoring is batched: requests whose model input is identical (all options of an item when each
option is one token, as with letters) share one forward pass; the distinct inputs are sorted
by length, longest first, and packed ``batch_size`` at a time, left-padded, with only the
continuation positions' logits computed (``logits_to_keep``) and freed after each batch.

``mode="generate"`` instead decodes a few tokens greedily and reads the chosen option from the
reply (see :func:`parse_reply`); replies that name no option count as ``no_parsable_answer`` or,
when they match :data:`REFUSAL_PATTERNS`, as ``refusal``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit.data.rows import LETTERS
from lorakit.errors import ConfigError, DataError, did_you_mean
from lorakit.evaluate.base import MetricResult, accuracy_result, item_id
from lorakit.evaluate.stats import wilson_interval
from lorakit.evaluate.text import REFERRAL_PATTERNS as _TEXT_REFERRALS
from lorakit.evaluate.text import REFUSAL_PATTERNS as _TEXT_REFUSALS

if TYPE_CHECKING:
    from lorakit.data.rows import QARow

__all__ = [
    "ANSWER_PATTERN",
    "REFUSAL_PATTERNS",
    "ChoiceStyle",
    "LoglikelihoodScores",
    "MCQAccuracy",
    "MCQPrompt",
    "MCQSpec",
    "Progress",
    "choose",
    "encode_pairs",
    "generate_replies",
    "loglikelihoods",
    "parse_reply",
    "resolve_max_length",
    "score_loglikelihood",
    "score_mcq",
    "select_exemplars",
]

ChoiceStyle = Literal["letters", "texts"]
Mode = Literal["loglikelihood", "generate"]
Progress = Callable[[int], None]
"""A progress callback, the project's ``advance(n)``: called after each batch with the number of
items finished in it (an item is finished when all its options are scored)."""

DEFAULT_MAX_LENGTH = 2048
"""The context length used when neither the model config nor the tokenizer states one."""

_TOKENIZER_INFINITY = int(1e30)
_SEQLEN_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")

ANSWER_PATTERN = re.compile(r"(?<![A-Za-z0-9])([A-E])(?![A-Za-z0-9])")
"""The first capital letter A-E standing alone (not inside a word or number) in a reply:
matches ``B``, ``B.``, ``(B)``, ``Answer: B``, ``**B**``; not the ``A`` of ``Aspirin``. A
sentence starting with the article "A" is read as option A (a known limitation)."""

REFUSAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE) for p in (*_TEXT_REFUSALS, *_TEXT_REFERRALS)
)
"""Patterns of a refusal (case-insensitive), the free-text metrics' refusals and referrals. A reply that names no option and matches one
counts as ``refusal`` rather than ``no_parsable_answer``; a reply that names an option is scored
on that option even when it also carries a disclaimer."""


# --------------------------------------------------------------------------- prompt


def _style(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("letters", "texts"):
        raise ConfigError(
            f"{attribute.name} must be 'letters' or 'texts', got {value!r}",
            field=attribute.name,
            hint="letters scores ' A', ' B' ...; texts scores each option's text",
        )


def _text_value(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{attribute.name} must be text, got {value!r}", field=attribute.name)


@attrs.frozen(kw_only=True)
class MCQPrompt:
    """The prompt and continuations of a multiple-choice item (see the module docstring).

    Attributes:
        choices: ``"letters"`` lists the options and scores ``" A"``, ``" B"`` ...;
            ``"texts"`` does not list them and scores each option's text.
        description: put before everything else; ``{category}`` is replaced by the row's
            category with underscores as spaces (MMLU's ``"... about {category}.\\n\\n"``).
        delimiter: put between ``"Answer:"`` and the answer (lm-evaluation-harness's
            ``target_delimiter``), a space.
        exemplar_separator: put after each exemplar (``fewshot_delimiter``), a blank line.
    """

    choices: ChoiceStyle = attrs.field(default="letters", validator=_style)
    description: str = attrs.field(default="", validator=_text_value)
    delimiter: str = attrs.field(default=" ", validator=_text_value)
    exemplar_separator: str = attrs.field(default="\n\n", validator=_text_value)

    def question_block(self, row: QARow) -> str:
        """The question without its answer, ending with ``"Answer:"``."""
        question = row.question.strip()
        context = row.context.strip()
        lines = [f"Context: {context}", f"Question: {question}"] if context else [question]
        if self.choices == "letters":
            lines += [
                f"{letter}. {option.strip()}"
                for letter, option in zip(LETTERS, row.options, strict=False)
            ]
        lines.append("Answer:")
        return "\n".join(lines)

    def choice_texts(self, row: QARow) -> list[str]:
        """What each option's continuation says, without the delimiter: ``"A"`` or the text."""
        if self.choices == "letters":
            return list(LETTERS[: len(row.options)])
        return [option.strip() for option in row.options]

    def continuations(self, row: QARow) -> list[str]:
        """The continuation scored for each option: the delimiter and the choice text."""
        return [self.delimiter + text for text in self.choice_texts(row)]

    def exemplar(self, row: QARow) -> str:
        """A solved example: the question block, the delimiter and the correct choice."""
        gold = _gold(row)
        return self.question_block(row) + self.delimiter + self.choice_texts(row)[gold]

    def context(self, row: QARow, exemplars: Sequence[QARow] = ()) -> str:
        """The whole context of ``row``: description, exemplars, then its question block."""
        description = self.description
        if "{category}" in description:
            description = description.replace(
                "{category}", (row.category or "").replace("_", " ").strip()
            )
        shots = "".join(self.exemplar(ex) + self.exemplar_separator for ex in exemplars)
        return description + shots + self.question_block(row)


def _gold(row: QARow) -> int:
    index = row.answer_index
    if not row.options or index is None:
        raise DataError(
            "a multiple-choice benchmark needs options and an answer letter; this row has none",
            file=row.origin or None,
            field="options",
            hint="score free-text rows with perplexity (the heldout benchmark) instead",
        )
    return index


def select_exemplars(
    row: QARow,
    pool: Sequence[QARow],
    shots: int,
    *,
    by_category: bool = False,
    index: Mapping[str | None, Sequence[QARow]] | None = None,
) -> list[QARow]:
    """The ``shots`` exemplars for ``row``: the first rows of ``pool`` that are not ``row``.

    With ``by_category`` only rows of the same category count (MMLU: the subject's dev rows).
    A pool row equal to ``row`` (same question, options, answer and origin) is skipped, so an
    item never sees its own answer.

    Args:
        row: the item.
        pool: candidate exemplars, in order.
        shots: how many, 0 or more.
        by_category: only rows of ``row.category``.
        index: ``pool`` grouped by category (as :func:`_by_category` builds), to skip the scan.

    Raises:
        ConfigError: the pool has fewer than ``shots`` usable rows.
    """
    if shots == 0:
        return []
    if by_category:
        candidates: Sequence[QARow] = (
            index.get(row.category, ())
            if index is not None
            else _by_category(pool).get(row.category, ())
        )
    else:
        candidates = pool
    chosen: list[QARow] = []
    for candidate in candidates:
        if candidate is row or candidate == row:
            continue
        chosen.append(candidate)
        if len(chosen) == shots:
            return chosen
    scope = f" of category {row.category!r}" if by_category else ""
    raise ConfigError(
        f"shots={shots} but only {len(chosen)} exemplars{scope} other than the item "
        f"{row.origin or row.id!r} are available",
        field="shots",
        hint="lower --shots, or give more exemplar rows",
    )


def _by_category(pool: Sequence[QARow]) -> dict[str | None, list[QARow]]:
    grouped: dict[str | None, list[QARow]] = {}
    for row in pool:
        grouped.setdefault(row.category, []).append(row)
    return grouped


# --------------------------------------------------------------------------- tokens


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
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
    context_ids = _encode(tokenizer, stripped)
    flat = [
        stripped[i] + moved[i] + cont for i, conts in enumerate(continuations) for cont in conts
    ]
    wholes = iter(_encode(tokenizer, flat))
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


# --------------------------------------------------------------------------- log-likelihoods


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


def _device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(p.device for p in model.parameters())


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


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
        key = tuple(whole[:-1])
        row_of.append(keys.setdefault(key, len(keys)))
        targets.append(list(continuation))
    inputs = list(keys)
    members: list[list[int]] = [[] for _ in inputs]
    for n, row in enumerate(row_of):
        members[row].append(n)
    order = sorted(range(len(inputs)), key=lambda r: (-len(inputs[r]), inputs[r]))

    total = len(requests)
    results: list[float] = [0.0] * total
    greedy: list[bool] = [False] * total
    owner = list(item_of) if item_of is not None else list(range(total))
    if len(owner) != total:
        raise ConfigError(f"item_of has {len(owner)} entries for {total} requests")
    pending: dict[int, int] = {}
    for item in owner:
        pending[item] = pending.get(item, 0) + 1
    device = _device(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    keep_supported = True
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch_rows = order[start : start + batch_size]
                width = max(len(inputs[r]) for r in batch_rows)
                keep = max(len(targets[n]) for r in batch_rows for n in members[r])
                ids = torch.full((len(batch_rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch_rows), width), dtype=torch.long)
                for b, r in enumerate(batch_rows):
                    seq = inputs[r]
                    ids[b, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[b, width - len(seq) :] = 1
                positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
                kwargs: dict[str, Any] = {
                    "input_ids": ids.to(device),
                    "attention_mask": mask.to(device),
                    "position_ids": positions.to(device),
                    "use_cache": False,
                }
                logits = None
                if keep_supported:
                    try:
                        logits = model(**kwargs, logits_to_keep=keep).logits
                    except TypeError:
                        keep_supported = False
                if logits is None:
                    logits = model(**kwargs).logits
                logprobs = torch.log_softmax(logits[:, -keep:, :].float(), dim=-1)
                del logits
                for b, r in enumerate(batch_rows):
                    for n in members[r]:
                        target = torch.tensor(targets[n], dtype=torch.long, device=logprobs.device)
                        rows = logprobs[b, keep - len(target) :, :]
                        results[n] = float(rows.gather(1, target[:, None]).sum())
                        greedy[n] = bool((rows.argmax(dim=-1) == target).all())
                del logprobs
                finished = 0
                for r in batch_rows:
                    for n in members[r]:
                        pending[owner[n]] -= 1
                        finished += pending[owner[n]] == 0
                if progress is not None and finished:
                    progress(finished)
    finally:
        model.train(was_training)
    return results, greedy, cut, len(inputs)


# --------------------------------------------------------------------------- the spec


def _positive(minimum: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"{attribute.name} must be a whole number of at least {minimum}, got {value!r}",
                field=attribute.name,
            )

    return check


def _optional_positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _positive(1)(instance, attribute, value)


def _mode(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("loglikelihood", "generate"):
        raise ConfigError(
            f"mode must be 'loglikelihood' or 'generate', got {value!r}", field="mode"
        )


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(
            f"{attribute.name} must be true or false, got {value!r}", field=attribute.name
        )


@attrs.frozen(kw_only=True)
class MCQSpec:
    """How multiple-choice items are scored.

    Attributes:
        choices: ``"letters"`` or ``"texts"`` (see :class:`MCQPrompt`).
        shots: exemplars before each item (0: zero-shot).
        fewshot_by_category: take exemplars of the item's category only (MMLU subjects).
        description: text before the exemplars; ``{category}`` is filled in.
        batch_size: sequences per forward pass.
        max_length: the model's context length; ``None`` reads it from the model config.
        mode: ``"loglikelihood"`` (default) or ``"generate"``.
        max_new_tokens: tokens generated per item in generation mode.
        chat_template: render the prompt as a user turn of the tokenizer's chat template, with
            the generation prompt; the delimiter before the answer is then empty.
    """

    choices: ChoiceStyle = attrs.field(default="letters", validator=_style)
    shots: int = attrs.field(default=0, validator=_positive(0))
    fewshot_by_category: bool = attrs.field(default=False, validator=_flag)
    description: str = attrs.field(default="", validator=_text_value)
    batch_size: int = attrs.field(default=8, validator=_positive(1))
    max_length: int | None = attrs.field(default=None, validator=_optional_positive)
    mode: Mode = attrs.field(default="loglikelihood", validator=_mode)
    max_new_tokens: int = attrs.field(default=8, validator=_positive(1))
    chat_template: bool = attrs.field(default=False, validator=_flag)

    @property
    def prompt(self) -> MCQPrompt:
        """The prompt format this spec describes."""
        return MCQPrompt(
            choices=self.choices,
            description=self.description,
            delimiter="" if self.chat_template else " ",
        )


_SPEC_FIELDS = tuple(f.name for f in attrs.fields(MCQSpec))


def _contexts(
    rows: Sequence[QARow],
    spec: MCQSpec,
    tokenizer: Any,
    fewshot: Sequence[QARow] | None,
) -> list[str]:
    prompt = spec.prompt
    pool = rows if fewshot is None else fewshot
    index = _by_category(pool) if spec.fewshot_by_category and spec.shots else None
    contexts = []
    for row in rows:
        exemplars = select_exemplars(
            row, pool, spec.shots, by_category=spec.fewshot_by_category, index=index
        )
        text = prompt.context(row, exemplars)
        if spec.chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError(
                    "chat_template=True but the tokenizer has no chat template",
                    field="chat_template",
                )
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        contexts.append(text)
    return contexts


def score_loglikelihood(
    model: Any,
    tokenizer: Any,
    rows: Sequence[QARow],
    spec: MCQSpec | None = None,
    *,
    fewshot: Sequence[QARow] | None = None,
    progress: Progress | None = None,
) -> LoglikelihoodScores:
    """Every option's log-likelihood for every row (the log-likelihood half of :func:`score_mcq`).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        rows: multiple-choice rows.
        spec: the scoring options (defaults: letters, zero-shot).
        fewshot: the exemplar pool (``None``: ``rows`` themselves).
        progress: ``advance(n)`` with the items finished after each batch.

    Raises:
        DataError: a row without options.
        ConfigError: bad options, or fewer exemplars than ``spec.shots``.
    """
    spec = spec or MCQSpec()
    for row in rows:
        _gold(row)
    prompt = spec.prompt
    contexts = _contexts(rows, spec, tokenizer, fewshot)
    continuations = [prompt.continuations(row) for row in rows]
    texts = [prompt.choice_texts(row) for row in rows]
    context_ids, cont_ids, mismatches = encode_pairs(tokenizer, contexts, continuations)
    requests = [(context_ids[i], ids) for i, conts in enumerate(cont_ids) for ids in conts]
    item_of = [i for i, conts in enumerate(cont_ids) for _ in conts]
    max_length = spec.max_length or resolve_max_length(model, tokenizer)
    lls, greedy, cut, forward_rows = loglikelihoods(
        model,
        requests,
        batch_size=spec.batch_size,
        max_length=max_length,
        pad_id=_pad_id(tokenizer),
        item_of=item_of,
        progress=progress,
    )
    per_item_ll: list[tuple[float, ...]] = []
    per_item_greedy: list[tuple[bool, ...]] = []
    truncated: list[bool] = []
    position = 0
    for conts in cont_ids:
        k = len(conts)
        per_item_ll.append(tuple(lls[position : position + k]))
        per_item_greedy.append(tuple(greedy[position : position + k]))
        truncated.append(any(cut[position : position + k]))
        position += k
    return LoglikelihoodScores(
        loglikelihoods=tuple(per_item_ll),
        greedy=tuple(per_item_greedy),
        choice_lengths=tuple(tuple(len(t) for t in ts) for ts in texts),
        choice_bytes=tuple(tuple(len(t.encode("utf-8")) for t in ts) for ts in texts),
        truncated=tuple(truncated),
        boundary_mismatches=mismatches,
        forward_rows=forward_rows,
        requests=len(requests),
    )


# --------------------------------------------------------------------------- generation


def parse_reply(reply: str, row: QARow, choices: ChoiceStyle = "letters") -> tuple[int, str | None]:
    """The option a generated reply names, and why not when it names none.

    With ``choices="letters"`` the first match of :data:`ANSWER_PATTERN` is read first, then
    an option text at the start of the reply (case-insensitive, longest option first); with
    ``"texts"`` the other way round. A letter beyond the row's options names nothing. A reply
    that names no option is a ``"refusal"`` when it matches :data:`REFUSAL_PATTERNS`, else
    ``"no_parsable_answer"``.

    Returns:
        ``(index, None)`` for a named option, ``(-1, kind)`` otherwise.
    """
    text = reply.strip()

    def by_letter() -> int:
        match = ANSWER_PATTERN.search(text)
        if match is None:
            return -1
        index = LETTERS.index(match.group(1))
        return index if index < len(row.options) else -1

    def by_text() -> int:
        lowered = text.lower()
        ranked = sorted(range(len(row.options)), key=lambda j: -len(row.options[j].strip()))
        for j in ranked:
            option = row.options[j].strip().lower()
            if option and lowered.startswith(option):
                rest = lowered[len(option) : len(option) + 1]
                if not rest or not rest.isalnum():
                    return j
        return -1

    readers = (by_letter, by_text) if choices == "letters" else (by_text, by_letter)
    for reader in readers:
        index = reader()
        if index >= 0:
            return index, None
    plain = text.replace("\u2019", "'").replace("\u2018", "'")
    if any(pattern.search(plain) for pattern in REFUSAL_PATTERNS):
        return -1, "refusal"
    return -1, "no_parsable_answer"


def generate_replies(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    max_length: int,
    progress: Progress | None = None,
) -> tuple[list[str], list[bool]]:
    """Greedy replies to each context, and whether each prompt was cut on the left to fit.

    Prompts are encoded like log-likelihood contexts (with the bos), cut to
    ``max_length - max_new_tokens`` tokens from the left, and generated by
    :func:`~lorakit.evaluate.generate.generate_from_ids` (greedy, left-padded, stopping at
    every stop id). Special tokens are removed from the replies.
    """
    from lorakit.evaluate.generate import generate_from_ids

    encoded = _encode(tokenizer, contexts)
    room = max(1, max_length - max_new_tokens)
    cut = [len(ids) > room for ids in encoded]
    generations = generate_from_ids(
        model,
        tokenizer,
        [ids[-room:] for ids in encoded],
        [""] * len(encoded),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    return [g.text for g in generations], cut


# --------------------------------------------------------------------------- the metric


def score_mcq(
    model: Any,
    tokenizer: Any,
    rows: Sequence[QARow],
    spec: MCQSpec | None = None,
    *,
    fewshot: Sequence[QARow] | None = None,
    progress: Progress | None = None,
    name: str = "mcq_accuracy",
) -> MetricResult:
    """Multiple-choice accuracy of ``model`` on ``rows``, with its interval and breakdowns.

    Args:
        model: a causal LM (transformers or PEFT).
        tokenizer: its tokenizer.
        rows: multiple-choice rows (options and an answer letter each).
        spec: scoring options (defaults: log-likelihood, letters, zero-shot, batch 8).
        fewshot: the exemplar pool; ``None`` takes exemplars from ``rows`` (never the item).
        progress: ``advance(n)`` with the items finished after each batch.
        name: the result's name.

    Returns:
        ``value`` is the accuracy (``acc``) with its 95 % Wilson interval; ``per_category`` is
        by ``QARow.category``; ``errors`` counts :data:`~lorakit.evaluate.base.ERROR_KINDS`;
        ``extra`` holds the settings and, in log-likelihood mode, ``acc_norm`` and
        ``acc_bytes`` with their intervals, ``requests``, ``forward_rows`` and
        ``boundary_mismatches``; in generation mode the first five ``replies``, for a look.
        ``choices`` are the ``acc`` choices (``-1``: no parsable answer).

    Raises:
        ConfigError: zero rows, bad options, too few exemplars.
        DataError: a row without options, naming the row.
    """
    spec = spec or MCQSpec()
    rows = list(rows)
    if not rows:
        raise ConfigError(f"metric {name!r}: cannot report a score over zero items")
    golds = [_gold(row) for row in rows]
    categories = [row.category for row in rows]
    ids = [item_id(row, i) for i, row in enumerate(rows)]
    extra: dict[str, Any] = {
        "mode": spec.mode,
        "choices": spec.choices,
        "shots": spec.shots,
        "chat_template": spec.chat_template,
    }
    errors: dict[str, int]
    if spec.mode == "loglikelihood":
        scores = score_loglikelihood(
            model, tokenizer, rows, spec, fewshot=fewshot, progress=progress
        )
        choices = scores.choices()
        normalisations: tuple[tuple[str, Literal["chars", "bytes"]], ...] = (
            ("acc_norm", "chars"),
            ("acc_bytes", "bytes"),
        )
        for key, normalize in normalisations:
            picked = scores.choices(normalize)
            hits = sum(int(c == g) for c, g in zip(picked, golds, strict=True))
            low, high = wilson_interval(hits, len(rows))
            extra[key] = hits / len(rows)
            extra[f"{key}_ci_low"], extra[f"{key}_ci_high"] = low, high
        extra["requests"] = scores.requests
        extra["forward_rows"] = scores.forward_rows
        extra["boundary_mismatches"] = scores.boundary_mismatches
        errors = {"prompt_truncated": sum(scores.truncated)}
    else:
        contexts = _contexts(rows, spec, tokenizer, fewshot)
        replies, cut = generate_replies(
            model,
            tokenizer,
            contexts,
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.batch_size,
            max_length=spec.max_length or resolve_max_length(model, tokenizer),
            progress=progress,
        )
        choices = []
        errors = {"no_parsable_answer": 0, "refusal": 0, "prompt_truncated": sum(cut)}
        for reply, row in zip(replies, rows, strict=True):
            index, kind = parse_reply(reply, row, spec.choices)
            choices.append(index)
            if kind is not None:
                errors[kind] += 1
        extra["max_new_tokens"] = spec.max_new_tokens
        extra["replies"] = replies[:5]
    return accuracy_result(
        name,
        choices,
        golds,
        categories=categories,
        item_ids=ids,
        errors=errors,
        extra=extra,
    )


@attrs.frozen
class MCQAccuracy:
    """The ``mcq_accuracy`` model metric: :func:`score_mcq` behind the ModelMetric shape.

    ``evaluate(model, tokenizer, rows, **options)`` takes the fields of :class:`MCQSpec` as
    keyword options, plus ``fewshot`` (the exemplar pool) and ``progress``.
    """

    name: str = "mcq_accuracy"

    def evaluate(
        self, model: Any, tokenizer: Any, rows: Sequence[QARow], **options: Any
    ) -> MetricResult:
        """Score ``rows``; see :func:`score_mcq`.

        Raises:
            ConfigError: an unknown option, a bad value, zero rows.
            DataError: a row without options.
        """
        fewshot = options.pop("fewshot", None)
        progress = options.pop("progress", None)
        for key in options:
            if key not in _SPEC_FIELDS:
                known = (*_SPEC_FIELDS, "fewshot", "progress")
                raise ConfigError(
                    f"unknown option {key!r} for metric {self.name!r}",
                    field=key,
                    hint=did_you_mean(key, known) or f"options: {', '.join(known)}",
                )
        spec = MCQSpec(**options)
        return score_mcq(
            model, tokenizer, rows, spec, fewshot=fewshot, progress=progress, name=self.name
        )
