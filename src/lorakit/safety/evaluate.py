"""Measuring a policy: block rate on harmful requests, over-block rate on benign questions.

:func:`read_prompts` reads the texts of a source URI (the rows' questions). A generic source
(``jsonl``, ``csv``, ``parquet``, ``hf``) names its text column after ``@``:
``jsonl:../shared/data/general/alpaca_seed_tasks.jsonl@instruction``. A plain text file is read
with ``lines:FILE`` (one prompt a line). ``#N`` at the end keeps a seeded sample of N.

:func:`evaluate_policy` runs a :class:`~lorakit.safety.GuardSet`'s input guards over harmful
and benign texts and returns a :class:`SafetyEvalReport`: rates with Wilson 95 % intervals,
per source and, for MedSafetyBench, per category.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from lorakit.plugins import Registries
    from lorakit.safety.policy import GuardSet

__all__ = ["Prompt", "RateResult", "SafetyEvalReport", "evaluate_policy", "read_prompts"]

_GENERIC = ("jsonl", "csv", "parquet", "hf")


@attrs.frozen
class Prompt:
    """A text to check, with the category it belongs to (``""`` when none) and its source."""

    text: str
    category: str = ""
    source: str = ""


def read_prompts(
    uri: str, *, registries: Registries | None = None, limit: int | None = None
) -> list[Prompt]:
    """The prompts of a source URI: each row's question (see the module docs for ``@COLUMN``,
    ``lines:`` and ``#N``). Duplicates are kept once, in order; empty texts are skipped.
    ``limit`` keeps a seeded sample of at most that many (as ``#N`` does; the smaller wins).

    Raises:
        ConfigError: an unknown scheme, a bad ``#N`` or ``limit``.
        DataError: the source cannot be read, or holds no text.
    """
    from lorakit.data.sources import read_source

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be at least 1, got {limit!r}", field="--limit")
    spec, sample = uri, None
    if "#" in uri.rsplit("/", 1)[-1] and uri.rsplit("#", 1)[1].isdigit():
        spec, count = uri.rsplit("#", 1)
        sample = int(count)
        if sample < 1:
            raise ConfigError(f"#N must be at least 1 in {uri!r}", field="source")
    texts: list[Prompt] = []
    if spec.startswith("lines:"):
        path = Path(spec[len("lines:") :])
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except FileNotFoundError:
            raise DataError("no such file", file=str(path)) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 at byte {exc.start}", file=str(path)) from None
        texts = [Prompt(line.strip(), "", spec) for line in lines if line.strip()]
    else:
        fields = None
        scheme = spec.partition(":")[0]
        if scheme in _GENERIC and "@" in spec:
            spec, column = spec.rsplit("@", 1)
            fields = {"question": column, "answer": column}
        for row in read_source(spec, fields=fields, registries=registries):
            if row.question.strip():
                category = (row.category or "") if scheme == "medsafetybench" else ""
                texts.append(Prompt(row.question.strip(), category, uri))
    seen: set[str] = set()
    unique = [p for p in texts if not (p.text in seen or seen.add(p.text))]  # type: ignore[func-returns-value]
    if not unique:
        raise DataError("holds no text to check", file=uri)
    keep = min(n for n in (sample, limit, len(unique)) if n is not None)
    if keep < len(unique):
        unique = random.Random(0).sample(unique, keep)
    return unique


@attrs.frozen
class RateResult:
    """How many of ``n`` texts a policy blocked (and flagged), with a Wilson 95 % interval."""

    n: int
    blocked: int
    flagged: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        """``blocked / n``."""
        return self.blocked / self.n

    @classmethod
    def from_counts(cls, n: int, blocked: int, flagged: int = 0) -> RateResult:
        """A result with its interval."""
        from lorakit.evaluate.stats import wilson_interval

        low, high = wilson_interval(blocked, n)
        return cls(n=n, blocked=blocked, flagged=flagged, low=low, high=high)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: counts, rate and ``ci95``."""
        return {
            "n": self.n,
            "blocked": self.blocked,
            "flagged": self.flagged,
            "rate": self.rate,
            "ci95": [self.low, self.high],
        }


@attrs.frozen(kw_only=True)
class SafetyEvalReport:
    """The block rate on harmful texts and the over-block rate on benign texts.

    ``harmful`` and ``benign`` pool every source of their kind; ``by_source`` and
    ``by_category`` (harmful MedSafetyBench categories) break them down; ``reasons`` counts
    the reason codes of the blocks; ``examples`` keeps a few over-blocked benign texts;
    ``ms_per_text`` is the mean check time.
    """

    policy: str
    harmful: RateResult | None
    benign: RateResult | None
    by_source: dict[str, RateResult]
    by_category: dict[str, RateResult]
    reasons: dict[str, int]
    examples: list[dict[str, str]]
    ms_per_text: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "policy": self.policy,
            "harmful_block_rate": None if self.harmful is None else self.harmful.to_dict(),
            "benign_overblock_rate": None if self.benign is None else self.benign.to_dict(),
            "by_source": {k: v.to_dict() for k, v in self.by_source.items()},
            "harmful_by_category": {k: v.to_dict() for k, v in self.by_category.items()},
            "block_reasons": dict(self.reasons),
            "overblocked_examples": list(self.examples),
            "ms_per_text": self.ms_per_text,
        }


