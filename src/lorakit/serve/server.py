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
import json
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
from pydantic import BaseModel, ConfigDict, Field

from lorakit.errors import ConfigError, LorakitError

if TYPE_CHECKING:
    from lorakit.answer import Answer, Answerer, Prepared, SamplingSpec

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


# --------------------------------------------------------------------------- scheduling


@attrs.define(eq=False)
class Job:
    """One request waiting for, or in, a batch."""

    answerer: Answerer
    prepared: Prepared
    sampling: SamplingSpec
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Answer]
    tokens: asyncio.Queue[str | None] | None = None
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    ids: list[int] = attrs.field(factory=list)
    shown: str = ""


class Scheduler:
    """The thread that owns the model: takes waiting jobs in batches of one adapter."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.held: list[Job] = []
        self.batches = 0
        self.rows = 0
        self._thread = threading.Thread(target=self._run, name="lorakit-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job.

        Raises:
            QueueFull: too many requests are waiting.
        """
        if self.waiting.qsize() + len(self.held) >= self.limits.max_queue:
            raise QueueFull()
        self.waiting.put(job)

    def close(self) -> None:
        """Stop after the running batch."""
        self.waiting.put(None)
        self._thread.join(timeout=10)

    def _next_batch(self) -> list[Job] | None:
        if self.held:
            first = self.held.pop(0)
        else:
            got = self.waiting.get()
            if got is None:
                return None
            first = got
        batch = [first]
        deadline = time.monotonic() + self.limits.batch_wait_s
        keep: list[Job] = []
        for job in self.held:
            if (
                job.answerer.adapter_name == first.answerer.adapter_name
                and len(batch) < self.limits.max_batch
            ):
                batch.append(job)
            else:
                keep.append(job)
        self.held = keep
        while len(batch) < self.limits.max_batch:
            try:
                waiting = self.waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if waiting is None:
                self.waiting.put(None)
                break
            job = waiting
            if job.answerer.adapter_name == first.answerer.adapter_name:
                batch.append(job)
            else:
                self.held.append(job)
        return [j for j in batch if not j.cancelled.is_set()]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            self._run_batch(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        self.batches += 1
        self.rows += len(batch)
        answerer = batch[0].answerer

        def on_token(row: int, token: int) -> None:
            job = batch[row]
            if job.tokens is None:
                return
            job.ids.append(token)
            text = answerer.tokenizer.decode(job.ids, skip_special_tokens=True).lstrip()
            if text.endswith("\ufffd") or not text.startswith(job.shown):
                return
            piece, job.shown = text[len(job.shown) :], text
            if piece:
                job.loop.call_soon_threadsafe(job.tokens.put_nowait, piece)

        streaming = answerer.streams_tokens
        try:
            answers = answerer.generate(
                [j.prepared for j in batch],
                [j.sampling for j in batch],
                on_token=on_token if streaming else None,
                should_stop=lambda row: batch[row].cancelled.is_set(),
                adapter=answerer.adapter_name,
            )
        except Exception as exc:  # reported to every request of the batch
            for job in batch:
                job.loop.call_soon_threadsafe(_fail, job.future, exc)
            return
        for job, answer in zip(batch, answers, strict=True):
            job.loop.call_soon_threadsafe(_resolve, job.future, answer)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class QueueFull(LorakitError):
    """Too many requests are waiting."""

    def __init__(self) -> None:
        super().__init__("the server is busy: too many requests are waiting", hint="retry later")


# --------------------------------------------------------------------------- the app


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = None


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]


def _error(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
    )


