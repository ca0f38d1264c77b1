"""The ``grounded_qa`` template: RAFT-style grounded training rows.

Each row's prompt is :func:`~lorakit.retrieval.grounding.build_prompt` over ``k`` passages of
an index: with probability ``p_gold`` the row's own (gold) passage, placed at a seeded random
position, and distractors that BM25 retrieves for the question from *other* documents. The
answer is the row's answer followed by the gold passage's citation (``... [2]``); when the gold
passage is left out the answer carries no citation (Zhang et al., 2024, RAFT: the model learns
to use the passages when they help and to answer from what it learned when they do not).

No leakage: the template splits the index's documents with the recipe's split
(``split``: ``eval_fraction``, ``test_fraction``, ``group_by`` of ``"group"`` or ``"focus"``,
``seed``; by default :class:`~lorakit.data.splits.SplitSpec`'s) and a training row's
distractors come only from training documents; eval and test rows retrieve from the whole index.
``split`` must equal the recipe's ``data.split`` (set both when they are not the defaults).

The row's gold passages are those whose id is the row's id (``#1``, ``#2``... for a split
answer; at most ``k - 1`` of them, leaving room for a distractor), else the first passage of
its document (``group``). Everything is a function of the
row and ``seed``: ``prompt(row)`` and ``answer(row)`` agree, and runs repeat.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.data.splits import SplitSpec
    from lorakit.protocols import Hit, Message, Passage
    from lorakit.retrieval.index import Index

__all__ = ["GroundedQATemplate", "grounded_qa_template"]

_SPLIT_KEYS = ("eval_fraction", "test_fraction", "group_by", "seed")


@attrs.define
class _Layout:
    hits: list[Hit]
    gold_numbers: list[int]


@attrs.define(kw_only=True)
class GroundedQATemplate:
    """See the module docs. ``index`` is an index folder; it loads on first use."""

    index: str
    k: int = 3
    p_gold: float = 0.8
    seed: int = 0
    system: str | None = None
    split: Mapping[str, Any] = attrs.field(factory=dict)
    candidates: int = 30
    _loaded: Index | None = attrs.field(default=None, init=False, repr=False)
    _train_docs: frozenset[str] = attrs.field(factory=frozenset, init=False, repr=False)
    _by_base: dict[str, list[Passage]] = attrs.field(factory=dict, init=False, repr=False)
    _first_of_doc: dict[str, list[Passage]] = attrs.field(factory=dict, init=False, repr=False)
    _layouts: dict[tuple[str, str, str], _Layout] = attrs.field(
        factory=dict, init=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.index, str) or not self.index:
            raise ConfigError("grounded_qa needs index=FOLDER", field="index")
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k!r}", field="k")
        if not isinstance(self.p_gold, (int, float)) or not 0.0 <= self.p_gold <= 1.0:
            raise ConfigError(f"p_gold must be in [0, 1], got {self.p_gold!r}", field="p_gold")
        for key in self.split:
            if key not in _SPLIT_KEYS:
                raise ConfigError(
                    f"unknown split option {key!r}",
                    field=f"split.{key}",
                    hint=did_you_mean(key, _SPLIT_KEYS) or f"options: {', '.join(_SPLIT_KEYS)}",
                )
        if self.split.get("group_by", "group") not in ("group", "focus"):
            raise ConfigError(
                "grounded_qa splits the index's documents by 'group' or 'focus' only",
                field="split.group_by",
            )

    def _split_spec(self) -> SplitSpec:
        from lorakit.data.splits import SplitSpec

        return SplitSpec(**self.split)

    def _part(self, group: str | None, focus: str | None, question: str) -> str:
        from lorakit.data.rows import QARow
        from lorakit.data.splits import split_rows

        row = QARow(question=question or "?", answer="", group=group, focus=focus)
        splits = split_rows([row], self._split_spec())
        return "train" if splits.train else "eval" if splits.eval else "test"

    def _load(self) -> Index:
        if self._loaded is None:
            from lorakit.retrieval import load_index

            index = load_index(self.index)
            docs = {p.doc_id: p.title for p in index.passages}
            self._train_docs = frozenset(
                doc for doc, title in docs.items() if self._part(doc, title or None, doc) == "train"
            )
            for passage in index.passages:
                base = passage.passage_id.split("#", 1)[0]
                self._by_base.setdefault(base, []).append(passage)
                self._first_of_doc.setdefault(passage.doc_id, [passage])
            self._loaded = index
        return self._loaded

    def _rng(self, row: QARow) -> random.Random:
        digest = hashlib.blake2b(
            f"{self.seed}\x00{row.id}\x00{row.question}".encode(), digest_size=8
        ).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def layout(self, row: QARow) -> tuple[list[Hit], list[int]]:
        """The row's passages (as hits, in prompt order) and the numbers of its gold passages."""
        key = (row.id, row.question, row.group or "")
        if key not in self._layouts:
            self._layouts[key] = self._make_layout(row)
        found = self._layouts[key]
        return found.hits, found.gold_numbers

    def _make_layout(self, row: QARow) -> _Layout:
        from lorakit.protocols import Hit

        index = self._load()
        rng = self._rng(row)
        own = row.group or row.id
        gold = list(self._by_base.get(row.id, ())) or [p for p in self._first_of_doc.get(own, ())]
        gold = gold[: max(1, self.k - 1)]  # room for at least one distractor
        use_gold = bool(gold) and rng.random() < self.p_gold
        training = self._part(row.group, row.focus, row.question) == "train"
        wanted = self.k - (len(gold) if use_gold else 0)
        distractors: list[Hit] = []
        for position, score in index.lexical.search(row.question, self.candidates + self.k):
            if len(distractors) >= wanted:
                break
            passage = index.passages[position]
            if passage.doc_id == own or (training and passage.doc_id not in self._train_docs):
                continue
            distractors.append(Hit(passage=passage, score=score, scores={"bm25": score}))
        hits = list(distractors)
        gold_hits = [Hit(passage=p, score=0.0) for p in gold] if use_gold else []
        if gold_hits:
            at = rng.randint(0, len(hits))
            hits[at:at] = gold_hits
        numbers = [hits.index(h) + 1 for h in gold_hits]
        return _Layout(hits=hits, gold_numbers=numbers)

    def prompt(self, row: QARow) -> list[Message]:
        """The system message (if any) and the grounded user message."""
        from lorakit.retrieval.grounding import build_prompt

        hits, _ = self.layout(row)
        messages: list[Message] = []
        if self.system:
            messages.append({"role": "system", "content": self.system.strip()})
        messages.append({"role": "user", "content": build_prompt(row.question, hits)})
        return messages

    def answer(self, row: QARow) -> str:
        """The answer, citing the gold passages when they are in the prompt."""
        _, numbers = self.layout(row)
        text = row.answer.strip()
        return f"{text} {''.join(f'[{n}]' for n in numbers)}" if numbers else text


_OPTIONS = ("index", "k", "p_gold", "seed", "system", "split", "candidates")


def grounded_qa_template(**options: object) -> GroundedQATemplate:
    """Create a :class:`GroundedQATemplate` (what ``"grounded_qa"`` is registered as).

    Raises:
        ConfigError: an unknown option or a bad value.
    """
    for name in options:
        if name not in _OPTIONS:
            raise ConfigError(
                f"unknown option {name!r} for template 'grounded_qa'",
                field=name,
                hint=did_you_mean(name, _OPTIONS) or f"options: {', '.join(_OPTIONS)}",
            )
    values: dict[str, Any] = dict(options)
    return GroundedQATemplate(**values)
