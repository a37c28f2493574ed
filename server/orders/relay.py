"""The outbox relay: one sequencer per database gives committed order events their
cursors, then publishes them to the Redis stream, at least once, in cursor order.

Every server process runs a relay; the one holding the sequencer lock (a PostgreSQL
advisory lock of its own session) works, the others stand by and try for the lock now
and then, so a crashed relay is replaced within a standby interval (the lock dies with
its session). The working relay LISTENs on stockcore_order_events, which every
transaction that writes events notifies at commit, so it wakes at once; it also looks
every relay interval, as a safety net. How far publication got is recorded only after
Redis took the events (by the next step's statement, or on its own when the relay goes
idle): a crash in between publishes them again, with the same event_ids, which consumers
de-duplicate on.

Redis is not trusted to keep what it took. Each publish appends only if the stream's
marker (the highest cursor it holds, see server/storage/event_stream.py) is where this
relay left it; at activation, and whenever a publish is refused, the relay compares the
marker with PostgreSQL's watermark and moves the watermark back to what the stream still
holds, so the lost events are published again, in cursor order, before any newer one.
The relay also trims the stream every TRIM_INTERVAL_S, by age and by length (see
server/storage/event_stream.py), also while Redis refuses its publications: a Redis at
its maxmemory refuses writes but still lets the stream be trimmed, and so gets back room.

The relay is stopped by `stop()`, not by cancelling its task: redis-py's socket writes
go through asyncio.wait_for, which on Python 3.11 can swallow a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from server.config import Settings
from server.domain.errors import Unavailable
from server.metrics import (
    EVENT_GROUPS_LEFT_BEHIND,
    EVENT_PUBLICATION_LAG,
    EVENT_STREAM_LENGTH,
    EVENTS_PUBLISHED,
    EVENTS_REPUBLISHED,
    EVENTS_UNPUBLISHED,
    RELAY_ACTIVE,
)
from server.storage.event_stream import EventStream, StreamUnavailable
from server.storage.orders_pg import StoredEvent
from server.storage.outbox_pg import OutboxSession, Pending

log = logging.getLogger(__name__)

# The wire bytes of a stored event, cursor included (the wire format is the gRPC edge's).
Encode = Callable[[StoredEvent], bytes]
# Committing transactions notify this channel when they wrote order events.
EVENTS_CHANNEL = "stockcore_order_events"
# How often the working relay trims the stream.
TRIM_INTERVAL_S = 10.0


class Relay:
    """Sequences and publishes order events while it holds the sequencer lock."""

    def __init__(self, settings: Settings, stream: EventStream | None, encode: Encode) -> None:
        assert settings.pg_dsn is not None
        self._settings = settings
        self._stream = stream
        self._encode = encode
        self._stream_failing = False
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        # The highest cursor Redis took, and the highest recorded as published.
        self._published_upto = 0
        self._recorded_upto = 0
        # The stream's marker as this relay left it; None until checked.
        self._stream_upto: int | None = None
        self._trimmed_at = 0.0
        # Whether this relay holds the sequencer lock (and so is the one working).
        self.active = False

    async def run(self) -> None:
        """Relay until stopped: stand by until the lock is ours, then work until it is
        lost (and stand by again)."""
        while not self._stopping.is_set():
            try:
                await self._hold_and_work()
            except Unavailable as exc:
                log.warning("order event relay lost the database", extra={"error": str(exc)})
            except Exception:
                log.exception("order event relay failed")
            finally:
                self.active = False
                RELAY_ACTIVE.set(0)
            await self._sleep(self._settings.relay_standby_interval_s)

    def stop(self) -> None:
        """Ask `run` to return after the step in flight (which gives the lock back)."""
        self._stopping.set()
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when stopped or woken by a notification."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less when stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _hold_and_work(self) -> None:
        assert self._settings.pg_dsn is not None
        session = await OutboxSession.open(self._settings.pg_dsn, self._settings.db_timeout_s)
        try:
            # Another process relays meanwhile; the lock is tried again after each pause.
            while not await session.try_lock():
                await self._sleep(self._settings.relay_standby_interval_s)
                if self._stopping.is_set():
                    return
            self.active = True
            RELAY_ACTIVE.set(1)
            log.info("order event relay active")
            await session.listen(EVENTS_CHANNEL, self._wake)
            self._published_upto = self._recorded_upto = 0
            self._stream_upto = None
            while not self._stopping.is_set():
                if self._wake.is_set():
                    await self._sleep(self._settings.relay_gather_s)
                # Cleared before the step: a commit notified during it wakes the next.
                self._wake.clear()
                more = await self.step(session)
                await self._trim()
                if self._stream_failing:
                    # Commits keep notifying; Redis is tried again at the relay interval.
                    await self._sleep(self._settings.relay_interval_s)
                    continue
                if more or self._wake.is_set():
                    continue
                if self._published_upto > self._recorded_upto:
                    await session.record_published(self._published_upto)
                    self._recorded_upto = self._published_upto
                await self._pause(self._settings.relay_interval_s)
        finally:
            await session.close()

    async def step(self, session: OutboxSession) -> bool:
        """Record what was published, sequence and fetch, then publish, one batch; True
        when more work is waiting."""
        limit = self._settings.relay_batch
        if self._stream is not None and self._stream_upto is None:
            if not await self._check_stream(session):
                EVENTS_UNPUBLISHED.set(await session.backlog())
                return False
        events = await session.next_events(limit, self._published_upto)
        self._recorded_upto = max(self._recorded_upto, self._published_upto)
        published = await self._publish(session, events) if events else 0
        if published == len(events) < limit:
            EVENTS_UNPUBLISHED.set(0)  # everything committed so far is out
        else:
            EVENTS_UNPUBLISHED.set(await session.backlog())
        return published == limit or (published == 0 and bool(events) and not self._stream_failing)

    async def _check_stream(self, session: OutboxSession) -> bool:
        """Compare the stream's marker with the watermark, moving the watermark back to
        what the stream still holds; False when Redis cannot be reached."""
        assert self._stream is not None
        try:
            marker, length = await self._stream.held_upto()
        except StreamUnavailable as exc:
            self._stream_down(exc)
            return False
        upto = max(await session.published_upto(), self._published_upto)
        if marker is None and length > 0:
            # A stream written before markers were kept: trusted as it is.
            await self._mark(upto)
            self._stream_upto = upto
        elif marker is None:
            await self._rewind(session, upto, max(upto - self._settings.event_stream_maxlen, 0))
            self._stream_upto = 0
        else:
            if marker < upto:
                await self._rewind(session, upto, marker)
            self._stream_upto = marker
        return True

    async def _mark(self, cursor: int) -> None:
        assert self._stream is not None
        with contextlib.suppress(StreamUnavailable):
            await self._stream.set_marker(cursor)

    async def _rewind(self, session: OutboxSession, upto: int, held: int) -> None:
        """The stream holds events only up to `held`, not up to `upto`: publish the rest
        again."""
        if held >= upto:
            return
        log.warning(
            "the order event stream lost events; publishing them again",
            extra={"from_cursor": held + 1, "to_cursor": upto},
        )
        await session.rewind(held)
        self._published_upto = self._recorded_upto = held
        EVENTS_REPUBLISHED.inc(upto - held)

    def _stream_down(self, exc: Exception) -> None:
        if not self._stream_failing:
            log.warning("order events cannot be published", extra={"error": str(exc)})
        self._stream_failing = True

    async def _publish(self, session: OutboxSession, events: Sequence[Pending]) -> int:
        if self._stream is None:
            return 0
        try:
            outcome = await self._stream.publish(
                [
                    (pending.event.event_id, pending.event.cursor, self._encode(pending.event))
                    for pending in events
                ],
                expected=self._stream_upto,
            )
        except StreamUnavailable as exc:
            self._stream_down(exc)
            return 0
        if self._stream_failing:
            log.info("order events are published again")
            self._stream_failing = False
        if not outcome.appended:
            # The stream lost writes: nothing was appended; look again before the next.
            self._stream_upto = None
            return 0
        self._published_upto = self._stream_upto = events[-1].event.cursor
        # The database clock stamped the commit, this one the publication: on one machine,
        # or on hosts kept in step by NTP, they agree to well under a millisecond.
        published_at = datetime.now(UTC)
        for event in events:
            EVENT_PUBLICATION_LAG.observe(max((published_at - event.created_at).total_seconds(), 0))
        EVENTS_PUBLISHED.inc(len(events))
        return len(events)

    async def _trim(self) -> None:
        """Trim the stream every TRIM_INTERVAL_S, and say which groups were left behind."""
        now = time.monotonic()
        if self._stream is None or now - self._trimmed_at < TRIM_INTERVAL_S:
            return
        self._trimmed_at = now
        try:
            trimmed = await self._stream.trim()
        except StreamUnavailable as exc:
            self._stream_down(exc)
            return
        EVENT_STREAM_LENGTH.set(trimmed.length)
        for lost in trimmed.left_behind:
            EVENT_GROUPS_LEFT_BEHIND.labels(lost.group).inc()
            log.error(
                "the order event stream was trimmed (by age, or past its hard cap) of events "
                "a consumer group had not finished; WatchOrders serves them from PostgreSQL "
                "(after_cursor = from_cursor - 1)",
                extra={
                    "group": lost.group,
                    "from_cursor": lost.from_cursor,
                    "kept_from_cursor": lost.kept_from_cursor,
                },
            )
