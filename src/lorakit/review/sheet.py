"""The review sheet: generated answers read from a run or a file, and a stratified sample of them.

::

    from lorakit.review import ReviewSheet

    sheet = ReviewSheet.open("runs/medqa_phi3-...", sample=50, seed=0)
    sheet.items[0].question, sheet.items[0].answer, sheet.folder   # .../eval/review-test_answers_adapter

A sheet is drawn once and written to ``sheet.json`` in its folder (beside the answers, inside the
run directory); opening it again reads it back, so every reviewer and every session grades the
same items. Asking for another ``--sample`` or ``--seed`` than the sheet was drawn with is refused.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lorakit.errors import ConfigError, DataError

__all__ = ["ReviewItem", "ReviewSheet", "find_answers", "read_answers", "stratified_sample"]

SHEET_FILE = "sheet.json"
_CATEGORY_KEYS = ("category", "qtype", "question_type", "type")
_REFERENCE_KEYS = ("reference", "answer")


def _dict_tuple(value: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    return tuple(value)


def _item_tuple(value: Iterable[ReviewItem]) -> tuple[ReviewItem, ...]:
    return tuple(value)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class ReviewItem:
    """One generated answer to grade, with what the reviewer sees beside it.

    Attributes:
        id: the row's id in the answers file.
        question: the question asked.
        answer: the generated answer.
        reference: the reference answer (``""`` when the file has none).
        category: the question type the sample is stratified by (``""`` when unknown).
        citations: the answer's resolved citations (``n``, ``doc_id``, ``url``, ``text``, ...).
        verdicts: the guards' verdicts (``guard``, ``decision``, ``reason``, ``message``).
        scores: automatic metric scores stored with the answer (never shown to reviewers).
    """

    id: str
    question: str
    answer: str
    reference: str = ""
    category: str = ""
    citations: tuple[dict[str, Any], ...] = attrs.field(default=(), converter=_dict_tuple)
    verdicts: tuple[dict[str, Any], ...] = attrs.field(default=(), converter=_dict_tuple)
    scores: Mapping[str, float] = attrs.field(factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, file: str, line: int) -> ReviewItem:
        """An item from one line of ``lorakit eval`` or ``lorakit generate`` output.

        ``lorakit generate`` keeps the input's other fields under ``input``: the reference and
        the category are looked for there too (``reference`` or ``answer``; ``category``,
        ``qtype``, ``question_type`` or ``type``).

        Raises:
            DataError: a missing or non-text ``id``, ``question`` or ``answer``, or a
                malformed ``citations``, ``verdicts`` or ``scores``.
        """
        given = row.get("input")
        extra: Mapping[str, Any] = given if isinstance(given, Mapping) else {}

        def text(name: str, value: Any, *, required: bool) -> str:
            if value is None and not required:
                return ""
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "id":
                return str(value)
            if not isinstance(value, str) or (required and not value.strip()):
                raise DataError(
                    f"needs a non-empty text, got {value!r}",
                    file=file,
                    line=line,
                    field=name,
                    hint="review reads the JSON lines of `lorakit eval` or `lorakit generate`",
                )
            return value

        reference = row.get("reference")
        if reference is None:
            reference = next((extra[k] for k in _REFERENCE_KEYS if k in extra), None)
        category = next((row[k] for k in _CATEGORY_KEYS if row.get(k)), None)
        if category is None:
            category = next((extra[k] for k in _CATEGORY_KEYS if extra.get(k)), None)
        return cls(
            id=text("id", row.get("id"), required=True),
            question=text("question", row.get("question"), required=True),
            answer=text("answer", row.get("answer", ""), required=False),
            reference=text("reference", reference, required=False),
            category=str(category) if category is not None else "",
            citations=_dicts(row.get("citations"), "citations", file, line),
            verdicts=_dicts(row.get("verdicts"), "verdicts", file, line),
            scores=_scores(row.get("scores"), file, line),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (what ``sheet.json`` stores)."""
        return {
            **attrs.asdict(self),
            "citations": list(self.citations),
            "verdicts": list(self.verdicts),
        }


