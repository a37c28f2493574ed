"""The tail of the sequenced order events that WatchOrders streams follow.

Cursors become visible in order (the one sequencer commits them batch by batch), so a
stream that has read every event up to a visible cursor N never needs to look below N
again: resuming after cursor N misses nothing and repeats nothing. One poll of the
highest cursor per process wakes every stream, which then reads its own filter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from server.domain.errors import Unavailable
from server.domain.order_queries import WatchFilter
from server.metrics import WATCH_STREAMS
from server.storage.orders_pg import OrderStore

log = logging.getLogger(__name__)

PAGE = 500


class EventFeed:
    """The highest visible cursor, polled while anyone watches."""

    def __init__(self, store: OrderStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._latest = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _poll(self) -> None:
        failing = False
        while True:
            try:
                latest = await self._store.last_cursor()
            except Unavailable as exc:
                if not failing:
                    log.warning("order event feed paused", extra={"error": str(exc)})
                failing = True
            else:
                failing = False
                if latest > self._latest:
                    async with self._changed:
                        self._latest = latest
                        self._changed.notify_all()
            await asyncio.sleep(self._interval)

    async def _beyond(self, cursor: int) -> int:
        """Wait until some cursor above `cursor` is visible; return the highest."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="order-event-feed")
        async with self._changed:
            await self._changed.wait_for(lambda: self._latest > cursor)
            return self._latest

    async def stream(self, wanted: WatchFilter) -> AsyncIterator[tuple[int, bytes]]:
        """(cursor, stored event) of every event passing `wanted` after its cursor, in
        cursor order, then of each new one; ends only when the caller stops reading."""
        WATCH_STREAMS.inc()
        try:
            after = wanted.after_cursor
            upto = await self._store.last_cursor()
            while True:
                while after < upto:
                    page = await self._store.events(wanted, after, upto, PAGE)
                    for cursor, payload in page:
                        yield cursor, payload
                    after = page[-1][0] if len(page) == PAGE else upto
                upto = await self._beyond(after)
        finally:
            WATCH_STREAMS.dec()
