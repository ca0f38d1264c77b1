"""Policies: which guards run, with which options and messages, and how verdicts combine.

A policy is a frozen :class:`PolicySpec`. Its text form (``--policy`` on the command line)
is a named policy, a guard with options, a JSON file, or several joined by ``+``::

    default                                  # the default policy
    rules                                    # the rule guards only (no classifier)
    strict                                   # default + a "see a clinician" caveat on every answer
    default+classifier:path=runs/guard,threshold=0.9   # replace the default's classifier
    emergency+self_harm                      # just these two guards
    policy.json                              # {"guards": [{"name": ..., "options": {...}}], "messages": {...}}

A later guard of the same name replaces an earlier one. :func:`load_policy` turns a policy into a
:class:`GuardSet` that the answer path calls.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from lorakit.data.cleaners import parse_option_value
from lorakit.errors import ConfigError
from lorakit.protocols import Decision, Guard, Verdict
from lorakit.safety.guards import checked_text

if TYPE_CHECKING:
    from lorakit.plugins import Registries

__all__ = ["NAMED_POLICIES", "GuardSet", "GuardSpec", "PolicySpec", "decide", "load_policy"]

_RANK: Final[dict[str, int]] = {"allow": 0, "flag": 1, "rewrite": 2, "block": 3}


def _check_name(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "+:, "):
        raise ConfigError(f"guard name must be a non-empty word, got {value!r}", field="policy")


def _options(value: Mapping[str, object] | None) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k.isidentifier() for k in value
    ):
        raise ConfigError(f"guard options must map names to values, got {value!r}", field="policy")
    return dict(value)


@attrs.frozen
class GuardSpec:
    """One guard of a policy: a registered guard's name and its options."""

    name: str = attrs.field(validator=_check_name)
    options: Mapping[str, object] = attrs.field(factory=dict, converter=_options, hash=False)

    @classmethod
    def parse(cls, text: str) -> GuardSpec:
        """``"NAME"`` or ``"NAME:KEY=VALUE,KEY=VALUE"``, values read as in ``CleanerSpec.parse``.

        Raises:
            ConfigError: an empty name or an option that is not ``KEY=VALUE``.
        """
        name, _, rest = text.strip().partition(":")
        options: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip().isidentifier():
                raise ConfigError(
                    f"guard option {part!r} is not KEY=VALUE",
                    field="policy",
                    hint="e.g. classifier:threshold=0.9",
                )
            options[key.strip()] = parse_option_value(value.strip())
        return cls(name.strip(), options)

    def to_text(self) -> str:
        """The text form :meth:`parse` reads."""
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())


def _specs(value: Sequence[GuardSpec | str]) -> tuple[GuardSpec, ...]:
    return tuple(GuardSpec.parse(v) if isinstance(v, str) else v for v in value)


