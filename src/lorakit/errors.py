"""The one error hierarchy of lorakit.

Every error a user can cause (bad data, a bad option, a broken plugin) is a
:class:`LorakitError`. Its message names *where* (file, line or row, field) and
*what to do*; the command line prints it as one red line and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DataError",
    "LorakitError",
    "PluginError",
    "did_you_mean",
]


class LorakitError(Exception):
    """Base class of every error lorakit raises on bad input.

    Args:
        message: what went wrong, in one sentence.
        file: the file (or URI) the problem is in, if any.
        line: 1-based line number (JSON lines, CSV) or row index, if any.
        field: the field or column concerned, if any.
        hint: what the user can do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        """The message with its location prefix and hint, on one line."""
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        elif self.line is not None:
            where = f"row {self.line}: "
        field = f"field {self.field!r}: " if self.field is not None else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{field}{self.message}{hint}"


class DataError(LorakitError):
    """A dataset file or row that cannot be read as question-answer data."""


class ConfigError(LorakitError):
    """A spec, option or command-line value that is not valid."""


class PluginError(LorakitError):
    """A plugin that cannot be loaded, registers a duplicate name or implements an unknown hook."""


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest of ``choices`` to ``name``, or ``None`` when none is close."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f"did you mean {close[0]!r}?" if close else None
