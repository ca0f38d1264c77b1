"""What the endpoints of ``lorakit serve`` do; :func:`~lorakit.serve.server.create_app` registers them.

Each endpoint is a function of the request and what it needs (the pool, the limits, the
scheduler), and each error handler maps one kind of error to OpenAI's error JSON
(:func:`~lorakit.serve.openai_api.error_response`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from lorakit.errors import ConfigError, LorakitError
from lorakit.serve.openai_api import (
    ChatRequest,
    CompletionRequest,
    Reply,
    chat_context,
    error_payload,
    error_response,
    sampling_for,
    sse,
    text_of,
)
from lorakit.serve.scheduler import Job, Scheduler, wait_for_answer

if TYPE_CHECKING:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from lorakit.answer import Answerer, Prepared, SamplingSpec
    from lorakit.serve.scheduler import QueueFull, Timeout
    from lorakit.serve.server import ModelNotFound, ModelPool, ServerLimits

__all__ = [
    "chat_completion",
    "completion",
    "crash",
    "guard",
    "health",
    "http_error",
    "invalid_request",
    "list_models",
    "lorakit_error",
    "model_not_found",
    "queue_full",
    "respond",
    "stream_events",
    "submit",
    "timed_out",
]


# --------------------------------------------------------------------------- errors


async def invalid_request(_request: Request, exc: RequestValidationError) -> Any:
    """A body FastAPI could not validate: 400, naming the first field (422 never leaks)."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = str(first.get("msg", "invalid request"))
    return error_response(
        400, f"{where}: {message}" if where else message, "invalid_request_error", param=where
    )


async def http_error(_request: Request, exc: HTTPException) -> Any:
    """Starlette's own errors (404 of an unknown path, 405), in OpenAI's shape."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(exc.status_code, str(exc.detail), kind)


async def model_not_found(_request: Request, exc: ModelNotFound) -> Any:
    """404."""
    return error_response(
        404, exc.format(), "invalid_request_error", param="model", code="model_not_found"
    )


async def queue_full(_request: Request, exc: QueueFull) -> Any:
    """429."""
    return error_response(429, exc.format(), "rate_limit_error", code="queue_full")


async def lorakit_error(_request: Request, exc: LorakitError) -> Any:
    """A bad request the answer path found (a prompt longer than the context): 400."""
    return error_response(400, exc.format(), "invalid_request_error", param=exc.field)


async def crash(_request: Request, exc: Exception) -> Any:
    """Anything else: 500."""
    return error_response(500, f"{type(exc).__name__}: {exc}", "server_error")


async def timed_out(_request: Request, exc: Timeout) -> Any:
    """504."""
    return error_response(504, exc.format(), "timeout", code="timeout")


# --------------------------------------------------------------------------- middleware


async def guard(request: Request, call_next: Any, limits: ServerLimits, api_key: str | None) -> Any:
    """Check the key, the body's size and that it is JSON before any ``/v1/`` endpoint."""
    if request.url.path.startswith("/v1/"):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(
                    401,
                    "Incorrect API key provided",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return _too_large(limits)
        if request.method == "POST":
            body = await request.body()  # cached: the endpoint reads it again
            if len(body) > limits.max_body_bytes:
                return _too_large(limits)
            try:
                json.loads(body or b"null")
            except ValueError as exc:
                return error_response(400, f"the body is not JSON: {exc}", "invalid_request_error")
    return await call_next(request)


def _too_large(limits: ServerLimits) -> Any:
    return error_response(
        413,
        f"the request body is larger than {limits.max_body_bytes} bytes",
        "invalid_request_error",
        code="request_too_large",
    )


# --------------------------------------------------------------------------- endpoints


def health(pool: ModelPool, scheduler: Scheduler | None) -> dict[str, Any]:
    """``GET /health``: the models served and the scheduler's counts."""
    return {
        "status": "ok",
        "models": list(pool.answerers),
        "waiting": scheduler.waiting.qsize() if scheduler else 0,
        "batches": scheduler.batches if scheduler else 0,
        "rows": scheduler.rows if scheduler else 0,
    }


def list_models(pool: ModelPool) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": pool.created, "owned_by": "lorakit"}
            for name in pool.answerers
        ],
    }


async def chat_completion(
    request: ChatRequest, pool: ModelPool, limits: ServerLimits, scheduler: Scheduler
) -> Any:
    """``POST /v1/chat/completions``."""
    answerer = pool.get(request.model)
    history, system = chat_context(request, limits)
    sampling = sampling_for(
        request, answerer, request.max_completion_tokens or request.max_tokens, limits
    )
    prepared = await asyncio.to_thread(
        answerer.prepare,
        text_of(request.messages[-1]),
        history,
        max_new_tokens=sampling.max_new_tokens,
        system=system,
    )
    job = submit(scheduler, answerer, prepared, sampling, request.stream)
    reply = _reply("chat", request.model, f"chatcmpl-{secrets.token_hex(12)}", job)
    return await respond(job, reply, request.stream, limits.timeout_s)


