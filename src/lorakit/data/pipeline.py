"""The data pipeline as one visible function per step.

``source rows -> cleaners -> grouped split -> template -> tokens``. Each step is
callable on its own; :func:`prepare_data` runs them all for training and
:func:`inspect_data` runs them without splitting, for a preflight check.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.data.cleaners import (
    DEFAULT_CLEANERS,
    CleanerSpec,
    CleaningReport,
    check_cleaners,
    clean_rows,
)
from lorakit.data.rows import QARow
from lorakit.data.sources import read_source
from lorakit.data.splits import Splits, SplitSpec, split_rows
from lorakit.data.tokenize import (
    Example,
    TokenizeReport,
    TokenizeSpec,
    ensure_pad_token,
    tokenize_rows,
)
from lorakit.errors import ConfigError, DataError
from lorakit.plugins import Registries
from lorakit.reporting import NullProgress, ProgressReporter

if TYPE_CHECKING:
    from lorakit.protocols import Template

__all__ = ["DataReport", "DataSpec", "PreparedData", "inspect_data", "prepare_data", "read_rows"]


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(
            f"{attribute.name} must be a positive number of rows, got {value}", field=attribute.name
        )


def _cleaner_chain(
    value: Iterable[CleanerSpec | str | Mapping[str, Any]],
) -> tuple[CleanerSpec, ...]:
    """Cleaner specs from specs, ``"name:key=value"`` strings or ``{name, options}`` tables."""
    return tuple(
        CleanerSpec.parse(v)
        if isinstance(v, str)
        else CleanerSpec(**v)
        if isinstance(v, Mapping)
        else v
        for v in value
    )


@attrs.frozen(kw_only=True)
class DataSpec:
    """Where the data comes from and how it becomes training examples.

    Attributes:
        source: a source URI such as ``medquad:../shared/data/medquad`` or ``jsonl:qa.jsonl``.
        fields: row field to column mapping for generic sources (``{"question": "Question"}``).
        cleaners: the cleaning chain, in order.
        split: how rows are split into train / eval / test.
        template: the registered template's name.
        template_options: keyword options for the template.
        tokenize: maximum length and batch size of tokenisation.
        limit: read only the first ``limit`` rows of the source (for a quick look).
    """

    source: str
    fields: Mapping[str, str] = attrs.field(factory=dict)
    cleaners: tuple[CleanerSpec, ...] = attrs.field(
        default=DEFAULT_CLEANERS, converter=_cleaner_chain
    )
    split: SplitSpec = attrs.field(factory=SplitSpec)
    template: str = "qa"
    template_options: Mapping[str, Any] = attrs.field(factory=dict)
    tokenize: TokenizeSpec = attrs.field(factory=TokenizeSpec)
    limit: int | None = attrs.field(default=None, validator=_positive_or_none)


@attrs.frozen(kw_only=True)
class DataReport:
    """What the pipeline read, dropped, changed, split and truncated."""

    source: str
    rows_read: int
    cleaning: CleaningReport
    kinds: Mapping[str, int]
    tokenization: Mapping[str, TokenizeReport]
    split: Mapping[str, Any] | None = None

    @property
    def rows_kept(self) -> int:
        """Rows left after cleaning."""
        return self.cleaning.rows_out

    @property
    def kind(self) -> str:
        """``free_text``, ``mcq``, or ``mixed`` when the data has both."""
        present = [k for k, n in self.kinds.items() if n]
        return present[0] if len(present) == 1 else ("mixed" if present else "empty")

    @property
    def zero_supervised(self) -> int:
        """Examples with no supervised token, over every split (dropped from training)."""
        return sum(report.zero_supervised for report in self.tokenization.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary; ``dropped`` is the number of rows each cleaner dropped."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "kind": self.kind,
            "kinds": dict(self.kinds),
            "dropped": {step.name: sum(step.dropped.values()) for step in self.cleaning.steps},
            "cleaning": self.cleaning.to_dict(),
            "split": None if self.split is None else dict(self.split),
            "tokenization": {name: report.to_dict() for name, report in self.tokenization.items()},
        }


@attrs.frozen(kw_only=True)
class PreparedData:
    """The training, evaluation and test examples, with the rows they came from and the report."""

    splits: Splits
    examples: Mapping[str, list[Example]]
    report: DataReport


def read_rows(
    spec: DataSpec,
    *,
    registries: Registries | None = None,
    progress: ProgressReporter | None = None,
) -> list[QARow]:
    """Read the source's rows (the first ``spec.limit`` when set)."""
    advance = (progress or NullProgress()).task(f"Reading {spec.source}", spec.limit)
    rows = read_source(spec.source, fields=spec.fields, registries=registries)
    if spec.limit is not None:
        rows = itertools.islice(rows, spec.limit)
    out = []
    for row in rows:
        out.append(row)
        advance(1)
    if not out:
        raise DataError(
            "the source has no rows", file=spec.source, hint="check the path and the field mapping"
        )
    return out


