"""Edits of a cleaning chain on the command line: ``+name`` adds, ``-name`` removes; and the
chain of private data (``scrub_phi`` appended)."""

from __future__ import annotations

from collections.abc import Sequence

from lorakit.data.cleaners import CleanerSpec
from lorakit.errors import ConfigError

__all__ = ["PHI_CLEANER", "edit_chain", "private_chain"]

PHI_CLEANER = "scrub_phi"
"""The cleaner that private data always runs (:mod:`lorakit.safety.phi`)."""


def private_chain(chain: Sequence[CleanerSpec], private: bool) -> tuple[CleanerSpec, ...]:
    """``chain`` as it runs on data that is (or is not) private: with ``private``,
    :data:`PHI_CLEANER` is appended unless the chain already has it (then its place and
    options are kept, e.g. ``scrub_phi:entities=NAME+DATE`` early in the chain)."""
    if not private or any(step.name == PHI_CLEANER for step in chain):
        return tuple(chain)
    return (*chain, CleanerSpec(PHI_CLEANER))


def edit_chain(
    base: Sequence[CleanerSpec], edits: Sequence[str]
) -> tuple[tuple[CleanerSpec, ...], str]:
    """A cleaning chain changed by ``edits``, and a sentence saying what changed.

    ``+name[:opts]`` appends a step (replacing a step of the same name in place), ``-name``
    removes one; a list without signs replaces the whole chain. Signed and unsigned edits
    cannot be mixed.

    Raises:
        ConfigError: mixed edits, or ``-name`` for a step the chain does not have.
    """
    signed = [e.strip().startswith(("+", "-")) for e in edits]
    if not edits:
        return tuple(base), "the default cleaning chain"
    if any(signed) and not all(signed):
        raise ConfigError(
            "mix of signed (+name, -name) and plain cleaner names",
            field="--cleaner",
            hint="sign every one to edit the default chain, or none to replace it",
        )
    if not all(signed):
        replaced = tuple(CleanerSpec.parse(text) for text in edits)
        names = ", ".join(s.name for s in replaced)
        return replaced, f"the default cleaning chain was replaced by: {names}"
    chain = list(base)
    done = []
    for text in (e.strip() for e in edits):
        if text.startswith("+"):
            step = CleanerSpec.parse(text[1:])
            at = next((i for i, s in enumerate(chain) if s.name == step.name), None)
            if at is None:
                chain.append(step)
            else:
                chain[at] = step
            done.append(f"added {step.name}")
        else:
            name = text[1:].strip()
            if not any(s.name == name for s in chain):
                raise ConfigError(
                    f"the chain has no cleaner {name!r} to remove",
                    field="--cleaner",
                    hint=f"the chain: {', '.join(s.name for s in chain)}",
                )
            chain = [s for s in chain if s.name != name]
            done.append(f"removed {name}")
    return tuple(chain), "the default cleaning chain, " + ", ".join(done)
