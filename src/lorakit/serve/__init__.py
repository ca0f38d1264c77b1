"""Front ends over the answer path (:mod:`lorakit.answer`): ``lorakit ask``, ``lorakit chat``,
``lorakit generate``, ``lorakit merge`` and the OpenAI-compatible server ``lorakit serve``.

Each is thin: it builds an :class:`~lorakit.answer.Answerer` and calls it, so retrieval and
the safety guards run the same way behind every door. Importing this package imports nothing
heavy; the server's web stack (FastAPI, uvicorn) is the ``serve`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
