"""Row cleaners: the built-in plugin, the cleaning chain and its report.

A cleaner is created fresh for each pass by a factory registered through
``lorakit_register_cleaners``; it is called once per row and returns the row,
a changed copy, or a ``Drop`` with the reason that is
counted in the ``CleaningReport``::

    from lorakit.data.cleaners import DEFAULT_CLEANERS, CleanerSpec, clean_rows
    from lorakit.plugins import Registries

    registries = Registries.from_plugin_manager()
    specs = [*DEFAULT_CLEANERS, CleanerSpec.parse("length_filter:max_answer_chars=4000")]
    rows, report = clean_rows(rows, specs, registries.cleaners)

Built-in cleaners: ``normalize_whitespace``, ``lowercase`` (not in the default
chain), ``drop_empty``, ``exact_dedup``, ``near_dedup`` and ``length_filter``.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from lorakit._registry import Registry
from lorakit._validators import require_fraction, require_int, require_optional_int
from lorakit.data.cleaning_report import CleanerStats, CleaningReport, jsonable
from lorakit.data.minhash import LSHIndex, MinHasher, normalize_text
from lorakit.data.rows import QARow
from lorakit.errors import ConfigError, PluginError, did_you_mean
from lorakit.hookspecs import hookimpl
from lorakit.protocols import Cleaner, Drop, Register

__all__ = [
    "DEFAULT_CLEANERS",
    "CleanerSpec",
    "CleanerStats",
    "CleaningReport",
    "check_cleaners",
    "clean_rows",
    "drop_empty",
    "exact_dedup",
    "length_filter",
    "lorakit_register_cleaners",
    "lowercase",
    "make_cleaner",
    "near_dedup",
    "normalize_whitespace",
    "parse_option_value",
    "row_label",
]

MAX_EXAMPLES = 5
"""How many dropped rows each ``CleanerStats`` keeps as examples."""

OptionValue = int | float | bool | str | None


# --------------------------------------------------------------------------- specs


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def parse_option_value(text: str) -> OptionValue:
    """A command-line option value as bool, int, float or str (`true`, `8`, `0.5`, `text`)."""
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _freeze_options(value: Mapping[str, object] | None) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"cleaner options must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"cleaner option name {key!r} is not a valid name")
    return dict(value)


def _check_name(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"a cleaner name must be a non-empty string, got {value!r}")


def _format_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and parse_option_value(value) != value:
        return f"'{value}'"  # text that would read back as a number, bool or None
    return str(value)


@attrs.frozen
class CleanerSpec:
    """One step of the cleaning chain: a registered cleaner's name and its options.

    Attributes:
        name: the name the cleaner is registered under (``"near_dedup"``).
        options: keyword options passed to the cleaner's factory.
    """

    name: str = attrs.field(validator=_check_name)
    options: Mapping[str, object] = attrs.field(factory=dict, converter=_freeze_options, hash=False)

    @classmethod
    def parse(cls, text: str) -> CleanerSpec:
        """Parse ``"NAME"`` or ``"NAME:KEY=VALUE,KEY=VALUE"`` (the command line's form).

        Values are read as ``int``, ``float``, ``bool`` (``true``/``false``),
        ``None`` (``none``/``null``), or else text (quotes optional).
        ``CleanerSpec.parse("near_dedup:threshold=0.85")`` is
        ``CleanerSpec("near_dedup", {"threshold": 0.85})``.

        Raises:
            ConfigError: the name is empty or an option is not ``KEY=VALUE``.
        """
        name, _, rest = text.strip().partition(":")
        name = name.strip()
        if not name:
            raise ConfigError(
                f"cleaner {text!r} has no name", hint="write it as NAME or NAME:KEY=VALUE,KEY=VALUE"
            )
        options: dict[str, object] = {}
        for part in rest.split(",") if rest.strip() else []:
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                raise ConfigError(
                    f"option {part.strip()!r} of cleaner {name!r} is not KEY=VALUE",
                    hint=f"write it as {name}:KEY=VALUE,KEY=VALUE",
                )
            if key in options:
                raise ConfigError(f"option {key!r} of cleaner {name!r} is given twice")
            options[key] = parse_option_value(value)
        return cls(name, options)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={_format_value(v)}" for k, v in self.options.items())
        return f"{self.name}:{opts}"

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "options": {...}}``, JSON-able."""
        return {"name": self.name, "options": {k: jsonable(v) for k, v in self.options.items()}}


DEFAULT_CLEANERS: tuple[CleanerSpec, ...] = (
    CleanerSpec("normalize_whitespace"),
    CleanerSpec("drop_empty"),
    CleanerSpec("exact_dedup"),
    CleanerSpec("near_dedup"),
)
"""The default chain: normalise whitespace, drop empty rows, drop exact then near duplicates."""


def _factory_options(factory: Callable[..., object]) -> tuple[list[str], bool] | None:
    """Keyword options the factory accepts and whether it takes ``**options``; ``None`` if unknown."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names: list[str] = []
    var_keyword = False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif param.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.append(param.name)
    return names, var_keyword


def make_cleaner(spec: CleanerSpec, registry: Registry[Any]) -> Cleaner:
    """Create the cleaner ``spec`` names, with its options checked.

    Raises:
        ConfigError: the cleaner is not registered, an option is unknown (with
            the closest known option), or an option's value is not valid.
    """
    factory = registry.resolve(spec.name)
    accepted = _factory_options(factory)
    if accepted is not None:
        names, var_keyword = accepted
        if not var_keyword:
            for option in spec.options:
                if option not in names:
                    known = ", ".join(names) or "none"
                    raise ConfigError(
                        f"cleaner {spec.name!r} has no option {option!r}",
                        field=option,
                        hint=did_you_mean(option, names) or f"its options: {known}",
                    )
    try:
        cleaner = factory(**spec.options)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"cleaner {spec.name!r} rejected its options: {exc}") from exc
    if not callable(cleaner):
        raise PluginError(
            f"the factory of cleaner {spec.name!r} returned {type(cleaner).__name__}, not a callable"
        )
    return cleaner  # type: ignore[no-any-return]


def check_cleaners(
    specs: Sequence[CleanerSpec | str], registry: Registry[Any]
) -> tuple[CleanerSpec, ...]:
    """Parse and check a chain without reading any row: every cleaner known, every option valid.

    Call it before reading a large source, so that a typo fails at once.

    Raises:
        ConfigError: an unknown cleaner or option, or a bad option value.
    """
    parsed = tuple(CleanerSpec.parse(s) if isinstance(s, str) else s for s in specs)
    for spec in parsed:
        make_cleaner(spec, registry)
    return parsed


def row_label(row: QARow, position: int) -> str:
    """A short name for a row in messages: its origin, else its id, else its position."""
    if row.origin:
        return row.origin
    if row.id:
        return f"id {row.id}"
    return f"row {position}"


@attrs.define
class _Counter:
    name: str
    options: Mapping[str, object]
    rows_in: int = 0
    rows_out: int = 0
    changed: int = 0
    dropped: Counter[str] = attrs.field(factory=Counter)
    examples: list[tuple[str, str]] = attrs.field(factory=list)

    def freeze(self) -> CleanerStats:
        stats = CleanerStats(
            name=self.name,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            changed=self.changed,
            dropped=dict(self.dropped),
            examples=tuple(self.examples),
            options=dict(self.options),
        )
        if stats.rows_in != stats.rows_out + stats.total_dropped:
            raise AssertionError(
                f"cleaner {self.name!r}: {stats.rows_in} rows in but {stats.rows_out} out "
                f"and {stats.total_dropped} dropped"
            )
        return stats


def clean_rows(
    rows: Iterable[QARow],
    specs: Sequence[CleanerSpec | str],
    registry: Registry[Any],
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[QARow], CleaningReport]:
    """Run ``rows`` through the cleaners of ``specs``, in order.

    Every cleaner is created (and its options checked) before the first row is
    read. Each row passes through the whole chain before the next is read, so
    ``rows`` may be a lazy stream. Every row that enters a step either leaves it
    or is counted as dropped; this is checked for every step.

    Args:
        rows: the rows to clean.
        specs: the chain; a string is parsed with ``CleanerSpec.parse``.
        registry: the cleaners registry (``Registries.cleaners``).
        progress: called with ``1`` after each row (a progress bar's advance).

    Returns:
        The kept rows, in input order, and the ``CleaningReport``.

    Raises:
        ConfigError: an unknown cleaner or option, or a bad option value.
        PluginError: a cleaner returned something other than a row, a Drop or None.
    """
    parsed = [CleanerSpec.parse(s) if isinstance(s, str) else s for s in specs]
    chain = [(spec, make_cleaner(spec, registry)) for spec in parsed]
    counters = [_Counter(spec.name, spec.options) for spec in parsed]
    kept: list[QARow] = []
    rows_in = 0
    for position, row in enumerate(rows, start=1):
        rows_in += 1
        current: QARow | None = row
        for (spec, cleaner), counter in zip(chain, counters, strict=True):
            assert current is not None
            counter.rows_in += 1
            verdict = cleaner(current)
            if isinstance(verdict, QARow):
                counter.rows_out += 1
                if verdict is not current and verdict != current:
                    counter.changed += 1
                current = verdict
                continue
            if verdict is None:
                reason, detail = spec.name, spec.name
            elif isinstance(verdict, Drop):
                reason = verdict.reason
                detail = verdict.detail or reason
            else:
                raise PluginError(
                    f"cleaner {spec.name!r} returned {type(verdict).__name__} for "
                    f"{row_label(current, position)}; expected a QARow, a Drop or None"
                )
            counter.dropped[reason] += 1
            if len(counter.examples) < MAX_EXAMPLES:
                counter.examples.append((row_label(current, position), detail))
            current = None
            break
        if current is not None:
            kept.append(current)
        if progress is not None:
            progress(1)
    steps = tuple(
        attrs.evolve(counter.freeze(), counts=_counts_of(cleaner))
        for counter, (_, cleaner) in zip(counters, chain, strict=True)
    )
    for before, after in itertools.pairwise(steps):
        if before.rows_out != after.rows_in:
            raise AssertionError(
                f"{before.name!r} passed {before.rows_out} rows, {after.name!r} saw {after.rows_in}"
            )
    report = CleaningReport(steps, rows_in=rows_in)
    if report.rows_out != len(kept) or rows_in != len(kept) + report.total_dropped:
        raise AssertionError(f"{rows_in} rows in, {len(kept)} kept, {report.total_dropped} dropped")
    return kept, report


def _counts_of(cleaner: Any) -> dict[str, int]:
    counts = getattr(cleaner, "counts", None)
    if not isinstance(counts, Mapping):
        return {}
    return {str(k): int(v) for k, v in counts.items()}


# --------------------------------------------------------------------------- cleaners

_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def normalize_whitespace() -> Cleaner:
    """Tidy whitespace in question, answer, context, explanation and options.

    Per line: strip both ends and collapse runs of spaces, tabs and other
    non-newline whitespace to one space. Then at most one blank line in a row,
    and no whitespace at either end. Line breaks are kept: they carry lists and
    paragraphs.
    """

    def clean(row: QARow) -> QARow:
        changes: dict[str, Any] = {}
        for name in ("question", "answer", "context", "explanation"):
            value: str = getattr(row, name)
            tidy = _tidy(value)
            if tidy != value:
                changes[name] = tidy
        options = tuple(_tidy(o) for o in row.options)
        if options != row.options:
            changes["options"] = options
        return attrs.evolve(row, **changes) if changes else row

    return clean


def lowercase() -> Cleaner:
    """Lowercase question, answer, options and context. Not in the default chain.

    Case carries meaning in medical text (``BRCA1``, ``mL``, drug and acronym
    names), and a model trained on lowercased answers writes lowercase; use it
    only for a model and tokenizer that are uncased.
    """

    def clean(row: QARow) -> QARow:
        changes: dict[str, Any] = {}
        for name in ("question", "answer", "context"):
            value: str = getattr(row, name)
            if value != value.lower():
                changes[name] = value.lower()
        options = tuple(o.lower() for o in row.options)
        if options != row.options:
            changes["options"] = options
        return attrs.evolve(row, **changes) if changes else row

    return clean


def drop_empty() -> Cleaner:
    """Drop rows whose question (reason ``"empty question"``) or answer (``"empty answer"``) is blank."""

    def clean(row: QARow) -> QARow | Drop:
        if not row.question.strip():
            return Drop("empty question")
        if not row.answer.strip():
            return Drop("empty answer")
        return row

    return clean


_DEDUP_KEYS: tuple[str, ...] = ("question_answer", "question", "answer")


def exact_dedup(*, key: str = "question_answer") -> Cleaner:
    """Drop a row whose normalised key text was already seen; the first copy is kept.

    Texts are compared after ``normalize_text``
    (lowercase, punctuation and extra whitespace removed).

    Args:
        key: what must repeat: ``"question_answer"`` (both), ``"question"`` or ``"answer"``.
    """
    if key not in _DEDUP_KEYS:
        raise ConfigError(
            f"cleaner 'exact_dedup': option 'key' must be one of {', '.join(_DEDUP_KEYS)}, got {key!r}",
            field="key",
            hint=did_you_mean(str(key), _DEDUP_KEYS),
        )
    seen: dict[bytes, str] = {}
    position = 0

    def clean(row: QARow) -> QARow | Drop:
        nonlocal position
        position += 1
        if key == "question":
            text = normalize_text(row.question)
        elif key == "answer":
            text = normalize_text(row.answer)
        else:
            text = normalize_text(row.question) + "\x00" + normalize_text(row.answer)
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        first = seen.get(digest)
        if first is not None:
            what = "question and answer" if key == "question_answer" else key
            return Drop("exact duplicate", detail=f"same {what} as {first}")
        seen[digest] = row_label(row, position)
        return row

    return clean


def near_dedup(
    *, threshold: float = 0.9, num_perm: int = 128, ngram: int = 5, seed: int = 0
) -> Cleaner:
    """Drop near-duplicates of an earlier kept row (MinHash + LSH on question and answer text).

    A row is dropped when the estimated Jaccard similarity of its word
    ``ngram`` shingles (question and answer together, normalised) with an
    earlier kept row is at least ``threshold``. The first copy is kept; the
    report's examples name it.

    Args:
        threshold: Jaccard similarity in ``(0, 1]`` from which two rows are duplicates.
        num_perm: MinHash permutations (more: a more exact estimate, slower).
        ngram: words per shingle.
        seed: seed of the MinHash permutations.
    """
    threshold = require_fraction("near_dedup", "threshold", threshold)
    num_perm = require_int("near_dedup", "num_perm", num_perm, 16)
    ngram = require_int("near_dedup", "ngram", ngram, 1)
    seed = require_int("near_dedup", "seed", seed, 0)
    hasher = MinHasher(num_perm=num_perm, ngram=ngram, seed=seed)
    index = LSHIndex(num_perm, threshold)
    labels: list[str] = []
    position = 0

    def clean(row: QARow) -> QARow | Drop:
        nonlocal position
        position += 1
        signature = hasher.signature(row.question + "\n" + row.answer)
        match = index.first_match(signature)
        if match is not None:
            key, score = match
            return Drop(
                "near duplicate", detail=f"near duplicate (Jaccard ~{score:.2f}) of {labels[key]}"
            )
        index.add(signature)
        labels.append(row_label(row, position))
        return row

    return clean


def length_filter(
    *,
    min_question_chars: int | None = None,
    max_question_chars: int | None = None,
    min_answer_chars: int | None = None,
    max_answer_chars: int | None = None,
    max_prompt_chars: int | None = None,
) -> Cleaner:
    """Drop rows whose question or answer is shorter or longer than a bound, in characters.

    ``max_prompt_chars`` bounds everything the prompt carries: the question, the context
    (a PubMedQA abstract) and the options together, which is what fills ``max_len`` before
    the answer. ``None`` is no bound. The drop reason names the bound (``"answer longer
    than 4000 chars"``).
    """
    prompt_bound = require_optional_int("length_filter", "max_prompt_chars", max_prompt_chars)
    bounds = {
        "min_question_chars": require_optional_int(
            "length_filter", "min_question_chars", min_question_chars
        ),
        "max_question_chars": require_optional_int(
            "length_filter", "max_question_chars", max_question_chars
        ),
        "min_answer_chars": require_optional_int(
            "length_filter", "min_answer_chars", min_answer_chars
        ),
        "max_answer_chars": require_optional_int(
            "length_filter", "max_answer_chars", max_answer_chars
        ),
    }
    for field in ("question", "answer"):
        low, high = bounds[f"min_{field}_chars"], bounds[f"max_{field}_chars"]
        if low is not None and high is not None and low > high:
            raise ConfigError(
                f"cleaner 'length_filter': min_{field}_chars={low} is above max_{field}_chars={high}",
                field=f"min_{field}_chars",
            )
    checks: list[tuple[str, int, int, str]] = []  # field, sign, bound, reason
    for field in ("question", "answer"):
        low, high = bounds[f"min_{field}_chars"], bounds[f"max_{field}_chars"]
        if low is not None:
            checks.append((field, -1, low, f"{field} shorter than {low} chars"))
        if high is not None:
            checks.append((field, 1, high, f"{field} longer than {high} chars"))

    def clean(row: QARow) -> QARow | Drop:
        for field, sign, bound, reason in checks:
            size = len(getattr(row, field))
            if (sign < 0 and size < bound) or (sign > 0 and size > bound):
                return Drop(reason, detail=f"{reason} ({size} chars)")
        if prompt_bound is not None:
            size = len(row.question) + len(row.context) + sum(len(o) for o in row.options)
            if size > prompt_bound:
                reason = f"prompt longer than {prompt_bound} chars"
                return Drop(reason, detail=f"{reason} ({size} chars: question, context, options)")
        return row

    return clean


_BUILTINS: dict[str, Callable[..., Cleaner]] = {
    "normalize_whitespace": normalize_whitespace,
    "lowercase": lowercase,
    "drop_empty": drop_empty,
    "exact_dedup": exact_dedup,
    "near_dedup": near_dedup,
    "length_filter": length_filter,
}


@hookimpl
def lorakit_register_cleaners(register: Register) -> None:
    """Register the built-in cleaners."""
    for name, factory in _BUILTINS.items():
        register(name, factory)
