"""Checkpoints of a run: which are complete, the newest one, and the metrics log kept in
step with them on resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lorakit._fs import write_json_atomic, write_text_atomic

__all__ = [
    "CHECKPOINT_MARKER",
    "checkpoint_step",
    "is_complete",
    "keep_metrics_until",
    "latest_checkpoint",
    "mark_checkpoint_complete",
]

CHECKPOINT_MARKER = "lorakit_checkpoint.json"
"""Written into a checkpoint folder once it is complete: its files and their sizes."""


def checkpoint_step(path: Path | str) -> int:
    """The step number of a ``checkpoint-N`` folder."""
    match = re.search(r"checkpoint-(\d+)$", str(path))
    return int(match.group(1)) if match else -1


def mark_checkpoint_complete(folder: Path, *, tokens: int) -> None:
    """Record a checkpoint's files and sizes (and the real tokens trained so far) in it.

    Only checkpoints with this record are resumed from, and only while their files still
    have those sizes: a save cut short (a kill, a full disk) is never taken for a checkpoint.
    """
    if not folder.is_dir():
        return
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != CHECKPOINT_MARKER
    }
    write_json_atomic(folder / CHECKPOINT_MARKER, {"files": files, "tokens": tokens})


def is_complete(checkpoint: Path) -> bool:
    """True when the checkpoint's save finished and its files still have their sizes."""
    try:
        marker = json.loads((checkpoint / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        return isinstance(files, dict) and all(
            (checkpoint / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def latest_checkpoint(folder: Path) -> Path | None:
    """The complete ``checkpoint-N`` folder with the highest N, or None.

    A checkpoint is complete when lorakit recorded it after its save finished and none of
    its files changed size since (see :func:`lorakit.train.mark_checkpoint_complete`).
    """
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if p.is_dir() and is_complete(p)]
    return max(complete, key=checkpoint_step, default=None)


def keep_metrics_until(path: Path, step: int, *, summaries: bool = True) -> None:
    """Drop the records of ``metrics.jsonl`` logged after ``step`` (and, with
    ``summaries=False``, the end-of-training summary of an interrupted attempt)."""
    if not path.exists():
        return
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short when the process was killed mid-write
            continue
        if not isinstance(record, dict) or (not summaries and "train_runtime" in record):
            continue
        if record.get("step", 0) <= step:
            lines.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in lines))