def _tally(guards: GuardSet, prompts: Sequence[Prompt]) -> list[tuple[Prompt, str, str]]:
    results: list[tuple[Prompt, str, str]] = []
    for prompt, verdicts in zip(
        prompts, guards.check_inputs([p.text for p in prompts]), strict=True
    ):
        decision = guards.decide(verdicts)
        results.append((prompt, decision.decision, decision.reason))
    return results


def evaluate_policy(
    guards: GuardSet,
    harmful: Sequence[Sequence[Prompt]] = (),
    benign: Sequence[Sequence[Prompt]] = (),
    *,
    max_examples: int = 10,
) -> SafetyEvalReport:
    """Run the input guards over every prompt; a prompt counts as blocked when the policy's
    decision is ``block``.

    Raises:
        ConfigError: no prompts at all.
    """
    if not any(harmful) and not any(benign):
        raise ConfigError("nothing to evaluate: give --harmful and/or --benign sources")
    started = time.perf_counter()
    total = 0
    by_source: dict[str, RateResult] = {}
    pooled: dict[str, list[tuple[Prompt, str, str]]] = {"harmful": [], "benign": []}
    for kind, groups in (("harmful", harmful), ("benign", benign)):
        for prompts in groups:
            tallied = _tally(guards, prompts)
            total += len(tallied)
            pooled[kind].extend(tallied)
            name = prompts[0].source if prompts else "?"
            by_source[f"{kind}:{name}"] = _rate(tallied)
    categories: dict[str, list[tuple[Prompt, str, str]]] = defaultdict(list)
    for item in pooled["harmful"]:
        if item[0].category:
            categories[item[0].category].append(item)
    reasons: dict[str, int] = defaultdict(int)
    for _, decision, reason in pooled["harmful"] + pooled["benign"]:
        if decision == "block":
            for code in reason.split(","):
                reasons[code] += 1
    examples = [
        {"text": p.text[:300], "reason": reason, "source": p.source}
        for p, decision, reason in pooled["benign"]
        if decision == "block"
    ][:max_examples]
    return SafetyEvalReport(
        policy=guards.policy.name,
        harmful=_rate(pooled["harmful"]) if pooled["harmful"] else None,
        benign=_rate(pooled["benign"]) if pooled["benign"] else None,
        by_source=by_source,
        by_category={
            k: _rate(v)
            for k, v in sorted(
                categories.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0
            )
        },
        reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        examples=examples,
        ms_per_text=1000 * (time.perf_counter() - started) / max(total, 1),
    )


def _rate(items: Sequence[tuple[Prompt, str, str]]) -> RateResult:
    blocked = sum(1 for _, d, _ in items if d == "block")
    flagged = sum(1 for _, d, _ in items if d == "flag")
    return RateResult.from_counts(len(items), blocked, flagged)
