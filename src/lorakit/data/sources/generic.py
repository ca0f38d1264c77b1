"""The generic readers: ``jsonl``, ``csv``, ``parquet`` and ``hf``, mapped with ``fields``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lorakit.data.rows import QARow
from lorakit.data.sources._files import csv_records, empty_file, json_records, single_file
from lorakit.errors import ConfigError, DataError, LorakitError, did_you_mean

__all__ = ["read_csv", "read_hf", "read_jsonl", "read_parquet"]


# ------------------------------------------------------------------- jsonl, csv


def read_jsonl(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``jsonl:FILE``: one JSON object per line, mapped with ``fields``; blank lines skipped.

    Raises:
        DataError: missing file, empty file, bytes that are not UTF-8, a line that is
            not valid JSON (with its column) or not an object, or a missing field (with a suggestion).
    """
    path = single_file(location, "jsonl")
    return _jsonl_rows(path, location, dict(fields))


def _jsonl_rows(path: Path, display: str, fields: dict[str, str]) -> Iterator[QARow]:
    for number, record in json_records(path, display):
        yield QARow.from_mapping(record, fields=fields, file=display, line=number)


def read_csv(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``csv:FILE``: a header row, then one row per record, mapped with ``fields``.

    Row origins are the file's line numbers (a quoted cell may span lines: the row's
    first line is reported). Column names are stripped of surrounding spaces.

    Raises:
        DataError: missing or empty file, bytes that are not UTF-8, a quote that is
            never closed or text after a closing quote (at the line the quoted cell
            starts), a row whose cell count differs from the header's, or a missing field.
    """
    path = single_file(location, "csv")
    return _csv_generic_rows(path, location, dict(fields))


def _csv_generic_rows(path: Path, display: str, fields: dict[str, str]) -> Iterator[QARow]:
    rows = csv_records(path, display)
    header = next(rows, None)
    if header is None:
        raise empty_file(display, "no header row")
    header_line, columns = header[0], [c.strip() for c in header[1]]
    count = 0
    for number, cells in rows:
        if len(cells) != len(columns):
            raise DataError(
                f"row has {len(cells)} cells but the header (line {header_line}) "
                f"has {len(columns)} columns",
                file=display,
                line=number,
                hint="quote cells that contain commas",
            )
        count += 1
        yield QARow.from_mapping(
            dict(zip(columns, cells, strict=True)), fields=fields, file=display, line=number
        )
    if count == 0:
        raise empty_file(display, "a header but no rows")


# ------------------------------------------------------------------------ parquet


def read_parquet(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``parquet:FILE``: one record per table row (numbered from 1), mapped with ``fields``.

    Needs the optional dependency pyarrow (``pip install 'lorakit[parquet]'``).

    Raises:
        LorakitError: pyarrow is not installed.
        DataError: missing or empty file, a file that is not Parquet, or a missing field.
    """
    path = single_file(location, "parquet")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LorakitError(
            "parquet: needs pyarrow, which is not installed",
            file=location,
            hint="pip install 'lorakit[parquet]'",
        ) from None
    return _parquet_rows(pq, path, location, dict(fields))


def _parquet_rows(pq: Any, path: Path, display: str, fields: dict[str, str]) -> Iterator[QARow]:
    import pyarrow as pa

    if path.stat().st_size == 0:
        raise empty_file(display, "0 bytes")
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"not a Parquet file: {exc}",
            file=display,
            hint="write it with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table",
        ) from None
    if table.metadata.num_rows == 0:
        raise empty_file(display, "no rows")
    number = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield QARow.from_mapping(record, fields=fields, file=display, line=number)


# ----------------------------------------------------------------------------- hf

_HF_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}


def read_hf(location: str, *, fields: Mapping[str, str]) -> Iterator[QARow]:
    """``hf:NAME_OR_DIR[#SPLIT]``: a dataset read with the ``datasets`` library.

    ``NAME_OR_DIR`` is, in this order: a folder written by ``save_to_disk``
    (``load_from_disk``); another local folder or a data file (``load_dataset``
    infers the format); otherwise a dataset name on the Hugging Face Hub. ``SPLIT``
    picks a split of a dataset with several; the default is ``train`` (or the only
    split). Rows are numbered from 1 within the split and mapped with ``fields``.

    Raises:
        ConfigError: an unknown split, or no split chosen among several without ``train``.
        DataError: the dataset cannot be loaded (missing path, hub unreachable or
            offline, unreadable files), has no rows, or lacks a field.
    """
    name, sep, split = location.rpartition("#")
    if not sep:
        name, split = location, ""
    elif not split:
        raise ConfigError(f"hf:{location} has an empty split after '#'", hint=f"hf:{name}#train")
    return _hf_rows(name, split or None, dict(fields))


def _hf_rows(name: str, split: str | None, fields: dict[str, str]) -> Iterator[QARow]:
    dataset, display = _hf_load(name, split)
    if dataset.num_rows == 0:
        raise DataError("dataset has no rows", file=display, hint="check the split")
    number = 0
    for batch in dataset.iter(batch_size=1000):
        columns = list(batch)
        for values in zip(*batch.values(), strict=True):
            number += 1
            record = dict(zip(columns, values, strict=True))
            yield QARow.from_mapping(record, fields=fields, file=display, line=number)


def _hf_load(name: str, split: str | None) -> tuple[Any, str]:
    try:
        import datasets
    except ImportError:
        raise LorakitError(
            "hf: needs the datasets library, which is not installed",
            file=name,
            hint="pip install datasets",
        ) from None
    path = Path(name).expanduser()
    saved = path.is_dir() and any(
        (path / marker).is_file() for marker in ("dataset_dict.json", "state.json")
    )
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path))
        elif path.is_file():
            builder = _HF_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"datasets cannot tell the format of a {path.suffix or 'suffix-less'} file",
                    file=name,
                    hint=f"name it with one of {', '.join(_HF_BUILDERS)}",
                )
            loaded = datasets.load_dataset(builder, data_files=str(path))
        else:
            loaded = datasets.load_dataset(name)
    except LorakitError:
        raise
    except Exception as exc:
        raise DataError(
            f"datasets could not load it: {type(exc).__name__}: {exc}",
            file=name,
            hint=_hf_hint(name, path, saved),
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        chosen = split
        if chosen is None:
            chosen = "train" if "train" in loaded else (splits[0] if len(splits) == 1 else None)
        if chosen is None:
            raise ConfigError(
                f"hf:{name} has splits {', '.join(splits)} and none is called 'train'",
                hint=f"choose one: hf:{name}#{splits[0]}",
            )
        if chosen not in loaded:
            known = f"splits: {', '.join(splits)}"
            suggestion = did_you_mean(chosen, splits)
            raise ConfigError(
                f"hf:{name} has no split {chosen!r}",
                hint=f"{suggestion} {known}" if suggestion else known,
            )
        return loaded[chosen], f"{name}#{chosen}"
    own = getattr(loaded, "split", None)
    if split is not None and (own is None or str(own) != split):
        raise ConfigError(
            f"hf:{name} holds one dataset without a split {split!r}",
            hint=f"write hf:{name} without '#{split}'",
        )
    return loaded, name


def _hf_hint(name: str, path: Path, saved: bool) -> str:
    if saved or path.exists():
        return "check that the folder or file holds a dataset datasets can read"
    offline = any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )
    where = f"there is no local file or folder {name!r}, so it was looked up on the Hub"
    if offline:
        return (
            f"{where} but offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): "
            "point hf: at a folder written by save_to_disk, or unset offline mode"
        )
    return f"{where}; check the name, your network, or give a local path"
