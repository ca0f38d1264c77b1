"""OpenAI's wire format for ``lorakit serve``: request bodies in, response bodies out.

The request models (:class:`ChatRequest`, :class:`CompletionRequest`) are what FastAPI
validates; :func:`sampling_for` and :func:`chat_context` turn them into what the answer path
takes; :class:`Reply` builds a completion, its streamed chunks and their usage; every error is
``{"error": {"message", "type", "param", "code"}}`` (:func:`error_payload`). Nothing here
decodes or waits: that is :mod:`lorakit.serve.routes`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

import attrs
from pydantic import BaseModel, ConfigDict, Field

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.answer import Answer, Answerer, SamplingSpec
    from lorakit.serve.server import ServerLimits

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "Message",
    "Reply",
    "Sampling",
    "chat_context",
    "error_payload",
    "error_response",
    "extras",
    "finish_reason",
    "sampling_for",
    "sse",
    "text_of",
]


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


# --------------------------------------------------------------------------- errors


def error_payload(
    message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error in OpenAI's shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> Any:
    """A JSON response with :func:`error_payload` and ``status``."""
    from fastapi.responses import JSONResponse

    return JSONResponse(
        status_code=status, content=error_payload(message, kind, param=param, code=code)
    )


# --------------------------------------------------------------------------- requests


def sampling_for(
    request: Sampling, answerer: Answerer, max_tokens: int | None, limits: ServerLimits
) -> SamplingSpec:
    """The sampling settings of a request, the answerer's own where it sets none.

    Raises:
        ConfigError: ``n`` other than 1, stop sequences, or more tokens than the server allows.
    """
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


def text_of(message: Message) -> str:
    """A message's text (its text parts joined).

    Raises:
        ConfigError: a part that is not text.
    """
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


def chat_context(
    request: ChatRequest, limits: ServerLimits
) -> tuple[list[dict[str, str]], str | None]:
    """The history before the question (the last message) and the system prompt.

    Raises:
        ConfigError: too many messages, the last one not the user's, or a part not text.
    """
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
    return history, system


# --------------------------------------------------------------------------- responses


def finish_reason(answer: Answer) -> str:
    """OpenAI's ``finish_reason`` of an answer."""
    if answer.abstained:
        return "content_filter" if answer.reason.endswith("blocked") else "stop"
    return "length" if answer.truncated else "stop"


def extras(answer: Answer) -> dict[str, Any]:
    """What lorakit adds to a response (under ``lorakit``)."""
    data = answer.to_dict()
    return {
        k: data[k]
        for k in ("abstained", "reason", "citations", "retrieval", "verdicts", "dropped_turns")
    }


def sse(data: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@attrs.frozen(kw_only=True)
class Reply:
    """The response to one request: its id, kind and model, and how long its prompt was.

    Attributes:
        kind: ``chat`` (``/v1/chat/completions``) or ``text`` (``/v1/completions``).
        model: the request's ``model``.
        created: when it was received (Unix seconds).
        ident: the response's ``id``.
        prompt_tokens: the prompt's length in tokens.
    """

    kind: str
    model: str
    created: int
    ident: str
    prompt_tokens: int

    def usage(self, answer: Answer) -> dict[str, int]:
        """The token counts of ``answer``."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": answer.new_tokens,
            "total_tokens": self.prompt_tokens + answer.new_tokens,
        }

    def body(self, answer: Answer) -> dict[str, Any]:
        """The whole (not streamed) response."""
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": finish_reason(answer),
            "logprobs": None,
        }
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": answer.text}
        else:
            choice["text"] = answer.text
        return {
            "id": self.ident,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(answer),
            "lorakit": extras(answer),
        }

    def chunk(self, delta: str | None, reason: str | None, first: bool = False) -> dict[str, Any]:
        """One streamed chunk: ``delta`` text, and ``reason`` in the last one."""
        if self.kind == "chat":
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
            "id": self.ident,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def last_chunk(self, answer: Answer) -> dict[str, Any]:
        """The chunk that ends a stream: the finish reason, usage and lorakit's extras."""
        last = self.chunk(None, finish_reason(answer))
        last["usage"] = self.usage(answer)
        last["lorakit"] = extras(answer)
        return last
