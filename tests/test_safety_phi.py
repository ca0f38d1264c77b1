"""scrub_phi on synthetic clinical notes with planted PHI (generated here, seeded): recall and
precision per entity type, and the cleaner in the cleaning chain."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lorakit.data.rows import QARow
from lorakit.safety.phi import PHI_TYPES, find_phi, scrub_text

FIRST = [
    "John",
    "Mary",
    "Robert",
    "Linda",
    "Michael",
    "Patricia",
    "David",
    "Susan",
    "James",
    "Karen",
    "Priya",
    "Oluwaseun",
    "Wei",
    "José",
    "Fatima",
    "Dmitri",
    "Aiko",
    "Siobhan",
    "Mateo",
    "Ngozi",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Garcia",
    "Miller",
    "Davis",
    "Martinez",
    "Wilson",
    "Anderson",
    "Raghunathan",
    "Adeyemi",
    "Zhang",
    "García",
    "Haddad",
    "Volkov",
    "Tanaka",
    "O'Brien",
    "Castillo",
    "Okonkwo",
]
STREETS = ["Oak Hill", "Maple", "Washington", "Elm", "Cedar Ridge", "Lincoln", "Sunset", "Park"]
SUFFIXES = ["Street", "St.", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Boulevard", "Court"]
CITIES = [("Boston", "MA"), ("Austin", "TX"), ("Denver", "CO"), ("Portland", "OR"), ("Miami", "FL")]
MONTHS = ["January", "Feb", "March", "Apr", "May", "June", "Jul", "August", "Sept", "October"]
# Clinical text that is not PHI: doses, lab values, years, ages up to 89, codes, durations.
FILLER = [
    "Metformin 500 mg twice daily was continued.",
    "BP 132/84, HR 78, SpO2 97% on room air.",
    "HbA1c 7.2% in 2019, now 6.8%.",
    "Follow up in 2 weeks with repeat labs.",
    "History of type 2 diabetes since 2008 and hypertension.",
    "A 45-year-old sibling has similar symptoms.",
    "ICD-10 E11.9; CPT 99214.",
    "Lisinopril increased to 20 mg daily; creatinine 1.1 mg/dL.",
    "The patient denies chest pain, dyspnea or fever.",
    "Plan: continue current regimen, diet counselling, and Parkinson Disease screening.",
]


class Note:
    """A note being built, with the planted PHI spans by type."""

    def __init__(self) -> None:
        self.text = ""
        self.planted: list[tuple[int, int, str]] = []

    def add(self, piece: str, entity: str | None = None) -> None:
        if entity is not None:
            self.planted.append((len(self.text), len(self.text) + len(piece), entity))
        self.text += piece


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}"]
    )


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1930, 2024), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        [
            f"{m:02d}/{d:02d}/{y}",
            f"{m}/{d}/{y % 100:02d}",
            f"{y}-{m:02d}-{d:02d}",
            f"{rng.choice(MONTHS)} {d}, {y}",
            f"{d} {rng.choice(MONTHS)} {y}",
        ]
    )


def make_note(rng: random.Random) -> Note:
    note = Note()
    first, last = rng.choice(FIRST), rng.choice(LAST)
    style = rng.randrange(3)
    if style == 0:
        note.add("Patient: ")
        note.add(f"{first} {last}", "NAME")
    elif style == 1:
        note.add("Patient name: ")
        note.add(f"{last}, {first}", "NAME")
    else:
        note.add("Mr. " if rng.random() < 0.5 else "Mrs. ")
        note.add(f"{first} {last}", "NAME")
    note.add(". DOB: ")
    note.add(_date(rng), "DATE")
    note.add(rng.choice([". MRN: ", ". Medical record number ", ". Patient ID: "]))
    note.add(f"{rng.choice(['', 'A', 'MR'])}{rng.randint(10**5, 10**8)}", "MRN")
    note.add(". " + rng.choice(FILLER) + " ")
    if rng.random() < 0.5:
        note.add("The patient is a ")
        note.add(f"{rng.randint(90, 104)}-year-old", "AGE")
        note.add(" woman. ")
    else:
        note.add(f"The patient is a {rng.randint(18, 89)}-year-old man. ")
    note.add(rng.choice(["Admitted on ", "Seen on ", "Discharged on "]))
    note.add(_date(rng), "DATE")
    note.add(" by Dr. ")
    note.add(rng.choice(LAST), "NAME")
    note.add(". " + rng.choice(FILLER) + " Contact: ")
    note.add(_phone(rng), "PHONE")
    note.add(", email ")
    note.add(
        f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.{rng.choice(['com', 'org', 'net'])}",
        "EMAIL",
    )
    note.add(". SSN ")
    note.add(f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}", "SSN")
    note.add(". Address: ")
    city, state = rng.choice(CITIES)
    note.add(
        f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}, {city}, {state} "
        f"{rng.randint(10000, 99999)}",
        "ADDRESS",
    )
    note.add(". Portal: ")
    note.add(f"https://portal.example-health.org/patients/{rng.randint(10**5, 10**7)}", "URL")
    note.add(". Daughter ")
    note.add(f"{rng.choice(FIRST)} {last}", "NAME")
    note.add(" at bedside. ")
    if rng.random() < 0.5:  # a name with no title or context word: only the census lists find it
        note.add(f"{rng.choice(FIRST)} {rng.choice(LAST)}", "NAME_BARE")
        note.add(" reported the fall. ")
    note.add(rng.choice(FILLER) + " Patient information: https://medlineplus.gov/diabetes.html.")
    return note


@pytest.fixture(scope="module")
def notes():
    rng = random.Random(20261201)
    return [make_note(rng) for _ in range(300)]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def measure(notes):
    """Per type: planted, recalled (every character of the planted span replaced), finds, and
    true finds (overlapping a planted span of the same type)."""
    stats = {t: Counter() for t in (*PHI_TYPES, "NAME_BARE")}
    for note in notes:
        finds = find_phi(note.text)
        for start, end, entity in note.planted:
            stats[entity]["planted"] += 1
            kind = "NAME" if entity == "NAME_BARE" else entity
            covered = [f for f in finds if f[2] == kind and _overlaps((f[0], f[1]), (start, end))]
            chars = set()
            for f in covered:
                chars.update(range(max(f[0], start), min(f[1], end)))
            text = note.text[start:end]
            needed = {
                i
                for i in range(start, end)
                if not text[i - start].isspace() and text[i - start] not in ",."
            }
            if needed <= chars:
                stats[entity]["recalled"] += 1
        for start, end, entity in finds:
            stats[entity]["found"] += 1
            if any(
                _overlaps((start, end), (s, e)) for s, e, t in note.planted if t.startswith(entity)
            ):
                stats[entity]["true"] += 1
    return stats


def test_recall_and_precision_per_entity_type(notes):
    stats = measure(notes)
    recall = {t: s["recalled"] / s["planted"] for t, s in stats.items() if s["planted"]}
    precision = {t: s["true"] / s["found"] for t, s in stats.items() if s["found"]}
    print("\nrecall", {k: round(v, 3) for k, v in recall.items()})
    print("precision", {k: round(v, 3) for k, v in precision.items()})
    for entity in ("PHONE", "EMAIL", "SSN", "MRN", "DATE"):
        assert recall[entity] >= 0.98, (entity, recall[entity])
    assert recall["NAME"] >= 0.90
    assert recall["NAME_BARE"] >= 0.25  # census pairs only: names from elsewhere are missed
    for entity in ("AGE", "ADDRESS", "URL"):
        assert recall[entity] >= 0.95, (entity, recall[entity])
    for entity, value in precision.items():
        assert value >= 0.95, (entity, value)


def test_clinical_numbers_and_public_urls_are_kept():
    text = " ".join(FILLER) + " See https://medlineplus.gov/diabetes.html for more."
    scrubbed, counts = scrub_text(text)
    assert counts == Counter(), counts
    assert scrubbed == text


def test_scrub_phi_cleaner_counts_types_without_values(registries):
    from lorakit.data.cleaners import CleanerSpec, clean_rows

    rows = [
        QARow(
            question="Mrs. Alvarez (MRN: 4481920) asks about her rash.", answer="Call 617-555-0143."
        ),
        QARow(question="What is glaucoma?", answer="A disease of the optic nerve."),
    ]
    cleaner = registries.cleaners.resolve("scrub_phi")(fields="question+answer")
    kept, report = clean_rows(rows, [CleanerSpec("drop_empty")], registries.cleaners)
    assert len(kept) == 2
    out = [cleaner(r) for r in rows]
    assert out[0].question == "Mrs. [NAME] (MRN: [MRN]) asks about her rash."
    assert out[0].answer == "Call [PHONE]."
    assert out[1] is rows[1]
    assert dict(cleaner.counts) == {"NAME": 1, "MRN": 1, "PHONE": 1}
    assert "Alvarez" not in repr(cleaner.counts)
    kept, report = clean_rows(rows, [CleanerSpec("scrub_phi")], registries.cleaners)
    assert report.steps[0].changed == 1
    # The cleaning report counts the entities by type, and never holds the values.
    assert report.steps[0].counts == {"NAME": 1, "MRN": 1, "PHONE": 1}
    assert "4481920" not in str(report.to_dict()) and "Alvarez" not in str(report.to_dict())


def test_scrub_phi_options_are_checked(registries):
    from lorakit.errors import ConfigError

    factory = registries.cleaners.resolve("scrub_phi")
    with pytest.raises(ConfigError, match="unknown entity 'FAX'"):
        factory(entities="FAX")
    with pytest.raises(ConfigError, match="unknown field 'title'"):
        factory(fields="title")
    only_emails = factory(entities="EMAIL")
    assert only_emails(QARow(question="Dr. Ko, a@b.org", answer="x")).question == "Dr. Ko, [EMAIL]"
