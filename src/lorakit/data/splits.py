"""Grouped, seeded train/eval/test splits and benchmark-overlap checks.

Rows are split by *group*, never by row: every row of a group lands in the same
split, so near-identical rows of one document (or one disease) cannot sit on
both sides of the train/eval boundary. A group's split is decided by a seeded
stable hash of its key alone, so it does not change when rows are added,
removed or reordered elsewhere in the data.

``benchmark_overlap`` reports how many questions of an evaluation benchmark
appear in the training rows, exactly or nearly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from lorakit.data.cleaners import row_label
from lorakit.data.minhash import LSHIndex, MinHasher, normalize_text
from lorakit.data.rows import QARow
from lorakit.errors import ConfigError, did_you_mean

__all__ = [
    "GROUP_BY",
    "BenchmarkOverlap",
    "GroupBy",
    "OverlapReport",
    "SplitSpec",
    "Splits",
    "benchmark_overlap",
    "group_key",
    "group_keys",
    "split_rows",
]

GroupBy = Literal["group", "focus", "question", "id", "none"]
GROUP_BY: tuple[str, ...] = ("group", "focus", "question", "id", "none")
"""The keys ``SplitSpec.group_by`` accepts; all but ``"none"`` combine with ``+``."""

SPLIT_NAMES = ("train", "eval", "test")
MAX_EXAMPLES = 5


def _check_fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(
            f"{attribute.name} must be a number in [0, 1), got {value!r}",
            field=attribute.name,
            hint="a fraction of the rows, e.g. 0.05",
        )


def _group_parts(value: object) -> tuple[str, ...]:
    """The keys of a ``group_by`` value (``"group+focus"`` -> ``("group", "focus")``), checked."""
    if not isinstance(value, str):
        raise ConfigError(f"group_by must be text, got {value!r}", field="group_by")
    parts = tuple(part.strip() for part in value.split("+"))
    for part in parts:
        if part not in GROUP_BY:
            raise ConfigError(
                f"group_by must be one of {', '.join(GROUP_BY)} or keys joined by '+' "
                f"(group+focus), got {value!r}",
                field="group_by",
                hint=did_you_mean(part, GROUP_BY),
            )
    if len(parts) > 1 and "none" in parts:
        raise ConfigError(f"group_by {value!r}: 'none' cannot be combined", field="group_by")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"group_by {value!r} repeats a key", field="group_by")
    return parts


def _check_group_by(_: object, __: attrs.Attribute[str], value: str) -> None:
    _group_parts(value)


def _check_seed(_: object, __: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"seed must be an integer, got {value!r}", field="seed")


@attrs.frozen
class SplitSpec:
    """How rows are split into train, eval and test.

    Attributes:
        eval_fraction: the share of groups (and so, about, of rows) for eval, in ``[0, 1)``.
        test_fraction: the share for test, in ``[0, 1)``; with ``eval_fraction`` below 1.
        group_by: which rows must stay together:

            - ``"group"``: ``QARow.group`` (a MedQuAD document id);
            - ``"focus"``: ``QARow.focus`` compared normalised (lowercase,
              punctuation ignored), the entity a question is about. The safer
              choice for MedQuAD, where one disease has documents in several
              collections;
            - ``"question"``: the normalised question text;
            - ``"id"``: ``QARow.id``;
            - ``"none"``: every row on its own (a row-level split; it leaks
              whenever rows are related, use it only for independent items);
            - keys joined by ``+``, such as ``"group+focus"``: rows that share
              *any* of the keys stay together (the connected groups). The
              safest choice for MedQuAD: a focus spans several documents, and
              a few documents cover several foci.

            A row whose chosen key is missing (``None`` or empty) falls back to
            its normalised question text, so that at least repeated questions
            stay together. With combined keys, a row falls back only when all
            of its keys are missing.
        seed: changes which groups go where; equal seeds give equal splits.
    """

    eval_fraction: float = attrs.field(default=0.05, validator=_check_fraction)
    test_fraction: float = attrs.field(default=0.05, validator=_check_fraction)
    group_by: str = attrs.field(default="group", validator=_check_group_by)
    seed: int = attrs.field(default=0, validator=_check_seed)

    def __attrs_post_init__(self) -> None:
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"eval_fraction + test_fraction must be below 1, got "
                f"{self.eval_fraction} + {self.test_fraction}",
                field="eval_fraction",
                hint="leave some rows for training",
            )


def _raw_key(row: QARow, group_by: str) -> str | None:
    key: str | None
    if group_by == "group":
        key = row.group.strip() if row.group else None
    elif group_by == "focus":
        key = normalize_text(row.focus) if row.focus else None
    elif group_by == "question":
        key = normalize_text(row.question)
    elif group_by == "id":
        key = row.id.strip() or None
    elif group_by == "none":
        key = "\x00".join(
            (row.origin, row.id, normalize_text(row.question), normalize_text(row.answer))
        )
    else:
        raise ConfigError(
            f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}",
            field="group_by",
            hint=did_you_mean(group_by, GROUP_BY),
        )
    return key or None


def group_key(row: QARow, group_by: str) -> str:
    """The key of ``row`` under one ``group_by`` key (not a ``+`` combination).

    A missing key (``None`` or blank) falls back to the normalised question text.
    """
    return _raw_key(row, group_by) or normalize_text(row.question)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        root = self.parent.setdefault(key, key)
        while root != self.parent[root]:
            root = self.parent[root]
        while key != root:  # path compression
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller key is the root: a component's name is its smallest key,
            # whatever the order rows arrive in.
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def group_keys(rows: Sequence[QARow], group_by: str) -> list[str]:
    """The group of every row under ``group_by``, one key per row.

    For a single key this is ``group_key`` per row. For keys joined by
    ``+`` the rows sharing any key form one group, named by its smallest key,
    so the name depends only on the group's members, not on their order.
    """
    parts = _group_parts(group_by)
    if len(parts) == 1:
        return [group_key(row, parts[0]) for row in rows]
    forest = _UnionFind()
    row_keys: list[list[str]] = []
    for row in rows:
        keys = [f"{part}\x00{key}" for part in parts if (key := _raw_key(row, part))]
        if not keys:
            keys = [f"question\x00{normalize_text(row.question)}"]
        for key in keys[1:]:
            forest.union(keys[0], key)
        forest.find(keys[0])
        row_keys.append(keys)
    return [forest.find(keys[0]) for keys in row_keys]


def _unit_hash(seed: int, key: str) -> float:
    """A stable hash of ``(seed, key)`` in ``[0, 1)``."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@attrs.frozen
