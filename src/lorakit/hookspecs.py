"""Every hook a lorakit plugin can implement.

A plugin is a module or object with functions named like these hooks and marked
with :data:`hookimpl`; it is found through the ``lorakit`` entry-point group.
Hooks are called with keyword arguments; an implementation may accept any
subset of them.
"""

from __future__ import annotations

import pluggy

from lorakit.protocols import Register

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("lorakit")
hookimpl = pluggy.HookimplMarker("lorakit")


@hookspec
def lorakit_register_sources(register: Register) -> None:
    """Register source readers under their URI scheme.

    Call ``register(scheme, reader)`` once per scheme, where ``reader`` is a
    :class:`~lorakit.protocols.SourceReader`. ``register("jsonl", read_jsonl)``
    makes ``jsonl:path/to/file.jsonl`` readable. Return nothing; a scheme
    registered twice is a :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_cleaners(register: Register) -> None:
    """Register row cleaners by name.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a fresh
    :class:`~lorakit.protocols.Cleaner`. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_templates(register: Register) -> None:
    """Register prompt templates by name.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a
    :class:`~lorakit.protocols.Template`. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_metrics(register: Register) -> None:
    """Register evaluation metrics by name.

    Call ``register(name, metric)`` where ``metric`` is a
    :class:`~lorakit.protocols.Metric`. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """


@hookspec
def lorakit_register_presets(register: Register) -> None:
    """Register training presets by name.

    Call ``register(name, preset)``; ``lorakit presets`` lists them and
    ``lorakit train NAME`` runs one. Return nothing; a duplicate name is a
    :class:`~lorakit.errors.PluginError`.
    """