def _template(spec: DataSpec, registries: Registries) -> Template:
    factory = registries.templates.resolve(spec.template)
    try:
        template: Template = factory(**spec.template_options)
    except TypeError as exc:
        raise ConfigError(
            f"bad options for template {spec.template!r}: {exc}", field="template_options"
        ) from exc
    return template


def _clean(
    spec: DataSpec, registries: Registries, progress: ProgressReporter
) -> tuple[int, list[QARow], CleaningReport]:
    check_cleaners(spec.cleaners, registries.cleaners)
    rows = read_rows(spec, registries=registries, progress=progress)
    kept, report = clean_rows(
        rows, spec.cleaners, registries.cleaners, progress=progress.task("Cleaning", len(rows))
    )
    if not kept:
        raise DataError(
            f"every one of the {len(rows):,} rows was dropped by the cleaners",
            file=spec.source,
            hint="see the cleaning report (lorakit data inspect) and the field mapping",
        )
    return len(rows), kept, report


def inspect_data(
    spec: DataSpec,
    tokenizer: Any,
    *,
    registries: Registries | None = None,
    progress: ProgressReporter | None = None,
) -> tuple[DataReport, list[Example]]:
    """Read, clean and tokenise every row without splitting: the preflight check."""
    registries = registries or Registries.from_plugin_manager()
    progress = progress or NullProgress()
    ensure_pad_token(tokenizer)
    rows_read, rows, cleaning = _clean(spec, registries, progress)
    examples, tok_report = tokenize_rows(
        rows,
        tokenizer,
        _template(spec, registries),
        spec.tokenize,
        progress=progress.task("Tokenising", len(rows)),
    )
    report = DataReport(
        source=spec.source,
        rows_read=rows_read,
        cleaning=cleaning,
        kinds=dict(Counter(row.kind for row in rows)),
        tokenization={"all": tok_report},
    )
    return report, examples


def prepare_data(
    spec: DataSpec,
    tokenizer: Any,
    *,
    registries: Registries | None = None,
    progress: ProgressReporter | None = None,
) -> PreparedData:
    """Read, clean, split by group and tokenise: the examples a training run uses."""
    registries = registries or Registries.from_plugin_manager()
    progress = progress or NullProgress()
    ensure_pad_token(tokenizer)
    rows_read, rows, cleaning = _clean(spec, registries, progress)
    splits = split_rows(rows, spec.split)
    template = _template(spec, registries)
    examples: dict[str, list[Example]] = {}
    reports: dict[str, TokenizeReport] = {}
    for name, part in (("train", splits.train), ("eval", splits.eval), ("test", splits.test)):
        if not part:
            examples[name], reports[name] = [], TokenizeReport.empty(spec.tokenize)
            continue
        examples[name], reports[name] = tokenize_rows(
            part,
            tokenizer,
            template,
            spec.tokenize,
            progress=progress.task(f"Tokenising {name}", len(part)),
        )
    report = DataReport(
        source=spec.source,
        rows_read=rows_read,
        cleaning=cleaning,
        kinds=dict(Counter(row.kind for row in rows)),
        tokenization=reports,
        split=splits.to_dict(),
    )
    return PreparedData(splits=splits, examples=examples, report=report)
