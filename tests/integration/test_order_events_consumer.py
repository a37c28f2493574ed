"""clients/events.py against a real Redis: a consumer group reads the order event
stream, picks up what a dead consumer left pending, and hands each event over once."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from stockcore.v1 import orders_pb2 as pb

from clients.events import STREAM, OrderEventConsumer
from clients.orders import OrderEvent


async def publish(client: aioredis.Redis, *order_ids: str, again: bool = False) -> None:
    for cursor, oid in enumerate(order_ids, start=1):
        event = pb.OrderEvent(event_id=f"{oid}/1", cursor=cursor, order_id=oid, order_version=1)
        await client.xadd(STREAM, {"event_id": event.event_id, "event": event.SerializeToString()})
    if again:
        await publish(client, *order_ids)


class Recorder:
    """A handler that records what it was given, and can fail on one event."""

    def __init__(self, fail_on: str = "") -> None:
        self.seen: list[str] = []
        self.fail_on = fail_on

    async def __call__(self, event: OrderEvent) -> None:
        if event.event_id == self.fail_on:
            raise RuntimeError("handler failed")
        self.seen.append(event.event_id)


async def drain(consumer: OrderEventConsumer, handler: Recorder) -> None:
    while deliveries := await consumer.fetch(block_ms=10):
        await consumer.handle(deliveries, handler)


async def test_a_group_on_a_missing_stream_creates_it_and_creating_twice_is_fine(
    redis_client: aioredis.Redis,
) -> None:
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    await consumer.ensure_group()
    assert await redis_client.exists(STREAM) == 1
    assert await consumer.fetch(block_ms=10) == []


async def test_republished_events_are_handed_over_once(redis_client: aioredis.Redis) -> None:
    await publish(redis_client, "o-1", "o-2", again=True)
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    handler = Recorder()
    await drain(consumer, handler)
    assert handler.seen == ["o-1/1", "o-2/1"]
    pending = await redis_client.xpending(STREAM, "g")
    assert pending["pending"] == 0


async def test_a_dead_consumers_pending_events_are_claimed_by_another(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1", "o-2", "o-3")
    dying = OrderEventConsumer(redis_client, group="g", consumer="dying", claim_idle_ms=100)
    await dying.ensure_group()
    deliveries = await dying.fetch(block_ms=10)
    assert len(deliveries) == 3
    first = Recorder(fail_on="o-2/1")
    try:
        await dying.handle(deliveries, first)
    except RuntimeError:
        pass  # the consumer "dies" here: o-2 and o-3 stay pending
    await asyncio.sleep(0.2)

    other = OrderEventConsumer(redis_client, group="g", consumer="other", claim_idle_ms=100)
    second = Recorder()
    await drain(other, second)
    assert (first.seen, second.seen) == (["o-1/1"], ["o-2/1", "o-3/1"])


async def test_a_restarted_consumer_first_rereads_what_it_had_not_acknowledged(
    redis_client: aioredis.Redis,
) -> None:
    await publish(redis_client, "o-1", "o-2")
    before = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await before.ensure_group()
    assert len(await before.fetch(block_ms=10)) == 2  # and then it crashed
    await publish(redis_client, "o-3")

    restarted = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    handler = Recorder()
    await drain(restarted, handler)
    assert handler.seen == ["o-1/1", "o-2/1", "o-3/1"]


async def test_an_entry_that_is_not_an_order_event_is_skipped_and_acknowledged(
    redis_client: aioredis.Redis,
) -> None:
    consumer = OrderEventConsumer(redis_client, group="g", consumer="c-1")
    await consumer.ensure_group()
    await redis_client.xadd(STREAM, {"event_id": "x", "event": b"\xff\xff not protobuf"})
    await redis_client.xadd(STREAM, {"something": "else"})
    await publish(redis_client, "o-1")
    handler = Recorder()
    await drain(consumer, handler)
    assert handler.seen == ["o-1/1"]
    assert (await redis_client.xpending(STREAM, "g"))["pending"] == 0
