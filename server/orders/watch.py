"""The tail of the sequenced order events that WatchOrders streams follow.

Cursors become visible in order (the one sequencer commits them batch by batch), so a
stream that has read every event up to a visible cursor N never needs to look below N
again: resuming after cursor N misses nothing and repeats nothing.

One reader per process follows the tail: it LISTENs on stockcore_order_cursor, which the
relay notifies with the highest cursor it gave, reads the new events once, turns each
into its wire form once and keeps the most recent ones in memory. Every stream filters
that shared tail; only a stream that starts (or falls) behind it reads PostgreSQL, with
its own filter, until it catches up. Polling remains only as a slow safety net.

Streams are woken by what concerns them: one following a shopper is woken by new events
of that shopper (and by the safety interval), any other by every new event. A woken
stream finds its place in the tail by binary search and looks only at the events after
it, so hundreds of open checkout pages cost what they receive, not the tail's length
times the relay's steps.
Streams catching up read PostgreSQL `CATCH_UP_READERS` at a time: a crowd of pages
opened at once waits for each other, not the writers for a pool connection.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from server.domain.errors import Unavailable
from server.domain.order_queries import WatchFilter
from server.metrics import WATCH_STREAMS
from server.shutdown import cancel_and_wait
from server.storage.orders_pg import OrderStore, StoredEvent
from server.storage.postgres import _UNREACHABLE

log = logging.getLogger(__name__)

W = TypeVar("W")
PAGE = 500
_NO_END = 2**62
# PostgreSQL reads of streams behind the tail, at once (of the pool's connections).
CATCH_UP_READERS = 2
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
        # The tail, oldest first, and its cursors (ascending) for binary search. It grows
        # to twice `keep` and is then cut back to `keep`: amortised O(1) per event.
        self._tail: list[_Tailed[W]] = []
        self._cursors: list[int] = []
        self._keep = keep
        # Every event with a cursor <= _latest is in _tail or below its first cursor.
        self._latest = -1
        self._catching_up = asyncio.Semaphore(CATCH_UP_READERS)
        # Each open stream's wake-up, by the customer it follows ("" for none).
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._woke_all_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def stop(self) -> None:
        """Stop following the tail."""
        if self._task is not None:
            await cancel_and_wait([self._task], "the order event feed")
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
                    self._wake_streams(set())
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
            for event in page:
                self._tail.append(_Tailed(event.cursor, event, self._encode(event)))
                self._cursors.append(event.cursor)
            if len(self._tail) > 2 * self._keep:
                del self._tail[: -self._keep]
                del self._cursors[: -self._keep]
            self._latest = page[-1].cursor
            self._wake_streams({event.customer_id for event in page})
            if len(page) < PAGE:
                return

    def _wake_streams(self, customers: set[str]) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._woke_all_at >= self._safety_interval:
            # Now and then every stream moves its place up to the latest cursor, so a
            # quiet shopper's page does not fall behind the tail.
            self._woke_all_at = loop.time()
            customers = set(self._waiting)
        else:
            customers.add("")
        for customer in customers:
            for woken in self._waiting.get(customer, ()):
                woken.set()

    async def stream(self, wanted: WatchFilter) -> AsyncIterator[tuple[int, W]]:
        """(cursor, wire event) of every event passing `wanted` after its cursor, in
        cursor order, then of each new one; ends only when the caller stops reading."""
        WATCH_STREAMS.inc()
        woken = asyncio.Event()
        waiting = self._waiting.setdefault(wanted.customer_id, set())
        waiting.add(woken)
        try:
            await self._start()
            after = wanted.after_cursor
            while True:
                # Cleared before looking, so a wake-up while this stream is suspended in
                # a yield below is not lost.
                woken.clear()
                first = self._cursors[0] if self._cursors else self._latest + 1
                if after < first - 1:
                    # Behind the shared tail: read PostgreSQL, with this stream's filter.
                    upto = first - 1
                    async with self._catching_up:
                        page = await self._store.events(wanted, after, upto, PAGE)
                    for event in page:
                        yield event.cursor, self._encode(event)
                    after = page[-1].cursor if len(page) == PAGE else upto
                    continue
                # Only what is new to this stream, copied: the feed may append (and cut)
                # while this stream is suspended in a yield.
                latest = self._latest
                new = self._tail[bisect.bisect_right(self._cursors, after) :]
                for item in new:
                    after = item.cursor
                    if wanted.matches(item.event.customer_id, item.event.order_id, item.event.type):
                        yield item.cursor, item.wire
                after = max(after, latest)
                if self._latest <= after:
                    await woken.wait()
        finally:
            waiting.discard(woken)
            if not waiting and self._waiting.get(wanted.customer_id) is waiting:
                del self._waiting[wanted.customer_id]
            WATCH_STREAMS.dec()
