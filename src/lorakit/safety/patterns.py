"""The rule guards' patterns: transparent, documented regular expressions.

Each :class:`Rule` fires when *every one* of its ``all_of`` groups matches somewhere in the text
(a group matches when any of its patterns does). A rule's ``reason`` is the code a verdict
carries and a user can look up in the safety docs; its ``decision`` is what the rule guard
returns when it fires. Patterns are matched case-insensitively, except where a pattern turns
case on itself (names of people are capitalised words).

The rules are written to be *narrow*: they look for a current situation ("my chest hurts and
my left arm is numb"), a first-person intent ("kill myself"), a named person ("for Mr. Smith"),
or an explicit intent to deceive, harm or discriminate ("without the patient's consent"), so
that informational questions ("What are the symptoms of a stroke?") and look-alike general
prompts ("How do I kill a Python process?") pass. The classifier guard catches what the rules
do not phrase.

Refusal and referral patterns (used by the output guards and evaluation) live in
:mod:`lorakit.evaluate.text` (``REFUSAL_PATTERNS``, ``REFERRAL_PATTERNS``) and are re-exported.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from lorakit.evaluate.text import REFERRAL_PATTERNS, REFUSAL_PATTERNS

__all__ = [
    "DOSING_PATTERNS",
    "EMERGENCY_RULES",
    "HARM_RULES",
    "MESSAGES",
    "REFERRAL_PATTERNS",
    "REFUSAL_PATTERNS",
    "Rule",
]


@attrs.frozen
class Rule:
    """One rule: fires when every group of ``all_of`` has a matching pattern.

    Attributes:
        reason: the reason code of the verdict (``"emergency.stroke"``).
        decision: ``"flag"`` or ``"block"``.
        all_of: groups of regular expressions; each group must match.
        summary: one line for the docs and ``lorakit safety rules``.
    """

    reason: str
    decision: str
    all_of: tuple[tuple[str, ...], ...]
    summary: str

    def compiled(self) -> tuple[re.Pattern[str], ...]:
        """One compiled alternation per group."""
        return tuple(re.compile("|".join(f"(?:{p})" for p in group), re.I) for group in self.all_of)


_ME = r"(?:i|i'm|i am|i've|my|me|he|she|he's|she's|his|her|they|their|my \w+|someone)"

# ---------------------------------------------------------------- emergencies (flag)

_CHEST = (
    r"\bchest (?:pain|pressure|tightness|discomfort|hurts?|is hurting|feels? (?:tight|heavy))",
    r"\bpain in (?:my|his|her|their|the) chest\b",
    r"\b(?:crushing|squeezing|heavy) (?:feeling )?in (?:my|his|her|the) chest\b",
)
_CHEST_RED_FLAGS = (
    r"\b(?:left )?(?:arm|jaw|neck|shoulder)\b",
    r"\bshort(?:ness)? of breath\b|\bcan'?t (?:catch (?:my|his|her) )?breath|\bbreathless",
    r"\bsweat(?:ing|y)\b|\bclammy\b|\bnause(?:a|ous)\b|\bvomit",
    r"\bcrushing\b|\bsqueezing\b|\bfaint(?:ed|ing)?\b|\bpass(?:ed|ing) out\b|\bradiat",
)
_STROKE = (
    r"\b(?:face|mouth|smile)\b.{0,20}\b(?:droop\w*|sag\w*|drooping)\b",
    r"\bdroop(?:ing|y)? (?:face|mouth|smile)\b",
    r"\bslurr(?:ed|ing) (?:speech|words)\b|\bspeech (?:is )?slurred\b",
    r"\bcan'?t (?:speak|talk|lift|move) (?:properly )?(?:(?:my|his|her) (?:arm|leg|hand))?",
    r"\bsudden(?:ly)? (?:\w+ )?(?:numb\w*|weak\w*|confus\w*|loss of (?:vision|balance)"
    r"|severe headache|trouble (?:speaking|seeing|walking))",
    r"\b(?:numb|weak)(?:ness)? (?:on|in|of) (?:one|the (?:left|right)) side\b",
    r"\bworst headache of (?:my|his|her|their) life\b",
)
_STROKE_NOW = (
    rf"\b{_ME}\b",
    r"\b(?:right now|suddenly|just|started|this morning|tonight|an hour ago|minutes ago)\b",
)
_AIRWAY = (
    r"\b(?:throat|tongue|lips?|face|mouth)\b.{0,15}\b(?:swell\w*|swollen|closing|tight\w*)",
    r"\bcan'?t (?:breathe|swallow)\b|\b(?:trouble|difficulty|hard time) (?:breathing|swallowing)",
    r"\bwheez\w*|\bhives all over\b",
)
_ALLERGEN = (
    r"\ballerg\w*|\banaphyla\w*|\bepi-?pen\b|\bpeanuts?\b|\b(?:tree )?nuts?\b|\bshellfish\b",
    r"\b(?:bee|wasp|hornet)\b|\bstung\b|\bsting\b|\bpenicillin\b",
    r"\bafter (?:eating|taking|an? (?:injection|shot))\b|\bate\b",
)
_SUICIDAL = (
    r"\b(?:kill(?:ing)?|hang(?:ing)?|shoot(?:ing)?) myself\b",
    r"\bend(?:ing)? (?:my (?:own )?life|it all)\b|\btake my (?:own )?life\b",
    r"\b(?:feel(?:ing)?|am|i'm|been|thinking (?:about|of)(?: being)?) suicidal\b",
    r"\bsuicidal (?:thoughts|ideation|feelings|urges)\b",
    r"\b(?:don'?t|do not) want to (?:live|be alive|wake up)\b|\bbetter off dead\b",
    r"\bno reason to (?:live|go on)\b|\bi (?:just )?want to die\b",
)
_OVERDOSE = (
    r"\b(?:took|taken|swallowed|ingested|ate|drank|had)\b.{0,40}"
    r"\b(?:too many|too much|a (?:whole|full|entire) (?:bottle|pack|box|packet)"
    r"|\d+\s*(?:pills|tablets|capsules)|all (?:of )?(?:my|his|her|the) (?:pills|tablets|meds))",
    r"\b(?:i|he|she|they|my \w+)\s+(?:just |may have |might have )?(?:overdosed|od'?d)\b",
    r"\baccidentally (?:took|swallowed|ingested|drank|ate)\b",
)

EMERGENCY_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "emergency.chest_pain",
        "flag",
        (_CHEST, _CHEST_RED_FLAGS),
        "chest pain with a red flag (arm/jaw/neck, breathlessness, sweating, nausea, fainting)",
    ),
    Rule(
        "emergency.stroke",
        "flag",
        (_STROKE, _STROKE_NOW),
        "a stroke sign (face drooping, slurred speech, one-sided weakness, sudden confusion) "
        "happening to someone",
    ),
    Rule(
        "emergency.anaphylaxis",
        "flag",
        (_AIRWAY, _ALLERGEN),
        "airway swelling or breathing trouble with an allergen or sting",
    ),
    Rule("emergency.suicidal", "flag", (_SUICIDAL,), "a statement of suicidal intent or thoughts"),
    Rule("emergency.overdose", "flag", (_OVERDOSE,), "someone took too much of a medicine"),
)
"""Rules of the ``emergency`` guard: each flags, and the urgent-care message is shown first."""

# ---------------------------------------------------------------- harm (block)

_SELF_HARM = (
    r"\b(?:how|best|easiest|quickest|fastest|painless(?:ly)?|ways?|methods?)\b.{0,60}"
    r"\b(?:kill myself|end my (?:own )?life|commit suicide|hang myself|cut myself|hurt myself"
    r"|harm myself|starve myself|die painlessly|overdose on purpose)\b",
    r"\bhow (?:many|much)\b.{0,60}\b(?:to|would|will|do i need to|should i take to)\s+"
    r"(?:kill me|die|end my life|kill myself)\b",
    r"\blethal dose\b.{0,40}\b(?:myself|for me|to die|kill me)\b",
)
_PRESCRIBE = (
    r"\b(?:prescribe|prescription|dose|doses|dosage|dosing|titrate|how (?:much|many) (?:mg|"
    r"milligrams|tablets|pills|units)|\d+\s*mg)\b",
    r"\bhow (?:much|many)\b.{0,40}\b(?:should|do|can|to|must)\b.{0,15}\b(?:give|take|prescribe|administer)",
)
_NAME = r"(?-i:[A-Z][a-z]{2,})"
_NAMED_PERSON = (
    rf"\b(?:mr|mrs|ms|miss|mx)\.? {_NAME}",
    rf"\b(?:patient|client|resident|man|woman|boy|girl|child) (?:named|called) {_NAME}",
    rf"\b(?:named|called) {_NAME}\b",
    rf"\b(?:for|give|to|should|does|can) {_NAME},? (?:who|a \d+|an? \d+|aged? \d+|\(\d+)",
    rf"\b(?:for|give|to) (?-i:(?!The\b|Type\b){_NAME} [A-Z][a-z]{{2,}})\b(?! (?:disease|syndrome"
    r"|disorder|cancer|lymphoma|anemia|palsy|fever))",
)
_WRITE_PRESCRIPTION = (
    r"\b(?:write|give|send|fill out|make)\b.{0,20}\b(?:me|him|her|them|us)?\s*"
    r"(?:a |an )?(?:fake |new )?prescription\b",
)
_DECEIVE = (
    r"\b(?:falsif\w*|fabricat\w*|forg(?:e|ing|ed)|back-?dat\w*|doctor(?:ing)? (?:the )?|alter(?:ing)?"
    r" (?:the )?)\b.{0,40}\b(?:records?|charts?|notes?|results?|documentation|prescriptions?"
    r"|consent forms?|data|reports?|certificates?)\b",
    r"\b(?:lie|lying|deceiv\w*|mislead\w*|trick\w*|manipulat\w*|gaslight\w*)\b.{0,50}"
    r"\b(?:patients?|famil(?:y|ies)|relatives?|insurers?|insurance|regulators?|auditors?|the board)",
    r"\b(?:hide|hiding|conceal\w*|cover(?:ing)? up)\b.{0,50}\b(?:errors?|mistakes?|malpractice"
    r"|complications?|side effects?|adverse events?|risks?|diagnos\w+|prognos\w+)\b",
    r"\bwithout (?:(?:the|their|his|her|a) )?(?:patient'?s?'? |parents?'? )?(?:informed )?"
    r"(?:consent|knowledge|knowing|noticing|permission|telling (?:them|him|her))\b",
    r"\b(?:secretly|covertly|behind (?:their|the patient'?s?|his|her) backs?)\b",
)
_HARM_PATIENT = (
    r"\b(?:harm|hurt|injure|poison|overdose|sedate|abuse|neglect|kill|euthanize)\w*\b.{0,30}"
    r"\b(?:patients?|residents?|elderly|infants?|newborns?)\b.{0,40}"
    r"\b(?:without|undetected|get away|on purpose|deliberately|intentionally|unnoticed)\b",
    r"\b(?:mock\w*|ridicul\w*|humiliat\w*|belittl\w*|shame|shaming|insult\w*|make fun of|demean\w*)"
    r"\b.{0,40}\b(?:patients?|their|them|him|her)\b",
    r"\b(?:pressure|coerc\w*|force|forcing|manipulat\w*|scar(?:e|ing)|frighten\w*|guilt-?trip\w*)"
    r"\b.{0,30}\b(?:patients?|someone|him|her|them)\b.{0,30}\b(?:into|to (?:accept|agree|sign"
    r"|undergo|take|buy|consent|pay))\b",
    r"\b(?:bill\w*|charg\w*|upcod\w*|overbill\w*|invoice\w*)\b.{0,40}\b(?:not (?:provided"
    r"|performed|done|rendered)|never (?:provided|performed|happened)|unnecessary)\b",
    r"\binsurance fraud\b|\bmedicare fraud\b|\bkickbacks?\b",
    r"\b(?:unnecessary|needless) (?:tests?|procedures?|surgery|surgeries|treatments?|scans?)\b"
    r".{0,40}\b(?:profit|money|revenue|bill|income|earn)",
    r"\b(?:sell\w*|leak\w*|expos(?:e|ing))\b.{0,40}\b(?:patient'?s?'?|medical|health) "
    r"(?:data|records?|information|details|histor\w+)\b",
)
_DISCRIMINATE = (
    r"\b(?:refus\w*|deny\w*|denied|avoid\w*|turn\w* away|discourag\w*|exclud\w*|discriminat\w*"
    r"|prioriti[sz]\w*|deprioriti[sz]\w*|treat\w* \w+ (?:worse|differently)|charg\w* \w+ more)\b"
    r".{0,60}\b(?:because|based on|due to|for being|who (?:are|is))\b.{0,25}"
    r"\b(?:race|racial|ethnic\w*|religio\w*|gender|sex|sexual orientation|gay|lesbian|trans\w*"
    r"|disabilit\w*|disabled|obes\w*|fat|weight|immigra\w*|undocumented|poor|homeless|black"
    r"|asian|hispanic|latin[oax]|muslim|jewish|hiv|elderly|old)\b",
)

HARM_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "self_harm.method",
        "block",
        (_SELF_HARM,),
        "asks how to kill or harm oneself, or for a lethal amount for oneself",
    ),
    Rule(
        "prescribing.named_person",
        "block",
        (_PRESCRIBE, _NAMED_PERSON),
        "asks to prescribe or set a dose for a named person",
    ),
    Rule("prescribing.write", "block", (_WRITE_PRESCRIPTION,), "asks for a prescription"),
    Rule(
        "patient_harm.deceive",
        "block",
        (_DECEIVE,),
        "asks to falsify records, lie to or mislead patients, hide errors, act without consent",
    ),
    Rule(
        "patient_harm.harm",
        "block",
        (_HARM_PATIENT,),
        "asks to harm, mock, coerce or defraud patients, or to sell or leak their data",
    ),
    Rule(
        "patient_harm.discriminate",
        "block",
        (_DISCRIMINATE,),
        "asks to refuse or worsen care because of who the patient is",
    ),
)
"""Rules of the ``self_harm``, ``prescribing`` and ``patient_harm`` guards: each blocks."""

# ---------------------------------------------------------------- output: dosing

DOSING_PATTERNS: Final[tuple[str, ...]] = (
    r"\b(?:take|give|inject|administer|use|apply|start (?:on|with)?|increase (?:it )?(?:to|by)"
    r"|double|swallow|chew)\b[^.\n]{0,40}?\b\d+(?:[.,]\d+)?\s*(?:-\s*\d+(?:[.,]\d+)?\s*)?"
    r"(?:mg|mcg|µg|micrograms?|milligrams?|g|grams?|ml|millilit(?:er|re)s?|units?|iu|tablets?"
    r"|pills?|capsules?|puffs?|drops?|teaspoons?|tsp|tablespoons?)\b",
    r"\b(?:the |your )?(?:correct|right|usual|recommended|safe|proper) dose (?:for you )?"
    r"(?:is|would be)\s+\d",
    r"\b\d+(?:[.,]\d+)?\s*(?:mg|mcg|ml|units?|tablets?|pills?)\b[^.\n]{0,30}"
    r"\b(?:every \d+ hours|once|twice|three times|four times) (?:a |per )?(?:day|daily)\b",
)
"""An answer that matches one of these gives a definitive dose ("take 400 mg every 6 hours")."""

# ---------------------------------------------------------------- messages

MESSAGES: Final[dict[str, str]] = {
    "emergency": (
        "This may be a medical emergency. Call your local emergency number (911 in the US, "
        "112 in the EU) or go to the nearest emergency department now; do not wait for an "
        "answer here."
    ),
    "emergency.suicidal": (
        "If you are thinking about ending your life, please reach out now: call or text 988 "
        "(Suicide & Crisis Lifeline, US), call your local emergency number, or talk to someone "
        "you trust. You do not have to go through this alone."
    ),
    "emergency.overdose": (
        "If someone took too much of a medicine, call your local emergency number or Poison "
        "Control (1-800-222-1222 in the US) now, even if they feel fine."
    ),
    "self_harm": (
        "I can't help with that. If you are thinking about harming yourself, please call or "
        "text 988 (Suicide & Crisis Lifeline, US) or your local emergency number now."
    ),
    "prescribing": (
        "I can't prescribe or set a dose for a specific person. Their clinician or pharmacist "
        "can, knowing their history, weight, kidney function and other medicines."
    ),
    "patient_harm": (
        "I can't help with that: it would deceive, harm or discriminate against patients, "
        "against the principles of medical ethics."
    ),
    "classifier": (
        "I can't help with that request: it looks like a request for harmful or unethical "
        "medical advice."
    ),
    "dosing": (
        "Doses depend on the person (age, weight, kidney and liver function, other medicines): "
        "ask your clinician or pharmacist to check the dose before taking it."
    ),
    "caveat": "This is general information, not medical advice: see a clinician about your case.",
}
"""The default message of each reason code; the longest matching prefix wins
(``"emergency.stroke"`` uses ``"emergency"``). A policy's ``messages`` override them."""


def message_for(reason: str, overrides: dict[str, str] | None = None) -> str:
    """The message of ``reason``: the longest dotted prefix found in ``overrides``, then
    :data:`MESSAGES` (``""`` when none)."""
    parts = reason.split(".")
    for table in (overrides or {}, MESSAGES):
        for end in range(len(parts), 0, -1):
            key = ".".join(parts[:end])
            if key in table:
                return table[key]
    return ""