class Splits:
    """Rows split into train, eval and test, each in input order.

    Attributes:
        train: the training rows.
        eval: the rows for evaluation during training (early stopping, best checkpoint).
        test: held-out rows for the final evaluation.
        spec: the ``SplitSpec`` that made them.
    """

    train: tuple[QARow, ...]
    eval: tuple[QARow, ...]
    test: tuple[QARow, ...]
    spec: SplitSpec = SplitSpec()

    def split(self, name: str) -> tuple[QARow, ...]:
        """The rows of split ``name`` (``"train"``, ``"eval"`` or ``"test"``)."""
        if name not in SPLIT_NAMES:
            raise ConfigError(
                f"unknown split {name!r}",
                hint=did_you_mean(name, SPLIT_NAMES) or "train, eval, test",
            )
        rows: tuple[QARow, ...] = getattr(self, name)
        return rows

    def groups(self, name: str) -> int:
        """How many distinct groups split ``name`` holds."""
        return len(set(group_keys(self.split(name), self.spec.group_by)))

    def to_dict(self) -> dict[str, Any]:
        """Rows and groups per split, and the spec, JSON-able."""
        out: dict[str, Any] = {"spec": attrs.asdict(self.spec)}
        for name in SPLIT_NAMES:
            out[name] = {"rows": len(self.split(name)), "groups": self.groups(name)}
        return out

    def summary(self) -> str:
        """One line: rows and groups per split."""
        parts = [
            f"{name} {len(self.split(name)):,} rows / {self.groups(name):,} groups"
            for name in SPLIT_NAMES
        ]
        return "; ".join(parts) + f" (grouped by {self.spec.group_by}, seed {self.spec.seed})"


def split_rows(rows: Iterable[QARow], spec: SplitSpec | None = None) -> Splits:
    """Split ``rows`` into train, eval and test by group.

    Each group key (see ``group_key``) is hashed with the seed to a number
    ``u`` in ``[0, 1)``; the group goes to test when ``u < test_fraction``, to
    eval when ``u < test_fraction + eval_fraction``, else to train. The
    fractions are therefore met in expectation over groups: with few or very
    unequal groups the row shares can differ from them (and a small split can
    be empty). In exchange the assignment of a group never depends on other
    rows or on the order of the input.

    Args:
        rows: the rows, usually cleaned.
        spec: how to split; the default ``SplitSpec`` if ``None``.
    """
    spec = SplitSpec() if spec is None else spec
    rows = list(rows)
    test_cut = spec.test_fraction
    eval_cut = spec.test_fraction + spec.eval_fraction
    assigned: dict[str, int] = {}
    parts: tuple[list[QARow], list[QARow], list[QARow]] = ([], [], [])
    for row, key in zip(rows, group_keys(rows, spec.group_by), strict=True):
        index = assigned.get(key)
        if index is None:
            u = _unit_hash(spec.seed, key)
            index = 2 if u < test_cut else 1 if u < eval_cut else 0
            assigned[key] = index
        parts[index].append(row)
    return Splits(tuple(parts[0]), tuple(parts[1]), tuple(parts[2]), spec)


# --------------------------------------------------------------------------- overlap


