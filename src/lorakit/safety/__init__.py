"""The safety layer: guards around every answer, policies, the safety classifier, PHI scrubbing.

The answer path calls a :class:`GuardSet`::

    from lorakit.safety import load_policy

    guards = load_policy("default")
    verdicts = guards.check_input("My father's face is drooping and his speech is slurred")
    guards.decide(verdicts).decision  # "flag", with an urgent-care message

Guards are plugins (``lorakit_register_guards``); a policy (:class:`PolicySpec`) names which run.
Nothing here imports torch: the classifier's embedder loads on its first check.
"""

from __future__ import annotations

from lorakit.safety.guards import MAX_TEXT_CHARS, CaveatGuard, DosingGuard, RuleGuard
from lorakit.safety.policy import (
    NAMED_POLICIES,
    GuardSet,
    GuardSpec,
    PolicySpec,
    decide,
    load_policy,
)

__all__ = [
    "MAX_TEXT_CHARS",
    "NAMED_POLICIES",
    "CaveatGuard",
    "DosingGuard",
    "GuardSet",
    "GuardSpec",
    "PolicySpec",
    "RuleGuard",
    "decide",
    "load_policy",
]
