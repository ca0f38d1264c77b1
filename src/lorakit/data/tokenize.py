"""Tokenisation: rows -> token ids with a label mask, and a report of lengths and truncation.

Each row is rendered with the template (:class:`~lorakit.protocols.Template`) into chat messages,
then with the tokenizer's own chat template into text: the prompt (system and user turns plus the
generation prompt, ``<|assistant|>\\n`` for Phi-3) and the completion (the rest of the
conversation: the answer, the end-of-turn token, and whatever the template puts after it).

The model learns the answer and the end-of-turn token; everything else is masked with ``-100``::

    <s><|user|>What is a fever?<|end|><|assistant|> A raised body temperature.<|end|><|endoftext|>
    \\_______________ -100 ________________________/ \\_______ supervised _____________/ \\_ -100 _/

See ``docs/concepts/templates.md`` for the full rules. Nothing here imports torch or transformers;
any Hugging Face tokenizer with a chat template works.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.protocols import Template

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "LengthBin",
    "TokenizeReport",
    "TokenizeSpec",
    "ensure_pad_token",
    "generation_prompt_ids",
    "stop_token_ids",
    "tokenize_rows",
]

IGNORE_INDEX = -100
"""The label of a token the loss ignores (PyTorch's ``CrossEntropyLoss`` default)."""

Tokenizer = Any
"""A Hugging Face tokenizer (``transformers`` fast or slow); typed loosely to keep imports light."""

# End-of-turn and end-of-text tokens of common chat models, used as stop ids when in the vocabulary.
KNOWN_STOP_TOKENS = (
    "<|end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<end_of_turn>",
)
# Unused special tokens that can serve as padding, by name.
_PAD_NAMES = (
    "<pad>",
    "<|pad|>",
    "[PAD]",
    "<|finetune_right_pad_id|>",
    "<|fim_pad|>",
    "<|vision_pad|>",
)
_UNUSED_SPECIAL = re.compile(r"<\|?(placeholder|reserved|dummy)[\w-]*\|?>")
_PROBE_QUESTION = "lorakit probe question"
_PROBE_ANSWER = "lorakit probe answer"
_MAX_ORIGINS = 5


def _at_least(minimum: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(
                f"{attribute.name} must be a whole number of at least {minimum}, got {value!r}",
                field=f"tokenize.{attribute.name}",
            )

    return check


@attrs.frozen
class TokenizeSpec:
    """How rows are tokenised.

    Attributes:
        max_len: the most tokens an example may have. The prompt is kept whole and the answer
            is cut to fit; an example whose prompt alone fills ``max_len`` is dropped.
        batch_size: rows rendered and tokenised together (the fast tokenizer's batch).
    """

    max_len: int = attrs.field(default=1024, validator=_at_least(2))
    batch_size: int = attrs.field(default=256, validator=_at_least(1))


@attrs.frozen
class Example:
    """One training example: token ids, their labels, and the row it came from.

    Attributes:
        input_ids: the prompt's and the completion's token ids, at most ``max_len``.
        labels: ``input_ids`` with every unsupervised position set to ``-100``.
        origin: the row's ``origin`` (``file:line``), for messages.
    """

    input_ids: list[int]
    labels: list[int]
    origin: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def supervised(self) -> int:
        """How many tokens the loss is computed on."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@attrs.frozen
class LengthBin:
    """One bucket of the token-length histogram: lengths in ``low..high`` (inclusive).

    ``high`` is ``None`` for the overflow bucket (lengths above ``max_len``, which were cut).
    """

    low: int
    high: int | None
    count: int

    @property
    def label(self) -> str:
        """``"65-128"``, or ``">1024"`` for the overflow bucket."""
        return f">{self.low - 1}" if self.high is None else f"{self.low}-{self.high}"


def _bin_width(max_len: int) -> int:
    # 64-token bins for the usual max_len (>= 1024); about 16 bins for a shorter max_len.
    return max(1, min(64, max_len // 16))


def _histogram(lengths: Sequence[int], max_len: int) -> tuple[LengthBin, ...]:
    width = _bin_width(max_len)
    n_bins = math.ceil(max_len / width)
    counts = [0] * (n_bins + 1)
    for length in lengths:
        counts[n_bins if length > max_len else max(0, length - 1) // width] += 1
    bins = [
        LengthBin(low=i * width + 1, high=min((i + 1) * width, max_len), count=counts[i])
        for i in range(n_bins)
    ]
    bins.append(LengthBin(low=max_len + 1, high=None, count=counts[n_bins]))
    return tuple(bins)


def _percentile(ordered: Sequence[int], q: float) -> int:
    """The nearest-rank percentile ``q`` (0-100) of sorted values; 0 for none."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@attrs.frozen(kw_only=True)
class TokenizeReport:
    """What tokenisation kept, cut and dropped, and how long the examples are.

    Attributes:
        max_len: the ``max_len`` the examples were cut to.
        rows: rows tokenised (``examples + zero_supervised``).
        examples: examples kept.
        truncated: kept examples whose answer was cut by ``max_len``; their end-of-turn token is
            lost, so they teach the answer's beginning but not where to stop.
        truncated_origins: the origins of up to 5 of them.
        zero_supervised: rows dropped because the prompt alone fills ``max_len``, leaving no
            supervised token.
        zero_supervised_origins: the origins of up to 5 of them.
        boundary_mismatches: rows where tokenising the prompt alone did not give a prefix of the
            whole conversation's tokens (a merge across the prompt/answer boundary); those
            examples use the whole conversation's tokens and split them where they agree.
        supervised_tokens: tokens the loss sees, over all kept examples.
        total_tokens: tokens of all kept examples (after cutting).
        length: ``p50``, ``p90``, ``p99``, ``max`` and ``mean`` of the kept examples' lengths
            *before* cutting, so lengths above ``max_len`` show how much was cut.
        histogram: the same lengths in buckets (see :class:`LengthBin`); the counts add up to
            ``examples``.
    """

    max_len: int
    rows: int = 0
    examples: int = 0
    truncated: int = 0
    truncated_origins: tuple[str, ...] = ()
    zero_supervised: int = 0
    zero_supervised_origins: tuple[str, ...] = ()
    boundary_mismatches: int = 0
    supervised_tokens: int = 0
    total_tokens: int = 0
    length: dict[str, float] = attrs.field(factory=dict)
    histogram: tuple[LengthBin, ...] = ()

    @classmethod
    def empty(cls, spec: TokenizeSpec) -> TokenizeReport:
        """The report of tokenising no rows."""
        return cls.from_lengths(spec.max_len, [])

    @classmethod
    def from_lengths(cls, max_len: int, lengths: Sequence[int], **counts: Any) -> TokenizeReport:
        """A report with length statistics and histogram computed from untruncated ``lengths``.

        Args:
            max_len: the cut-off length.
            lengths: each kept example's length before cutting.
            counts: the other fields (``rows``, ``truncated``, ...).
        """
        ordered = sorted(lengths)
        stats: dict[str, float] = {
            "p50": _percentile(ordered, 50),
            "p90": _percentile(ordered, 90),
            "p99": _percentile(ordered, 99),
            "max": ordered[-1] if ordered else 0,
            "mean": round(sum(ordered) / len(ordered), 1) if ordered else 0.0,
        }
        counts.setdefault("rows", len(ordered))
        return cls(
            max_len=max_len,
            examples=len(ordered),
            length=stats,
            histogram=_histogram(ordered, max_len),
            **counts,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy; the histogram is a list of ``{"bucket", "low", "high", "count"}``."""
        return {
            "max_len": self.max_len,
            "rows": self.rows,
            "examples": self.examples,
            "truncated": self.truncated,
            "truncated_origins": list(self.truncated_origins),
            "zero_supervised": self.zero_supervised,
            "zero_supervised_origins": list(self.zero_supervised_origins),
            "boundary_mismatches": self.boundary_mismatches,
            "supervised_tokens": self.supervised_tokens,
            "total_tokens": self.total_tokens,
            "length": dict(self.length),
            "histogram": [
                {"bucket": b.label, "low": b.low, "high": b.high, "count": b.count}
                for b in self.histogram
            ],
        }


# --------------------------------------------------------------------------- the chat format


def _require_chat_template(tokenizer: Tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"the tokenizer {name!r} has no chat template",
            field="tokenizer",
            hint="use the tokenizer of an instruction-tuned (chat) model, or set "
            "tokenizer.chat_template to a Jinja template before tokenising",
        )


def _render(
    tokenizer: Tokenizer, conversations: list[list[dict[str, str]]], *, generation_prompt: bool
) -> list[str]:
    rendered = tokenizer.apply_chat_template(
        conversations, tokenize=False, add_generation_prompt=generation_prompt
    )
    texts = [rendered] if isinstance(rendered, str) else list(rendered)
    for messages, text in zip(conversations, texts, strict=True):
        _check_rendered(tokenizer, messages, text)
    return texts


def _check_rendered(tokenizer: Tokenizer, messages: list[dict[str, str]], text: str) -> None:
    """Raise when the chat template left a message's text out of the rendered ``text``.

    Some chat templates skip roles they do not know without a word: Phi-3-mini-4k-instruct's
    April 2024 template renders only user and assistant turns, so a system message would
    silently never reach the model. Leading and trailing whitespace is ignored (templates trim).
    """
    for message in messages:
        content = str(message.get("content") or "").strip()
        if not content or content in text:
            continue
        role = message.get("role", "?")
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        hint = (
            "this chat template has no system role, like Phi-3-mini-4k-instruct's April 2024 "
            "one: leave out the template's system option "
            "(data.template_options) and put the instruction in the question, or use a "
            "tokenizer whose chat template renders system messages"
            if role == "system"
            else "use a chat template that renders every role the prompt template writes"
        )
        raise ConfigError(
            f"the chat template of tokenizer {name!r} leaves the {role} message out of the "
            "rendered text, so the model would never see it",
            field="tokenizer.chat_template",
            hint=hint,
        )


def _special_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (named ones and special added tokens)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return ids


def _added_token_texts(tokenizer: Tokenizer) -> list[str]:
    texts = {
        str(token) for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
    }
    texts.update(str(t) for t in getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted((t for t in texts if t), key=len, reverse=True)


@attrs.frozen
class _ChatFormat:
    """What tokenisation needs to know about a tokenizer's chat format, probed once."""

    prefix_ids: tuple[int, ...]  # what the tokenizer adds before a text (the bos), if anything
    bos_token: str | None
    end_id: int | None  # the end-of-turn token after the answer (<|end|> for Phi-3)
    splitter: re.Pattern[str] | None  # finds added tokens in rendered text

    @classmethod
    def probe(cls, tokenizer: Tokenizer) -> _ChatFormat:
        _require_chat_template(tokenizer)
        with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        prefix: list[int] = []
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                prefix = with_special[:start]
                break
        texts = _added_token_texts(tokenizer)
        splitter = re.compile("|".join(re.escape(t) for t in texts)) if texts else None
        bos = getattr(tokenizer, "bos_token", None)
        return cls(
            prefix_ids=tuple(prefix),
            bos_token=str(bos) if bos else None,
            end_id=_end_of_turn_id(tokenizer),
            splitter=splitter,
        )

    def prefix_for(self, text: str) -> list[int]:
        """The bos the tokenizer adds, unless the chat template already wrote it into ``text``."""
        if self.bos_token and text.startswith(self.bos_token):
            return []
        return list(self.prefix_ids)

    def anchor(self, prompt_text: str) -> str:
        """The end of the prompt from its last added token on (``"<|assistant|>\\n"``).

        Text after an added token is tokenised independently of what came before it, so
        tokenising ``anchor + completion`` gives the completion's ids exactly as they appear in
        the whole conversation, without tokenising the whole prompt again.
        """
        if self.splitter is None:
            return prompt_text
        starts = [match.start() for match in self.splitter.finditer(prompt_text)]
        return prompt_text[starts[-1] :] if starts else prompt_text


def _end_of_turn_id(tokenizer: Tokenizer) -> int | None:
    """The first special token the chat template writes after an assistant message."""
    user = [{"role": "user", "content": _PROBE_QUESTION}]
    (prompt,) = _render(tokenizer, [user], generation_prompt=True)
    (full,) = _render(
        tokenizer,
        [[*user, {"role": "assistant", "content": _PROBE_ANSWER}]],
        generation_prompt=False,
    )
    at = full.find(_PROBE_ANSWER, len(prompt) if full.startswith(prompt) else 0)
    if at < 0:
        return None
    suffix = full[at + len(_PROBE_ANSWER) :]
    special = _special_ids(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    for token_id in tokenizer(suffix, add_special_tokens=False)["input_ids"]:
        if token_id in special or token_id == eos:
            return int(token_id)
    return None


# --------------------------------------------------------------------------- stop and pad tokens


def _generation_config_eos(tokenizer: Tokenizer) -> list[int]:
    """``eos_token_id`` of a ``generation_config.json`` beside a tokenizer loaded from a folder."""
    folder = getattr(tokenizer, "name_or_path", "") or ""
    path = Path(folder) / "generation_config.json" if folder else None
    if path is None or not path.is_file():
        return []
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def stop_token_ids(tokenizer: Tokenizer, *, extra: Iterable[int] = ()) -> set[int]:
    """The ids that end generation: none of them may be used as padding.

    They are the tokenizer's eos, the end-of-turn token its chat template writes after an
    answer (``<|end|>`` for Phi-3), every known end token in its vocabulary (``<|end|>``,
    ``<|endoftext|>``, ``<|eot_id|>``, ``<|im_end|>``, ...), the ``eos_token_id`` of a
    ``generation_config.json`` beside a tokenizer loaded from a folder, and ``extra``
    (pass ``model.generation_config.eos_token_id`` when you have the model).

    Args:
        tokenizer: a Hugging Face tokenizer.
        extra: more stop ids.
    """
    stops = {int(i) for i in extra}
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        stops.add(int(eos))
    if getattr(tokenizer, "chat_template", None):
        try:
            end = _end_of_turn_id(tokenizer)
        except Exception:  # a template that cannot render a plain user/assistant exchange
            end = None
        if end is not None:
            stops.add(end)
    vocab = tokenizer.get_vocab()
    stops.update(int(vocab[name]) for name in KNOWN_STOP_TOKENS if name in vocab)
    stops.update(_generation_config_eos(tokenizer))
    return stops


def ensure_pad_token(tokenizer: Tokenizer, *, extra_stop_ids: Iterable[int] = ()) -> int:
    """Give ``tokenizer`` a pad token that is not a stop token, and return its id.

    A pad equal to a stop id (Phi-3 ships ``pad = <|endoftext|>``, the eos) makes collators that
    mask padding by id mask the stop token too, so the model never learns to stop. When the
    tokenizer has no pad, or its pad is one of :func:`stop_token_ids`, the pad becomes an
    existing special token that is never generated, in this order: a token named like a pad
    (``<pad>``, ``<|pad|>``), ``<unk>``, then an unused placeholder or reserved token
    (``<|placeholder1|>``, ``<|reserved_special_token_0|>``). No token is added, so the model's
    embeddings are never resized.

    Args:
        tokenizer: a Hugging Face tokenizer; its ``pad_token`` is changed in place.
        extra_stop_ids: more ids the pad must not be (e.g. the model's generation config eos).

    Returns:
        The pad token id.

    Raises:
        ConfigError: no existing token can serve as padding.
    """
    stops = stop_token_ids(tokenizer, extra=extra_stop_ids)
    current = getattr(tokenizer, "pad_token_id", None)
    if current is not None and int(current) not in stops:
        return int(current)
    bos = getattr(tokenizer, "bos_token_id", None)
    vocab = tokenizer.get_vocab()
    candidates: list[str] = [name for name in _PAD_NAMES if name in vocab]
    unk = getattr(tokenizer, "unk_token", None)
    if unk and unk in vocab:
        candidates.append(str(unk))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    candidates += [
        str(token) for _, token in sorted(added.items()) if _UNUSED_SPECIAL.fullmatch(str(token))
    ]
    for name in candidates:
        token_id = int(vocab[name])
        if token_id not in stops and token_id != bos:
            tokenizer.pad_token = name
            return int(tokenizer.pad_token_id)
    raise ConfigError(
        "the tokenizer has no pad token that differs from its stop tokens "
        f"{sorted(stops)} and no unused special token to use instead",
        field="tokenizer",
        hint="set tokenizer.pad_token to a token the model never generates before tokenising",
    )


# --------------------------------------------------------------------------- tokenisation


def generation_prompt_ids(
    tokenizer: Tokenizer, conversations: Sequence[list[dict[str, str]]]
) -> list[list[int]]:
    """The ids of each conversation rendered with the generation prompt, exactly as
    training tokenises a prompt (so a model is asked as it was trained).

    Raises:
        ConfigError: the tokenizer has no chat template, or it drops a message.
    """
    if not conversations:
        return []
    fmt = _ChatFormat.probe(tokenizer)
    texts = _render(tokenizer, list(conversations), generation_prompt=True)
    return [
        fmt.prefix_for(text) + ids for text, ids in zip(texts, _ids(tokenizer, texts), strict=True)
    ]


def _batches(rows: Iterable[QARow], size: int) -> Iterator[list[QARow]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` without special tokens, in one batch."""
    if not texts:
        return []
    fast = getattr(tokenizer, "is_fast", False)
    backend = getattr(tokenizer, "backend_tokenizer", None) if fast else None
    if backend is not None:
        # The Rust tokenizer directly: the same ids as tokenizer(texts), without building offsets
        # and Python encodings (and without the "longer than model_max_length" warning).
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [list(e.ids) for e in encode(texts, add_special_tokens=False)]
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


def _render_batch(
    batch: list[QARow], tokenizer: Tokenizer, template: Template
) -> tuple[list[str], list[str]]:
    """The prompt text and the completion text of each row."""
    prompts: list[list[dict[str, str]]] = []
    conversations: list[list[dict[str, str]]] = []
    for row in batch:
        messages = [dict(message) for message in template.prompt(row)]
        prompts.append(messages)
        conversations.append([*messages, {"role": "assistant", "content": template.answer(row)}])
    prompt_texts = _render(tokenizer, prompts, generation_prompt=True)
    full_texts = _render(tokenizer, conversations, generation_prompt=False)
    completions = []
    for row, prompt, full in zip(batch, prompt_texts, full_texts, strict=True):
        if not full.startswith(prompt):
            raise ConfigError(
                "the chat template's prompt with the generation prompt is not the start of the "
                "whole conversation, so the answer cannot be separated from the prompt",
                file=row.origin or None,
                field="tokenizer.chat_template",
                hint="use a chat template whose generation prompt is the assistant turn's header",
            )
        completions.append(full[len(prompt) :])
    return prompt_texts, completions


def _split_ids(
    tokenizer: Tokenizer, fmt: _ChatFormat, prompt_texts: list[str], completions: list[str]
) -> tuple[list[list[int]], list[list[int]], int]:
    """Prompt ids (with the bos) and completion ids per row, and the boundary mismatch count."""
    prompt_ids = [
        fmt.prefix_for(text) + ids
        for text, ids in zip(prompt_texts, _ids(tokenizer, prompt_texts), strict=True)
    ]
    anchors = [fmt.anchor(text) for text in prompt_texts]
    unique = list(dict.fromkeys(anchors))  # usually one: "<|assistant|>\n"
    anchor_ids = dict(zip(unique, _ids(tokenizer, unique), strict=True))
    joined = _ids(tokenizer, [a + c for a, c in zip(anchors, completions, strict=True)])
    completion_ids: list[list[int]] = []
    mismatched: list[int] = []
    for i, (anchor, ids) in enumerate(zip(anchors, joined, strict=True)):
        head = anchor_ids[anchor]
        n = len(head)
        if ids[:n] == head and (n == 0 or prompt_ids[i][-n:] == head):
            completion_ids.append(ids[n:])
        else:
            completion_ids.append([])
            mismatched.append(i)
    if mismatched:
        fulls = _ids(tokenizer, [prompt_texts[i] + completions[i] for i in mismatched])
        for i, ids in zip(mismatched, fulls, strict=True):
            whole = fmt.prefix_for(prompt_texts[i]) + ids
            common = 0
            for a, b in zip(prompt_ids[i], whole, strict=False):
                if a != b:
                    break
                common += 1
            prompt_ids[i], completion_ids[i] = whole[:common], whole[common:]
    return prompt_ids, completion_ids, len(mismatched)


def _supervised_length(completion: list[int], end_id: int | None) -> int:
    """Tokens of the completion up to and including the end-of-turn token (all without one)."""
    if end_id is not None:
        for i in range(len(completion) - 1, -1, -1):
            if completion[i] == end_id:
                return i + 1
    return len(completion)


def tokenize_rows(
    rows: Iterable[QARow],
    tokenizer: Tokenizer,
    template: Template,
    spec: TokenizeSpec,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Example], TokenizeReport]:
    """Tokenise rows into examples with labels, and report lengths, cuts and drops.

    For each row the template gives the prompt messages and the answer; the tokenizer's chat
    template renders the prompt (with the generation prompt) and the whole conversation, and
    the completion text is the whole conversation after the prompt. Prompts get the bos as the
    whole conversation would; completions are tokenised without special tokens, so
    ``prompt_ids + completion_ids`` equals the whole conversation's ids.

    Labels are ``-100`` on the prompt; the answer's tokens and the first end-of-turn token after
    them (``<|end|>`` for Phi-3) are supervised; tokens after that end token (a newline, the
    eos) are ``-100``. An example longer than ``spec.max_len`` keeps its prompt and loses the
    end of its completion; when the cut removes supervised tokens it counts as ``truncated``
    (its end-of-turn token is lost). A row whose prompt alone fills ``max_len`` has nothing
    left to learn: it is dropped and counted as ``zero_supervised``.

    Args:
        rows: the rows, in order; read once, in batches of ``spec.batch_size``.
        tokenizer: a Hugging Face tokenizer with a chat template (fast ones are much faster).
        template: turns a row into prompt messages and an answer text.
        spec: ``max_len`` and ``batch_size``.
        progress: called with the number of rows done after each batch.

    Returns:
        The examples, in row order without the dropped ones, and the report.

    Raises:
        ConfigError: the tokenizer has no chat template, or its generation prompt is not the
            start of the rendered conversation.
    """
    fmt = _ChatFormat.probe(tokenizer)
    max_len = spec.max_len
    examples: list[Example] = []
    lengths: list[int] = []
    truncated: list[str] = []
    dropped: list[str] = []
    rows_seen = mismatches = supervised_tokens = total_tokens = 0
    for batch in _batches(rows, spec.batch_size):
        prompt_texts, completions = _render_batch(batch, tokenizer, template)
        prompt_ids, completion_ids, bad = _split_ids(tokenizer, fmt, prompt_texts, completions)
        mismatches += bad
        for row, prompt, completion in zip(batch, prompt_ids, completion_ids, strict=True):
            rows_seen += 1
            room = max(max_len - len(prompt), 0)
            wanted = _supervised_length(completion, fmt.end_id)
            supervised = min(wanted, room)
            if supervised == 0:
                dropped.append(row.origin)
                continue
            kept = completion[:room]
            if supervised < wanted:
                truncated.append(row.origin)
            input_ids = prompt + kept
            labels = (
                [IGNORE_INDEX] * len(prompt)
                + kept[:supervised]
                + [IGNORE_INDEX] * (len(kept) - supervised)
            )
            examples.append(Example(input_ids=input_ids, labels=labels, origin=row.origin))
            lengths.append(len(prompt) + len(completion))
            supervised_tokens += supervised
            total_tokens += len(input_ids)
        if progress is not None:
            progress(len(batch))
    report = TokenizeReport.from_lengths(
        max_len,
        lengths,
        rows=rows_seen,
        truncated=len(truncated),
        truncated_origins=tuple(truncated[:_MAX_ORIGINS]),
        zero_supervised=len(dropped),
        zero_supervised_origins=tuple(dropped[:_MAX_ORIGINS]),
        boundary_mismatches=mismatches,
        supervised_tokens=supervised_tokens,
        total_tokens=total_tokens,
    )
    return examples, report
