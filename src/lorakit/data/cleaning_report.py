"""What a cleaning chain did: per cleaner rows in, out, changed and dropped by reason."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["CleanerStats", "CleaningReport", "jsonable"]


def jsonable(value: object) -> Any:
    """An option value as JSON-able data."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


# --------------------------------------------------------------------------- report


@attrs.frozen
class CleanerStats:
    """What one cleaner did in one pass.

    Attributes:
        name: the cleaner's registered name.
        rows_in: rows the cleaner saw.
        rows_out: rows it passed on.
        changed: rows it passed on changed (a copy not equal to its input).
        dropped: reason -> number of rows dropped for it.
        examples: up to ``MAX_EXAMPLES`` ``(origin, reason)`` pairs of dropped
            rows, in input order; the reason may carry a detail (which row a
            duplicate repeats).
        options: the options the cleaner was created with.
        counts: what a cleaner counted besides rows, by kind (a cleaner object's ``counts``
            mapping, e.g. PHI entities replaced by type; never the values themselves).
    """

    name: str
    rows_in: int
    rows_out: int
    changed: int = 0
    dropped: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    examples: tuple[tuple[str, str], ...] = ()
    options: Mapping[str, object] = attrs.field(factory=dict, hash=False)
    counts: Mapping[str, int] = attrs.field(factory=dict, hash=False)

    @property
    def total_dropped(self) -> int:
        """Rows dropped for any reason."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return {
            "name": self.name,
            "options": {k: jsonable(v) for k, v in self.options.items()},
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "changed": self.changed,
            "dropped": dict(self.dropped),
            "examples": [list(e) for e in self.examples],
            "counts": dict(self.counts),
        }


def _default_rows_in(report: CleaningReport) -> int:
    return report.steps[0].rows_in if report.steps else 0


@attrs.frozen
class CleaningReport:
    """What the cleaning chain did, step by step.

    Attributes:
        steps: one ``CleanerStats`` per cleaner, in chain order.
        rows_in: rows that entered the chain (the first step's ``rows_in``; given
            explicitly only for an empty chain).
    """

    steps: tuple[CleanerStats, ...] = ()
    rows_in: int = attrs.field(default=attrs.Factory(_default_rows_in, takes_self=True))

    @property
    def rows_out(self) -> int:
        """Rows that left the chain."""
        return self.steps[-1].rows_out if self.steps else self.rows_in

    @property
    def dropped(self) -> dict[str, int]:
        """Rows dropped by reason, over every step (reasons shared by two steps are summed)."""
        total: Counter[str] = Counter()
        for step in self.steps:
            total.update(step.dropped)
        return dict(total)

    @property
    def total_dropped(self) -> int:
        """Rows dropped by any step."""
        return sum(step.total_dropped for step in self.steps)

    def step(self, name: str) -> CleanerStats:
        """The stats of the first step named ``name``."""
        for stats in self.steps:
            if stats.name == name:
                return stats
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: totals and every step."""
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": self.dropped,
            "steps": [step.to_dict() for step in self.steps],
        }


# --------------------------------------------------------------------------- the chain
