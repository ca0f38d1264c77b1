"""Dataset mixing: the main source plus other sources at target shares of the training data.

``data.mix`` lists the other sources, each with the ``weight`` (its share of the mixed
training examples) and, optionally, its own field mapping, cleaners and template. Every
source is read, cleaned and split on its own (so groups never join across sources and a
source's groups stay on one side of the split), then tokenised with its template. The main
source (``data.source``) keeps all its training examples; each other source's training
examples are sampled down (seeded, without replacement) or repeated up to::

    count_i = round(weight_i * main_examples / (1 - sum of weights))

so each share is within one example of the request. The eval and test splits keep every
example of every source, unsampled: the run report gives the eval loss per source.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from lorakit._validators import number
from lorakit.data.cleaning_report import CleanerStats, CleaningReport
from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.data.cleaners import CleanerSpec
    from lorakit.data.pipeline import DataSpec, PreparedData
    from lorakit.data.tokenize import Example, TokenizeReport
    from lorakit.plugins import Registries
    from lorakit.reporting import ProgressReporter

__all__ = ["MixPart", "MixReport", "MixSpec", "mix_counts", "mix_entries", "prepare_mixed"]

SPLITS = ("train", "eval", "test")


def _source(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or ":" not in value or not value.split(":", 1)[1]:
        raise ConfigError(
            f"{value!r} is not a source URI",
            field="data.mix.source",
            hint="write SCHEME:LOCATION, e.g. instructions:../shared/data/general",
        )


def _none_text(value: Any) -> Any:
    """``None`` for ``None`` or ``"none"`` (how a TOML file writes an unset value)."""
    return None if value is None or (isinstance(value, str) and value.lower() == "none") else value


def _chain(value: Any) -> tuple[CleanerSpec, ...] | None:
    from lorakit.data.cleaners import CleanerSpec

    value = _none_text(value)
    if value is None:
        return None
    return tuple(
        CleanerSpec.parse(v)
        if isinstance(v, str)
        else CleanerSpec(**v)
        if isinstance(v, Mapping)
        else v
        for v in ((value,) if isinstance(value, str) else value)
    )


@attrs.frozen(kw_only=True)
class MixSpec:
    """One more source mixed into the training data.

    Attributes:
        source: the source URI (``instructions:FILE``, ``medsafetybench:DIR``, ``hf:NAME`` ...).
        weight: this source's share of the mixed training examples, in (0, 1); the main
            source (``data.source``) gets what the entries leave.
        fields: row field to column mapping for a generic source.
        cleaners: this source's cleaning chain; ``None``: the chain of ``data.cleaners``.
        template: this source's template; ``None``: ``data.template`` and its options.
        template_options: options of ``template``.
        limit: read only the first ``limit`` rows of the source.
    """

    source: str = attrs.field(validator=_source)
    weight: float = attrs.field(converter=float, validator=number("data.mix", gt=0, lt=1))
    fields: Mapping[str, str] = attrs.field(factory=dict)
    cleaners: tuple[CleanerSpec, ...] | None = attrs.field(default=None, converter=_chain)
    template: str | None = attrs.field(default=None, converter=_none_text)
    template_options: Mapping[str, Any] = attrs.field(factory=dict)
    limit: int | None = attrs.field(
        default=None, converter=_none_text, validator=number("data.mix", ge=1, optional=True)
    )

    @classmethod
    def parse(cls, text: str) -> MixSpec:
        """``"SOURCE@WEIGHT"`` (how ``--set data.mix=...`` writes an entry)."""
        source, sep, weight = text.rpartition("@")
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not sep or value is None:
            raise ConfigError(
                f"mix entry {text!r} is not SOURCE@WEIGHT",
                field="data.mix",
                hint="e.g. data.mix=instructions:../shared/data/general@0.15",
            )
        return cls(source=source.strip(), weight=value)


def mix_entries(value: Iterable[MixSpec | str | Mapping[str, Any]]) -> tuple[MixSpec, ...]:
    """``data.mix`` entries from specs, ``"SOURCE@WEIGHT"`` strings or ``{source, weight, ...}``
    tables; an error names the entry (``data.mix[1].weight``)."""
    if isinstance(value, (str, Mapping)):
        value = (value,)
    entries: list[MixSpec] = []
    for index, item in enumerate(value):
        where = f"data.mix[{index}]"
        try:
            if isinstance(item, MixSpec):
                entries.append(item)
            elif isinstance(item, str):
                entries.append(MixSpec.parse(item))
            elif isinstance(item, Mapping):
                entries.append(MixSpec(**item))
            else:
                raise ConfigError(f"expected a table {{source, weight}}, got {item!r}")
        except ConfigError as error:
            field = (error.field or "").replace("data.mix", where, 1) or where
            raise ConfigError(error.message, field=field, hint=error.hint) from None
        except TypeError as error:  # an unknown or missing key of a table
            raise ConfigError(
                f"bad mix entry: {error}",
                field=where,
                hint="keys: source, weight, fields, cleaners, template, template_options, limit",
            ) from None
    total = sum(entry.weight for entry in entries)
    if total >= 1.0:
        raise ConfigError(
            f"the mix weights add up to {total:g}; they must stay below 1",
            field="data.mix",
            hint="each weight is a share of the training data; data.source gets the rest",
        )
    return tuple(entries)


def mix_counts(main: int, weights: Sequence[float]) -> list[int]:
    """Training examples each mixed source contributes when the main source has ``main``."""
    scale = main / (1.0 - sum(weights))
    return [round(weight * scale) for weight in weights]


def resample(items: Sequence[Any], count: int, seed: int) -> list[Any]:
    """``count`` items: a seeded sample without replacement, or whole copies plus one."""
    if not items:
        return []
    rng = random.Random(f"lorakit-mix:{seed}")
    copies, rest = divmod(count, len(items))
    chosen = sorted(rng.sample(range(len(items)), rest))
    return [*items] * copies + [items[i] for i in chosen]


@attrs.frozen(kw_only=True)
class MixPart:
    """What one source of a mix contributed.

    Attributes:
        name: the source's label (its scheme, numbered when a scheme repeats).
        source: the source URI.
        weight: the requested share of the training examples (the main source: the rest).
        rows_read: rows read from the source.
        rows_kept: rows left after its cleaners.
        split: rows and groups per split (before resampling).
        available: its training examples before resampling.
        train: its training examples after resampling.
        repeated: examples added as repeats (upsampling).
        left_out: training examples not used (downsampling).
        eval: its eval examples; test: its test examples.
    """

    name: str
    source: str
    weight: float
    rows_read: int
    rows_kept: int
    split: Mapping[str, Any]
    available: int
    train: int
    repeated: int
    left_out: int
    eval: int
    test: int


@attrs.frozen(kw_only=True)
class MixReport:
    """The sources of a mix and their exact counts in the training data."""

    parts: tuple[MixPart, ...]

    @property
    def train(self) -> int:
        """Training examples over every source."""
        return sum(part.train for part in self.parts)

    @property
    def rows_kept(self) -> int:
        return sum(part.rows_kept for part in self.parts)

    def share(self, name: str) -> float:
        """The share of the training examples that source ``name`` holds."""
        part = next(p for p in self.parts if p.name == name)
        return part.train / self.train if self.train else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Per source: requested weight, counts and the share reached."""
        return {
            "train_examples": self.train,
            "sources": [
                {**attrs.asdict(part), "share": round(self.share(part.name), 6)}
                for part in self.parts
            ],
        }


