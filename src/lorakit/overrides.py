"""``with_overrides``: change nested frozen specs by dotted path, with values checked by type."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin

import attrs

from lorakit.errors import ConfigError, did_you_mean

T = TypeVar("T")

__all__ = ["apply_overrides", "dotted_keys", "parse_assignment"]


def dotted_keys(spec: Any, prefix: str = "") -> list[str]:
    """Every settable dotted path of an attrs spec (``adapter.rank``, ``data.split.seed`` ...)."""
    keys = []
    for field in attrs.fields(type(spec)):
        value = getattr(spec, field.name)
        path = f"{prefix}{field.name}"
        if attrs.has(type(value)):
            keys.extend(dotted_keys(value, f"{path}."))
        else:
            keys.append(path)
    return keys


def parse_assignment(text: str) -> tuple[str, str]:
    """``"adapter.rank=32"`` -> ``("adapter.rank", "32")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {text!r} is not KEY=VALUE", field="--set", hint="e.g. --set adapter.rank=32"
        )
    return key.strip(), value.strip()


def apply_overrides(spec: T, overrides: Mapping[str, Any]) -> T:
    """A copy of ``spec`` with each dotted path set; string values are parsed to the field's type.

    All changes to one spec are applied together, so settings that are checked
    against each other (``save_steps`` and ``eval_steps``) can change in one call.
    """
    changes = {tuple(key.split(".")): (key, value) for key, value in overrides.items()}
    return typing.cast(T, _apply(spec, changes, ""))


def _apply(spec: Any, changes: Mapping[tuple[str, ...], tuple[str, Any]], prefix: str) -> Any:
    cls = type(spec)
    fields = {f.name for f in attrs.fields(cls)}
    hints = typing.get_type_hints(cls)
    direct: dict[str, Any] = {}
    nested: dict[str, dict[tuple[str, ...], tuple[str, Any]]] = {}
    for parts, (key, value) in changes.items():
        name = parts[0]
        if name not in fields:
            candidates = dotted_keys(spec, prefix)
            raise ConfigError(
                f"unknown setting {key!r}",
                field=key,
                hint=did_you_mean(key, candidates) or f"settings here: {', '.join(candidates)}",
            )
        current = getattr(spec, name)
        if len(parts) > 1:
            if not attrs.has(type(current)):
                raise ConfigError(f"{prefix + name!r} has no sub-settings", field=key)
            nested.setdefault(name, {})[parts[1:]] = (key, value)
        elif attrs.has(type(current)) and not attrs.has(type(value)):
            raise ConfigError(
                f"{key!r} is a group of settings, not one value",
                field=key,
                hint=f"set one of: {', '.join(dotted_keys(current, key + '.'))}",
            )
        else:
            direct[name] = _coerce(value, hints.get(name, Any), key)
    for name, sub in nested.items():
        direct[name] = _apply(getattr(spec, name), sub, f"{prefix}{name}.")
    try:
        return attrs.evolve(spec, **direct)
    except ConfigError as exc:
        # A nested spec's own validator names its field without the dotted prefix.
        full = [key for key, _ in changes.values() if exc.field and key.endswith(exc.field)]
        if not full or exc.field == full[0]:
            raise
        raise ConfigError(exc.message, field=full[0], hint=exc.hint) from exc
    except (ValueError, TypeError) as exc:
        keys = ", ".join(key for key, _ in changes.values())
        detail = exc.args[0] if exc.args else exc  # attrs validators add the Attribute to args
        raise ConfigError(f"bad value for {keys}: {detail}", field=keys) from exc


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether a non-string value fits the field's annotation (checked where attrs does not)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True  # str, Literal, tuples, mappings, specs: left to the field's converter/validator


def _parse_options(text: str, key: str) -> dict[str, Any]:
    """``"system=Be brief,include_context=false"`` -> options, values parsed as cleaner options are."""
    from lorakit.data.cleaners import parse_option_value

    options: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, raw = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                f"{part!r} is not NAME=VALUE", field=key, hint="e.g. name=value,other=2"
            )
        options[name.strip()] = parse_option_value(raw.strip())
    return options


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    if not isinstance(value, str):
        if not _type_ok(value, annotation):
            raise ConfigError(
                f"expected {getattr(annotation, '__name__', annotation)}, got {value!r}", field=key
            )
        return value
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"bad value {value!r}", field=key)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{value!r} is not one of {', '.join(map(str, args))}",
            field=key,
            hint=did_you_mean(value, [str(a) for a in args]),
        )
    if origin is tuple:
        # Items are split on ";" when there is one (cleaners carry options with commas).
        separator = ";" if ";" in value else ","
        return tuple(part.strip() for part in value.split(separator) if part.strip())
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if key.endswith(".fields"):
            from lorakit.data.rows import parse_fields

            return parse_fields(value)
        return _parse_options(value, key)
    if annotation is bool:
        lowered = value.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"expected true or false, got {value!r}", field=key)
    if annotation in (int, float):
        try:
            return annotation(value)
        except ValueError:
            raise ConfigError(f"expected {annotation.__name__}, got {value!r}", field=key) from None
    return value
