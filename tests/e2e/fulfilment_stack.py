"""A fulfilment test stack: the in-process server (the `app` fixture), simulated partners
on free loopback ports (the `partners` fixture, or `running_partners` at other speeds) and
workers in this process; helpers to place paid orders, to script faults and to wait for
outcomes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from clients.credentials import Credentials
from clients.inventory import InventoryClient
from clients.orders import OrderClient, OrderStatus, status_name
from fulfilment.config import FulfilmentSettings
from fulfilment.domain import Stage
from fulfilment.store import FulfilmentStore
from fulfilment.worker import Worker, order_client
from server.app import App
from server.config import Settings
from simulators.carrier import carrier_app
from simulators.run import RunningSimulator, start
from simulators.warehouse import warehouse_app
from tests.support import connected
from tests.waiting import until

PRIMARY = "sf-express"
FALLBACK = "jd-logistics"
SKU = "FULFIL-SKU-1"
# Where an order stands once a carrier has it.
SHIPPED = frozenset(
    {
        OrderStatus.ORDER_STATUS_SHIPPED,
        OrderStatus.ORDER_STATUS_IN_TRANSIT,
        OrderStatus.ORDER_STATUS_DELIVERED,
    }
)
_ids = itertools.count(1)


@dataclass
class Partners:
    """The simulators."""

    warehouse: RunningSimulator
    primary: RunningSimulator
    fallback: RunningSimulator

    async def faults(self, sim: RunningSimulator, **knobs: Any) -> dict[str, Any]:
        """PUT /_faults on one simulator."""
        async with aiohttp.ClientSession() as http, http.put(f"{sim.url}/_faults", json=knobs) as r:
            assert r.status == 200, await r.text()
            reply: dict[str, Any] = await r.json()
            return reply

    async def bookings(self, sim: RunningSimulator) -> list[dict[str, Any]]:
        """GET /_bookings of a carrier."""
        async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/_bookings") as r:
            found: list[dict[str, Any]] = (await r.json())["bookings"]
            return found

    async def handoffs(self) -> dict[str, str]:
        """GET /_handoffs of the warehouse: each order id it was given, with its state."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.warehouse.url}/_handoffs") as r,
        ):
            return {o["order_id"]: o["state"] for o in (await r.json())["orders"]}

    async def stop(self) -> None:
        """Stop all three."""
        await asyncio.gather(self.warehouse.stop(), self.primary.stop(), self.fallback.stop())


@asynccontextmanager
async def running_partners(
    *, pack_s: float = 0.05, transit_s: float = 0.1, deliver_s: float = 0.2
) -> AsyncIterator[Partners]:
    """A warehouse and the two carriers on free ports, stopped when the block ends."""
    partners = Partners(
        await start(warehouse_app(pack_s=pack_s)),
        await start(carrier_app(PRIMARY, transit_s=transit_s, deliver_s=deliver_s)),
        await start(carrier_app(FALLBACK, transit_s=transit_s, deliver_s=deliver_s)),
    )
    try:
        yield partners
    finally:
        await partners.stop()


def fulfil_settings(
    settings: Settings, app: App, partners: Partners, **changes: Any
) -> FulfilmentSettings:
    """Settings for workers against this stack (the server's database and Redis), scaled
    to test time."""
    fast: dict[str, Any] = {
        "pg_dsn": settings.pg_dsn,
        "redis_url": settings.redis_url,
        "log_json": settings.log_json,
        "fulfil_target": f"127.0.0.1:{app.port}",
        "warehouse_url": partners.warehouse.url,
        "primary_carrier": PRIMARY,
        "primary_carrier_url": partners.primary.url,
        "fallback_carrier": FALLBACK,
        "fallback_carrier_url": partners.fallback.url,
        "fulfil_metrics_port": 0,
        "fulfil_poll_interval_s": 0.05,
        "fulfil_lease_s": 5.0,
        "fulfil_event_claim_idle_s": 2.0,
        "partner_timeout_s": 1.0,
        "partner_call_attempts": 2,
        "partner_retry_initial_s": 0.01,
        "partner_retry_max_s": 0.05,
        "step_max_attempts": 3,
        "step_backoff_initial_s": 0.05,
        "step_backoff_max_s": 0.2,
        "pack_poll_s": 0.05,
        "track_poll_s": 0.1,
        "breaker_open_s": 1.0,
        "stale_scan_interval_s": 3600.0,
    }
    fast.update(changes)
    return FulfilmentSettings(**fast).validate()


