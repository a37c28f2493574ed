"""No mix of callers makes PostgreSQL deadlock: for a minute, many clients create orders of
2-4 SKUs from a small hot set (lines in varying order, some sent twice at once as a
retry would), pay them with payment ids sent for several orders at once, cancel paid and
unpaid ones, and reserve, commit and release plain holds, while stock runs out, is
restocked and shrinks under holds already admitted (so batches are decided again with
their stock rows locked). PostgreSQL must report no deadlock (pg_stat_database.deadlocks,
which counts the test's own server and one named by STOCKCORE_PG_DSN alike) and every
invariant must hold afterwards. The lock order this relies on is written down at the top
of server/storage/sql/live/orders.sql.

The run lasts STOCKCORE_LOCK_MIX_S seconds, 60 by default."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import inventory_pb2_grpc, orders_pb2_grpc
from stockcore.v1 import orders_pb2 as opb

from devstack.credentials import DevCredentials
from devstack.servers import LocalStockcore
from tests.conftest import SHARDS, ChannelOpener, Servers
from tests.e2e.order_invariants import check_orders_agree
from tests.support import connected
from tests.waiting import no_short_holds_left, sql_is, until

pytestmark = pytest.mark.slow

DURATION_S = float(os.environ.get("STOCKCORE_LOCK_MIX_S", "60"))
HOT = tuple(f"HOT-{c}" for c in "ABCDEF")
INITIAL = 40
CLIENTS = 48
CHANNELS = 4
UNIT_PRICE = 100
SHORT_TTL_S = 3  # some holds and payment windows lapse during the run
CALL_TIMEOUT_S = 30.0
# What each call may answer besides OK; anything else (INTERNAL above all) fails the run.
EXPECTED = {
    "create": {grpc.StatusCode.FAILED_PRECONDITION},  # short stock
    # Paid by another payment, cancelled or expired meanwhile; the payment id paid
    # another order.
    "pay": {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS},
    "cancel": {grpc.StatusCode.FAILED_PRECONDITION},  # expired before the cancel
    "reserve": {grpc.StatusCode.FAILED_PRECONDITION},  # short stock
    "commit": {grpc.StatusCode.FAILED_PRECONDITION},  # the hold lapsed
    "release": set(),
    "adjust": {grpc.StatusCode.FAILED_PRECONDITION},  # shrinkage below what is held
}
_DEADLOCKS = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"


@dataclass
class Mix:
    """What the clients share: orders and holds to act on, and what they saw."""

    unpaid: dict[str, int] = field(default_factory=dict)  # order id -> total
    paid: set[str] = field(default_factory=set)
    held: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    done: bool = False


async def answer(mix: Mix, kind: str, call: Awaitable[Any]) -> Any | None:
    """The reply, or None for an expected refusal (counted by kind and code)."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in EXPECTED[kind], f"{kind}: {exc.code()} {exc.details()}"
        mix.seen[f"{kind} {exc.code().name}"] += 1
        return None
    mix.seen[f"{kind} OK"] += 1
    return reply


def order_lines(rng: random.Random) -> list[opb.OrderLine]:
    """2-4 hot SKUs, in an order of their own."""
    return [
        opb.OrderLine(sku=sku, quantity=rng.randint(1, 3), unit_price_minor=UNIT_PRICE)
        for sku in rng.sample(HOT, rng.randint(2, 4))
    ]


async def create(mix: Mix, rng: random.Random, orders: list[Any], oid: str) -> None:
    request = opb.CreateOrderRequest(
        order_id=oid, customer_id="cust-lock", currency_code="EUR", lines=order_lines(rng)
    )
    if rng.random() < 0.25:
        request.payment_window.CopyFrom(duration_pb2.Duration(seconds=SHORT_TTL_S))
    # A quarter are sent twice at once, over two connections (often to two server
    # processes), as a client retrying on a lost answer does.
    copies = orders if rng.random() < 0.25 else orders[:1]
    replies = await asyncio.gather(
        *(
            answer(mix, "create", stub.CreateOrder(request, timeout=CALL_TIMEOUT_S))
            for stub in copies
        )
    )
    for reply in replies:
        if reply is not None:
            mix.unpaid[oid] = reply.order.total_minor


