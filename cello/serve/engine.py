"""Request batching in front of a generation backend: concurrent requests are queued and
generated together; each request has a timeout, and work nobody waits for is dropped.

Why: a model generates a batch of 8 conversations in little more time than one, and the
in-process transformers backend must not be called from two threads at once. Every request
puts its conversations on one queue; `workers` tasks take up to `max_batch_size`
conversations with the same sampling settings (waiting `wait_s` for a batch to fill) and run
`backend.generate_full` in a thread, so the event loop keeps answering health checks.

Limits and exits, each with its own error (cello.serve.errors maps them to HTTP statuses):
- more than `max_queue` conversations waiting: `QueueFull` (429, retry later);
- no answer within the request's timeout, or the request was cancelled (its client
  disconnected): its queued conversations are withdrawn, and a batch that runs only for
  withdrawn conversations stops at the next generation step (`abort`, for backends that
  support it), as vLLM aborts a request on disconnect; timeouts answer `GenerationTimeout` (504);
- `drain(seconds)` (SIGTERM): new work gets `Draining` (503) at once, queued work is still
  generated until the deadline, then whatever is left gets `Draining` and the running batch
  stops at the next step, so the process exits inside the drain period;
- the backend failed: `BackendError` (500; 503 for an unreachable upstream).

A request that sets a seed while sampling runs in a batch of its own: a seed makes a
completion reproducible only if no other conversation shares its random stream. So does a
streamed request (`on_text`): a backend that `streams` calls it, in its thread, with each new
piece of text; the batcher hands the pieces to the event loop.

    batcher = Batcher(backend, max_batch_size=8, wait_s=0.005)
    gens = await batcher.generate(conversations, SamplingParams(max_new_tokens=256), timeout_s=60)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cello.config import SamplingParams
from cello.serve.errors import BackendError, Draining, GenerationTimeout, QueueFull

__all__ = ["BackendError", "Batcher", "Draining", "GenerationTimeout", "QueueFull", "Result"]

log = logging.getLogger(__name__)


_BATCH_HIST: list = []


def _observe_batch(size: int) -> None:
    """Prometheus histogram of batch sizes (created on first use; one per process)."""
    if not _BATCH_HIST:
        from prometheus_client import Histogram

        _BATCH_HIST.append(Histogram("cello_batch_conversations", "Conversations per generated batch.",
                                     buckets=(1, 2, 4, 8, 16, 32, 64)))
    _BATCH_HIST[0].observe(size)


@dataclass(eq=False)  # hashed by identity (kept in a set while running)
class _Item:
    conversation: list[dict]
    params: SamplingParams
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    withdrawn: bool = False  # nobody waits for it any more (read by the generation thread)
    on_text: Any = None  # streamed: called on the event loop with each new piece of text


@dataclass
class Result:
    """One conversation's generation and how long it took from queueing to the answer."""

    generation: Any  # cello.llm.base.Generation
    latency_s: float


