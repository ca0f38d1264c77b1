"""The data pipeline as one visible step per method of :class:`QADataset`.

``source rows -> cleaners -> grouped split -> template -> tokens``. Each step returns a new
immutable dataset with its report; :func:`prepare_data` runs them all for training and
:func:`inspect_data` runs them without splitting, for a preflight check.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from lorakit._validators import number, one_of
from lorakit.data.cleaners import (
    DEFAULT_CLEANERS,
    CleanerSpec,
    CleaningReport,
    check_cleaners,
    clean_rows,
)
from lorakit.data.mixing import MixReport, MixSpec, mix_entries
from lorakit.data.order import ORDERS, DataOrder
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

__all__ = [
    "DataReport",
    "DataSpec",
    "PreparedData",
    "QADataset",
    "inspect_data",
    "prepare_data",
    "read_rows",
]


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(
            f"{attribute.name} must be a positive number of rows, got {value}", field=attribute.name
        )


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(
            f"data.{attribute.name} must be true or false, got {value!r}",
            field=f"data.{attribute.name}",
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
        order: the order training sees its examples in: ``shuffle`` (the trainer's seeded
            shuffle), ``length_curriculum`` (short to long over ``curriculum_share`` of the
            steps, then shuffled) or ``length_grouped`` (similar lengths per micro-batch);
            see :mod:`lorakit.data.order`.
        curriculum_share: the share of the run's steps the curriculum ramps over, in (0, 1].
        mix: other sources mixed into the training data at their weights (shares);
            ``source`` gets the rest. See :mod:`lorakit.data.mixing`.
        private: the data may hold personal health information: ``scrub_phi`` runs in
            every cleaning chain (appended when absent; see :meth:`cleaning_chain`).
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
    order: DataOrder = attrs.field(default="shuffle", validator=one_of("data", ORDERS))
    curriculum_share: float = attrs.field(
        default=0.5, converter=float, validator=number("data", gt=0, le=1)
    )
    mix: tuple[MixSpec, ...] = attrs.field(default=(), converter=mix_entries)
    private: bool = attrs.field(default=False, validator=_flag)

    def cleaning_chain(self, chain: Sequence[CleanerSpec] | None = None) -> tuple[CleanerSpec, ...]:
        """The cleaners that run: ``chain`` (default :attr:`cleaners`; a mixed source's own
        chain) with ``scrub_phi`` appended when :attr:`private` and the chain lacks it."""
        from lorakit.data.chains import private_chain

        return private_chain(self.cleaners if chain is None else chain, self.private)


@attrs.frozen(kw_only=True)
class DataReport:
    """What the pipeline read, dropped, changed, split and truncated."""

    source: str
    rows_read: int
    cleaning: CleaningReport
    kinds: Mapping[str, int]
    tokenization: Mapping[str, TokenizeReport]
    split: Mapping[str, Any] | None = None
    mix: MixReport | None = None

    @property
    def rows_kept(self) -> int:
        """Rows left after cleaning (over every source of a mix)."""
        return self.cleaning.rows_out if self.mix is None else self.mix.rows_kept

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
            "mix": None if self.mix is None else self.mix.to_dict(),
        }


@attrs.frozen(kw_only=True)
class PreparedData:
    """The training, evaluation and test examples, with the rows they came from and the report.

    ``by_source`` holds each source's examples per split when the data is a mix (else empty).
    """

    splits: Splits
    examples: Mapping[str, list[Example]]
    report: DataReport
    by_source: Mapping[str, Mapping[str, list[Example]]] = attrs.field(factory=dict)


def read_rows(
    spec: DataSpec,
    *,
    registries: Registries | None = None,
    progress: ProgressReporter | None = None,
) -> list[QARow]:
    """Read the source's rows (the first ``spec.limit`` when set)."""
    return list(
        QADataset.from_source(
            spec.source,
            fields=spec.fields,
            limit=spec.limit,
            registries=registries,
            progress=progress,
        ).rows
    )


