"""Coalescing of concurrent requests: while one batch is in flight, the next gathers.

One Redis script run and one PostgreSQL transaction (one WAL flush) then serve many
requests, which is what lets Python keep up with the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.domain.errors import DeadlineExpired, DomainError, Overloaded, Unavailable
from server.metrics import BATCH_SIZE
from server.queue_delay import QueueDelay
from server.shutdown import cancel_and_wait

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass(slots=True)
class _Pending(Generic[Req, Res]):
    item: Req
    future: asyncio.Future[Res]
    deadline: float | None
    queued: float


class Batcher(Generic[Req, Res]):
    """Feeds queued requests to `handler` in batches of at most `max_batch`; the handler
    answers with one result (or expected error) per request, in order.

    Each batch reports how long its oldest request waited to `delay`, its class's
    standing-queue test; while that class is standing, requests that waited past its
    target are refused unapplied (Overloaded) instead of being run late."""

    def __init__(
        self,
        name: str,
        handler: Callable[[Sequence[Req]], Awaitable[list[Res | BaseException]]],
        *,
        max_batch: int,
        concurrency: int = 1,
        delay: QueueDelay | None = None,
    ) -> None:
        self.name = name
        self._delay = delay
        if delay is not None:
            delay.watch(self.oldest_queued)
        self._handler = handler
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: list[_Pending[Req, Res]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._stopped = False

    def oldest_queued(self) -> float | None:
        """When the oldest request still waiting for a batch was queued (monotonic)."""
        return self._queue[0].queued if self._queue else None

    def start(self) -> None:
        """Start the flusher task."""
        self._task = asyncio.create_task(self._flush_forever(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Finish batches in flight, then stop; queued requests are refused."""
        if self._task is not None:
            await cancel_and_wait([self._task], "a batcher")
        await asyncio.gather(*self._running, return_exceptions=True)
        self._stopped = True
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(Unavailable("server shutting down; retry elsewhere"))
        self._queue.clear()

    async def submit(self, item: Req, deadline: float | None = None) -> Res:
        """Queue `item` and wait for its result; `deadline` is a time.monotonic() value."""
        if self._stopped:
            raise Unavailable("server shutting down; retry elsewhere")
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future, deadline, time.monotonic()))
        self._wake.set()
        return await future

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            await self._slots.acquire()
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            if not self._queue:
                self._wake.clear()
            task = asyncio.create_task(self._flush(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _answer(self, live: list[_Pending[Req, Res]]) -> None:
        """Run the handler on `live` and hand each caller its result. A batch that fails
        as a whole with an unexpected error (not a domain error such as Unavailable) is
        split in halves and each half run again, so one bad request fails alone: every
        batch is one statement that applied nothing when it failed."""
        try:
            results = await self._handler([p.item for p in live])
        except DomainError as exc:
            self._fail(live, exc)
            return
        except asyncio.CancelledError as exc:
            self._fail(live, exc)
            raise
        except Exception as exc:
            if len(live) == 1:
                self._fail(live, exc)
                return
            log.warning(
                "batch failed; retrying it in halves to isolate the request",
                extra={"batcher": self.name, "size": len(live), "error": repr(exc)},
            )
            half = len(live) // 2
            await self._answer(live[:half])
            await self._answer(live[half:])
            return
        if len(results) != len(live):
            log.error(
                "batch handler answered %d of %d requests",
                len(results),
                len(live),
                extra={"batcher": self.name},
            )
            self._fail(
                live, RuntimeError(f"{self.name} batch answered {len(results)} of {len(live)}")
            )
            return
        for pending, result in zip(live, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    @staticmethod
    def _fail(live: list[_Pending[Req, Res]], exc: BaseException) -> None:
        for pending in live:
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _flush(self, batch: list[_Pending[Req, Res]]) -> None:
        try:
            now = time.monotonic()
            delay = self._delay
            if delay is not None and batch:
                delay.head_waited(now - batch[0].queued, now)
            live: list[_Pending[Req, Res]] = []
            for pending in batch:
                if pending.future.done():
                    continue  # the caller went away before anything was applied
                if delay is not None and delay.too_late(now - pending.queued):
                    # The edge gives it its retry delay (server/rpc/observe.py).
                    pending.future.set_exception(Overloaded(0.0))
                    continue
                if pending.deadline is not None and pending.deadline <= now:
                    pending.future.set_exception(
                        DeadlineExpired(
                            "the deadline passed while the request waited; it was not applied"
                        )
                    )
                    continue
                live.append(pending)
            if not live:
                return
            BATCH_SIZE.labels(self.name).observe(len(live))
            await self._answer(live)
        finally:
            self._slots.release()
