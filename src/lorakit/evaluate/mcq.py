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

Tokenisation and batching are those of lm-evaluation-harness, so the two agree item by item
(see :mod:`lorakit.evaluate.loglikelihood`); a sequence longer than the model's context loses
tokens on the left and the item counts as ``prompt_truncated``.

How items are scored (choices, shots, batch size, mode ...) is a
:class:`~lorakit.evaluate.spec.BenchSpec`; fields it leaves ``None`` take the defaults of plain
multiple-choice rows: letters, zero-shot, no description.

``mode="generate"`` instead decodes a few tokens greedily and reads the chosen option from the
reply (see :func:`parse_reply`); replies that name no option count as ``no_parsable_answer`` or,
when they match :data:`REFUSAL_PATTERNS`, as ``refusal``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit.data.rows import LETTERS
from lorakit.errors import ConfigError, DataError, did_you_mean
from lorakit.evaluate.base import MetricResult, accuracy_result, item_id
from lorakit.evaluate.loglikelihood import (
    LoglikelihoodScores,
    Progress,
    encode_pairs,
    encode_texts,
    loglikelihoods,
    pad_token_id,
    resolve_max_length,
)
from lorakit.evaluate.spec import BenchSpec, ChoiceStyle
from lorakit.evaluate.stats import wilson_interval
from lorakit.evaluate.text import REFERRAL_PATTERNS as _TEXT_REFERRALS
from lorakit.evaluate.text import REFUSAL_PATTERNS as _TEXT_REFUSALS

if TYPE_CHECKING:
    from lorakit.data.rows import QARow

__all__ = [
    "ANSWER_PATTERN",
    "REFUSAL_PATTERNS",
    "MCQAccuracy",
    "MCQPrompt",
    "generate_replies",
    "parse_reply",
    "score_loglikelihood",
    "score_mcq",
    "select_exemplars",
]

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

    @classmethod
    def from_spec(cls, spec: BenchSpec) -> MCQPrompt:
        """The prompt a :class:`~lorakit.evaluate.spec.BenchSpec` describes: its choices (letters
        when ``None``) and description; with ``chat_template`` the delimiter before the answer
        is empty (the generation prompt ends the context)."""
        return cls(
            choices=spec.choices or "letters",
            description=spec.description or "",
            delimiter="" if spec.chat_template else " ",
        )


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


def _contexts(
    rows: Sequence[QARow],
    spec: BenchSpec,
    tokenizer: Any,
    fewshot: Sequence[QARow] | None,
) -> list[str]:
    prompt = MCQPrompt.from_spec(spec)
    pool = rows if fewshot is None else fewshot
    shots = spec.shots or 0
    by_category = bool(spec.fewshot_by_category)
    index = _by_category(pool) if by_category and shots else None
    contexts = []
    for row in rows:
        exemplars = select_exemplars(row, pool, shots, by_category=by_category, index=index)
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
    spec: BenchSpec | None = None,
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
    spec = spec or BenchSpec()
    for row in rows:
        _gold(row)
    prompt = MCQPrompt.from_spec(spec)
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
        pad_id=pad_token_id(tokenizer),
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

    encoded = encode_texts(tokenizer, contexts)
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
    spec: BenchSpec | None = None,
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
        spec: scoring options (defaults: log-likelihood, letters, zero-shot, batch 8); its
            ``limit`` is not applied here (pass the rows to score).
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
    spec = (spec or BenchSpec()).with_defaults()
    rows = list(rows)
    if not rows:
        raise ConfigError(f"metric {name!r}: cannot report a score over zero items")
    golds = [_gold(row) for row in rows]
    extra: dict[str, Any] = {
        "mode": spec.mode,
        "choices": spec.choices,
        "shots": spec.shots,
        "chat_template": spec.chat_template,
    }
    score = _by_loglikelihood if spec.mode == "loglikelihood" else _by_generation
    choices, errors = score(model, tokenizer, rows, golds, spec, fewshot, progress, extra)
    return accuracy_result(
        name,
        choices,
        golds,
        categories=[row.category for row in rows],
        item_ids=[item_id(row, i) for i, row in enumerate(rows)],
        errors=errors,
        extra=extra,
    )


def _by_loglikelihood(
    model: Any,
    tokenizer: Any,
    rows: list[QARow],
    golds: list[int],
    spec: BenchSpec,
    fewshot: Sequence[QARow] | None,
    progress: Progress | None,
    extra: dict[str, Any],
) -> tuple[list[int], dict[str, int]]:
    """The ``acc`` choices and error counts; ``acc_norm``, ``acc_bytes`` and counts in ``extra``."""
    scores = score_loglikelihood(model, tokenizer, rows, spec, fewshot=fewshot, progress=progress)
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
    return scores.choices(), {"prompt_truncated": sum(scores.truncated)}


def _by_generation(
    model: Any,
    tokenizer: Any,
    rows: list[QARow],
    golds: list[int],
    spec: BenchSpec,
    fewshot: Sequence[QARow] | None,
    progress: Progress | None,
    extra: dict[str, Any],
) -> tuple[list[int], dict[str, int]]:
    """The options the replies name and the error counts; the first replies in ``extra``."""
    contexts = _contexts(rows, spec, tokenizer, fewshot)
    replies, cut = generate_replies(
        model,
        tokenizer,
        contexts,
        max_new_tokens=spec.reply_tokens,
        batch_size=spec.batch_size,
        max_length=spec.max_length or resolve_max_length(model, tokenizer),
        progress=progress,
    )
    choices = []
    errors = {"no_parsable_answer": 0, "refusal": 0, "prompt_truncated": sum(cut)}
    for reply, row in zip(replies, rows, strict=True):
        index, kind = parse_reply(reply, row, spec.choices or "letters")
        choices.append(index)
        if kind is not None:
            errors[kind] += 1
    extra["max_new_tokens"] = spec.reply_tokens
    extra["replies"] = replies[:5]
    return choices, errors


_OPTIONS = (
    "choices",
    "shots",
    "fewshot_by_category",
    "description",
    "batch_size",
    "max_length",
    "mode",
    "reply_tokens",
    "chat_template",
)
"""The :class:`~lorakit.evaluate.spec.BenchSpec` fields the ``mcq_accuracy`` metric takes."""


@attrs.frozen
class MCQAccuracy:
    """The ``mcq_accuracy`` model metric: :func:`score_mcq` behind the ModelMetric shape.

    ``evaluate(model, tokenizer, rows, **options)`` takes the multiple-choice fields of
    :class:`~lorakit.evaluate.spec.BenchSpec` as keyword options (``choices``, ``shots``,
    ``fewshot_by_category``, ``description``, ``batch_size``, ``max_length``, ``mode``,
    ``reply_tokens``, ``chat_template``), plus ``fewshot`` (the exemplar pool) and
    ``progress``.
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
            if key not in _OPTIONS:
                known = (*_OPTIONS, "fewshot", "progress")
                raise ConfigError(
                    f"unknown option {key!r} for metric {self.name!r}",
                    field=key,
                    hint=did_you_mean(key, known) or f"options: {', '.join(known)}",
                )
        spec = BenchSpec(**options)
        return score_mcq(
            model, tokenizer, rows, spec, fewshot=fewshot, progress=progress, name=self.name
        )