async def completion(
    request: CompletionRequest, pool: ModelPool, limits: ServerLimits, scheduler: Scheduler
) -> Any:
    """``POST /v1/completions``."""
    answerer = pool.get(request.model)
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if len(prompts) != 1:
        raise ConfigError("give exactly one prompt", field="prompt")
    sampling = sampling_for(request, answerer, request.max_tokens or 16, limits)
    prepared = await asyncio.to_thread(
        answerer.prepare, prompts[0], max_new_tokens=sampling.max_new_tokens, raw=True
    )
    job = submit(scheduler, answerer, prepared, sampling, request.stream)
    reply = _reply("text", request.model, f"cmpl-{secrets.token_hex(12)}", job)
    return await respond(job, reply, request.stream, limits.timeout_s)


def _reply(kind: str, model: str, ident: str, job: Job) -> Reply:
    return Reply(
        kind=kind,
        model=model,
        created=int(time.time()),
        ident=ident,
        prompt_tokens=len(job.prepared.prompt_ids),
    )


def submit(
    scheduler: Scheduler,
    answerer: Answerer,
    prepared: Prepared,
    sampling: SamplingSpec,
    stream: bool,
) -> Job:
    """Queue a prepared request (a streaming one gets a queue for its tokens).

    Raises:
        QueueFull: too many requests are waiting.
    """
    loop = asyncio.get_running_loop()
    job = Job(
        answerer=answerer,
        prepared=prepared,
        sampling=sampling,
        loop=loop,
        future=loop.create_future(),
        tokens=asyncio.Queue() if stream else None,
    )
    scheduler.submit(job)
    return job


# --------------------------------------------------------------------------- responses


async def respond(job: Job, reply: Reply, stream: bool, timeout_s: float) -> Any:
    """The job's answer as one JSON response, or as server-sent events while it decodes.

    Raises:
        Timeout: a response that is not streamed took longer than ``timeout_s``.
    """
    from fastapi.responses import JSONResponse, StreamingResponse

    if not stream:
        answer = await wait_for_answer(job, timeout_s)
        return JSONResponse(reply.body(answer))
    return StreamingResponse(
        stream_events(job, reply, timeout_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


class _StreamTimedOut(Exception):
    """The stream ran out of time (its row was stopped)."""


async def stream_events(job: Job, reply: Reply, timeout_s: float) -> AsyncIterator[str]:
    """The events of a streamed response: the pieces as decoded, then the checked rest.

    A stream past ``timeout_s`` ends with an error event; so does an answer that failed.
    """
    sent = ""
    try:
        if reply.kind == "chat":
            yield sse(reply.chunk(None, None, first=True))
        try:
            async for piece in _decoded_pieces(job, time.monotonic() + timeout_s):
                sent += piece
                yield sse(reply.chunk(piece, None))
        except _StreamTimedOut:
            yield sse(error_payload(f"timed out after {timeout_s} s", "timeout", code="timeout"))
            return
        for event in _closing_events(job, reply, sent):
            yield event
    finally:
        job.cancelled.set()  # a client that went away stops its row


async def _decoded_pieces(job: Job, deadline: float) -> AsyncIterator[str]:
    """The job's text as decoded (non-empty pieces), until its answer is ready.

    Raises:
        _StreamTimedOut: the deadline passed first (the job's row is stopped).
    """
    assert job.tokens is not None
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
            raise _StreamTimedOut()
        if getter in done:
            piece = getter.result()
            if piece:
                yield piece
        else:
            getter.cancel()
    while not job.tokens.empty():
        piece = job.tokens.get_nowait()
        if piece:
            yield piece


def _closing_events(job: Job, reply: Reply, sent: str) -> list[str]:
    """The events after the last decoded piece: the rest of the checked answer, the last
    chunk and ``[DONE]``; or the error the answer path raised."""
    try:
        answer = job.future.result()
    except LorakitError as exc:
        return [sse(error_payload(exc.format(), "invalid_request_error", param=exc.field))]
    except Exception as exc:
        return [sse(error_payload(f"{type(exc).__name__}: {exc}", "server_error"))]
    events: list[str] = []
    # What the checked answer adds to what was streamed (all of it when the answer was
    # checked whole before being shown).
    if answer.text.startswith(sent):
        rest = answer.text[len(sent) :]
        if rest:
            events.append(sse(reply.chunk(rest, None)))
    events.append(sse(reply.last_chunk(answer)))
    events.append("data: [DONE]\n\n")
    return events
