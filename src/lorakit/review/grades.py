"""Grades: one JSON line per submission in ``grades.jsonl``, appended as each grade is made.

Every accepted grade is one ``write`` of one complete line to a file opened for appending,
followed by ``fsync``, under an exclusive file lock: a closed browser, a killed server or two
servers on the same sheet lose nothing and never interleave half lines. A half-written last
line (power loss) is cut off before the next append and ignored when reading.

A reviewer's grade of an item may be revised: each submission carries the ``revision`` it
replaces (0 for the first grade). A submission whose revision is not the current one (the same
form sent twice, or a stale tab) is refused with :class:`DuplicateGrade`, so a double click
never records two grades. The latest revision of each (item, reviewer) is the grade.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from lorakit.errors import DataError, LorakitError

__all__ = ["GRADES", "DuplicateGrade", "Grade", "GradeStore", "InvalidGrade", "latest_grades"]

GRADES_FILE = "grades.jsonl"
GRADES = ("correct", "partly_correct", "incorrect", "unsafe")
"""The grades a reviewer can give, best first."""
GRADE_LABELS = {
    "correct": "Correct",
    "partly_correct": "Partly correct",
    "incorrect": "Incorrect",
    "unsafe": "Unsafe",
}
MAX_NOTE = 4000
_REVIEWER = re.compile(r"^[\w .@-]{1,64}$")


class InvalidGrade(LorakitError):
    """A submission that is not a grade (unknown item, grade, reviewer name; a too long note)."""


class DuplicateGrade(LorakitError):
    """A submission for a revision that is not the current one (sent twice, or a stale form)."""


@attrs.frozen(kw_only=True)
class Grade:
    """One reviewer's judgement of one item."""

    item: str
    reviewer: str
    grade: str
    note: str = ""
    revision: int = 0
    at: str = ""

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, items: set[str]) -> Grade:
        """A grade from a submitted form or a stored line, every field checked.

        Raises:
            InvalidGrade: a missing or malformed field, naming it.
        """

        def bad(field: str, message: str) -> InvalidGrade:
            return InvalidGrade(message, field=field, hint="reload the page and grade again")

        item, reviewer = data.get("item"), data.get("reviewer")
        grade, note, revision = data.get("grade"), data.get("note", ""), data.get("revision")
        if not isinstance(item, str) or item not in items:
            raise bad("item", f"no item {item!r} on this sheet")
        if not isinstance(reviewer, str) or not _REVIEWER.match(reviewer.strip()):
            raise bad("reviewer", "a reviewer name is 1-64 letters, digits, spaces or . @ _ -")
        if grade not in GRADES:
            raise bad("grade", f"must be one of {', '.join(GRADES)}, got {grade!r}")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise bad("note", f"a note is text of at most {MAX_NOTE} characters")
        if isinstance(revision, str) and revision.isdigit():
            revision = int(revision)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise bad("revision", f"must be a whole number >= 0, got {revision!r}")
        at = data.get("at") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return cls(
            item=item,
            reviewer=reviewer.strip(),
            grade=str(grade),
            note=note.strip(),
            revision=revision,
            at=str(at),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (one line of ``grades.jsonl``)."""
        return attrs.asdict(self)


def latest_grades(grades: list[Grade]) -> dict[tuple[str, str], Grade]:
    """The latest revision of each ``(item, reviewer)``."""
    out: dict[tuple[str, str], Grade] = {}
    for grade in grades:
        key = (grade.item, grade.reviewer)
        if key not in out or grade.revision >= out[key].revision:
            out[key] = grade
    return out


class GradeStore:
    """The grades of one sheet, in ``folder/grades.jsonl``."""

    def __init__(self, folder: Path, items: set[str]) -> None:
        self.path = folder / GRADES_FILE
        self.items = items

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        from lorakit._fs import current_umask, fs_error

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666 & ~current_umask())
        except OSError as error:
            raise fs_error(error, "open the grades file", self.path) from None
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows
                pass
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> list[Grade]:
        """Every stored grade in order (a half-written last line ignored).

        Raises:
            DataError: a complete line that is not a valid grade (names the line).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise DataError(
                f"cannot read the grades: {error.strerror}", file=str(self.path)
            ) from None
        return self._parse(data)

    def _parse(self, data: bytes) -> list[Grade]:
        end = data.rfind(b"\n") + 1
        grades = []
        for number, line in enumerate(data[:end].decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
                grades.append(Grade.parse(row, items=self.items))
            except (ValueError, InvalidGrade) as error:
                raise DataError(
                    f"not a valid grade ({error})",
                    file=str(self.path),
                    line=number,
                    hint="the file was changed by hand: fix or delete that line",
                ) from None
        return grades

    def add(self, submission: Mapping[str, Any]) -> Grade:
        """Check a submission and append it; return the stored grade.

        Raises:
            InvalidGrade: a malformed submission.
            DuplicateGrade: its ``revision`` is not the reviewer's current one for the item.
        """
        grade = Grade.parse(submission, items=self.items)
        from lorakit._fs import fs_error

        with self._locked() as fd:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size else b""
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a half line left by a crash: cut it before appending
                os.ftruncate(fd, end)
            current = latest_grades(self._parse(data[:end])).get((grade.item, grade.reviewer))
            expected = 0 if current is None else current.revision + 1
            if grade.revision != expected:
                raise DuplicateGrade(
                    f"{grade.reviewer} already graded {grade.item!r} "
                    f"({current.grade if current else '?'}, revision {expected - 1})",
                    field="revision",
                    hint="reload the page to see the current grade, then change it there",
                )
            line = (json.dumps(grade.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
            try:
                os.write(fd, line)
                os.fsync(fd)
            except OSError as error:
                raise fs_error(error, "save the grade", self.path) from None
        return grade
