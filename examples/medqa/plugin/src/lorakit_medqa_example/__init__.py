"""A sample lorakit plugin: one cleaner and one metric, found through the ``lorakit`` entry point.

- ``scrub_contacts`` replaces e-mail addresses and phone numbers in answers with
  ``[email]`` / ``[phone]``: MedQuAD answers quote helpline numbers that a
  model should not learn to recite.
- ``keyword_recall`` is the share of the reference answer's content words
  (longer than three letters) that the prediction contains.
"""

from __future__ import annotations

import re

import attrs

from lorakit import hookimpl
from lorakit.data.rows import QARow

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
PHONE = re.compile(r"(?<![\w-])(?:\+?1[-. ])?(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])")
WORD = re.compile(r"[a-z0-9]+")


class ScrubContacts:
    """Replace e-mail addresses and phone numbers in the answer."""

    def __init__(self, *, email: str = "[email]", phone: str = "[phone]") -> None:
        self.email = email
        self.phone = phone

    def __call__(self, row: QARow) -> QARow:
        answer = PHONE.sub(self.phone, EMAIL.sub(self.email, row.answer))
        return row if answer == row.answer else attrs.evolve(row, answer=answer)


def keyword_recall(prediction: str, reference: str) -> float:
    """Share of the reference's content words (more than three letters) found in the prediction."""
    wanted = {w for w in WORD.findall(reference.lower()) if len(w) > 3}
    if not wanted:
        return 1.0
    found = set(WORD.findall(prediction.lower()))
    return len(wanted & found) / len(wanted)


@hookimpl
def lorakit_register_cleaners(register):  # type: ignore[no-untyped-def]
    register("scrub_contacts", ScrubContacts)


@hookimpl
def lorakit_register_metrics(register):  # type: ignore[no-untyped-def]
    register("keyword_recall", keyword_recall)