@asynccontextmanager
async def idle_worker(
    settings: FulfilmentSettings, name: str = "test-worker"
) -> AsyncIterator[Worker]:
    """A worker with its connections open but none of its loops running, for a test that
    calls one of its methods itself; closed when the block ends."""
    assert settings.pg_dsn is not None and settings.redis_url is not None
    store = await FulfilmentStore.connect(settings.pg_dsn, pool_size=4, timeout=10.0)
    client = aioredis.Redis.from_url(settings.redis_url)
    orders = order_client(settings, Credentials.from_env())
    worker = Worker(settings, store, client, orders, name=name)
    try:
        yield worker
    finally:
        await worker.close()
        await orders.close()
        await client.aclose()
        await store.close()


@asynccontextmanager
async def running_worker(
    settings: FulfilmentSettings, name: str = "test-worker"
) -> AsyncIterator[Worker]:
    """A worker running in this process until the block ends."""
    async with idle_worker(settings, name) as worker:
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await task


async def stock(app: App, units: int = 1_000_000) -> None:
    """Put plenty of SKU on hand."""
    async with InventoryClient(f"127.0.0.1:{app.port}") as inventory:
        await inventory.adjust_stock(
            SKU, on_hand=units, reason="fulfilment tests", idempotency_key=f"fs-{units}"
        )


async def paid_orders(app: App, count: int, prefix: str = "ful") -> list[str]:
    """Create and pay `count` orders; their ids."""
    ids = [f"{prefix}-{next(_ids)}" for _ in range(count)]
    await pay_orders(app, ids)
    return ids


async def pay_orders(app: App, ids: Iterable[str]) -> None:
    """Create and pay an order under each of these ids."""
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:

        async def one(order_id: str) -> None:
            order = await orders.create_order(order_id, "cust-1", [(SKU, 1, 500)], "EUR", 600)
            await orders.confirm_payment(order_id, f"pay-{next(_ids)}", order.total_minor, "EUR")

        await asyncio.gather(*(one(i) for i in ids))


async def statuses(app: App, ids: Iterable[str]) -> dict[str, OrderStatus.ValueType]:
    """Each order's status."""
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        found = await asyncio.gather(*(orders.get_order(i) for i in ids))
    return {order.order_id: order.status for order, _ in found}


async def wait_statuses(
    app: App, ids: Iterable[str], wanted: AbstractSet[OrderStatus.ValueType], timeout: float = 30.0
) -> dict[str, OrderStatus.ValueType]:
    """Wait until every order is in one of `wanted`; their statuses."""
    ids = list(ids)
    seen: dict[str, OrderStatus.ValueType] = {}

    async def reached() -> bool:
        seen.update(await statuses(app, ids))
        return all(status in wanted for status in seen.values())

    await until(reached, f"orders {sorted(status_name(s) for s in wanted)}: {seen}", timeout)
    return seen


async def fulfilment_rows(dsn: str, ids: Iterable[str]) -> dict[str, asyncpg.Record]:
    """The fulfilment rows of these orders."""
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT * FROM stockcore.fulfilments WHERE order_id = ANY($1)", list(ids)
        )
    return {row["order_id"]: row for row in rows}


async def until_dead(dsn: str, ids: Iterable[str], what: str, timeout: float) -> None:
    """Wait until every one of these orders' fulfilments is in the dead letters."""
    wanted = set(ids)

    async def dead() -> bool:
        rows = await fulfilment_rows(dsn, wanted)
        return set(rows) == wanted and all(r["stage"] == Stage.DEAD for r in rows.values())

    await until(dead, what, timeout)


async def dead_letters(dsn: str) -> dict[str, asyncpg.Record]:
    """Every dead letter, by order id."""
    async with connected(dsn) as conn:
        rows = await conn.fetch("SELECT * FROM stockcore.fulfilment_dead_letters")
    return {row["order_id"]: row for row in rows}


async def transitions(dsn: str, partner: str) -> list[tuple[str, str, str]]:
    """(from, to, reason) of a partner's breaker transitions, oldest first."""
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT from_state, to_state, reason FROM stockcore.fulfilment_breaker_transitions"
            " WHERE partner = $1 ORDER BY id",
            partner,
        )
    return [(r["from_state"], r["to_state"], r["reason"]) for r in rows]