async def pay(mix: Mix, rng: random.Random, orders: list[Any], tag: str) -> None:
    """Pay unpaid orders at once: 1-3 with a payment id each, or with one payment id for
    all; or four (w < x < y < z) with two payment ids crossed over two server processes,
    w and y paid with P and Q through one, x and z with Q and P through the other."""
    style = rng.random()
    count = 4 if style >= 0.6 else rng.randint(1, 3)
    picked = sorted(rng.sample(sorted(mix.unpaid), min(len(mix.unpaid), count)))
    if not picked:
        return
    first, second = f"pay-{tag}-p", f"pay-{tag}-q"
    if style < 0.3:
        calls = [(oid, f"pay-{oid}", orders[0]) for oid in picked]
    elif style < 0.6 or len(picked) < 4:
        calls = [(oid, first, orders[i % 2]) for i, oid in enumerate(picked)]
    else:
        w, x, y, z = picked
        calls = [
            (w, first, orders[0]),
            (y, second, orders[0]),
            (x, second, orders[1]),
            (z, first, orders[1]),
        ]

    async def one(oid: str, payment_id: str, stub: Any) -> None:
        request = opb.ConfirmPaymentRequest(
            order_id=oid,
            payment_id=payment_id,
            amount_minor=mix.unpaid.get(oid, 0),
            currency_code="EUR",
        )
        if request.amount_minor == 0:
            return  # cancelled meanwhile by another client
        reply = await answer(mix, "pay", stub.ConfirmPayment(request, timeout=CALL_TIMEOUT_S))
        if reply is not None:
            mix.unpaid.pop(oid, None)
            mix.paid.add(oid)

    await asyncio.gather(*(one(*call) for call in calls))


async def cancel(mix: Mix, rng: random.Random, orders: Any) -> None:
    pool = sorted(mix.paid) if mix.paid and rng.random() < 0.5 else sorted(mix.unpaid)
    if not pool:
        return
    oid = rng.choice(pool)
    request = opb.CancelOrderRequest(order_id=oid, reason="lock mix")
    reply = await answer(mix, "cancel", orders.CancelOrder(request, timeout=CALL_TIMEOUT_S))
    if reply is not None:
        mix.seen["cancel of a paid order" if oid in mix.paid else "cancel of an unpaid order"] += 1
        mix.unpaid.pop(oid, None)
        mix.paid.discard(oid)


async def reserve(mix: Mix, rng: random.Random, inventory: list[Any], rid: str) -> None:
    request = ipb.ReserveRequest(
        reservation_id=rid,
        lines=[
            ipb.Line(sku=sku, quantity=rng.randint(1, 2))
            for sku in rng.sample(HOT, rng.randint(1, 3))
        ],
        ttl=duration_pb2.Duration(seconds=rng.choice((1, SHORT_TTL_S, 30))),
    )
    copies = inventory if rng.random() < 0.2 else inventory[:1]
    replies = await asyncio.gather(
        *(answer(mix, "reserve", stub.Reserve(request, timeout=CALL_TIMEOUT_S)) for stub in copies)
    )
    if any(reply is not None for reply in replies):
        mix.held.append(rid)


async def finish(mix: Mix, rng: random.Random, inventory: Any) -> None:
    rid = mix.held.pop(rng.randrange(len(mix.held)))
    if rng.random() < 0.5:
        commit = inventory.Commit(ipb.CommitRequest(reservation_id=rid), timeout=CALL_TIMEOUT_S)
        await answer(mix, "commit", commit)
    else:
        release = inventory.Release(ipb.ReleaseRequest(reservation_id=rid), timeout=CALL_TIMEOUT_S)
        await answer(mix, "release", release)


async def adjust(mix: Mix, rng: random.Random, inventory: Any, key: str) -> None:
    """A restock, or shrinkage found by a count: units leave under holds the gate admitted
    a moment before, whose takes then no longer fit (the second pass of a batch)."""
    delta = rng.randint(5, 15) if rng.random() < 0.6 else -rng.randint(1, 6)
    request = ipb.AdjustStockRequest(
        sku=rng.choice(HOT), delta=delta, reason="count", idempotency_key=key
    )
    await answer(mix, "adjust", inventory.AdjustStock(request, timeout=CALL_TIMEOUT_S))


