"""``scrub_phi``: replace personal health information with typed placeholders.

lorakit's own recognizers (regular expressions with context words, and the US Census 1990 name
lists of the PyPI package ``names`` when installed) find, in each row's text fields:

========== ======================================================================== ==============
type       what                                                                     placeholder
========== ======================================================================== ==============
EMAIL      ``jane.doe@example.org``                                                 ``[EMAIL]``
URL        URLs with an identifier: a query string, a 5+ digit run, or a path       ``[URL]``
           segment like ``patient``/``user``/``mrn``/``id``
PHONE      US/NANP numbers ``(555) 123-4567``, ``555-123-4567``, ``+1 555 123 4567``,  ``[PHONE]``
           and international ``+44 20 7946 0958``
SSN        ``123-45-6789``, and 9 digits after ``SSN``                              ``[SSN]``
MRN        an identifier after ``MRN``, ``medical record number``, ``patient ID``,   ``[MRN]``
           ``chart no.``, ``account number``
DATE       ``03/14/2023``, ``2023-03-14``, ``March 14, 2023``, ``14 Mar 2023``, and  ``[DATE]``
           ``March 14`` after a clinical word (admitted, discharged, seen, DOB, ...)
AGE        ages over 89 (``92-year-old``, ``aged 95``, ``age: 101``): HIPAA's rule     ``[AGE]``
ADDRESS    street addresses (number, street name, suffix, unit) and ``ST 12345`` ZIPs ``[ADDRESS]``
NAME       after a title (``Dr.``, ``Mrs.``), after a context word (``patient:``,    ``[NAME]``
           ``name:``, ``wife``, ``seen by``), and First Last pairs from the census lists
========== ======================================================================== ==============

Overlapping finds keep the longest. The report counts entities by type and never stores the
raw values. Years alone, ages up to 89 and clinical numbers (doses, lab values) are kept.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

import attrs

from lorakit.data.rows import QARow
from lorakit.errors import ConfigError

__all__ = ["PHI_TYPES", "PhiScrubber", "Recognizer", "find_phi", "scrub_phi", "scrub_text"]

PHI_TYPES: Final = ("EMAIL", "URL", "PHONE", "SSN", "MRN", "DATE", "AGE", "ADDRESS", "NAME")


@attrs.frozen
class Recognizer:
    """One pattern for one entity type; ``group`` is the part replaced (0: the whole match)."""

    entity: str
    pattern: re.Pattern[str]
    group: int = 0


_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_CAP = r"(?:[A-Z]')?[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+(?:[-'][A-ZÀ-ÖØ-Þ]?[a-zß-öø-ÿ]+)?"
_FULL = rf"{_CAP}(?:\s+[A-Z]\.)?(?:,?\s+{_CAP})?"
_TITLE = r"\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Nurse)\.?\s+"
_CONTEXT = (
    r"(?i:patient(?:'s)? name|patient|pt|name|seen by|referred by|attending(?: physician)?"
    r"|signed(?: by)?|wife|husband|son|daughter|mother|father|sister|brother|spouse|partner"
    r"|(?:emergency )?contact|guardian|caregiver|nurse|physician|surgeon|resident|provider)"
)
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl"
    r"|Terrace|Circle|Cir|Parkway|Pkwy|Highway|Hwy)"
)
_STATES = (
    r"(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH"
    r"|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)"
)


def _r(entity: str, pattern: str, group: int = 0, flags: int = 0) -> Recognizer:
    return Recognizer(entity, re.compile(pattern, flags), group)


RECOGNIZERS: Final[tuple[Recognizer, ...]] = (
    _r("EMAIL", r"\b[\w.+'-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"),
    _r(
        "URL",
        r"\b(?:https?://|www\.)[^\s<>\"')\]]*(?:[?&](?:id|uid|pid|mrn|patient\w*|user\w*|member\w*"
        r"|account\w*|email|token|session\w*)=|/(?:patients?|users?|mrn|members?|profiles?|records?"
        r"|ids?|accounts?)/)[^\s<>\"')\]]*",
        flags=re.I,
    ),
    _r("SSN", r"\b\d{3}-\d{2}-\d{4}\b"),
    _r(
        "SSN",
        r"(?i:\b(?:SSN|social security(?: number| no\.?)?)\s*[:#]?\s*)(\d{9}|\d{3} \d{2} \d{4})\b",
        1,
    ),
    _r(
        "PHONE",
        r"(?<![\w/-])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?:\s*(?:x|ext\.?)\s*\d{1,5})?(?![\w/-])",
    ),
    _r("PHONE", r"(?<![\w+])\+(?:[2-9]\d{0,2})[\s.-]?(?:\d[\s.-]?){7,12}\d\b"),
    _r(
        "MRN",
        r"(?i:\b(?:MRN|medical record(?: number| no\.?| #)?|record (?:no\.?|number|#)|patient id"
        r"|pt id|chart (?:no\.?|number|#)|account (?:no\.?|number|#)|acct\.?(?: no\.?)?)\s*[:#]?\s*)"
        r"((?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{4,})\b",
        1,
    ),
    _r("DATE", r"\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b"),
    _r("DATE", r"\b(?:19|20)\d{2}-\d{2}-\d{2}\b"),
    _r("DATE", rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}}\b"),
    _r("DATE", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?,?\s+(?:19|20)\d{{2}}\b"),
    _r(
        "DATE",
        rf"(?i:\b(?:admitted|discharged|seen|visited|operated|born|died|dob|date of birth|on|since"
        rf"|until|from)\s*:?\s*(?:on\s+)?)((?-i:{_MONTH})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?)\b",
        1,
    ),
    _r(
        "AGE",
        r"\b(?:9\d|1[01]\d)(?:\s*|-)(?:year-old|years-old|years?|yrs?|y/?o)\b"
        r"|(?i:\bage[ds]?\s*:?\s*)(?:9\d|1[01]\d)\b",
        flags=re.I,
    ),
    _r(
        "ADDRESS",
        rf"\b\d{{1,5}}\s+(?:[NSEW]\.?\s+)?(?:{_CAP}\s+){{1,3}}{_STREET}\b\.?"
        rf"(?:,?\s+(?:Apt|Suite|Unit|#)\.?\s*\w+)?(?:,\s+{_CAP}(?:\s+{_CAP})?,?\s+{_STATES}(?:\s+\d{{5}}(?:-\d{{4}})?)?)?",
    ),
    _r("ADDRESS", rf"\b{_STATES}\s+\d{{5}}(?:-\d{{4}})?\b"),
    _r("NAME", rf"{_TITLE}({_FULL})", 1),
    _r(
        "NAME",
        rf"\b{_CONTEXT}\s*[:,-]?\s+(?:is\s+|was\s+)?(?!(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof)\b)({_FULL})",
        1,
    ),
    _r("NAME", rf"\b(?:named|called)\s+({_FULL})", 1),
)
"""The pattern recognizers, in priority order for finds of equal length."""

_EPONYM = re.compile(
    r"'?s?\s+(?:disease|syndrome|disorder|sign|test|procedure|ophthalmopathy|palsy|lymphoma"
    r"|sarcoma|tumou?r|anomaly|reflex|law|criteria|scale|classification|method)\b",
    re.I,
)
_WORD = re.compile(rf"\b{_CAP}\b")
_NOT_NAMES_TEXT: Final = """The This That These Those There Then When What Which Where Who Why How Patient Doctor
    Nurse Hospital Clinic Medical Center Street Avenue Road Monday Tuesday Wednesday Thursday
    Friday Saturday Sunday January February March April May June July August September October
    November December He She They His Her Their History Plan Assessment Diagnosis Name Date
    Chief Complaint Follow Allergies Medications No Yes Blood Pressure Heart Rate Type Disease
    Syndrome Cancer Care Emergency Department Unit Room Lab Labs Note Notes Signed Contact In
    On At For From With By To Of As An And Or But If So Be Do Go We Us It Is Are Was Were Will
    Can Our Your All Any Some Most Many Each Both After Before During Since Until Also Only
    Even Read See Call Visit More Less New Other Health Human National American United General
    My Latin"""
_NOT_NAMES: Final = frozenset(_NOT_NAMES_TEXT.split())


@lru_cache(maxsize=1)
def _census() -> tuple[frozenset[str], frozenset[str]]:
    """First and last names of the US Census 1990 lists (package ``names``), or empty sets."""
    try:
        import names
    except ImportError:
        return frozenset(), frozenset()
    from pathlib import Path

    folder = Path(names.__file__).parent

    def read(file: str) -> frozenset[str]:
        path = folder / file
        if not path.is_file():
            return frozenset()
        lines = path.read_text(encoding="ascii", errors="ignore").splitlines()
        return frozenset(line.split()[0].capitalize() for line in lines if line.strip())

    return read("dist.male.first") | read("dist.female.first"), read("dist.all.last")


def find_phi(text: str, *, entities: Iterable[str] | None = None) -> list[tuple[int, int, str]]:
    """``(start, end, type)`` of every PHI find in ``text``, without overlaps, in order."""
    wanted = set(PHI_TYPES if entities is None else entities)
    found: list[tuple[int, int, str, int]] = []
    for priority, recognizer in enumerate(RECOGNIZERS):
        if recognizer.entity not in wanted:
            continue
        for match in recognizer.pattern.finditer(text):
            start, end = match.span(recognizer.group)
            if start < end:
                found.append((start, end, recognizer.entity, priority))
    if "NAME" in wanted:
        firsts, lasts = _census()
        if firsts:
            words = list(_WORD.finditer(text))
            for a, b in itertools.pairwise(words):
                first, last = a.group(), b.group()
                if (
                    first in firsts
                    and last in lasts
                    and first not in _NOT_NAMES
                    and last not in _NOT_NAMES
                    and text[a.end() : b.start()] in (" ", ", ")
                ):
                    found.append((a.start(), b.end(), "NAME", len(RECOGNIZERS)))
    found = [
        f
        for f in found
        if f[2] != "NAME"
        or not (_EPONYM.match(text, f[1]) or text[f[0] : f[1]].split()[0].strip(",") in _NOT_NAMES)
    ]
    found.sort(key=lambda f: (-(f[1] - f[0]), f[3]))
    kept: list[tuple[int, int, str]] = []
    taken: list[tuple[int, int]] = []
    for start, end, entity, _ in found:
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        kept.append((start, end, entity))
    return sorted(kept)


def scrub_text(text: str, *, entities: Iterable[str] | None = None) -> tuple[str, Counter[str]]:
    """``text`` with each PHI find replaced by ``[TYPE]``, and the count of finds by type."""
    counts: Counter[str] = Counter()
    out: list[str] = []
    at = 0
    for start, end, entity in find_phi(text, entities=entities):
        out.append(text[at:start])
        out.append(f"[{entity}]")
        counts[entity] += 1
        at = end
    out.append(text[at:])
    return "".join(out), counts


_FIELDS: Final = ("question", "answer", "context", "explanation")


class PhiScrubber:
    """The ``scrub_phi`` cleaner: scrubs the text fields of each row; ``counts`` holds the
    entities replaced so far, by type (never the values)."""

    def __init__(
        self, fields: Sequence[str] = _FIELDS, entities: Sequence[str] | None = None
    ) -> None:
        self.fields = tuple(fields)
        self.entities = None if entities is None else tuple(entities)
        self.counts: Counter[str] = Counter()

    def __call__(self, row: QARow, /) -> QARow:
        changes: dict[str, Any] = {}
        for field in self.fields:
            value = getattr(row, field)
            if value:
                scrubbed, counts = scrub_text(value, entities=self.entities)
                if counts:
                    changes[field] = scrubbed
                    self.counts.update(counts)
        return attrs.evolve(row, **changes) if changes else row


def _names(value: object, what: str, allowed: Sequence[str]) -> tuple[str, ...]:
    items = [v.strip() for v in value.split("+")] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    for item in items:
        if item not in allowed:
            raise ConfigError(
                f"unknown {what} {item!r}",
                field=f"scrub_phi.{what}s",
                hint=f"one of {', '.join(allowed)}",
            )
    return tuple(items)


def scrub_phi(fields: object = _FIELDS, entities: object = None) -> PhiScrubber:
    """Factory of the ``scrub_phi`` cleaner. ``fields``: row fields to scrub (``"question+answer"``
    on the command line); ``entities``: types to replace (default all of :data:`PHI_TYPES`).

    Raises:
        ConfigError: an unknown field or entity type.
    """
    return PhiScrubber(
        _names(fields, "field", _FIELDS),
        None if entities is None else _names(entities, "entity", PHI_TYPES),
    )


def counts_by_type(scrubbers: Iterable[PhiScrubber]) -> Mapping[str, int]:
    """The summed counts of several scrubbers (e.g. one per pass)."""
    total: Counter[str] = Counter()
    for scrubber in scrubbers:
        total.update(scrubber.counts)
    return dict(total)
