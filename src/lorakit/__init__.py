"""lorakit: LoRA / QLoRA fine-tuning of small instruction-tuned LLMs on question-answer data.

``import lorakit`` is cheap: it imports neither torch nor transformers. The
names below that need them are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

from lorakit.errors import ConfigError, DataError, LorakitError, PluginError
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.data.cleaners import CleanerSpec, CleaningReport
    from lorakit.data.pipeline import DataReport, DataSpec, PreparedData, prepare_data
    from lorakit.data.rows import QARow
    from lorakit.data.sources import read_source
    from lorakit.data.splits import SplitSpec
    from lorakit.data.tokenize import TokenizeSpec
    from lorakit.plugins import Registries, make_plugin_manager

__all__ = [
    "CleanerSpec",
    "CleaningReport",
    "ConfigError",
    "DataError",
    "DataReport",
    "DataSpec",
    "LorakitError",
    "PluginError",
    "PreparedData",
    "QARow",
    "Registries",
    "SplitSpec",
    "TokenizeSpec",
    "__version__",
    "hookimpl",
    "make_plugin_manager",
    "prepare_data",
    "read_source",
]

_LAZY = {
    "CleanerSpec": "lorakit.data.cleaners",
    "CleaningReport": "lorakit.data.cleaners",
    "DataReport": "lorakit.data.pipeline",
    "DataSpec": "lorakit.data.pipeline",
    "PreparedData": "lorakit.data.pipeline",
    "prepare_data": "lorakit.data.pipeline",
    "QARow": "lorakit.data.rows",
    "read_source": "lorakit.data.sources",
    "SplitSpec": "lorakit.data.splits",
    "TokenizeSpec": "lorakit.data.tokenize",
    "Registries": "lorakit.plugins",
    "make_plugin_manager": "lorakit.plugins",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lorakit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