def _dicts(value: Any, name: str, file: str, line: int) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataError(
            "must be a list of objects",
            file=file,
            line=line,
            field=name,
            hint="write the answers with `lorakit generate` or `lorakit eval`",
        )
    return tuple(value)


def _scores(value: Any, file: str, line: int) -> dict[str, float]:
    if value is None:
        return {}
    ok = isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    )
    if not ok:
        raise DataError("must map metric names to numbers", file=file, line=line, field="scores")
    return {str(k): float(v) for k, v in value.items()}


def find_answers(target: Path) -> Path:
    """The answers file of ``target``: the file itself, or the one under a run's ``eval/``.

    In a run directory, ``eval/test_answers_adapter.jsonl`` is taken when present, else the
    only ``*_answers_*.jsonl`` there.

    Raises:
        ConfigError: no such path, or a run directory with no answers or several.
    """
    if target.is_file():
        return target
    if not target.is_dir():
        raise ConfigError(
            "no such file or run directory",
            file=str(target),
            hint="give a run directory or a JSON-lines answers file",
        )
    folder = target / "eval"
    preferred = folder / "test_answers_adapter.jsonl"
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*_answers_*.jsonl")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(
            "the run has no generated answers under eval/",
            file=str(target),
            hint="run `lorakit eval RUN_DIR --split test --metric token_f1` first, "
            "or give a file written by `lorakit generate`",
        )
    raise ConfigError(
        f"the run has several answer files: {', '.join(p.name for p in found)}",
        file=str(target),
        hint="name the one to review, e.g. RUN_DIR/eval/" + found[0].name,
    )