class Batcher:
    """Queue + batch + timeout around `backend.generate_full(conversations, params)`."""

    def __init__(self, backend: Any, *, max_batch_size: int = 8, wait_s: float = 0.005,
                 max_queue: int = 1024, workers: int = 1) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_queue = max_queue
        self.workers = workers
        self._items: deque[_Item] = deque()
        self._running: set[_Item] = set()  # conversations being generated (by any worker)
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self.draining = False

    @property
    def pending(self) -> int:
        return sum(1 for it in self._items if not it.future.done())

    def _start(self) -> None:
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker(), name=f"cello-batcher-{i}") for i in range(self.workers)]

    async def generate(
        self, conversations: list[list[dict]], params: SamplingParams, *, timeout_s: float, on_text: Any = None
    ) -> list[Result]:
        """Generate for `conversations` (in order); raises QueueFull, Draining, GenerationTimeout or BackendError.
        `on_text(piece)` (one conversation only): called on the event loop as its text grows, when the
        backend streams."""
        if self.draining:
            msg = "the server is shutting down; retry, another replica will answer"
            raise Draining(msg)
        if not self._tasks:
            self._start()
        if self.pending + len(conversations) > self.max_queue:
            msg = f"the server is busy ({self.pending} conversations waiting, limit {self.max_queue}); retry later"
            raise QueueFull(msg)
        loop = asyncio.get_running_loop()
        if on_text is not None and len(conversations) != 1:
            msg = "a streamed request has one conversation"
            raise ValueError(msg)
        items = [_Item(conv, params, loop.create_future(), on_text=on_text) for conv in conversations]
        self._items.extend(items)
        assert self._wake is not None
        self._wake.set()
        gathered = asyncio.gather(*(it.future for it in items))
        try:
            return list(await asyncio.wait_for(gathered, timeout_s))
        except TimeoutError:
            msg = f"generation took longer than {timeout_s:g} s (serve.timeout_s); send fewer puzzles or retry later"
            raise GenerationTimeout(msg) from None
        finally:
            for it in items:  # withdraw what is still queued or running (timeout, client gone)
                if not it.future.done() or it.future.cancelled():
                    it.withdrawn = True
                    it.future.cancel()
            if gathered.done() and not gathered.cancelled():
                gathered.exception()  # retrieved: a cancelled request is not an unhandled error

    def drain(self, seconds: float) -> None:
        """Refuse new work now; after `seconds`, answer what is left with `Draining` (see the module docstring)."""
        self.draining = True
        asyncio.get_running_loop().call_later(max(0.0, seconds), self._give_up, seconds)

    def _give_up(self, seconds: float) -> None:
        left = [it for it in [*self._running, *self._items] if not it.future.done()]
        if left:
            log.warning("drain: %d conversations not generated within %.1f s; answering 503", len(left), seconds)
        for it in left:
            it.withdrawn = True
            it.future.set_exception(Draining("the server is shutting down; retry, another replica will answer"))
            it.future.exception()  # retrieved: a request already gone does not log it as unhandled

    async def _take(self) -> list[_Item]:
        assert self._wake is not None
        while True:
            while self._items and self._items[0].future.done():
                self._items.popleft()
            if self._items:
                break
            self._wake.clear()
            await self._wake.wait()
        if self.wait_s > 0 and len(self._items) < self.max_batch_size:
            await asyncio.sleep(self.wait_s)  # let concurrent requests join the batch
        first = next((it for it in self._items if not it.future.done()), None)
        if first is None:
            return []
        batch: list[_Item] = []
        rest: deque[_Item] = deque()
        for it in self._items:
            if it.future.done():
                continue
            if len(batch) < self.max_batch_size and it.params == first.params and not _alone(first) and not _alone(it):
                batch.append(it)
            else:
                rest.append(it)
        if not batch:
            batch.append(rest.popleft())  # a seeded or streamed request: alone
        self._items = rest
        return batch

    async def _worker(self) -> None:
        while True:
            batch = await self._take()
            if not batch:
                continue
            self._running.update(batch)
            # a backend that can stop mid-generation is told which conversations nobody waits for
            hooks = {"abort": lambda i, b=batch: b[i].withdrawn} if getattr(self.backend, "abortable", False) else {}
            if batch[0].on_text is not None and getattr(self.backend, "streams", False):
                hooks["on_text"] = _to_loop(batch[0], asyncio.get_running_loop())
            try:
                gens = await asyncio.to_thread(
                    self.backend.generate_full, [it.conversation for it in batch], batch[0].params, **hooks
                )
                _observe_batch(len(batch))
                now = time.perf_counter()
                for it, gen in zip(batch, gens, strict=True):
                    if not it.future.done():
                        it.future.set_result(Result(gen, now - it.queued_at))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the backend failed: every waiting request hears about it
                log.exception("generation failed for a batch of %d", len(batch))
                err = (
                    exc
                    if isinstance(exc, BackendError)
                    else BackendError(f"generation failed: {type(exc).__name__}: {exc}")
                )
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(err)
            finally:
                self._running.difference_update(batch)

    async def close(self) -> None:
        """Stop the workers and withdraw everything (a running batch stops at the next step)."""
        for task in self._tasks:
            task.cancel()
        for it in [*self._running, *self._items]:
            it.withdrawn = True
            if not it.future.done():
                it.future.cancel()
        self._items.clear()
        self._tasks = []


def _alone(item: _Item) -> bool:
    """Generated in a batch of its own: a seeded sampled request (a seed matters only when sampling)
    and a streamed one."""
    return item.on_text is not None or (item.params.seed is not None and item.params.temperature > 0)


def _to_loop(item: _Item, loop: asyncio.AbstractEventLoop):
    """The backend's `on_text(i, piece)` (generation thread) as `item.on_text(piece)` on the event loop."""

    def on_text(i: int, piece: str) -> None:
        if not item.withdrawn:
            loop.call_soon_threadsafe(item.on_text, piece)

    return on_text
