"""The Redis stream order events are published to, for other services to consume.

Entries carry "event_id", "cursor" and "event" (the serialized stockcore.v1.OrderEvent).
Beside the stream, one key (the marker) holds the highest cursor the stream has taken,
written by the same script as the entries (lua/publish_events.lua): a Redis server that comes back without some of its writes
(restarted without persistence, or from an older snapshot, or a replica promoted before
it had everything) comes back with a marker that agrees with what it kept, and the relay
publishes the rest again from PostgreSQL.

The stream is trimmed by the relay, never past an entry some consumer group has not read
or acknowledged: a slow consumer does not lose events to trimming. Only beyond a hard
cap (several times the usual length) does trimming go on regardless, and says which
groups it left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
class Trimmed:
    """What one trim did: entries removed, and groups whose unread entries went too."""

    removed: int
    left_behind: tuple[str, ...] = ()


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
        self, client: aioredis.Redis, maxlen: int, name: str = STREAM, hard_cap: int = 10
    ) -> None:
        self._client = client
        self._maxlen = maxlen
        self._hard_max = maxlen * hard_cap
        self.name = name
        self._marker = name + MARKER_SUFFIX
        self._publish = client.register_script(source("publish_events.lua"))

    @classmethod
    def from_url(cls, url: str, maxlen: int, timeout: float = 2.0) -> EventStream:
        """A stream over a new connection pool."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return cls(client, maxlen)

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
        """Once past the usual length: trim what every consumer group has read and
        acknowledged (all of it past the usual length when there is no group), never an
        entry some group still needs, unless the stream is past its hard cap. History
        older than the stream is served by WatchOrders from PostgreSQL."""
        try:
            length = int(await self._client.xlen(self.name))
            if length <= self._maxlen:
                return Trimmed(0)
            groups = await self._client.xinfo_groups(self.name)
            if not groups:
                return Trimmed(await self._xtrim(maxlen=self._maxlen))
            needed: list[tuple[str, str]] = []
            for group in groups:
                name = _text(group["name"])
                first = _next_id(_text(group["last-delivered-id"]))
                if int(group.get("pending", 0)):
                    summary = await self._client.xpending(self.name, name)
                    if summary.get("min") is not None:
                        first = min(first, _text(summary["min"]), key=_id_key)
                needed.append((name, first))
            keep_from = min((first for _, first in needed), key=_id_key)
            if length > self._hard_max:
                removed = await self._xtrim(maxlen=self._hard_max)
                oldest = await self._client.xrange(self.name, "-", "+", count=1)
                kept = _text(oldest[0][0]) if oldest else "0-0"
                lost = tuple(name for name, first in needed if _id_key(first) < _id_key(kept))
                return Trimmed(removed, lost)
            # LIMIT keeps the usual length even when every group has read everything.
            return Trimmed(await self._xtrim(minid=keep_from, limit=length - self._maxlen))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StreamUnavailable(str(exc)) from exc

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
