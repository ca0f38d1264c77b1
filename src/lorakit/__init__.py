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
    from lorakit.adapter import AdapterSpec
    from lorakit.data.cleaners import CleanerSpec, CleaningReport
    from lorakit.data.pipeline import DataReport, DataSpec, PreparedData, QADataset, prepare_data
    from lorakit.data.rows import QARow
    from lorakit.data.sources import read_source
    from lorakit.data.splits import SplitSpec
    from lorakit.data.tokenize import TokenizeSpec
    from lorakit.evaluate.benchmarks import run_benchmark
    from lorakit.model import ModelSpec, QuantizedModelBuilder, QuantSpec
    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.recipe import EvalSpec, Recipe, RunResult
    from lorakit.run_report import RunReport
    from lorakit.train import TrainerFactory, TrainingSpec

__all__ = [
    "AdapterSpec",
    "CleanerSpec",
    "CleaningReport",
    "ConfigError",
    "DataError",
    "DataReport",
    "DataSpec",
    "EvalSpec",
    "LorakitError",
    "ModelSpec",
    "PluginError",
    "PreparedData",
    "QADataset",
    "QARow",
    "QuantSpec",
    "QuantizedModelBuilder",
    "Recipe",
    "Registries",
    "RunReport",
    "RunResult",
    "SplitSpec",
    "TokenizeSpec",
    "TrainerFactory",
    "TrainingSpec",
    "__version__",
    "hookimpl",
    "make_plugin_manager",
    "prepare_data",
    "read_source",
    "run_benchmark",
]

_LAZY = {
    "CleanerSpec": "lorakit.data.cleaners",
    "CleaningReport": "lorakit.data.cleaners",
    "DataReport": "lorakit.data.pipeline",
    "DataSpec": "lorakit.data.pipeline",
    "PreparedData": "lorakit.data.pipeline",
    "QADataset": "lorakit.data.pipeline",
    "prepare_data": "lorakit.data.pipeline",
    "QARow": "lorakit.data.rows",
    "read_source": "lorakit.data.sources",
    "SplitSpec": "lorakit.data.splits",
    "TokenizeSpec": "lorakit.data.tokenize",
    "Registries": "lorakit.plugins",
    "AdapterSpec": "lorakit.adapter",
    "run_benchmark": "lorakit.evaluate.benchmarks",
    "ModelSpec": "lorakit.model",
    "QuantSpec": "lorakit.model",
    "QuantizedModelBuilder": "lorakit.model",
    "EvalSpec": "lorakit.recipe",
    "Recipe": "lorakit.recipe",
    "RunResult": "lorakit.recipe",
    "RunReport": "lorakit.run_report",
    "TrainingSpec": "lorakit.train",
    "TrainerFactory": "lorakit.train",
    "TrainingArgs": "lorakit.train",  # deprecated alias of TrainingSpec
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