def read_answers(path: Path) -> list[ReviewItem]:
    """Every row of a JSON-lines answers file as a :class:`ReviewItem`.

    Raises:
        DataError: an unreadable file, a line that is not a JSON object, a bad field, or an
            id that occurs twice (each names the line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the answers: {error}", file=str(path)) from None
    items: list[ReviewItem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(
                "not JSON", file=str(path), line=number, hint="each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise DataError("not a JSON object", file=str(path), line=number)
        item = ReviewItem.from_row(row, file=str(path), line=number)
        if item.id in seen:
            raise DataError(
                f"id {item.id!r} already on line {seen[item.id]}",
                file=str(path),
                line=number,
                field="id",
                hint="each answer needs its own id",
            )
        seen[item.id] = number
        items.append(item)
    if not items:
        raise DataError("no answers in the file", file=str(path))
    return items


def stratified_sample(items: Sequence[ReviewItem], size: int, seed: int) -> list[ReviewItem]:
    """``size`` items drawn without replacement, stratified by :attr:`ReviewItem.category`.

    Each category gets a share proportional to its size (largest remainders, ties broken by
    category name), and at least one item when ``size`` is at least the number of categories;
    items within a category are drawn with ``random.Random(seed)``. The result is shuffled with
    the same generator, so the reviewer does not meet one category after another. All items
    (shuffled) when ``size`` is at least their number.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"must be a whole number >= 1, got {size!r}", field="--sample")
    rng = random.Random(seed)
    groups: dict[str, list[ReviewItem]] = {}
    for item in items:
        groups.setdefault(item.category, []).append(item)
    if size >= len(items):
        chosen = list(items)
    else:
        names = sorted(groups)
        quota = {n: size * len(groups[n]) / len(items) for n in names}
        counts = {n: int(quota[n]) for n in names}
        if size >= len(names):
            for n in names:
                counts[n] = max(counts[n], 1)
        by_remainder = sorted(names, key=lambda n: (-(quota[n] - int(quota[n])), n))
        while sum(counts.values()) < size:
            for n in by_remainder:
                if sum(counts.values()) < size and counts[n] < len(groups[n]):
                    counts[n] += 1
        while sum(counts.values()) > size:  # minimums pushed it over: trim the largest
            largest = max(names, key=lambda n: (counts[n], n))
            counts[largest] -= 1
        chosen = [item for n in names for item in rng.sample(groups[n], counts[n])]
    rng.shuffle(chosen)
    return chosen


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@attrs.frozen(kw_only=True)
class ReviewSheet:
    """A sample of answers to grade, stored in ``folder/sheet.json``.

    Attributes:
        folder: where the sheet, the grades and the exports live.
        source: the answers file it was drawn from.
        source_sha256: the answers file's hash when the sheet was drawn.
        sample: the size asked for; seed: the sampling seed.
        items: the items, in the order reviewers see them.
        notes: what a reviewer should know (the answers changed since the sheet was drawn).
    """

    folder: Path
    source: Path
    source_sha256: str
    sample: int
    seed: int
    items: tuple[ReviewItem, ...] = attrs.field(converter=_item_tuple)
    notes: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    @property
    def path(self) -> Path:
        """``folder/sheet.json``."""
        return self.folder / SHEET_FILE

    def item(self, item_id: str) -> ReviewItem | None:
        """The item of this id, or ``None``."""
        return next((i for i in self.items if i.id == item_id), None)

    @staticmethod
    def folder_for(answers: Path) -> Path:
        """Where the sheet of an answers file lives: ``review-<stem>/`` beside it."""
        return answers.parent / f"review-{answers.stem}"

    @classmethod
    def open(
        cls, target: str | Path, *, sample: int | None = None, seed: int | None = None
    ) -> ReviewSheet:
        """The sheet of a run directory or answers file, drawn now or read back.

        Args:
            target: a run directory (its ``eval/`` answers) or a JSON-lines answers file.
            sample: answers to draw (default 50); when the sheet exists, ``None`` or the size
                it was drawn with.
            seed: the sampling seed (default 0); the same rule.

        Raises:
            ConfigError: ``sample`` or ``seed`` differ from the existing sheet's.
            DataError: the answers or the sheet cannot be read.
        """
        answers = find_answers(Path(target))
        folder = cls.folder_for(answers)
        existing = folder / SHEET_FILE
        if existing.exists():
            sheet = cls.read(folder)
            for name, asked, drawn in (
                ("--sample", sample, sheet.sample),
                ("--seed", seed, sheet.seed),
            ):
                if asked is not None and asked != drawn:
                    raise ConfigError(
                        f"the sheet was drawn with {name} {drawn}, not {asked}",
                        file=str(existing),
                        field=name,
                        hint=f"leave {name} out to continue it, or move {folder} away to draw anew",
                    )
            if _digest(answers) != sheet.source_sha256:
                note = f"{answers} changed since the sheet was drawn: the sheet keeps the answers as drawn"
                return attrs.evolve(sheet, notes=(*sheet.notes, note))
            return sheet
        size, chosen_seed = sample or 50, 0 if seed is None else seed
        items = stratified_sample(read_answers(answers), size, chosen_seed)
        sheet = cls(
            folder=folder,
            source=answers,
            source_sha256=_digest(answers),
            sample=size,
            seed=chosen_seed,
            items=items,
        )
        sheet.write()
        return sheet

    def write(self) -> None:
        """Write ``sheet.json`` (atomically; the folder is created)."""
        from lorakit._fs import fs_error, write_json_atomic

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise fs_error(error, "create the review folder", self.folder) from None
        write_json_atomic(
            self.path,
            {
                "source": str(self.source),
                "source_sha256": self.source_sha256,
                "sample": self.sample,
                "seed": self.seed,
                "items": [item.to_dict() for item in self.items],
            },
        )

    @classmethod
    def read(cls, folder: Path) -> ReviewSheet:
        """The sheet stored in ``folder``.

        Raises:
            LorakitError: no readable ``sheet.json`` there.
        """
        from lorakit._fs import read_json_object

        path = folder / SHEET_FILE
        data = read_json_object(path, "the review sheet")
        try:
            items = [
                ReviewItem.from_row(row, file=str(path), line=i)
                for i, row in enumerate(data["items"], 1)
            ]
            return cls(
                folder=folder,
                source=Path(data["source"]),
                source_sha256=str(data["source_sha256"]),
                sample=int(data["sample"]),
                seed=int(data["seed"]),
                items=items,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(
                f"the review sheet is damaged ({error!r})",
                file=str(path),
                hint="move the review folder away and draw a new sheet",
            ) from None
