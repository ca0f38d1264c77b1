"""Source URIs: ``SCHEME:LOCATION`` parsing, and the checks on a field mapping."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from lorakit.data.rows import MAPPABLE
from lorakit.errors import ConfigError, did_you_mean

__all__ = ["checked_fields", "no_fields", "parse_uri"]

# RFC 3986 scheme syntax, at least two characters so that ``C:\data`` stays a path.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+")
_SUFFIX_SCHEMES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def parse_uri(uri: str) -> tuple[str, str]:
    """Split a source URI at its first colon into ``(scheme, location)``.

    The scheme is lower-cased; the location is returned as written.

    Args:
        uri: a source URI such as ``"jsonl:data/train.jsonl"``.

    Returns:
        The scheme and the location, e.g. ``("jsonl", "data/train.jsonl")``.

    Raises:
        ConfigError: the URI has no scheme (a bare path) or nothing after the colon.
    """
    scheme, sep, location = uri.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ConfigError(f"source {uri!r} has no scheme", hint=_bare_path_hint(uri))
    if not location.strip():
        raise ConfigError(
            f"source {uri!r} has nothing after {scheme + ':'!r}",
            hint=f"write {scheme}:PATH",
        )
    return scheme.lower(), location


def _bare_path_hint(uri: str) -> str:
    scheme = _SUFFIX_SCHEMES.get(Path(uri).suffix.lower())
    if scheme is not None:
        return f"did you mean {scheme}:{uri}?"
    return (
        "write SCHEME:LOCATION, e.g. jsonl:PATH for JSON lines, csv:PATH, parquet:PATH, "
        "hf:NAME_OR_DIR or medquad:DIR"
    )


def checked_fields(fields: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of a field mapping, after checking that it names row fields and columns.

    Raises:
        ConfigError: a key that is not a mappable row field, or a value that is not a
            column name.
    """
    mapping = dict(fields or {})
    for name, column in mapping.items():
        if name not in MAPPABLE:
            raise ConfigError(
                f"unknown row field {name!r} in field mapping",
                hint=did_you_mean(name, MAPPABLE) or f"row fields: {', '.join(MAPPABLE)}",
            )
        if not isinstance(column, str) or not column:
            raise ConfigError(
                f"field mapping {name}={column!r} does not name a column",
                hint="write it as question=Question,answer=Answer",
            )
    return mapping


def no_fields(scheme: str, fields: Mapping[str, str]) -> None:
    """Refuse a field mapping for a scheme whose format is fixed.

    Raises:
        ConfigError: ``fields`` is not empty.
    """
    if fields:
        raise ConfigError(
            f"{scheme}: reads a fixed format and takes no field mapping "
            f"(got {', '.join(f'{k}={v}' for k, v in fields.items())})",
            hint="drop --fields, or convert the data to JSON lines and read it with jsonl:",
        )