@attrs.frozen
class BenchmarkOverlap:
    """How much of one benchmark's questions appear in the training rows.

    Attributes:
        name: the benchmark's name.
        questions: benchmark questions checked (blank ones are skipped).
        exact: questions whose normalised text equals a training question's.
        near: further questions (not exact) with a training question of
            estimated Jaccard similarity at least the threshold.
        exact_examples: up to 5 ``(benchmark origin, train origin)`` pairs.
        near_examples: up to 5 ``(benchmark origin, train origin)`` pairs.
    """

    name: str
    questions: int
    exact: int
    near: int
    exact_examples: tuple[tuple[str, str], ...] = ()
    near_examples: tuple[tuple[str, str], ...] = ()

    @property
    def overlapping(self) -> int:
        """Questions found in training, exactly or nearly."""
        return self.exact + self.near

    @property
    def fraction(self) -> float:
        """The share of questions found in training (0 for an empty benchmark)."""
        return self.overlapping / self.questions if self.questions else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field and the overlapping share."""
        return {
            "name": self.name,
            "questions": self.questions,
            "exact": self.exact,
            "near": self.near,
            "fraction": self.fraction,
            "exact_examples": [list(e) for e in self.exact_examples],
            "near_examples": [list(e) for e in self.near_examples],
        }


@attrs.frozen
class OverlapReport:
    """Benchmark questions found in the training rows, per benchmark.

    Attributes:
        threshold: the Jaccard similarity from which a question is a near copy.
        train_questions: distinct normalised training questions compared against.
        benchmarks: one ``BenchmarkOverlap`` per benchmark, in the order given.
    """

    threshold: float
    train_questions: int
    benchmarks: tuple[BenchmarkOverlap, ...]

    def __getitem__(self, name: str) -> BenchmarkOverlap:
        for bench in self.benchmarks:
            if bench.name == name:
                return bench
        raise KeyError(name)

    @property
    def clean(self) -> bool:
        """``True`` when no benchmark question was found in training."""
        return all(b.overlapping == 0 for b in self.benchmarks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: threshold, training size and every benchmark."""
        return {
            "threshold": self.threshold,
            "train_questions": self.train_questions,
            "benchmarks": {b.name: b.to_dict() for b in self.benchmarks},
        }


def benchmark_overlap(
    train: Sequence[QARow],
    benchmarks: Mapping[str, Sequence[QARow]],
    *,
    threshold: float = 0.8,
    ngram: int = 3,
    num_perm: int = 128,
    seed: int = 0,
) -> OverlapReport:
    """Count the benchmark questions that also appear in ``train``, exactly or nearly.

    Only question text is compared (not options or answers), normalised as in
    ``normalize_text``. *Exact*: the normalised texts
    are equal. *Near*: the MinHash estimate of the Jaccard similarity of word
    ``ngram`` shingles is at least ``threshold``; a question is counted once,
    as exact when it is both.

    Args:
        train: the training rows.
        benchmarks: benchmark name -> its rows.
        threshold: Jaccard similarity in ``(0, 1]`` from which a question is a near copy.
        ngram: words per shingle; questions shorter than that are one shingle.
        num_perm: MinHash permutations.
        seed: seed of the MinHash permutations.

    Raises:
        ConfigError: ``threshold``, ``ngram`` or ``num_perm`` out of range.
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not 0 < threshold <= 1
    ):
        raise ConfigError(f"threshold must be in (0, 1], got {threshold!r}", field="threshold")
    for name, value, minimum in (("ngram", ngram, 1), ("num_perm", num_perm, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)

    first_origin: dict[str, str] = {}
    for position, row in enumerate(train, start=1):
        text = normalize_text(row.question)
        if text and text not in first_origin:
            first_origin[text] = row_label(row, position)
    train_texts = list(first_origin)
    hasher = MinHasher(num_perm=num_perm, ngram=ngram, seed=seed)
    index = LSHIndex(num_perm, float(threshold))
    index.add_many(hasher.signatures(train_texts))

    results: list[BenchmarkOverlap] = []
    for name, rows in benchmarks.items():
        questions = exact = near = 0
        exact_examples: list[tuple[str, str]] = []
        near_examples: list[tuple[str, str]] = []
        for position, row in enumerate(rows, start=1):
            text = normalize_text(row.question)
            if not text:
                continue
            questions += 1
            origin = first_origin.get(text)
            if origin is not None:
                exact += 1
                if len(exact_examples) < MAX_EXAMPLES:
                    exact_examples.append((row_label(row, position), origin))
                continue
            match = index.best_match(hasher.signature(text))
            if match is not None:
                near += 1
                if len(near_examples) < MAX_EXAMPLES:
                    near_examples.append(
                        (row_label(row, position), first_origin[train_texts[match[0]]])
                    )
        results.append(
            BenchmarkOverlap(
                name, questions, exact, near, tuple(exact_examples), tuple(near_examples)
            )
        )
    return OverlapReport(float(threshold), len(train_texts), tuple(results))
