"""lorakit's built-in safety plugin: the guards, and the ``scrub_phi`` cleaner."""

from __future__ import annotations

from lorakit.hookspecs import hookimpl
from lorakit.protocols import Register

__all__ = ["lorakit_register_cleaners", "lorakit_register_guards"]


@hookimpl
def lorakit_register_guards(register: Register) -> None:
    """Register the built-in guards: the rule guards, the classifier and the output guards."""
    from lorakit.safety.classifier import ClassifierGuard
    from lorakit.safety.guards import (
        CaveatGuard,
        DosingGuard,
        emergency_guard,
        patient_harm_guard,
        prescribing_guard,
        self_harm_guard,
    )

    register("emergency", emergency_guard)
    register("self_harm", self_harm_guard)
    register("prescribing", prescribing_guard)
    register("patient_harm", patient_harm_guard)
    register("classifier", ClassifierGuard)
    register("dosing", DosingGuard)
    register("caveat", CaveatGuard)


@hookimpl
def lorakit_register_cleaners(register: Register) -> None:
    """Register ``scrub_phi``: PHI replaced by typed placeholders (:mod:`lorakit.safety.phi`)."""
    from lorakit.safety.phi import scrub_phi

    register("scrub_phi", scrub_phi)
