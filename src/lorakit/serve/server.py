"""``lorakit serve``: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over the answer path.

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` as server-sent events),
``POST /v1/completions``, ``GET /v1/models``, ``GET /health``. Several runs trained on one base
model are served from one copy of it: each run's adapter is loaded under the run's folder name,
and a request's ``model`` chooses it (the base model's own name serves the base alone).

Batching: one scheduler thread owns the model. Requests that arrive while a batch runs wait in
a queue; the next batch takes every waiting request for the same adapter (up to
``max_batch``) and decodes them together, one row each, each with its own sampling settings and
token limit (static batching: a request never joins a batch already running). Streaming rows
get their tokens as they are decoded.

Every error is JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: a
malformed request is a 400 (422 never leaks), a bad key 401, an unknown model 404, an
oversized body 413, a queue that is full 429, a timeout 504; a
:class:`~lorakit.errors.LorakitError` raised by the answer path (a prompt longer than the
context) is a 400 naming the field. Nothing a client sends takes the server down.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError, LorakitError
from lorakit.serve import routes
from lorakit.serve.openai_api import ChatRequest as ChatRequest
from lorakit.serve.openai_api import CompletionRequest as CompletionRequest
from lorakit.serve.openai_api import Message as Message
from lorakit.serve.openai_api import Sampling as Sampling
from lorakit.serve.scheduler import Job as Job
from lorakit.serve.scheduler import QueueFull as QueueFull
from lorakit.serve.scheduler import Scheduler
from lorakit.serve.scheduler import Timeout as Timeout

if TYPE_CHECKING:
    from lorakit.answer import Answerer, SamplingSpec

__all__ = ["ModelPool", "Scheduler", "ServerLimits", "create_app", "load_pool", "run_server"]


@attrs.frozen(kw_only=True)
class ServerLimits:
    """What one request may ask for, and how long it may take.

    Attributes:
        max_tokens: the most new tokens a request may ask for (and the default for chat).
        max_body_bytes: the largest request body.
        max_messages: the most messages in one chat request.
        max_batch: requests decoded together.
        max_queue: requests waiting; more get 429.
        timeout_s: a request not finished by then gets 504 (its row stops decoding).
        batch_wait_s: how long the scheduler waits for more requests before starting a batch.
    """

    max_tokens: int = 512
    max_body_bytes: int = 1_000_000
    max_messages: int = 256
    max_batch: int = 8
    max_queue: int = 256
    timeout_s: float = 300.0
    batch_wait_s: float = 0.005


@attrs.define
class ModelPool:
    """The answerers served, by model id; all share one model, tokenizer and lock."""

    answerers: dict[str, Answerer]
    base: str
    created: int = attrs.field(factory=lambda: int(time.time()))

    def get(self, name: str) -> Answerer:
        """The answerer for a request's ``model``.

        Raises:
            ModelNotFound: no such model.
        """
        if name not in self.answerers:
            raise ModelNotFound(name, list(self.answerers))
        return self.answerers[name]


class ModelNotFound(LorakitError):
    """A request names a model the server does not serve."""

    def __init__(self, name: str, names: Sequence[str]) -> None:
        super().__init__(
            f"the model {name!r} does not exist",
            field="model",
            hint=f"models served: {', '.join(names)}",
        )


def load_pool(
    run_dirs: Sequence[str | Path],
    *,
    quant: str | None = None,
    sampling: SamplingSpec | None = None,
    index: str | None = None,
    policy: str | None = None,
) -> ModelPool:
    """Load the base model once and every run's adapter under the run folder's name.

    Raises:
        ConfigError: runs on different base models or quantisations, two runs of one folder
            name, or a run that is not finished.
    """
    from lorakit.answer import Answerer, load_guards, load_index, resolve_template
    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.run_source import RunSource, quant_spec
    from lorakit.run_source import load_model_and_adapters as load

    if not run_dirs:
        raise ConfigError("no run directory to serve", field="RUN_DIR")
    sources = {}
    for folder in run_dirs:
        source = RunSource.from_run_dir(folder)
        name = Path(folder).resolve().name
        if name in sources:
            raise ConfigError(
                f"two runs named {name!r}", file=str(folder), hint="rename one run folder"
            )
        sources[name] = source
    first = next(iter(sources.values()))
    for name, source in sources.items():
        if source.model != first.model or (quant is None and source.quant != first.quant):
            raise ConfigError(
                f"run {name!r} trained on {source.model} ({source.quant}), the first on "
                f"{first.model} ({first.quant}): one server serves one base model",
                file=str(source.adapter.parent),
                field="model.name",
                hint="start one server per base model",
            )
    pm = make_plugin_manager()
    registries = Registries.from_plugin_manager(pm)
    templates = {
        name: resolve_template(s.template, s.template_options, registries)
        for name, s in sources.items()
    }
    loaded_index = load_index(index) if index is not None else None
    guards = load_guards(policy, registries) if policy is not None else None
    model, tokenizer, _notes = load(
        first.model,
        {name: s.adapter for name, s in sources.items()},
        quant=quant_spec(quant or first.quant),
        plugin_manager=pm,
    )
    lock = threading.Lock()
    answerers: dict[str, Answerer] = {}
    for name, source in sources.items():
        answerers[name] = Answerer(
            model,
            tokenizer,
            templates[name],
            name=name,
            adapter=str(source.adapter),
            index=loaded_index,
            guards=guards,
            sampling=sampling,
            lock=lock,
            description={"model": source.model, "adapter": str(source.adapter), "run": name},
        )
        answerers[name].adapter_name = name
    base = Answerer(
        model,
        tokenizer,
        templates[next(iter(sources))],
        name=first.model,
        index=loaded_index,
        guards=guards,
        sampling=sampling,
        lock=lock,
        description={"model": first.model, "adapter": None},
    )
    base.adapter_name = ""
    answerers.setdefault(first.model, base)
    return ModelPool(answerers=answerers, base=first.model)


# --------------------------------------------------------------------------- the app


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """The scheduler runs while the app does."""
    app.state.scheduler = Scheduler(app.state.limits)
    try:
        yield
    finally:
        await asyncio.to_thread(app.state.scheduler.close)


def create_app(
    pool: ModelPool, limits: ServerLimits | None = None, *, api_key: str | None = None
) -> Any:
    """The FastAPI application serving ``pool``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServerLimits()
    app = FastAPI(title="lorakit", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.pool = pool
    app.state.limits = limits
    app.state.scheduler = None
    app.exception_handler(RequestValidationError)(routes.invalid_request)
    app.exception_handler(StarletteHTTPException)(routes.http_error)
    app.exception_handler(ModelNotFound)(routes.model_not_found)
    app.exception_handler(QueueFull)(routes.queue_full)
    app.exception_handler(LorakitError)(routes.lorakit_error)
    app.exception_handler(Exception)(routes.crash)
    app.exception_handler(Timeout)(routes.timed_out)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        return await routes.guard(request, call_next, limits, api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return routes.health(pool, app.state.scheduler)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return routes.list_models(pool)

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> Any:
        return await routes.chat_completion(request, pool, limits, app.state.scheduler)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> Any:
        return await routes.completion(request, pool, limits, app.state.scheduler)

    return app


def run_server(
    app: Any, *, host: str = "127.0.0.1", port: int = 8000, on_ready: Any = None
) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            bound = [s.getsockname() for srv in server.servers for s in srv.sockets]
            on_ready(bound[0][1] if bound else port)

        server.startup = startup  # type: ignore[method-assign]
    server.run()