@attrs.frozen(kw_only=True)
class QADataset:
    """The data pipeline as a chain of immutable steps, each returning a new dataset that
    carries what the step did::

        data = (
            QADataset.from_source("medquad:../shared/data/medquad")
            .clean()                       # the default chain, counted in .cleaning
            .split(group_by="group+focus") # grouped, seeded: no group crosses splits
            .tokenize(tokenizer, max_len=1024)
        )
        data.examples["train"], data.report.to_dict()

    :func:`prepare_data` is this chain driven by a :class:`DataSpec`;
    :func:`inspect_data` the same without the split.

    Attributes:
        source: the source URI the rows came from.
        rows: the rows as they stand after the steps so far.
        rows_read: rows read from the source.
        cleaning: what the cleaners did (``None`` before :meth:`clean`).
        splits: train / eval / test rows (``None`` before :meth:`split`).
        examples: tokenised examples per split (``"all"`` when not split).
        tokenization: the tokenisation report per split.
    """

    source: str
    rows: tuple[QARow, ...]
    rows_read: int
    cleaning: CleaningReport | None = None
    splits: Splits | None = None
    examples: Mapping[str, list[Example]] | None = None
    tokenization: Mapping[str, TokenizeReport] | None = None
    registries: Registries = attrs.field(repr=False, eq=False)
    progress: ProgressReporter = attrs.field(factory=NullProgress, repr=False, eq=False)

    @classmethod
    def from_source(
        cls,
        uri: str,
        *,
        fields: Mapping[str, str] | None = None,
        limit: int | None = None,
        registries: Registries | None = None,
        progress: ProgressReporter | None = None,
    ) -> QADataset:
        """Read the rows of a source URI (``medquad:DIR``, ``jsonl:FILE`` ...)."""
        registries = registries or Registries.from_plugin_manager()
        progress = progress or NullProgress()
        advance = progress.task(f"Reading {uri}", limit)
        rows = read_source(uri, fields=fields or {}, registries=registries)
        if limit is not None:
            rows = itertools.islice(rows, limit)
        out = []
        for row in rows:
            out.append(row)
            advance(1)
        if not out:
            raise DataError(
                "the source has no rows", file=uri, hint="check the path and the field mapping"
            )
        return cls(
            source=uri,
            rows=tuple(out),
            rows_read=len(out),
            registries=registries,
            progress=progress,
        )

    def clean(self, cleaners: Iterable[CleanerSpec | str] = DEFAULT_CLEANERS) -> QADataset:
        """Run the cleaning chain; every changed or dropped row is counted in ``.cleaning``."""
        chain = _cleaner_chain(cleaners)
        check_cleaners(chain, self.registries.cleaners)
        kept, report = clean_rows(
            list(self.rows),
            chain,
            self.registries.cleaners,
            progress=self.progress.task("Cleaning", len(self.rows)),
        )
        if not kept:
            raise DataError(
                f"every one of the {len(self.rows):,} rows was dropped by the cleaners",
                file=self.source,
                hint="see the cleaning report (lorakit data inspect) and the field mapping",
            )
        return attrs.evolve(self, rows=tuple(kept), cleaning=report)

    def split(self, spec: SplitSpec | None = None, **settings: Any) -> QADataset:
        """Split by group into train / eval / test (``SplitSpec`` fields as keywords)."""
        spec = attrs.evolve(spec or SplitSpec(), **settings) if settings else spec
        return attrs.evolve(self, splits=split_rows(self.rows, spec))

    def tokenize(
        self,
        tokenizer: Any,
        *,
        template: str | Template = "qa",
        template_options: Mapping[str, Any] | None = None,
        max_len: int = 1024,
        batch_size: int = 256,
    ) -> QADataset:
        """Render with the tokenizer's chat template and tokenise, with answer-only labels;
        per split when split, else all rows as ``"all"``. Sets the tokenizer's pad token."""
        spec = TokenizeSpec(max_len=max_len, batch_size=batch_size)
        if isinstance(template, str):
            template = _template(template, template_options or {}, self.registries)
        ensure_pad_token(tokenizer)
        parts: list[tuple[str, Sequence[QARow]]] = (
            [("all", self.rows)]
            if self.splits is None
            else [
                ("train", self.splits.train),
                ("eval", self.splits.eval),
                ("test", self.splits.test),
            ]
        )
        examples: dict[str, list[Example]] = {}
        reports: dict[str, TokenizeReport] = {}
        for name, part in parts:
            if not part:
                examples[name], reports[name] = [], TokenizeReport.empty(spec)
                continue
            label = "Tokenising" if name == "all" else f"Tokenising {name}"
            examples[name], reports[name] = tokenize_rows(
                part, tokenizer, template, spec, progress=self.progress.task(label, len(part))
            )
        return attrs.evolve(self, examples=examples, tokenization=reports)

    @property
    def report(self) -> DataReport:
        """What the steps so far read, dropped, changed, split and truncated."""
        return DataReport(
            source=self.source,
            rows_read=self.rows_read,
            cleaning=self.cleaning or CleaningReport(steps=(), rows_in=len(self.rows)),
            kinds=dict(Counter(row.kind for row in self.rows)),
            tokenization=dict(self.tokenization or {}),
            split=None if self.splits is None else self.splits.to_dict(),
        )

    def prepared(self) -> PreparedData:
        """The split, tokenised data a training run uses."""
        if self.splits is None or self.examples is None:
            raise ConfigError(
                "the dataset is not split and tokenised yet",
                hint="call .split() and .tokenize(tokenizer) first",
            )
        return PreparedData(splits=self.splits, examples=self.examples, report=self.report)


