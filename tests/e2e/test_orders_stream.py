"""Every order event a server commits reaches the Redis stream, in order per order, and a
consumer group of another service counts each exactly once."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from stockcore.v1 import orders_pb2 as pb

from clients.events import STREAM, OrderEventConsumer
from clients.orders import OrderEvent
from server.config import Settings
from tests.conftest import Servers
from tests.support import connected, create_request, put_stock
from tests.waiting import until


async def consume_until(
    consumer: OrderEventConsumer, wanted: set[str], timeout: float = 15.0
) -> list[OrderEvent]:
    """Events handed to the group's handler until every wanted id was seen."""
    handled: list[OrderEvent] = []

    async def handle(event: OrderEvent) -> None:
        handled.append(event)

    async with asyncio.timeout(timeout):
        while not wanted <= {e.event_id for e in handled}:
            await consumer.handle(await consumer.fetch(block_ms=100), handle)
    return handled


async def test_every_committed_event_is_published_and_counted_once(
    settings: Settings, orders, stub
) -> None:
    await put_stock(stub, "A", 1000)
    for i in range(30):
        oid = f"o-{i}"
        await orders.CreateOrder(create_request(oid, customer=f"c-{i % 3}"))
        if i % 3 == 0:
            await orders.ConfirmPayment(
                pb.ConfirmPaymentRequest(
                    order_id=oid, payment_id=f"p-{i}", amount_minor=300, currency_code="EUR"
                )
            )
            await orders.ShipOrder(
                pb.ShipOrderRequest(
                    order_id=oid, carrier="cainiao", tracking_no=f"CN{i}", carrier_ack_id="a"
                )
            )
        elif i % 3 == 1:
            await orders.CancelOrder(pb.CancelOrderRequest(order_id=oid, reason="r"))

    assert settings.pg_dsn and settings.redis_url
    async with connected(settings.pg_dsn) as conn:
        committed = {
            r["event_id"] for r in await conn.fetch("SELECT event_id FROM stockcore.order_events")
        }
    assert len(committed) == 30 + 2 * 10 + 10

    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        consumer = OrderEventConsumer(client, group="analytics", consumer="a-1")
        await consumer.ensure_group()
        handled = await consume_until(consumer, committed)
    finally:
        await client.aclose()
    assert sorted(e.event_id for e in handled) == sorted(committed)
    cursors = [e.cursor for e in handled]
    assert cursors == sorted(cursors)
    versions: dict[str, list[int]] = {}
    for event in handled:
        versions.setdefault(event.order_id, []).append(event.order_version)
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values())


async def test_events_a_redis_crash_lost_reach_the_stream_again(
    clean: Servers, settings: Settings, orders, stub
) -> None:
    if clean.redis is None:
        pytest.skip("Redis is external (STOCKCORE_REDIS_URL); this test needs to kill its own")
    await put_stock(stub, "A", 1000)
    for i in range(10):
        await orders.CreateOrder(create_request(f"before-{i}"))
    client = aioredis.Redis.from_url(clean.redis_url)
    try:
        await until(lambda: stream_holds(client, 10), "the first ten events are published")
    finally:
        await client.aclose()
    # Redis runs without persistence here: kill -9 loses the stream and its marker.
    clean.redis.kill()
    await clean.redis.restart()
    for i in range(10):
        await orders.CreateOrder(create_request(f"after-{i}"))

    client = aioredis.Redis.from_url(clean.redis_url)
    try:
        consumer = OrderEventConsumer(client, group="billing", consumer="b-1")
        await consumer.ensure_group()
        wanted = {f"before-{i}/1" for i in range(10)} | {f"after-{i}/1" for i in range(10)}
        handled = await consume_until(consumer, wanted, timeout=30)
    finally:
        await client.aclose()
    assert sorted(e.event_id for e in handled) == sorted(wanted)
    cursors = [e.cursor for e in handled]
    assert cursors == sorted(cursors)


async def stream_holds(client: aioredis.Redis, count: int) -> bool:
    return int(await client.xlen(STREAM)) >= count
