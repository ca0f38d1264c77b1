"""Built-in plugin: the free-text metrics of :mod:`lorakit.evaluate.text`.

Registers, through the same ``lorakit_register_metrics`` hook a third-party plugin uses:

* ``"token_f1"``: :func:`~lorakit.evaluate.text.token_f1`
* ``"rouge_l"``: :func:`~lorakit.evaluate.text.rouge_l`
* ``"exact_match"``: :func:`~lorakit.evaluate.text.exact_match`
* ``"embedding_similarity"``: an :class:`~lorakit.evaluate.text.EmbeddingSimilarity`

``"embedding_similarity"`` is registered whether or not its optional extra is installed, so the
name is always known (``lorakit plugins`` lists it, a recipe naming it validates the same way
on every machine). Registering it costs nothing: the model loads on first use, and without the
extra that first use raises :class:`~lorakit.errors.ConfigError` with the
``pip install "lorakit[embeddings]"`` hint, rather than an "unknown metric" error that would
hide the fix. Check :meth:`~lorakit.evaluate.text.EmbeddingSimilarity.available` to skip it.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorakit.evaluate.text import EmbeddingSimilarity, exact_match, rouge_l, token_f1
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorakit.protocols import Register

__all__ = ["lorakit_register_metrics"]


@hookimpl
def lorakit_register_metrics(register: Register) -> None:
    """Register the free-text metrics (see the module docstring)."""
    register("token_f1", token_f1)
    register("rouge_l", rouge_l)
    register("exact_match", exact_match)
    register("embedding_similarity", EmbeddingSimilarity())
