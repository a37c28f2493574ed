"""The Redis stream order events are published to, for other services to consume.

Entries carry "event_id", "cursor" and "event" (the serialized stockcore.v1.OrderEvent).
Beside the stream, one key (the marker) holds the highest cursor the stream has taken,
written by the same script as the entries (lua/publish_events.lua): a Redis server that comes back without some of its writes
(restarted without persistence, or from an older snapshot, or a replica promoted before
it had everything) comes back with a marker that agrees with what it kept, and the relay
publishes the rest again from PostgreSQL.

The stream is trimmed by the relay, by length and by age. Past its usual length it is
trimmed only of what every consumer group has read and acknowledged: a slow consumer does
not lose recent events to trimming. Two bounds hold regardless of the groups, so that
Redis, which also holds the admission gate, has a memory budget: entries older than the
maximum age (measured from their publication: an entry id's milliseconds, Redis' clock)
and entries beyond a hard cap (several times the usual length). A trim that goes past an
entry some group still needed names the group and the cursors it may have missed, which
WatchOrders serves from PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from server.storage.lua_scripts import source

STREAM = "stockcore:order-events"
# The marker key is the stream's name with this suffix.
MARKER_SUFFIX = ":published-upto"
# Entries removed by one XTRIM call at most. An approximate trim without LIMIT removes at
# most 100 macro nodes' worth (10,000 entries) per call, less than the reference day's
# peak adds in 10 s; a trim is a loop of calls this size, so each call is short and other
# clients' commands run between them.
TRIM_CHUNK = 10_000


class StreamUnavailable(Exception):
    """Redis did not take the events; they stay unpublished and are sent again."""


@dataclass(frozen=True, slots=True)
class LeftBehind:
    """A consumer group that lost entries to a trim: it may not have handled the events
    from cursor `from_cursor` up to the one before `kept_from_cursor`, the oldest the
    stream still holds (0 when the stream is empty)."""

    group: str
    from_cursor: int
    kept_from_cursor: int


@dataclass(frozen=True, slots=True)
class Trimmed:
    """What one trim did: entries removed, the stream's length after it, and the groups
    whose unfinished entries went too."""

    removed: int
    length: int
    left_behind: tuple[LeftBehind, ...] = ()


@dataclass(frozen=True, slots=True)
class Published:
    """Whether a publish appended its events, and the marker as it found it (None when
    missing)."""

    appended: bool
    marker_before: int | None


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventStream:
    """XADD of serialized OrderEvents, each with its event_id and cursor."""

    def __init__(
        self,
        client: aioredis.Redis,
        maxlen: int,
        max_age_s: float,
        name: str = STREAM,
        hard_cap: int = 10,
    ) -> None:
        self._client = client
        self._maxlen = maxlen
        self._hard_max = maxlen * hard_cap
        self._max_age_ms = int(max_age_s * 1000)
        self.name = name
        self._marker = name + MARKER_SUFFIX
        self._publish = client.register_script(source("publish_events.lua"))

    @classmethod
    def from_url(cls, url: str, maxlen: int, max_age_s: float, timeout: float = 2.0) -> EventStream:
        """A stream over a new connection pool."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return cls(client, maxlen, max_age_s)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def publish(
        self, events: Sequence[tuple[str, int, bytes]], expected: int | None = None
    ) -> Published:
        """Append (event_id, cursor, event) entries in cursor order and move the marker to
        the last cursor, atomically, in one round trip; unless `expected` is given and
        the marker is below it (the stream lost writes): then nothing is appended."""
        args: list[str | int | bytes] = ["" if expected is None else expected]
        for event_id, cursor, event in events:
            args += [event_id, cursor, event]
        try:
            appended, marker = await self._publish(keys=[self.name, self._marker], args=args)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StreamUnavailable(str(exc)) from exc
        return Published(bool(appended), None if marker is None else int(marker))

    async def held_upto(self) -> tuple[int | None, int]:
        """The marker (None when missing) and the stream's length."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self._marker)
                pipe.xlen(self.name)
                marker, length = await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StreamUnavailable(str(exc)) from exc
        return (None if marker is None else int(marker)), int(length)

    async def set_marker(self, cursor: int) -> None:
        """Set the marker (for a stream written before markers were kept)."""
        try:
            await self._client.set(self._marker, cursor)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StreamUnavailable(str(exc)) from exc

    async def trim(self) -> Trimmed:
        """Trim the entries older than the maximum age; then, once past the usual length,
        what every consumer group has read and acknowledged (all of it past the usual
        length when there is no group), never an entry some group still needs unless the
        stream is past its hard cap. History older than the stream is served by
        WatchOrders from PostgreSQL."""
        try:
            return await self._trim()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StreamUnavailable(str(exc)) from exc

    async def _trim(self) -> Trimmed:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.xlen(self.name)
            pipe.xrange(self.name, "-", "+", count=1)
            (seconds, micros), length, oldest = await pipe.execute()
        # An entry id begins with Redis' clock (ms) when it was added: ids below this one
        # are older than the maximum age.
        too_old = f"{int(seconds) * 1000 + int(micros) // 1000 - self._max_age_ms}-0"
        aged = bool(oldest) and _id_key(_text(oldest[0][0])) < _id_key(too_old)
        length = int(length)
        if length <= self._maxlen and not aged:
            return Trimmed(0, length)
        needed = await self._needed()
        # Where each group stands, read before a trim that may pass it.
        may_pass = aged or length > self._hard_max
        starts = {g: await self._first_entry(first) for g, first in needed} if may_pass else {}
        removed = await self._xtrim(minid=too_old) if aged else 0
        forced = removed > 0
        if length - removed > self._maxlen and not needed:
            removed += await self._xtrim(maxlen=self._maxlen)
        elif length - removed > self._maxlen:
            keep_from = min((first for _, first in needed), key=_id_key)
            # LIMIT keeps the usual length even when every group has read everything.
            removed += await self._xtrim(minid=keep_from, limit=length - removed - self._maxlen)
            if length - removed > self._hard_max:
                removed += await self._xtrim(maxlen=self._hard_max)
                forced = True
        length -= removed
        if not (forced and needed):
            return Trimmed(removed, length)
        oldest = await self._client.xrange(self.name, "-", "+", count=1)
        kept_id = _text(oldest[0][0]) if oldest else None
        kept = await self._first_entry(kept_id) if kept_id is not None else None
        lost = tuple(
            LeftBehind(group, start[1], kept[1] if kept else 0)
            for group, start in starts.items()
            if start is not None and (kept_id is None or _id_key(start[0]) < _id_key(kept_id))
        )
        return Trimmed(removed, length, lost)

    async def _needed(self) -> list[tuple[str, str]]:
        """Each consumer group and the first entry it still needs: the first it has not
        read, or the oldest it read and has not acknowledged."""
        needed: list[tuple[str, str]] = []
        for group in await self._client.xinfo_groups(self.name):
            name = _text(group["name"])
            first = _next_id(_text(group["last-delivered-id"]))
            if int(group.get("pending", 0)):
                summary = await self._client.xpending(self.name, name)
                if summary.get("min") is not None:
                    first = min(first, _text(summary["min"]), key=_id_key)
            needed.append((name, first))
        return needed

    async def _first_entry(self, start: str) -> tuple[str, int] | None:
        """The id and cursor of the first event entry from `start` on (replayed dead
        letters carry no cursor), or None when the stream holds none from there."""
        entries: Any = await self._client.xrange(self.name, start, "+", count=100)
        for entry_id, fields in entries:
            cursor = fields.get(b"cursor")
            if cursor is not None:
                return _text(entry_id), int(cursor)
        return None

    async def _xtrim(
        self, *, maxlen: int | None = None, minid: str | None = None, limit: int | None = None
    ) -> int:
        """An approximate XTRIM (whole macro nodes, cheap), as calls of at most
        TRIM_CHUNK entries, removing at most `limit` in all; the entries removed."""
        removed = 0
        while limit is None or removed < limit:
            chunk = TRIM_CHUNK if limit is None else min(TRIM_CHUNK, limit - removed)
            count = int(
                await self._client.xtrim(
                    self.name, maxlen=maxlen, minid=minid, approximate=True, limit=chunk
                )
            )
            if count == 0:
                break
            removed += count
        return removed


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
