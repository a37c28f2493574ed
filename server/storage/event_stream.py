"""The Redis stream order events are published to, for other services to consume."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
import redis.exceptions

STREAM = "stockcore:order-events"


class StreamUnavailable(Exception):
    """Redis did not take the events; they stay unpublished and are sent again."""


class EventStream:
    """XADD of serialized OrderEvents, each with its event_id, trimmed to about `maxlen`."""

    def __init__(self, client: aioredis.Redis, maxlen: int, name: str = STREAM) -> None:
        self._client = client
        self._maxlen = maxlen
        self.name = name

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

    async def publish(self, events: Sequence[tuple[str, bytes]]) -> None:
        """Append (event_id, event) entries in order, in one round trip."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for event_id, event in events:
                    pipe.xadd(
                        self.name,
                        {"event_id": event_id, "event": event},
                        maxlen=self._maxlen,
                        approximate=True,
                    )
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StreamUnavailable(str(exc)) from exc
