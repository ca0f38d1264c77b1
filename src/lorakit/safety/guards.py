"""The built-in rule guards (input) and the dosing and caveat guards (output).

Every guard is a :class:`~lorakit.protocols.Guard`: ``name``, ``stage`` and
``check(text, question=None) -> Verdict``. Guards are registered as factories through
``lorakit_register_guards``: ``factory(**options) -> Guard``; a policy names them with
their options.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from lorakit.errors import ConfigError
from lorakit.protocols import Decision, Verdict
from lorakit.safety.patterns import (
    DOSING_PATTERNS,
    EMERGENCY_RULES,
    HARM_RULES,
    REFERRAL_PATTERNS,
    Rule,
    message_for,
)

__all__ = [
    "MAX_TEXT_CHARS",
    "CaveatGuard",
    "DosingGuard",
    "RuleGuard",
    "checked_text",
    "emergency_guard",
    "patient_harm_guard",
    "prescribing_guard",
    "self_harm_guard",
]

MAX_TEXT_CHARS = 100_000
"""The longest text a guard checks (about 25,000 words); longer text is an error."""

_DECISIONS = ("allow", "flag", "block", "rewrite")


def checked_text(text: object, *, what: str = "text", allow_empty: bool = False) -> str:
    """``text`` as a string a guard can check.

    Bytes are decoded as UTF-8. Raises :class:`~lorakit.errors.ConfigError` (one line) for
    bytes that are not UTF-8, a value that is not text, an empty text (unless
    ``allow_empty``) and a text over :data:`MAX_TEXT_CHARS` characters.
    """
    if isinstance(text, (bytes, bytearray)):
        data = bytes(text)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"the {what} is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                hint="decode it to text first",
            ) from None
    if not isinstance(text, str):
        raise ConfigError(f"the {what} must be text, got {type(text).__name__}")
    if not text.strip() and not allow_empty:
        raise ConfigError(f"the {what} is empty", hint="give a question or message to check")
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(
            f"the {what} has {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} a guard checks",
            hint="split it or shorten it",
        )
    return text


def _check_decision(value: object, field: str) -> Decision:
    if value not in _DECISIONS:
        raise ConfigError(
            f"decision must be one of {', '.join(_DECISIONS)}, got {value!r}", field=field
        )
    return value  # type: ignore[return-value]


class RuleGuard:
    """An input guard made of :class:`~lorakit.safety.patterns.Rule` s: the first rule
    that fires decides (``flag`` or ``block``), with its reason code and message.

    Args:
        name: the guard's name in verdicts.
        rules: the rules, in order.
        messages: message overrides by reason code or prefix.
        decision: replaces every rule's own decision (e.g. ``"flag"`` to only warn).
    """

    stage: Literal["input", "output"] = "input"

    def __init__(
        self,
        name: str,
        rules: tuple[Rule, ...],
        *,
        messages: Mapping[str, str] | None = None,
        decision: str | None = None,
    ) -> None:
        self.name = name
        self.rules = rules
        self.messages = dict(messages or {})
        self.decision = None if decision is None else _check_decision(decision, f"{name}.decision")
        self._compiled = [(rule, rule.compiled()) for rule in rules]

    def __repr__(self) -> str:
        return f"RuleGuard({self.name!r}, {len(self.rules)} rules)"

    def match(self, text: str) -> Rule | None:
        """The first rule whose every group matches ``text``."""
        for rule, groups in self._compiled:
            if all(group.search(text) for group in groups):
                return rule
        return None

    def check(self, text: str, *, question: str | None = None) -> Verdict:
        """``allow``, or the first firing rule's decision, reason and message."""
        text = checked_text(text)
        rule = self.match(text)
        if rule is None:
            return Verdict(guard=self.name, decision="allow")
        decision = self.decision or _check_decision(rule.decision, rule.reason)
        return Verdict(
            guard=self.name,
            decision=decision,
            reason=rule.reason,
            message=message_for(rule.reason, self.messages),
        )


def emergency_guard(**options: object) -> RuleGuard:
    """``emergency``: chest pain with red flags, stroke signs, anaphylaxis, suicidal intent,
    overdose -> ``flag`` with an urgent-care message shown before the answer."""
    return _rule_guard("emergency", EMERGENCY_RULES, options)


