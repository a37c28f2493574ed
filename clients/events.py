"""Reading stockcore's order events from the Redis stream, as another service would.

The server publishes every OrderEvent to the stream "stockcore:order-events" at least
once (fields "event_id" and "event", the serialized stockcore.v1.OrderEvent), in order
per order. A consumer group shares the stream among a service's instances:

    consumer = OrderEventConsumer(redis, group="billing", consumer="billing-1")
    await consumer.ensure_group()
    await consumer.run(handle)   # handle(event) is awaited once per event_id

Each entry is acknowledged (XACK) only after its handler returned, so a consumer that
dies mid-way leaves its entries pending; they are re-read by the same consumer when it
restarts, or claimed (XAUTOCLAIM) by another one once idle for `claim_idle_ms`. A
redelivered or republished event is recognised by its event_id and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf.message import DecodeError

from clients.orders import OrderEvent, decode_event

log = logging.getLogger(__name__)

#: The stream the server publishes to.
STREAM = "stockcore:order-events"


@dataclass(frozen=True)
class Delivery:
    """One stream entry: its id in the stream and the event it carries."""

    entry_id: str
    event: OrderEvent


class SeenEvents(Protocol):
    """Remembers which event ids a consumer group has handled."""

    async def seen(self, event_id: str) -> bool:
        """Whether the event was handled already."""
        ...

    async def remember(self, event_id: str) -> None:
        """Record that the event was handled."""
        ...


class RedisSeenEvents:
    """Handled event ids as Redis keys that expire after `ttl_s` (longer than any
    redelivery can take), shared by every instance of the group."""

    def __init__(self, client: aioredis.Redis, group: str, ttl_s: int = 7 * 86_400) -> None:
        self._client = client
        self._prefix = f"stockcore:seen:{group}:"
        self._ttl_s = ttl_s

    async def seen(self, event_id: str) -> bool:
        """Whether the event was handled already."""
        return bool(await self._client.exists(self._prefix + event_id))

    async def remember(self, event_id: str) -> None:
        """Record that the event was handled."""
        await self._client.set(self._prefix + event_id, b"1", ex=self._ttl_s)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class OrderEventConsumer:
    """One consumer of a consumer group on the order event stream."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        group: str,
        consumer: str,
        stream: str = STREAM,
        seen: SeenEvents | None = None,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self._client = client
        self.group = group
        self.consumer = consumer
        self.stream = stream
        self._seen = seen if seen is not None else RedisSeenEvents(client, group)
        self._claim_idle_ms = claim_idle_ms
        # Entries delivered to this consumer name before a restart come first.
        self._backlog_done = False

    async def ensure_group(self, start_id: str = "0") -> None:
        """Create the group (and the stream) unless it exists; a new group reads from
        `start_id` ("0": every retained event, "$": only new ones)."""
        try:
            await self._client.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def fetch(self, count: int = 100, block_ms: int = 1000) -> list[Delivery]:
        """The next entries for this consumer: its own unacknowledged ones after a
        restart, then idle ones claimed from dead consumers, then new ones (waiting up
        to `block_ms` for them)."""
        if not self._backlog_done:
            mine = await self._client.xreadgroup(
                self.group, self.consumer, {self.stream: "0"}, count=count
            )
            entries = _entries(mine)
            if entries:
                return await self._deliveries(entries)
            self._backlog_done = True
        claimed = await self._client.xautoclaim(
            self.stream, self.group, self.consumer, self._claim_idle_ms, "0-0", count=count
        )
        if len(claimed) > 1 and claimed[1]:
            return await self._deliveries(claimed[1])
        fresh = await self._client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return await self._deliveries(_entries(fresh))

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge handled entries."""
        if entry_ids:
            await self._client.xack(self.stream, self.group, *entry_ids)

    async def handle(
        self, deliveries: Sequence[Delivery], handler: Callable[[OrderEvent], Awaitable[None]]
    ) -> int:
        """Hand each event not seen before to `handler`, then remember and acknowledge it;
        return how many were handed over. A handler error leaves the entry pending."""
        handled = 0
        for delivery in deliveries:
            event_id = delivery.event.event_id
            if not await self._seen.seen(event_id):
                await handler(delivery.event)
                await self._seen.remember(event_id)
                handled += 1
            await self.ack([delivery.entry_id])
        return handled

    async def run(
        self,
        handler: Callable[[OrderEvent], Awaitable[None]],
        *,
        stop: asyncio.Event | None = None,
        count: int = 100,
        block_ms: int = 1000,
    ) -> None:
        """Consume until `stop` is set (or forever)."""
        while stop is None or not stop.is_set():
            await self.handle(await self.fetch(count, block_ms), handler)

    async def _deliveries(self, entries: Sequence[Any]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        unusable: list[str] = []
        for entry_id, fields in entries:
            payload = fields.get(b"event") if fields else None
            try:
                event = decode_event(payload) if isinstance(payload, bytes) else None
            except DecodeError:
                event = None
            if event is None:
                # Trimmed while pending, or not an OrderEvent: nothing to hand over.
                log.warning("skipping an unusable stream entry", extra={"entry": _text(entry_id)})
                unusable.append(_text(entry_id))
                continue
            deliveries.append(Delivery(_text(entry_id), event))
        await self.ack(unusable)
        return deliveries


def _entries(reply: Any) -> list[Any]:
    """The (id, fields) entries of an XREADGROUP reply."""
    found: list[Any] = []
    for _, entries in reply.items() if isinstance(reply, dict) else reply or ():
        found.extend(entries)
    return found
