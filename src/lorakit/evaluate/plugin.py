"""Built-in plugin: the model metrics ``mcq_accuracy`` and ``perplexity``.

Registered through the same ``lorakit_register_metrics`` hook a third-party plugin uses:

* ``"mcq_accuracy"``: an :class:`~lorakit.evaluate.mcq.MCQAccuracy`, multiple-choice accuracy by
  log-likelihood (or generation) with Wilson intervals and a per-category breakdown;
* ``"perplexity"``: a :class:`~lorakit.evaluate.perplexity.Perplexity`, answer-only perplexity.

Both are :class:`~lorakit.evaluate.base.ModelMetric` objects (``name`` and
``evaluate(model, tokenizer, rows, **options)``), unlike the text metrics of the same registry.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorakit.evaluate.mcq import MCQAccuracy
from lorakit.evaluate.perplexity import Perplexity
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.protocols import Register

__all__ = ["lorakit_register_metrics"]


@hookimpl
def lorakit_register_metrics(register: Register) -> None:
    """Register ``mcq_accuracy`` and ``perplexity`` (see the module docstring)."""
    register("mcq_accuracy", MCQAccuracy())
    register("perplexity", Perplexity())