def _messages(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError("policy messages must map reason codes to text", field="policy.messages")
    return dict(value)


@attrs.frozen
class PolicySpec:
    """Which guards run, in order, and message overrides by reason code (or prefix).

    Attributes:
        guards: the guards, input and output mixed; each runs at its own stage.
        messages: ``{"emergency": "...", "classifier": "..."}`` replaces the built-in message
            of every reason starting with the key.
        name: what reports call the policy.
    """

    guards: tuple[GuardSpec, ...] = attrs.field(converter=_specs)
    messages: Mapping[str, str] = attrs.field(factory=dict, converter=_messages, hash=False)
    name: str = "custom"

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        """Read the text form: named policies, guards and JSON files joined by ``+``.

        Raises:
            ConfigError: an empty policy, an unreadable or malformed JSON file, or a bad
                guard option.
        """
        parts = [p.strip() for p in text.split("+")]
        if not text.strip() or not all(parts):
            raise ConfigError(f"policy {text!r} is empty or has an empty part", field="policy")
        guards: dict[str, GuardSpec] = {}
        messages: dict[str, str] = {}
        for part in parts:
            if part in NAMED_POLICIES:
                named = NAMED_POLICIES[part]
                pieces, extra = list(named.guards), dict(named.messages)
            elif part.endswith(".json"):
                loaded = cls.from_file(part)
                pieces, extra = list(loaded.guards), dict(loaded.messages)
            else:
                pieces, extra = [GuardSpec.parse(part)], {}
            for spec in pieces:
                guards.pop(spec.name, None)
                guards[spec.name] = spec
            messages.update(extra)
        name = text.strip() if len(parts) > 1 or parts[0] not in NAMED_POLICIES else parts[0]
        return cls(tuple(guards.values()), messages, name=name)

    @classmethod
    def from_file(cls, path: str | Path) -> PolicySpec:
        """A policy from JSON: ``{"guards": ["emergency", {"name": "classifier", "options":
        {...}}], "messages": {...}}``.

        Raises:
            ConfigError: a missing file, not UTF-8 JSON, or the wrong shape (naming the file).
        """
        file = Path(path)
        try:
            data = json.loads(file.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError("no such policy file", field="policy", hint=f"check {file}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{file}: not a JSON policy ({exc})", field="policy") from None
        if not isinstance(data, dict) or not isinstance(data.get("guards"), list):
            raise ConfigError(f'{file}: a policy is an object with a "guards" list', field="policy")
        specs: list[GuardSpec] = []
        for item in data["guards"]:
            if isinstance(item, str):
                specs.append(GuardSpec.parse(item))
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                specs.append(GuardSpec(item["name"], item.get("options") or {}))
            else:
                raise ConfigError(
                    f'{file}: guard {item!r} is neither a name nor {{"name": ...}}', field="policy"
                )
        return cls(tuple(specs), data.get("messages") or {}, name=str(data.get("name", file.stem)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form :meth:`from_file` reads."""
        return {
            "name": self.name,
            "guards": [{"name": g.name, "options": dict(g.options)} for g in self.guards],
            "messages": dict(self.messages),
        }


_RULES = ("emergency", "self_harm", "prescribing", "patient_harm")
NAMED_POLICIES: Final[dict[str, PolicySpec]] = {
    "default": PolicySpec((*_RULES, "classifier", "dosing"), name="default"),
    "rules": PolicySpec((*_RULES, "dosing"), name="rules"),
    "strict": PolicySpec((*_RULES, "classifier", "dosing", "caveat"), name="strict"),
    "off": PolicySpec((), name="off"),
}
"""The policies known by name. ``default``: the four rule guards, the shipped classifier and
the dosing output guard; ``rules``: the same without the classifier (no embedder needed);
``strict``: default plus a "see a clinician" caveat on every answer; ``off``: no guard."""


def decide(verdicts: Sequence[Verdict]) -> Verdict:
    """The overall outcome: ``block`` beats ``rewrite`` beats ``flag`` beats ``allow``.

    ``guard`` and ``reason`` join those of the verdicts with the winning decision. ``message``:
    for ``block`` the refusal(s); otherwise the ``flag`` messages (urgent-care notices, to be
    shown *before* the answer), emergencies first. ``text``: for ``rewrite`` the last rewrite's
    text (output guards rewrite in turn, each seeing the previous one's text). ``score``: the
    highest score of any verdict.
    """
    scores = [v.score for v in verdicts if v.score is not None]
    top = max(scores) if scores else None
    if not verdicts:
        return Verdict(guard="policy", decision="allow")
    decision: Decision = max((v.decision for v in verdicts), key=lambda d: _RANK[d])
    chosen = [v for v in verdicts if v.decision == decision]
    if decision == "block":
        shown = chosen
    else:
        shown = sorted(
            (v for v in verdicts if v.decision == "flag"),
            key=lambda v: not v.reason.startswith("emergency"),
        )
    message = "\n\n".join(dict.fromkeys(v.message for v in shown if v.message))
    return Verdict(
        guard=",".join(dict.fromkeys(v.guard for v in chosen)) if decision != "allow" else "policy",
        decision=decision,
        reason=",".join(dict.fromkeys(v.reason for v in chosen if v.reason)),
        message=message,
        text=chosen[-1].text if decision == "rewrite" else None,
        score=top,
    )


def _accepts(factory: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class GuardSet:
    """The guards of a policy, ready to check texts. Build with :func:`load_policy`.

    ``check_input(text)`` runs the input guards on a user message; ``check_output(question,
    answer)`` runs the output guards on an answer (each rewrite feeds the next guard);
    :meth:`decide` combines verdicts.
    """

    def __init__(self, policy: PolicySpec, guards: Sequence[Guard]) -> None:
        self.policy = policy
        self.guards = tuple(guards)
        self.input_guards = tuple(g for g in self.guards if g.stage == "input")
        self.output_guards = tuple(g for g in self.guards if g.stage == "output")

    def __repr__(self) -> str:
        return f"GuardSet({self.policy.name!r}: {', '.join(g.name for g in self.guards) or 'no guards'})"

    def check_input(self, text: str) -> list[Verdict]:
        """Every input guard's verdict on a user message, in policy order.

        Raises:
            ConfigError: empty text, text over 100,000 characters, bytes that are not UTF-8.
        """
        text = checked_text(text)
        return [guard.check(text) for guard in self.input_guards]

    def check_inputs(self, texts: Sequence[str]) -> list[list[Verdict]]:
        """:meth:`check_input` for many texts; guards with ``check_many`` (the classifier)
        run in batches."""
        checked = [checked_text(t) for t in texts]
        columns: list[list[Verdict]] = []
        for guard in self.input_guards:
            many = getattr(guard, "check_many", None)
            columns.append(list(many(checked)) if many else [guard.check(t) for t in checked])
        return [[column[i] for column in columns] for i in range(len(checked))]

    def check_output(self, question: str, answer: str) -> list[Verdict]:
        """Every output guard's verdict on an answer, in policy order; a ``rewrite``'s text is
        what the next guard sees. An empty answer is checked (it may get a caveat).

        Raises:
            ConfigError: the answer is not text or over 100,000 characters.
        """
        text = checked_text(answer, what="answer", allow_empty=True)
        verdicts = []
        for guard in self.output_guards:
            verdict = guard.check(text, question=question)
            verdicts.append(verdict)
            if verdict.decision == "rewrite" and verdict.text is not None:
                text = verdict.text
        return verdicts

    @staticmethod
    def decide(verdicts: Sequence[Verdict]) -> Verdict:
        """The overall outcome (see :func:`decide`)."""
        return decide(verdicts)

    def warm(self) -> None:
        """Load what guards load lazily (the classifier's embedder)."""
        for guard in self.guards:
            warm = getattr(guard, "warm", None)
            if warm is not None:
                warm()


def load_policy(
    policy: str | PolicySpec | None = None, registries: Registries | None = None
) -> GuardSet:
    """The :class:`GuardSet` of a policy (``None`` or ``"default"``: the default policy).

    Guards are created from the factories registered through ``lorakit_register_guards``;
    the policy's messages are passed to every factory that takes ``messages``.

    Raises:
        ConfigError: an unknown guard (with a suggestion), a bad option, or a classifier
            that is missing or not a lorakit classifier.
    """
    if policy is None:
        spec = NAMED_POLICIES["default"]
    elif isinstance(policy, PolicySpec):
        spec = policy
    elif isinstance(policy, str):
        spec = PolicySpec.parse(policy)
    else:
        raise ConfigError(
            f"a policy is a name, text or PolicySpec, got {type(policy).__name__}", field="policy"
        )
    if registries is None:
        from lorakit.plugins import Registries as _Registries

        registries = _Registries.from_plugin_manager()
    guards: list[Guard] = []
    for guard_spec in spec.guards:
        factory = registries.guards.resolve(guard_spec.name)
        options = dict(guard_spec.options)
        if spec.messages and "messages" not in options and _accepts(factory, "messages"):
            options["messages"] = dict(spec.messages)
        try:
            guard = factory(**options)
        except TypeError as exc:
            raise ConfigError(f"guard {guard_spec.name!r}: {exc}", field="policy") from None
        if getattr(guard, "stage", None) not in ("input", "output") or not callable(
            getattr(guard, "check", None)
        ):
            raise ConfigError(
                f"guard {guard_spec.name!r} is not a Guard (needs name, stage input/output, check)",
                field="policy",
            )
        guards.append(guard)
    return GuardSet(spec, guards)
