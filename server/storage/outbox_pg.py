"""The relay's side of the order event outbox (sql/live/outbox.sql): a PostgreSQL session
of its own that holds the sequencer lock for as long as it lives, listens for committed
events, gives them their cursors and records how far publication has got (one watermark,
not a column per event)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import asyncpg

from server.domain.errors import Unavailable
from server.storage.orders_pg import StoredEvent, stored_event
from server.storage.postgres import _UNREACHABLE

T = TypeVar("T")

# Any fixed number, distinct from the migrators' lock.
_LOCK_KEY = 0x57C0_E7E5


@dataclass(frozen=True, slots=True)
class Pending:
    """A sequenced outbox row waiting for publication."""

    id: int
    created_at: datetime
    event: StoredEvent


class OutboxSession:
    """One relay's connection; closing it (or losing it) gives the sequencer lock back.
    Every method raises Unavailable when the database cannot be reached."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, dsn: str, timeout: float) -> OutboxSession:
        """Connect a new session."""
        try:
            conn = await asyncpg.connect(
                dsn,
                timeout=timeout,
                command_timeout=timeout,
                server_settings={"application_name": "stockcore-relay", "jit": "off"},
            )
        except _UNREACHABLE as exc:
            raise Unavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc
        return cls(conn)

    async def close(self) -> None:
        """End the session, at once if the server does not answer."""
        if self._conn.is_closed():
            return
        try:
            await self._conn.close(timeout=2)
        except (TimeoutError, *_UNREACHABLE):
            self._conn.terminate()

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            return await work(self._conn)
        except _UNREACHABLE as exc:
            raise Unavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc

    async def try_lock(self) -> bool:
        """Take the sequencer lock if no other session holds it."""
        taken: bool = await self._run(
            lambda c: c.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY)
        )
        return taken

    async def listen(self, channel: str, wake: asyncio.Event) -> None:
        """Set `wake` whenever `channel` is notified (for as long as the session lives)."""
        await self._run(lambda c: c.add_listener(channel, lambda *_: wake.set()))

    async def next_events(self, limit: int, published_upto: int = 0) -> list[Pending]:
        """Record that every event up to cursor `published_upto` is published, give the
        next cursors to up to `limit` unsequenced events, and return the sequenced events
        not yet published, in cursor order: one statement."""
        rows = await self._run(
            lambda c: c.fetch("SELECT * FROM stockcore.relay_step($1, $2)", limit, published_upto)
        )
        return [Pending(r["id"], r["created_at"], stored_event(r)) for r in rows]

    async def record_published(self, published_upto: int) -> None:
        """Record that every event up to cursor `published_upto` is published."""
        await self._run(
            lambda c: c.execute("SELECT stockcore.record_published($1)", published_upto)
        )

    async def published_upto(self) -> int:
        """The highest cursor recorded as published."""
        value: int = await self._run(lambda c: c.fetchval("SELECT stockcore.published_upto()"))
        return value

    async def rewind(self, published_upto: int) -> None:
        """Record that only events up to `published_upto` are published (the stream lost
        the rest): the next steps publish them again."""
        await self._run(
            lambda c: c.execute("SELECT stockcore.rewind_published($1)", published_upto)
        )

    async def backlog(self) -> int:
        """How many events wait to be sequenced or published."""
        count: int = await self._run(lambda c: c.fetchval("SELECT stockcore.outbox_backlog()"))
        return count
