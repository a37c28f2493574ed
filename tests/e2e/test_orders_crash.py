"""kill -9 of the server during a CreateOrder load from 32 clients (with payments and
cancellations), then a restart. Afterwards every order a client saw acknowledged exists
with its hold or its commit, no hold outlives its expiry, every change's event is
published at least once (a consumer group counts them), and a WatchOrders stream that
lived through the crash saw every event once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc
from stockcore.v1 import orders_pb2 as pb

from clients.events import OrderEventConsumer
from clients.orders import OrderClient, OrderEvent
from devstack.credentials import DevCredentials
from tests import callers
from tests.conftest import ChannelOpener, Servers
from tests.e2e.order_invariants import check_orders_agree
from tests.servers import QUICK_RECOVERY, server_process
from tests.support import connected
from tests.waiting import no_short_holds_left

pytestmark = pytest.mark.slow

SKUS = ("CRASH-A", "CRASH-B", "CRASH-C", "CRASH-D")
CLIENTS = 32
DURATION = 12.0
KILL_AT = 5.0
T = TypeVar("T")
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # refused before any work: at capacity
}


@dataclass
class Seen:
    """What clients saw acknowledged."""

    created: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    paid: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    unexpected: list[tuple[str, grpc.StatusCode]] = field(default_factory=list)
    """Definite refusals no call here should get: (call, code)."""


async def call(fn: Callable[[], Awaitable[T]], budget: float = 60.0) -> T | grpc.StatusCode:
    """Send until answered, resending the same request while the server is away; return
    the code of a definite refusal."""
    deadline = time.monotonic() + budget
    while True:
        try:
            return await fn()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                return exc.code()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def shopper(
    index: int, orders: orders_pb2_grpc.OrderServiceStub, seen: Seen, stop: asyncio.Event
) -> None:
    rng = random.Random(index)
    seq = 0
    while not stop.is_set():
        seq += 1
        oid = f"crash-{index}-{seq}"
        lines = {sku: rng.randint(1, 3) for sku in rng.sample(SKUS, rng.randint(1, 2))}
        request = pb.CreateOrderRequest(
            order_id=oid,
            customer_id=f"cust-{index % 8}",
            currency_code="EUR",
            lines=[pb.OrderLine(sku=s, quantity=q, unit_price_minor=100) for s, q in lines.items()],
            payment_window=duration_pb2.Duration(seconds=rng.choice((1, 2, 60))),
        )
        reply = await call(lambda request=request: orders.CreateOrder(request, timeout=5))
        if not isinstance(reply, pb.CreateOrderResponse):
            # Stock is plentiful and a resent order is answered as first: no refusal is right.
            seen.unexpected.append((f"CreateOrder {oid}", reply))
            continue
        seen.created[oid] = tuple(sorted(lines.items()))
        roll = rng.random()
        if roll < 0.4:
            payment = pb.ConfirmPaymentRequest(
                order_id=oid,
                payment_id=f"pay-{oid}",
                amount_minor=reply.order.total_minor,
                currency_code="EUR",
            )
            paid = await call(lambda payment=payment: orders.ConfirmPayment(payment, timeout=5))
            if isinstance(paid, pb.ConfirmPaymentResponse):
                seen.paid.add(oid)
            elif paid != grpc.StatusCode.FAILED_PRECONDITION:  # its window may have run out
                seen.unexpected.append((f"ConfirmPayment {oid}", paid))
        elif roll < 0.55:
            cancel = pb.CancelOrderRequest(order_id=oid, reason="changed mind")
            done = await call(lambda cancel=cancel: orders.CancelOrder(cancel, timeout=5))
            if (
                isinstance(done, pb.CancelOrderResponse)
                and done.order.status == pb.ORDER_STATUS_CANCELLED
            ):
                seen.cancelled.add(oid)
            elif not isinstance(done, pb.CancelOrderResponse) and (
                done != grpc.StatusCode.FAILED_PRECONDITION  # expired first
            ):
                seen.unexpected.append((f"CancelOrder {oid}", done))


async def watch_everything(
    target: str, credentials: DevCredentials, into: list[OrderEvent]
) -> None:
    bearer = callers.token(credentials, "crash-watcher")
    async with OrderClient(
        target, credentials=callers.client_credentials(credentials, bearer)
    ) as client:
        async for event in client.watch():
            into.append(event)


async def test_a_killed_server_loses_no_acknowledged_order_hold_or_event(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    async with server_process(
        clean,
        credentials,
        **QUICK_RECOVERY,
        STOCKCORE_RELAY_INTERVAL="0.05",
        STOCKCORE_RELAY_STANDBY_INTERVAL="0.2",
    ) as server:
        seen = Seen()
        watched: list[OrderEvent] = []
        stop = asyncio.Event()
        try:
            async with open_channel(server.target) as channel:
                inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
                for sku in SKUS:
                    await inventory.AdjustStock(
                        ipb.AdjustStockRequest(
                            sku=sku,
                            on_hand=100_000,
                            reason="initial",
                            idempotency_key=f"init-{sku}",
                        )
                    )
                watcher = asyncio.create_task(watch_everything(server.target, credentials, watched))
                orders = orders_pb2_grpc.OrderServiceStub(channel)
                shoppers = [
                    asyncio.create_task(shopper(i, orders, seen, stop)) for i in range(CLIENTS)
                ]
                await asyncio.sleep(KILL_AT)
                before_kill = len(seen.created)
                server.kill()
                await asyncio.sleep(1.0)  # an outage, not a wait for something
                await server.start()
                await asyncio.sleep(DURATION - KILL_AT - 1.0)
                stop.set()
                await asyncio.gather(*shoppers)
            await no_short_holds_left(clean.pg_dsn, 2, timeout=30)  # every unpaid window swept

            # Orders were acknowledged before the kill and after the restart.
            assert 0 < before_kill < len(seen.created), (before_kill, len(seen.created))
            assert seen.paid and seen.cancelled
            assert not seen.unexpected, seen.unexpected[:10]
            # Among the invariants: no hold or unpaid order outlived its expiry by 2 s.
            snapshot = await check_orders_agree(clean.pg_dsn)
            assert set(snapshot.reservations) == set(snapshot.orders), "a hold without an order"
            for oid, lines in seen.created.items():
                order = snapshot.orders.get(oid)
                assert order is not None, f"acknowledged order {oid} lost"
                assert tuple(zip(order["skus"], order["quantities"], strict=True)) == lines, oid
            for oid in seen.paid:
                assert snapshot.orders[oid]["payment_id"] == f"pay-{oid}", (
                    f"acknowledged payment {oid} lost"
                )
            for oid in seen.cancelled:
                assert snapshot.orders[oid]["status"] == 6, f"acknowledged cancel {oid} lost"

            committed = await _all_event_ids(clean.pg_dsn)
            assert {f"{oid}/1" for oid in seen.created} <= committed
            assert {f"{oid}/2" for oid in seen.paid | seen.cancelled} <= committed
            published = await _consume(clean.redis_url, committed)
            assert published == committed, "an event was never published"

            async with asyncio.timeout(20):
                while len(watched) < len(committed):  # noqa: ASYNC110 - filled by the watcher task
                    await asyncio.sleep(0.1)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            assert [e.cursor for e in watched] == list(range(1, len(committed) + 1))
            assert {e.event_id for e in watched} == committed
        finally:
            stop.set()


async def _all_event_ids(dsn: str) -> set[str]:
    async with connected(dsn) as conn:
        return {
            r["event_id"] for r in await conn.fetch("SELECT event_id FROM stockcore.order_events")
        }


async def _consume(redis_url: str, wanted: set[str]) -> set[str]:
    """Event ids a consumer group is handed (each once), until all wanted arrived or 20 s."""
    client = aioredis.Redis.from_url(redis_url)
    handled: set[str] = set()
    twice: list[str] = []

    async def handle(event: OrderEvent) -> None:
        if event.event_id in handled:
            twice.append(event.event_id)
        handled.add(event.event_id)

    try:
        consumer = OrderEventConsumer(client, group="crash-audit", consumer="auditor")
        await consumer.ensure_group()
        deadline = time.monotonic() + 20
        while not wanted <= handled and time.monotonic() < deadline:
            await consumer.handle(await consumer.fetch(count=500, block_ms=200), handle)
    finally:
        await client.aclose()
    assert twice == [], "the consumer group handed an event over twice"
    return handled