def self_harm_guard(**options: object) -> RuleGuard:
    """``self_harm``: how to kill or harm oneself -> ``block`` with crisis resources."""
    return _rule_guard("self_harm", _rules("self_harm"), options)


def prescribing_guard(**options: object) -> RuleGuard:
    """``prescribing``: a dose or prescription for a named person -> ``block``."""
    return _rule_guard("prescribing", _rules("prescribing"), options)


def patient_harm_guard(**options: object) -> RuleGuard:
    """``patient_harm``: deceive, harm, coerce, defraud or discriminate against patients ->
    ``block``."""
    return _rule_guard("patient_harm", _rules("patient_harm"), options)


def _rules(prefix: str) -> tuple[Rule, ...]:
    return tuple(rule for rule in HARM_RULES if rule.reason.startswith(prefix + "."))


def _rule_guard(name: str, rules: tuple[Rule, ...], options: Mapping[str, object]) -> RuleGuard:
    unknown = sorted(set(options) - {"messages", "decision"})
    if unknown:
        raise ConfigError(
            f"unknown rule-guard option {unknown[0]!r}", hint="rule guards take: decision, messages"
        )
    messages = options.get("messages")
    if messages is not None and not isinstance(messages, Mapping):
        raise ConfigError("messages must map reason codes to text", field=f"{name}.messages")
    decision = options.get("decision")
    return RuleGuard(
        name,
        rules,
        messages={str(k): str(v) for k, v in (messages or {}).items()},
        decision=None if decision is None else str(decision),
    )


_REFERRAL = re.compile("|".join(REFERRAL_PATTERNS), re.I)


def _caveat(text: str, caveat: str) -> str:
    return f"{text.rstrip()}\n\n{caveat}" if text.strip() else caveat


class DosingGuard:
    """Output guard ``dosing``: an answer giving a definitive dose (``"take 400 mg every 6
    hours"``, :data:`~lorakit.safety.patterns.DOSING_PATTERNS`) without a "see a clinician
    or pharmacist" referral is rewritten with the dosing caveat appended (``decision``:
    ``"rewrite"``, or ``"flag"`` / ``"block"``). With a referral it is allowed.
    """

    name = "dosing"
    stage: Literal["input", "output"] = "output"

    def __init__(
        self, *, decision: str = "rewrite", messages: Mapping[str, str] | None = None
    ) -> None:
        self.decision = _check_decision(decision, "dosing.decision")
        self.messages = dict(messages or {})
        self._dosing = re.compile("|".join(DOSING_PATTERNS), re.I)

    def check(self, text: str, *, question: str | None = None) -> Verdict:
        """``allow``, or the policy's decision with reason ``dosing.definitive``."""
        text = checked_text(text, what="answer", allow_empty=True)
        if not self._dosing.search(text) or _REFERRAL.search(text):
            return Verdict(guard=self.name, decision="allow")
        message = message_for("dosing", self.messages)
        return Verdict(
            guard=self.name,
            decision=self.decision,
            reason="dosing.definitive",
            message=message,
            text=_caveat(text, message) if self.decision == "rewrite" else None,
        )


class CaveatGuard:
    """Output guard ``caveat``: an answer without a "see a clinician" referral
    (:data:`~lorakit.safety.patterns.REFERRAL_PATTERNS`) gets the caveat appended
    (``rewrite``, reason ``caveat.missing``). Policies that want every answer to end with
    a referral include it (the ``strict`` policy does)."""

    name = "caveat"
    stage: Literal["input", "output"] = "output"

    def __init__(self, *, messages: Mapping[str, str] | None = None) -> None:
        self.messages = dict(messages or {})

    def check(self, text: str, *, question: str | None = None) -> Verdict:
        """``allow`` when the answer refers to a clinician, else ``rewrite``."""
        text = checked_text(text, what="answer", allow_empty=True)
        if _REFERRAL.search(text):
            return Verdict(guard=self.name, decision="allow")
        message = message_for("caveat", self.messages)
        return Verdict(
            guard=self.name,
            decision="rewrite",
            reason="caveat.missing",
            message=message,
            text=_caveat(text, message),
        )
