"""``lorakit generate``: answer every question of a file, batched, resumable.

::

    from lorakit.answer import Answerer
    from lorakit.serve.batch import generate_file

    answerer = Answerer.from_run_dir("runs/medqa_phi3-...")
    report = generate_file(answerer, "questions.jsonl", "answers.jsonl", batch_size=8)

Questions are prepared through the answer path (retrieval, input guards, the run's template),
sorted by prompt length so that a batch pads little, and generated ``batch_size`` at a time.
Each batch's answers are appended to the output and flushed, in the input's order within the
batch. A rerun skips every id already in the output: a killed job resumes where it stopped
(a half-written last line is dropped). ``OUT.meta.json`` records the sampling settings, the
model, adapter and template, and the library versions; a rerun with other settings is refused,
so one file never mixes two settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from lorakit.answer import Answerer, SamplingSpec

__all__ = ["BatchReport", "generate_file", "read_done_ids"]


@attrs.frozen(kw_only=True)
class BatchReport:
    """What a ``generate_file`` call did: rows in the input, already done, newly answered."""

    rows: int
    skipped: int
    answered: int
    abstained: int
    truncated: int
    out: Path
    meta: Path


def read_done_ids(out: Path) -> set[str]:
    """The ids of the rows already in ``out``; a half-written last line is cut off the file.

    Raises:
        DataError: a complete line that is not a JSON object with an ``id``.
    """
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with out.open("r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    done: set[str] = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(
                "not JSON: the output was changed by hand",
                file=str(out),
                line=number,
                hint="fix the line or choose another --out",
            ) from None
        if not isinstance(row, dict) or "id" not in row:
            raise DataError("a line without an id", file=str(out), line=number, field="id")
        done.add(str(row["id"]))
    return done


def _meta(answerer: Answerer, sampling: SamplingSpec, source: Path) -> dict[str, Any]:
    from lorakit.recipe import versions

    return {
        "input": str(source),
        "sampling": sampling.to_dict(),
        "answerer": answerer.describe(),
        "versions": versions(),
    }


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read: {exc}", file=str(path)) from None
    for key in ("sampling", "answerer"):
        if earlier.get(key) != meta[key]:
            raise ConfigError(
                f"the output was started with other {key} settings: {earlier.get(key)}",
                file=str(path),
                field=key,
                hint="rerun with the same settings to resume, or choose another --out",
            )


def generate_file(
    answerer: Answerer,
    source: str | Path,
    out: str | Path,
    *,
    sampling: SamplingSpec | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> BatchReport:
    """Answer every question in ``source`` not yet in ``out`` (JSON lines), batched.

    Each output line: ``id``, ``question``, ``answer``, ``abstained``, ``reason``,
    ``new_tokens``, ``truncated``, ``dropped_turns``, ``citations``, ``verdicts`` and
    ``retrieval`` (see :meth:`lorakit.answer.Answer.to_dict`), plus the input row's other
    fields under ``input``.

    Args:
        answerer: the model to answer with.
        source: JSON lines with ``question`` (and ``id``), or plain text, one question a line.
        out: the JSON-lines output; appended to (resumed) when it exists.
        sampling: decoding settings (default: the answerer's).
        batch_size: questions generated together.
        progress: called with the number of rows finished after every batch.
        on_total: called once with the number of rows still to answer.

    Raises:
        DataError: a bad input row (names the line) or a damaged output.
        ConfigError: settings that differ from the run that started ``out``.
    """
    from lorakit.answer import read_questions

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"must be at least 1, got {batch_size!r}", field="batch_size")
    settings = sampling or answerer.sampling
    src, dest = Path(source), Path(out)
    rows = read_questions(src)
    if dest.exists() and dest.is_dir():
        raise ConfigError("is a folder, not a file", file=str(dest), field="--out")
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta_path = dest.with_name(dest.name + ".meta.json")
    _check_meta(meta_path, _meta(answerer, settings, src))
    done = read_done_ids(dest)
    todo = [row for row in rows if row["id"] not in done]
    if on_total is not None:
        on_total(len(todo))
    prepared = [
        answerer.prepare(row["question"], max_new_tokens=settings.max_new_tokens) for row in todo
    ]
    order = sorted(range(len(todo)), key=lambda i: len(prepared[i].prompt_ids))
    abstained = truncated = 0
    with dest.open("a", encoding="utf-8") as handle:
        for start in range(0, len(order), batch_size):
            chunk = sorted(order[start : start + batch_size])
            answers = answerer.generate([prepared[i] for i in chunk], settings)
            for i, answer in zip(chunk, answers, strict=True):
                row = todo[i]
                record = {"id": row["id"], **answer.to_dict()}
                extra = {k: v for k, v in row.items() if k not in ("id", "question")}
                if extra:
                    record["input"] = extra
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                abstained += answer.abstained
                truncated += answer.truncated
            handle.flush()
            os.fsync(handle.fileno())
            if progress is not None:
                progress(len(chunk))
    return BatchReport(
        rows=len(rows),
        skipped=len(rows) - len(todo),
        answered=len(todo),
        abstained=abstained,
        truncated=truncated,
        out=dest,
        meta=meta_path,
    )