def _labels(uris: Sequence[str]) -> list[str]:
    labels: list[str] = []
    for uri in uris:
        scheme = uri.split(":", 1)[0]
        label, n = scheme, 1
        while label in labels:
            n += 1
            label = f"{scheme}-{n}"
        labels.append(label)
    return labels


@attrs.frozen
class _Part:
    name: str
    source: str
    weight: float
    data: Any  # the split, tokenised QADataset of this source


def prepare_mixed(
    spec: DataSpec,
    tokenizer: Any,
    *,
    registries: Registries,
    progress: ProgressReporter | None = None,
) -> PreparedData:
    """Read, clean, split and tokenise every source of ``spec`` on its own, then resample the
    training examples of ``spec.mix`` to their shares (see the module)."""
    from lorakit.data.pipeline import DataReport, PreparedData, QADataset
    from lorakit.data.splits import Splits

    main = MixSpec(
        source=spec.source,
        weight=max(1e-9, 1.0 - sum(m.weight for m in spec.mix)),
        fields=spec.fields,
        cleaners=spec.cleaners,
        template=spec.template,
        template_options=spec.template_options,
        limit=spec.limit,
    )
    entries = [main, *spec.mix]
    parts: list[_Part] = []
    for name, entry in zip(_labels([e.source for e in entries]), entries, strict=True):
        own_template = entry.template is not None
        data = (
            QADataset.from_source(
                entry.source,
                fields=entry.fields,
                limit=entry.limit,
                registries=registries,
                progress=progress,
            )
            .clean(spec.cleaning_chain(entry.cleaners))
            .split(spec.split)
            .tokenize(
                tokenizer,
                template=entry.template or spec.template,
                template_options=entry.template_options if own_template else spec.template_options,
                max_len=spec.tokenize.max_len,
                batch_size=spec.tokenize.batch_size,
            )
        )
        parts.append(_Part(name, entry.source, entry.weight, data))
    main_train = len(parts[0].data.examples["train"])
    counts = [main_train, *mix_counts(main_train, [p.weight for p in parts[1:]])]
    examples: dict[str, list[Example]] = {name: [] for name in SPLITS}
    by_source: dict[str, dict[str, list[Example]]] = {}
    report_parts = []
    for part, count in zip(parts, counts, strict=True):
        own = part.data.examples
        train = resample(own["train"], count, spec.split.seed)
        by_source[part.name] = {"train": train, "eval": own["eval"], "test": own["test"]}
        for split in SPLITS:
            examples[split].extend(by_source[part.name][split])
        report_parts.append(_mix_part(part, train, count))
    mix = MixReport(parts=tuple(report_parts))
    rows = {s: tuple(r for p in parts for r in p.data.splits.split(s)) for s in SPLITS}
    splits = Splits(rows["train"], rows["eval"], rows["test"], spec.split)
    report = DataReport(
        source=" + ".join(p.source for p in parts),
        rows_read=sum(p.data.rows_read for p in parts),
        cleaning=_prefixed_cleaning([(p.name, p.data.cleaning) for p in parts]),
        kinds=_kinds(p.data.report.kinds for p in parts),
        tokenization=_prefixed_tokenization([(p.name, p.data.tokenization) for p in parts]),
        split=_split_dict(parts),
        mix=mix,
    )
    return PreparedData(splits=splits, examples=examples, report=report, by_source=by_source)


