"""A named registry of plugin-provided objects (sources, cleaners, templates, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import attrs

from lorakit.errors import ConfigError, PluginError, did_you_mean

T = TypeVar("T")

__all__ = ["Registry"]


@attrs.frozen
class Entry(Generic[T]):
    """One registered object and the plugin that registered it."""

    name: str
    obj: T
    plugin: str


class Registry(Generic[T]):
    """Names to objects, filled through a ``lorakit_register_*`` hook.

    A duplicate name is a :class:`PluginError` naming both plugins; an unknown
    name is a :class:`ConfigError` that suggests the closest registered name.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, *, plugin: str = "?") -> None:
        """Add ``obj`` under ``name``; ``plugin`` names who registered it, for errors."""
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {plugin!r} registered a {self.kind} with an empty or non-string name {name!r}"
            )
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered twice, by {other!r} and by {plugin!r}",
                hint=f"disable one of them with LORAKIT_DISABLE_PLUGINS={plugin}",
            )
        self._entries[name] = Entry(name, obj, plugin)

    def resolve(self, name: str) -> T:
        """The object registered under ``name``."""
        try:
            return self._entries[name].obj
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            hint = did_you_mean(name, self._entries) or f"known {self.kind}s: {known}"
            raise ConfigError(f"unknown {self.kind} {name!r}", hint=hint) from None

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` (object and plugin name) registered under ``name``."""
        self.resolve(name)
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"
