"""The scheduler of ``lorakit serve``: one thread owns the model and decodes requests in batches.

Requests that arrive while a batch runs wait in a queue; the next batch takes every waiting
request for the same adapter (up to ``max_batch``) and decodes them together, one row each,
each with its own sampling settings and token limit (static batching: a request never joins a
batch already running). Streaming rows get their tokens as they are decoded.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import LorakitError

if TYPE_CHECKING:
    from lorakit.answer import Answer, Answerer, Prepared, SamplingSpec
    from lorakit.serve.server import ServerLimits

__all__ = ["Job", "QueueFull", "Scheduler", "Timeout", "wait_for_answer"]


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


class Timeout(LorakitError):
    """A request that did not finish in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the request timed out after {seconds} s", hint="ask for fewer max_tokens"
        )


async def wait_for_answer(job: Job, timeout_s: float) -> Answer:
    """The job's answer; past ``timeout_s`` its row stops decoding.

    Raises:
        Timeout: not answered in time.
    """
    try:
        return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
    except asyncio.TimeoutError:
        job.cancelled.set()
        raise Timeout(timeout_s) from None