def create_app(
    pool: ModelPool, limits: ServerLimits | None = None, *, api_key: str | None = None
) -> Any:
    """The FastAPI application serving ``pool``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServerLimits()
    state: dict[str, Any] = {"scheduler": None}

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state["scheduler"] = Scheduler(limits)
        try:
            yield
        finally:
            await asyncio.to_thread(state["scheduler"].close)

    app = FastAPI(title="lorakit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pool = pool

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = str(first.get("msg", "invalid request"))
        return _error(
            400, f"{where}: {message}" if where else message, "invalid_request_error", param=where
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Any:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(ModelNotFound)
    async def not_found(_request: Request, exc: ModelNotFound) -> Any:
        return _error(
            404, exc.format(), "invalid_request_error", param="model", code="model_not_found"
        )

    @app.exception_handler(QueueFull)
    async def busy(_request: Request, exc: QueueFull) -> Any:
        return _error(429, exc.format(), "rate_limit_error", code="queue_full")

    @app.exception_handler(LorakitError)
    async def lorakit_error(_request: Request, exc: LorakitError) -> Any:
        return _error(400, exc.format(), "invalid_request_error", param=exc.field)

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> Any:
        return _error(500, f"{type(exc).__name__}: {exc}", "server_error")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/"):
            if api_key is not None:
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                    return _error(
                        401,
                        "Incorrect API key provided",
                        "invalid_request_error",
                        code="invalid_api_key",
                    )
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
                return _error(
                    413,
                    f"the request body is larger than {limits.max_body_bytes} bytes",
                    "invalid_request_error",
                    code="request_too_large",
                )
            if request.method == "POST":
                body = await request.body()  # cached: the endpoint reads it again
                if len(body) > limits.max_body_bytes:
                    return _error(
                        413,
                        f"the request body is larger than {limits.max_body_bytes} bytes",
                        "invalid_request_error",
                        code="request_too_large",
                    )
                try:
                    json.loads(body or b"null")
                except ValueError as exc:
                    return _error(400, f"the body is not JSON: {exc}", "invalid_request_error")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        scheduler = state["scheduler"]
        return {
            "status": "ok",
            "models": list(pool.answerers),
            "waiting": scheduler.waiting.qsize() if scheduler else 0,
            "batches": scheduler.batches if scheduler else 0,
            "rows": scheduler.rows if scheduler else 0,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": pool.created, "owned_by": "lorakit"}
                for name in pool.answerers
            ],
        }

    def sampling_for(request: Sampling, answerer: Answerer, max_tokens: int | None) -> SamplingSpec:
        from lorakit.answer import SamplingSpec

        if request.n != 1:
            raise ConfigError("only n=1 is supported", field="n")
        if request.stop:
            raise ConfigError(
                "stop sequences are not supported; the model stops at its own stop tokens",
                field="stop",
            )
        wanted = max_tokens or min(answerer.sampling.max_new_tokens, limits.max_tokens)
        if wanted > limits.max_tokens:
            raise ConfigError(
                f"max_tokens is {wanted}; this server allows at most {limits.max_tokens}",
                field="max_tokens",
            )
        return SamplingSpec(
            max_new_tokens=wanted,
            temperature=answerer.sampling.temperature
            if request.temperature is None
            else request.temperature,
            top_p=answerer.sampling.top_p if request.top_p is None else request.top_p,
            seed=request.seed,
        )

    async def run_job(
        answerer: Answerer, prepared: Prepared, sampling: SamplingSpec, stream: bool
    ) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(
            answerer=answerer,
            prepared=prepared,
            sampling=sampling,
            loop=loop,
            future=loop.create_future(),
            tokens=asyncio.Queue() if stream else None,
        )
        state["scheduler"].submit(job)
        return job

    async def wait(job: Job) -> Answer:
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), limits.timeout_s)
        except asyncio.TimeoutError:
            job.cancelled.set()
            raise Timeout(limits.timeout_s) from None

    def finish_reason(answer: Answer) -> str:
        if answer.abstained:
            return "content_filter" if answer.reason.endswith("blocked") else "stop"
        return "length" if answer.truncated else "stop"

    def extras(answer: Answer) -> dict[str, Any]:
        data = answer.to_dict()
        return {
            k: data[k]
            for k in ("abstained", "reason", "citations", "retrieval", "verdicts", "dropped_turns")
        }

    def text_of(message: Message) -> str:
        if message.content is None:
            return ""
        if isinstance(message.content, str):
            return message.content
        parts = []
        for part in message.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ConfigError("only text content parts are supported", field="messages.content")
            parts.append(part["text"])
        return "".join(parts)

    def sse(data: Any) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def respond(
        job: Job,
        answerer: Answerer,
        request_model: str,
        kind: str,
        stream: bool,
        created: int,
        ident: str,
    ) -> Any:
        prompt_tokens = len(job.prepared.prompt_ids)
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def usage(answer: Answer) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": answer.new_tokens,
                "total_tokens": prompt_tokens + answer.new_tokens,
            }

        if not stream:
            answer = await wait(job)
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": finish_reason(answer),
                "logprobs": None,
            }
            if kind == "chat":
                choice["message"] = {"role": "assistant", "content": answer.text}
            else:
                choice["text"] = answer.text
            return JSONResponse(
                {
                    "id": ident,
                    "object": obj,
                    "created": created,
                    "model": request_model,
                    "choices": [choice],
                    "usage": usage(answer),
                    "lorakit": extras(answer),
                }
            )

        def chunk(delta: str | None, reason: str | None, first: bool = False) -> dict[str, Any]:
            if kind == "chat":
                d: dict[str, Any] = {}
                if first:
                    d["role"] = "assistant"
                if delta is not None:
                    d["content"] = delta
                choice = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
            else:
                choice = {
                    "index": 0,
                    "text": delta or "",
                    "finish_reason": reason,
                    "logprobs": None,
                }
            return {
                "id": ident,
                "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": created,
                "model": request_model,
                "choices": [choice],
            }

        async def events() -> AsyncIterator[str]:
            sent = ""
            try:
                if kind == "chat":
                    yield sse(chunk(None, None, first=True))
                assert job.tokens is not None
                deadline = time.monotonic() + limits.timeout_s
                while not job.future.done():
                    getter = asyncio.ensure_future(job.tokens.get())
                    waiting: set[asyncio.Future[Any]] = {getter, job.future}
                    done, _ = await asyncio.wait(
                        waiting,
                        timeout=max(0.0, deadline - time.monotonic()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not done:
                        getter.cancel()
                        job.cancelled.set()
                        yield sse(
                            {
                                "error": {
                                    "message": f"timed out after {limits.timeout_s} s",
                                    "type": "timeout",
                                    "param": None,
                                    "code": "timeout",
                                }
                            }
                        )
                        return
                    if getter in done:
                        piece = getter.result()
                        if piece:
                            sent += piece
                            yield sse(chunk(piece, None))
                    else:
                        getter.cancel()
                while not job.tokens.empty():
                    piece = job.tokens.get_nowait()
                    if piece:
                        sent += piece
                        yield sse(chunk(piece, None))
                try:
                    answer = job.future.result()
                except LorakitError as exc:
                    yield sse(
                        {
                            "error": {
                                "message": exc.format(),
                                "type": "invalid_request_error",
                                "param": exc.field,
                                "code": None,
                            }
                        }
                    )
                    return
                except Exception as exc:
                    yield sse(
                        {
                            "error": {
                                "message": f"{type(exc).__name__}: {exc}",
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    )
                    return
                # What the checked answer adds to what was streamed (all of it when the
                # answer was checked whole before being shown).
                if answer.text.startswith(sent):
                    rest = answer.text[len(sent) :]
                    if rest:
                        yield sse(chunk(rest, None))
                last = chunk(None, finish_reason(answer))
                last["usage"] = usage(answer)
                last["lorakit"] = extras(answer)
                yield sse(last)
                yield "data: [DONE]\n\n"
            finally:
                job.cancelled.set()  # a client that went away stops its row

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> Any:
        answerer = pool.get(request.model)
        if len(request.messages) > limits.max_messages:
            raise ConfigError(f"more than {limits.max_messages} messages", field="messages")
        if request.messages[-1].role != "user":
            raise ConfigError("the last message must be the user's", field="messages")
        system = None
        history = []
        for message in request.messages[:-1]:
            if message.role in ("system", "developer"):
                system = (system + "\n" if system else "") + text_of(message)
            else:
                history.append({"role": message.role, "content": text_of(message)})
        sampling = sampling_for(
            request, answerer, request.max_completion_tokens or request.max_tokens
        )
        prepared = await asyncio.to_thread(
            answerer.prepare,
            text_of(request.messages[-1]),
            history,
            max_new_tokens=sampling.max_new_tokens,
            system=system,
        )
        job = await run_job(answerer, prepared, sampling, request.stream)
        return await respond(
            job,
            answerer,
            request.model,
            "chat",
            request.stream,
            int(time.time()),
            f"chatcmpl-{secrets.token_hex(12)}",
        )

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> Any:
        answerer = pool.get(request.model)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise ConfigError("give exactly one prompt", field="prompt")
        sampling = sampling_for(request, answerer, request.max_tokens or 16)
        prepared = await asyncio.to_thread(
            answerer.prepare, prompts[0], max_new_tokens=sampling.max_new_tokens, raw=True
        )
        job = await run_job(answerer, prepared, sampling, request.stream)
        return await respond(
            job,
            answerer,
            request.model,
            "text",
            request.stream,
            int(time.time()),
            f"cmpl-{secrets.token_hex(12)}",
        )

    @app.exception_handler(Timeout)
    async def timed_out(_request: Request, exc: Timeout) -> Any:
        return _error(504, exc.format(), "timeout", code="timeout")

    return app


class Timeout(LorakitError):
    """A request that did not finish in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the request timed out after {seconds} s", hint="ask for fewer max_tokens"
        )


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
