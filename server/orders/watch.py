"""The tail of the sequenced order events that WatchOrders streams follow.

Cursors become visible in order (the one sequencer commits them batch by batch), so a
stream that has read every event up to a visible cursor N never needs to look below N
again: resuming after cursor N misses nothing and repeats nothing.

One reader per process follows the tail: it LISTENs on stockcore_order_cursor, which the
relay notifies with the highest cursor it gave, reads the new events once, turns each
into its wire form once and keeps the most recent ones in memory. Every stream filters
that shared tail; only a stream that starts (or falls) behind it reads PostgreSQL, with
its own filter, until it catches up. Polling remains only as a slow safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from server.domain.errors import Unavailable
from server.domain.order_queries import WatchFilter
from server.metrics import WATCH_STREAMS
from server.storage.orders_pg import OrderStore, StoredEvent
from server.storage.postgres import _UNREACHABLE

log = logging.getLogger(__name__)

W = TypeVar("W")
PAGE = 500
_NO_END = 2**62
# The relay notifies this channel with the highest cursor it has given.
CURSOR_CHANNEL = "stockcore_order_cursor"


@dataclass(frozen=True, slots=True)
class _Tailed(Generic[W]):
    cursor: int
    event: StoredEvent
    wire: W


class EventFeed(Generic[W]):
    """The shared tail of the event sequence, in wire form (`encode` makes it)."""

    def __init__(
        self,
        store: OrderStore,
        dsn: str,
        encode: Callable[[StoredEvent], W],
        *,
        safety_interval: float,
        keep: int = 20_000,
    ) -> None:
        self._store = store
        self._dsn = dsn
        self._encode = encode
        self._safety_interval = safety_interval
        self._tail: deque[_Tailed[W]] = deque(maxlen=keep)
        # Every event with a cursor <= _latest is in _tail or below its first cursor.
        self._latest = -1
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def stop(self) -> None:
        """Stop following the tail."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _start(self) -> None:
        if self._task is None or self._task.done():
            self._started.clear()
            self._task = asyncio.create_task(self._follow(), name="order-event-feed")
        await self._started.wait()

    async def _follow(self) -> None:
        """Read new events whenever the relay says there are some (or every safety
        interval), reconnecting after a database failure."""
        failing = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings={"application_name": "stockcore-feed", "jit": "off"}
                )
                await conn.add_listener(CURSOR_CHANNEL, lambda *_: self._wake.set())
                if self._latest < 0:
                    self._latest = await self._store.last_cursor()
                self._started.set()
                while True:
                    self._wake.clear()
                    await self._read_new()
                    failing = False
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._safety_interval):
                            await self._wake.wait()
            except (Unavailable, *_UNREACHABLE) as exc:
                if not failing:
                    log.warning("order event feed paused", extra={"error": str(exc)})
                failing = True
                await asyncio.sleep(min(self._safety_interval, 0.5))
            finally:
                if conn is not None:
                    conn.terminate()

    async def _read_new(self) -> None:
        # Cursors become visible a whole relay step at a time, in order: what is above
        # _latest now is a gap-free run.
        everything = WatchFilter("", "", frozenset(), 0)
        while True:
            page = await self._store.events(everything, self._latest, _NO_END, PAGE)
            if not page:
                return
            async with self._changed:
                for event in page:
                    self._tail.append(_Tailed(event.cursor, event, self._encode(event)))
                self._latest = page[-1].cursor
                self._changed.notify_all()
            if len(page) < PAGE:
                return

    async def _wait_beyond(self, cursor: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._latest > cursor)

    async def stream(self, wanted: WatchFilter) -> AsyncIterator[tuple[int, W]]:
        """(cursor, wire event) of every event passing `wanted` after its cursor, in
        cursor order, then of each new one; ends only when the caller stops reading."""
        WATCH_STREAMS.inc()
        try:
            await self._start()
            after = wanted.after_cursor
            while True:
                first = self._tail[0].cursor if self._tail else self._latest + 1
                if after < first - 1:
                    # Behind the shared tail: read PostgreSQL, with this stream's filter.
                    upto = first - 1
                    page = await self._store.events(wanted, after, upto, PAGE)
                    for event in page:
                        yield event.cursor, self._encode(event)
                    after = page[-1].cursor if len(page) == PAGE else upto
                    continue
                latest, tail = self._latest, list(self._tail)
                for item in tail:
                    if item.cursor > after:
                        after = item.cursor
                        if wanted.matches(
                            item.event.customer_id, item.event.order_id, item.event.type
                        ):
                            yield item.cursor, item.wire
                after = max(after, latest)
                await self._wait_beyond(after)
        finally:
            WATCH_STREAMS.dec()
