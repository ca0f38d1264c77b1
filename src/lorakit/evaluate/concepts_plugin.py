"""Built-in plugin: the ``medical_concepts`` metric and its vocabularies ``hpo`` and ``icd10cm``.

Registered through the same hooks a third-party plugin uses. The vocabularies read their data
from the packages of the extra ``lorakit[concepts]`` when first used; registering them costs
nothing, so the names are known on every machine and a missing extra is reported with the pip
command at first use. A plugin adds its own vocabulary (a UMLS export, SNOMED CT) with
``lorakit_register_vocabularies``; ``medical_concepts`` then matches it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorakit.evaluate.concepts import HPOVocabulary, ICD10CMVocabulary, MedicalConcepts
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.protocols import Register

__all__ = ["lorakit_register_metrics", "lorakit_register_vocabularies"]


@hookimpl
def lorakit_register_metrics(register: Register) -> None:
    """Register ``medical_concepts`` (every registered vocabulary, built on first use)."""
    register("medical_concepts", MedicalConcepts())


@hookimpl
def lorakit_register_vocabularies(register: Register) -> None:
    """Register ``hpo`` and ``icd10cm``."""
    register("hpo", HPOVocabulary())
    register("icd10cm", ICD10CMVocabulary())