def _template(name: str, options: Mapping[str, Any], registries: Registries) -> Template:
    factory = registries.templates.resolve(name)
    try:
        template: Template = factory(**options)
    except TypeError as exc:
        raise ConfigError(
            f"bad options for template {name!r}: {exc}", field="template_options"
        ) from exc
    return template


def _cleaned(
    spec: DataSpec, registries: Registries | None, progress: ProgressReporter | None
) -> QADataset:
    registries = registries or Registries.from_plugin_manager()
    chain = spec.cleaning_chain()
    check_cleaners(chain, registries.cleaners)  # a typo fails before reading
    return QADataset.from_source(
        spec.source,
        fields=spec.fields,
        limit=spec.limit,
        registries=registries,
        progress=progress,
    ).clean(chain)


def inspect_data(
    spec: DataSpec,
    tokenizer: Any,
    *,
    registries: Registries | None = None,
    progress: ProgressReporter | None = None,
) -> tuple[DataReport, list[Example]]:
    """Read, clean and tokenise every row without splitting: the preflight check."""
    ensure_pad_token(tokenizer)
    data = _cleaned(spec, registries, progress).tokenize(
        tokenizer,
        template=spec.template,
        template_options=spec.template_options,
        max_len=spec.tokenize.max_len,
        batch_size=spec.tokenize.batch_size,
    )
    assert data.examples is not None
    return data.report, data.examples["all"]


def prepare_data(
    spec: DataSpec,
    tokenizer: Any,
    *,
    registries: Registries | None = None,
    progress: ProgressReporter | None = None,
) -> PreparedData:
    """Read, clean, split by group and tokenise: the examples a training run uses
    (with ``spec.mix``, every source on its own, then mixed: :func:`prepare_mixed`)."""
    ensure_pad_token(tokenizer)
    if spec.mix:
        from lorakit.data.mixing import prepare_mixed

        registries = registries or Registries.from_plugin_manager()
        check_cleaners(spec.cleaning_chain(), registries.cleaners)
        for entry in spec.mix:
            check_cleaners(spec.cleaning_chain(entry.cleaners or ()), registries.cleaners)
        return prepare_mixed(spec, tokenizer, registries=registries, progress=progress)
    return (
        _cleaned(spec, registries, progress)
        .split(spec.split)
        .tokenize(
            tokenizer,
            template=spec.template,
            template_options=spec.template_options,
            max_len=spec.tokenize.max_len,
            batch_size=spec.tokenize.batch_size,
        )
        .prepared()
    )
