"""The plugin manager: built-in plugins, entry points, allow/deny by name.

Built-ins are ordinary plugins that implement the same hooks as third-party
ones. Third-party plugins are found through the ``lorakit`` entry-point group::

    [project.entry-points.lorakit]
    medqa_extras = "lorakit_medqa_extras.plugin"

``LORAKIT_DISABLE_PLUGINS=name1,name2`` disables plugins by name (an entry
point's name, or a built-in's module name such as ``lorakit.data.cleaners``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from lorakit import __version__, hookspecs
from lorakit._registry import Registry
from lorakit.errors import PluginError, did_you_mean

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Registries",
    "check_pending",
    "disabled_plugins",
    "hook_names",
    "make_plugin_manager",
    "plugin_summary",
]

ENTRY_POINT_GROUP = "lorakit"
DISABLE_ENV = "LORAKIT_DISABLE_PLUGINS"
DEFAULT_PLUGINS = (
    "lorakit.data.sources",
    "lorakit.data.cleaners",
    "lorakit.data.templates",
    "lorakit.model",
    "lorakit.presets",
    "lorakit.evaluate.plugin",
    "lorakit.evaluate.text_plugin",
    "lorakit.evaluate.benchmarks",
    "lorakit.retrieval.stores",
    "lorakit.safety.plugin",
    "lorakit.tracking",
    "lorakit.evaluate.concepts_plugin",
)


def disabled_plugins(env: dict[str, str] | None = None) -> frozenset[str]:
    """Plugin names listed in ``LORAKIT_DISABLE_PLUGINS`` (comma separated)."""
    value = (os.environ if env is None else env).get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def make_plugin_manager(
    *,
    builtins: bool = True,
    entry_points: bool = True,
    plugins: Iterable[object] = (),
    disabled: Iterable[str] | None = None,
) -> pluggy.PluginManager:
    """Create a plugin manager with lorakit's hookspecs and its plugins registered.

    Args:
        builtins: register the built-in plugins (:data:`DEFAULT_PLUGINS`).
        entry_points: load plugins from the ``lorakit`` entry-point group.
        plugins: extra plugin objects or modules to register (tests, scripts).
        disabled: plugin names not to load; ``None`` reads ``LORAKIT_DISABLE_PLUGINS``.

    Raises:
        PluginError: an entry point fails to import, or a plugin implements a
            ``lorakit_`` hook that does not exist (see :func:`check_pending`).
    """
    blocked = disabled_plugins() if disabled is None else frozenset(disabled)
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    if builtins:
        for module_name in DEFAULT_PLUGINS:
            if module_name not in blocked:
                pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        _load_entry_points(pm, blocked)
    for plugin in plugins:
        pm.register(plugin)
    check_pending(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager, blocked: frozenset[str]) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked or pm.get_plugin(ep.name) is not None:
            continue
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", None) or "an installed package"
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}, from {dist_name}) failed to import: "
                f"{type(exc).__name__}: {exc}",
                hint=f"fix or uninstall {dist_name}, or set {DISABLE_ENV}={ep.name}",
            ) from exc
        pm.register(plugin, name=ep.name)


def check_pending(pm: pluggy.PluginManager) -> None:
    """Fail loudly when a plugin implements a ``lorakit_`` hook that does not exist.

    A misspelled hook (``lorakit_register_cleaner``) would otherwise never be
    called. Raises :class:`PluginError` naming the plugin, the hook and the
    closest real hook.
    """
    known = hook_names()
    for plugin_name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        implemented = {caller.name for caller in pm.get_hookcallers(plugin) or []}
        for attr in dir(plugin):
            if not attr.startswith("lorakit_") or not callable(getattr(plugin, attr, None)):
                continue
            if attr not in known:
                raise PluginError(
                    f"plugin {plugin_name!r} implements unknown hook {attr!r}",
                    hint=did_you_mean(attr, known) or f"hooks: {', '.join(known)}",
                )
            if attr not in implemented:
                raise PluginError(
                    f"plugin {plugin_name!r} defines {attr!r} without marking it as a hook",
                    hint="decorate it with @lorakit.hookimpl",
                )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc), hint=did_you_mean(str(exc), known)) from exc


def hook_names() -> list[str]:
    """The names of every lorakit hook, sorted."""
    return sorted(name for name in dir(hookspecs) if name.startswith("lorakit_"))


def _collect(pm: pluggy.PluginManager, hook_name: str, kind: str) -> Registry[Any]:
    registry: Registry[Any] = Registry(kind)
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(name: str, obj: object, /, _plugin: str = plugin_name) -> None:
            registry.register(name, obj, plugin=_plugin)

        kwargs = {"register": register} if "register" in impl.argnames else {}
        impl.function(**kwargs)
    return registry


@attrs.frozen
class Registries:
    """Everything the plugins registered, by kind. Build with :meth:`from_plugin_manager`."""

    sources: Registry[Any]
    cleaners: Registry[Any]
    templates: Registry[Any]
    metrics: Registry[Any]
    presets: Registry[Any]
    benchmarks: Registry[Any]
    retrievers: Registry[Any] = attrs.field(factory=lambda: Registry("retriever"))
    guards: Registry[Any] = attrs.field(factory=lambda: Registry("guard"))
    trackers: Registry[Any] = attrs.field(factory=lambda: Registry("tracker"))
    vocabularies: Registry[Any] = attrs.field(factory=lambda: Registry("vocabulary"))

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager | None = None) -> Registries:
        """Call every ``lorakit_register_*`` hook of ``pm`` (a fresh default manager if ``None``)."""
        pm = make_plugin_manager() if pm is None else pm
        return cls(
            sources=_collect(pm, "lorakit_register_sources", "source"),
            cleaners=_collect(pm, "lorakit_register_cleaners", "cleaner"),
            templates=_collect(pm, "lorakit_register_templates", "template"),
            metrics=_collect(pm, "lorakit_register_metrics", "metric"),
            presets=_collect(pm, "lorakit_register_presets", "preset"),
            benchmarks=_collect(pm, "lorakit_register_benchmarks", "benchmark"),
            retrievers=_collect(pm, "lorakit_register_retrievers", "retriever"),
            guards=_collect(pm, "lorakit_register_guards", "guard"),
            trackers=_collect(pm, "lorakit_register_trackers", "tracker"),
            vocabularies=_collect(pm, "lorakit_register_vocabularies", "vocabulary"),
        )


def plugin_summary(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """One entry per registered plugin: name, distribution and version, hooks it implements."""
    dists = {ep.name: ep.dist for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    out = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        dist = dists.get(name)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        out.append(
            {
                "name": name,
                "package": dist.name
                if dist is not None
                else ("lorakit" if name in DEFAULT_PLUGINS else None),
                "version": dist.version
                if dist is not None
                else (__version__ if name in DEFAULT_PLUGINS else None),
                "builtin": name in DEFAULT_PLUGINS,
                "hooks": hooks,
            }
        )
    return out