async def client(mix: Mix, index: int, channels: list[grpc.aio.Channel]) -> None:
    """One caller: its own channel first, another beside it for what it sends twice."""
    rng = random.Random(index)
    orders = [orders_pb2_grpc.OrderServiceStub(c) for c in channels]
    inventory = [inventory_pb2_grpc.InventoryServiceStub(c) for c in channels]
    seq = 0
    while not mix.done:
        seq += 1
        tag = f"{index}-{seq}"
        roll = rng.random()
        if roll < 0.30:
            await create(mix, rng, orders, f"o-{tag}")
        elif roll < 0.55:
            await pay(mix, rng, orders, tag)
        elif roll < 0.67:
            await cancel(mix, rng, orders[0])
        elif roll < 0.85:
            await reserve(mix, rng, inventory, f"r-{tag}")
        elif roll < 0.93 and mix.held:
            await finish(mix, rng, inventory[0])
        else:
            await adjust(mix, rng, inventory[0], f"adjust-{tag}")


async def deadlocks(dsn: str) -> int:
    """The deadlocks PostgreSQL counted in the test database so far."""
    async with connected(dsn) as conn:
        found: int = await conn.fetchval(_DEADLOCKS)
        return found


def deadlock_reports(log: Path | None, offset: int) -> str:
    """What the test's own PostgreSQL logged about deadlocks since `offset`."""
    if log is None:
        return "(PostgreSQL is external: its log is not read)"
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    keep = [i for i, line in enumerate(lines) if "deadlock detected" in line]
    return "\n".join("\n".join(lines[i : i + 8]) for i in keep[:5])


async def test_mixed_order_and_hold_traffic_never_deadlocks(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    log = clean.pg.log if clean.pg is not None else None
    log_offset = log.stat().st_size if log is not None else 0
    server = LocalStockcore(
        clean.pg_dsn,
        clean.redis_url,
        SHARDS,
        credentials=credentials,
        # Batches of one kind run side by side, in two processes (each connection goes
        # to one of them) and in each.
        STOCKCORE_WORKERS="2",
        STOCKCORE_BATCH_CONCURRENCY="2",
        STOCKCORE_EXPIRY_INTERVAL="0.2",
        STOCKCORE_MAX_IN_FLIGHT="10000",
        STOCKCORE_OVERLOAD_TARGET_S="10",
    )
    before = await deadlocks(clean.pg_dsn)
    await server.start()
    try:
        mix = Mix()
        channels = [open_channel(server.target) for _ in range(CHANNELS)]
        try:
            inventory = inventory_pb2_grpc.InventoryServiceStub(channels[0])
            for sku in HOT:
                await inventory.AdjustStock(
                    ipb.AdjustStockRequest(
                        sku=sku, on_hand=INITIAL, reason="initial", idempotency_key=f"init-{sku}"
                    )
                )
            clients = [
                asyncio.create_task(
                    client(mix, i, [channels[i % CHANNELS], channels[(i + 1) % CHANNELS]])
                )
                for i in range(CLIENTS)
            ]
            # The run ends early if a client fails (an answer the mix does not expect).
            await asyncio.wait(clients, timeout=DURATION_S, return_when=asyncio.FIRST_EXCEPTION)
            mix.done = True
            await asyncio.gather(*clients)
        finally:
            for channel in channels:
                await channel.close()
        await no_short_holds_left(clean.pg_dsn, SHORT_TTL_S, timeout=30)
        await check_orders_agree(clean.pg_dsn)
    finally:
        server.stop()
    # A backend reports its deadlocks to the statistics by the time it exits.
    await until(
        lambda: sql_is(
            clean.pg_dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'stockcore%'",
            0,
        ),
        "the server's sessions ended",
    )
    found = await deadlocks(clean.pg_dsn) - before

    # The premise: every kind of call ran and met the races it is here for.
    wanted = (
        "create OK",
        "create FAILED_PRECONDITION",
        "pay OK",
        "pay ALREADY_EXISTS",
        "cancel of a paid order",
        "cancel of an unpaid order",
        "reserve OK",
        "commit OK",
        "release OK",
        "adjust OK",
    )
    assert all(mix.seen[w] > 0 for w in wanted), dict(mix.seen)
    assert found == 0, (
        f"{found} deadlocks in {DURATION_S:.0f} s of {dict(mix.seen)}:\n"
        + deadlock_reports(log, log_offset)
    )
