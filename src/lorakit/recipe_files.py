"""Recipes as files: TOML, YAML or JSON (a run's ``recipe.json`` too), and back.

A recipe file names a ``preset`` to start from and changes what it lists, in the
recipe's own nesting::

    preset = "medqa_phi3"
    name = "medqa_r32"

    [adapter]
    rank = 32

    [training]
    learning_rate = 1e-4

A file without ``preset`` must give the whole recipe (``name``, ``model`` and ``data`` at
least), as ``recipe.json`` and ``lorakit config show`` do. Every value is checked as a
``--set`` value is: an unknown key names the nearest one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError, LorakitError

if TYPE_CHECKING:
    from lorakit._registry import Registry
    from lorakit.recipe import Recipe

__all__ = ["SUFFIXES", "is_recipe_file", "load_recipe", "recipe_from_mapping", "recipe_to_text"]

SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def is_recipe_file(text: str) -> bool:
    """Whether ``text`` names a recipe file or a run directory (rather than a preset)."""
    path = Path(text)
    return path.suffix.lower() in SUFFIXES or (path.is_dir() and (path / "recipe.json").is_file())


def load_recipe(text: str, presets: Registry[Recipe]) -> Recipe:
    """The recipe named by ``text``: a preset name, a recipe file, or a run directory."""
    if not is_recipe_file(text):
        return presets.resolve(text)
    path = Path(text)
    if path.is_dir():
        path = path / "recipe.json"
    if not path.is_file():
        raise ConfigError(
            "no such recipe file", file=str(path), hint="check the path, or give a preset name"
        )
    data = _read(path)
    if path.name == "recipe.json" and isinstance(data.get("recipe"), Mapping):
        data = dict(data["recipe"])  # a run directory's resolved recipe
    try:
        return recipe_from_mapping(data, presets)
    except ConfigError as error:
        raise ConfigError(
            error.message, file=str(path), field=error.field, hint=error.hint
        ) from None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LorakitError(f"cannot read the recipe file: {error}", file=str(path)) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # each parser has its own error class; all name the line
        line = getattr(error, "lineno", None) or getattr(
            getattr(error, "problem_mark", None), "line", None
        )
        raise ConfigError(
            f"not valid {suffix.lstrip('.').upper()}: {str(error).splitlines()[0]}",
            file=str(path),
            line=line,
            hint="fix the syntax at that line",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"a recipe file holds a table of settings, not a {type(data).__name__}",
            file=str(path),
        )
    return data


def recipe_from_mapping(data: Mapping[str, Any], presets: Registry[Recipe]) -> Recipe:
    """A recipe from nested settings: ``preset`` (optional) plus the settings it changes."""
    settings = dict(data)
    base_name = settings.pop("preset", None)
    if base_name is None:
        missing = [key for key in ("name", "model", "data") if key not in settings]
        if missing:
            raise ConfigError(
                f"a recipe file without 'preset' must give the whole recipe; missing: "
                f"{', '.join(missing)}",
                field=missing[0],
                hint='start from a preset: preset = "medqa_phi3"',
            )
        base_name = "medqa_phi3"
    if not isinstance(base_name, str):
        raise ConfigError("'preset' must be a preset's name", field="preset")
    base = presets.resolve(base_name)
    return base.with_overrides(_dotted(base, settings, ""))


def _dotted(spec: Any, settings: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Nested settings as dotted keys, descending only into the spec's own groups."""
    out: dict[str, Any] = {}
    names = {f.name for f in attrs.fields(type(spec))}
    for key, value in settings.items():
        current = getattr(spec, key, None) if key in names else None
        if isinstance(value, Mapping) and current is not None and attrs.has(type(current)):
            out.update(_dotted(current, value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def recipe_to_text(recipe: Recipe, fmt: str = "toml") -> str:
    """The fully resolved recipe as TOML, YAML or JSON; loading it gives the same recipe."""
    data = recipe.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    if fmt == "toml":
        return _toml(recipe)
    raise ConfigError(f"unknown format {fmt!r}", field="--format", hint="toml, yaml or json")


def _toml(recipe: Recipe) -> str:
    lines: list[str] = []
    _toml_table(recipe, recipe.to_dict(), [], lines)
    return "\n".join(lines).strip() + "\n"


def _toml_table(spec: Any, data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    """Settings groups (nested specs) become tables; everything else is a value."""
    groups = [k for k in data if attrs.has(type(getattr(spec, k, None)))]
    if path:
        lines += ["", f"[{'.'.join(path)}]"]
    for key, value in data.items():
        if key not in groups:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key in groups:
        _toml_table(getattr(spec, key), data[key], [*path, _toml_key(key)], lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} as TOML")
