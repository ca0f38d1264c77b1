"""Built-in source readers, one per URI scheme, and :func:`read_source`.

A source URI is ``SCHEME:LOCATION``: ``jsonl:data/train.jsonl``,
``medquad:../shared/data/medquad``, ``hf:data/saved#validation``. Each scheme is a
:class:`~lorakit.protocols.SourceReader` registered through the
``lorakit_register_sources`` hook, so plugins add schemes the same way this package
does. Readers are lazy, read files in sorted order, and yield every row, including
rows with an empty answer (a cleaner drops and counts those). Bad input raises
:class:`~lorakit.errors.DataError` naming the file, line and field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from lorakit.data.rows import QARow
from lorakit.data.sources._uri import checked_fields, parse_uri
from lorakit.data.sources.generic import read_csv, read_hf, read_jsonl, read_parquet
from lorakit.data.sources.instructions import read_instructions
from lorakit.data.sources.medical import (
    PUBMEDQA_OPTIONS,
    read_medmcqa,
    read_medqa,
    read_mmlu,
    read_pubmedqa,
)
from lorakit.data.sources.medquad import read_medquad
from lorakit.data.sources.medsafetybench import read_medsafetybench
from lorakit.errors import ConfigError, did_you_mean
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.plugins import Registries
    from lorakit.protocols import Register, SourceReader

__all__ = [
    "PUBMEDQA_OPTIONS",
    "parse_uri",
    "read_csv",
    "read_hf",
    "read_instructions",
    "read_jsonl",
    "read_medmcqa",
    "read_medqa",
    "read_medquad",
    "read_mmlu",
    "read_parquet",
    "read_pubmedqa",
    "read_source",
]


def read_source(
    uri: str,
    *,
    fields: Mapping[str, str] | None = None,
    registries: Registries | None = None,
) -> Iterator[QARow]:
    """Read the rows of a source URI through the reader registered for its scheme.

    Args:
        uri: ``SCHEME:LOCATION``, e.g. ``"medquad:../shared/data/medquad"``.
        fields: QARow field name to source column name, for the generic schemes
            (``jsonl``, ``csv``, ``parquet``, ``hf``); e.g. ``{"question": "Question"}``.
        registries: where to look the scheme up; ``None`` builds the default
            plugin manager's registries.

    Returns:
        A lazy iterator of rows, in the source's order.

    Raises:
        ConfigError: no scheme, an unknown scheme, or a field mapping naming an
            unknown row field.
        DataError: while iterating, when the data cannot be read.
    """
    scheme, location = parse_uri(uri)
    if registries is None:
        from lorakit.plugins import Registries as _Registries

        registries = _Registries.from_plugin_manager()
    if scheme not in registries.sources:
        known = registries.sources.names()
        hint = f"known schemes: {', '.join(known) or 'none'}"
        suggestion = did_you_mean(scheme, known)
        raise ConfigError(
            f"unknown source scheme {scheme!r} in {uri!r}",
            hint=f"{suggestion} {hint}" if suggestion else hint,
        )
    reader: SourceReader = registries.sources.resolve(scheme)
    return reader(location, fields=checked_fields(fields))


@hookimpl
def lorakit_register_sources(register: Register) -> None:
    """Register the built-in schemes: generic files, ``hf``, and the medical QA datasets."""
    register("jsonl", read_jsonl)
    register("csv", read_csv)
    register("parquet", read_parquet)
    register("hf", read_hf)
    register("medquad", read_medquad)
    register("pubmedqa", read_pubmedqa)
    register("medmcqa", read_medmcqa)
    register("medqa", read_medqa)
    register("mmlu", read_mmlu)
    register("medsafetybench", read_medsafetybench)
    register("instructions", read_instructions)