def _mix_part(part: _Part, train: list[Any], count: int) -> MixPart:
    own = part.data.examples
    available = len(own["train"])
    return MixPart(
        name=part.name,
        source=part.source,
        weight=round(part.weight, 6),
        rows_read=part.data.rows_read,
        rows_kept=len(part.data.rows),
        split=part.data.splits.to_dict(),
        available=available,
        train=len(train),
        repeated=max(0, count - available),
        left_out=max(0, available - count),
        eval=len(own["eval"]),
        test=len(own["test"]),
    )


def _prefixed_cleaning(reports: Sequence[tuple[str, CleaningReport]]) -> CleaningReport:
    """Every source's cleaning steps, named ``SOURCE/CLEANER``, in one report."""
    steps = tuple(
        CleanerStats(
            name=f"{name}/{step.name}",
            rows_in=step.rows_in,
            rows_out=step.rows_out,
            changed=step.changed,
            dropped=dict(step.dropped),
            examples=step.examples,
            options=dict(step.options),
            counts=dict(step.counts),
        )
        for name, report in reports
        for step in report.steps
    )
    return CleaningReport(steps=steps, rows_in=sum(report.rows_in for _, report in reports))


def _prefixed_tokenization(
    reports: Sequence[tuple[str, Mapping[str, TokenizeReport] | None]],
) -> dict[str, TokenizeReport]:
    return {f"{name}/{split}": r for name, own in reports for split, r in (own or {}).items()}


def _kinds(kinds: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for own in kinds:
        for kind, n in own.items():
            total[kind] = total.get(kind, 0) + n
    return total


def _split_dict(parts: Sequence[_Part]) -> dict[str, Any]:
    out: dict[str, Any] = {"spec": parts[0].data.splits.to_dict()["spec"]}
    own = [(p.name, p.data.splits.to_dict()) for p in parts]
    for split in SPLITS:
        out[split] = {
            "rows": sum(d[split]["rows"] for _, d in own),
            "groups": sum(d[split]["groups"] for _, d in own),
        }
    out["by_source"] = {name: {s: d[s] for s in SPLITS} for name, d in own}
    return out
