"""PostgreSQL slow but not dead, Redis slow but not dead: callers get an answer by their
deadline, nothing is half-applied, and both come back whole once the slowness ends."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc

from server.app import App
from server.config import Settings
from tests.conftest import Servers
from tests.invariants import assert_invariants_hold, assert_mirror_converges
from tests.support import connected
from tests.waiting import until

Stub = inventory_pb2_grpc.InventoryServiceStub
ON_TIME = 0.5  # seconds past a deadline that still count as on time on a loaded machine


async def _stock(stub: Stub, sku: str, units: int) -> None:
    await stub.AdjustStock(
        pb.AdjustStockRequest(sku=sku, on_hand=units, reason="restock", idempotency_key=sku)
    )


def _reserve(rid: str, sku: str) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, quantity=1)])


async def _timed(call, timeout: float) -> tuple[grpc.StatusCode, float]:
    started = time.monotonic()
    try:
        await call(timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), time.monotonic() - started
    return grpc.StatusCode.OK, time.monotonic() - started


async def test_a_row_locked_for_seconds_answers_callers_by_their_deadline_and_recovers(
    app: App, stub: Stub, settings: Settings
) -> None:
    await _stock(stub, "LOCKED", 100)
    await _stock(stub, "FREE", 100)
    assert settings.pg_dsn is not None
    async with connected(settings.pg_dsn) as locker:
        # An operator's session holds the row for seconds, as a long transaction would.
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM stockcore.stock WHERE sku = 'LOCKED' FOR UPDATE")
        held_at = time.monotonic()
        outcomes = await asyncio.gather(
            *(
                _timed(
                    lambda timeout, i=i: stub.Reserve(_reserve(f"l{i}", "LOCKED"), timeout=timeout),
                    1.0,
                )
                for i in range(30)
            ),
            *(
                _timed(
                    lambda timeout: stub.GetStock(
                        pb.GetStockRequest(skus=["FREE"], consistency=pb.CONSISTENCY_STRONG),
                        timeout=timeout,
                    ),
                    1.0,
                )
                for _ in range(10)
            ),
        )
        for code, took in outcomes:
            assert took <= 1.0 + ON_TIME, f"answered after {took:.2f} s ({code.name})"
            assert code in (
                grpc.StatusCode.OK,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAVAILABLE,
            ), code
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - held_at)))
        await tx.rollback()

    # Once the lock is gone, both SKUs serve again at once: no pool left exhausted.
    async def serving() -> bool:
        answers = await asyncio.gather(
            *(
                _timed(
                    lambda timeout, i=i, sku=sku: stub.Reserve(
                        _reserve(f"after{i}", sku), timeout=timeout
                    ),
                    2.0,
                )
                for i, sku in enumerate(["LOCKED", "FREE"] * 10)
            )
        )
        return all(code is grpc.StatusCode.OK for code, _ in answers)

    await until(serving, "every Reserve answered OK after the lock was released", timeout=10)
    pool = app.store._pool
    assert pool.get_size() <= settings.pg_pool_size

    # Nothing half-applied: a retry of each timed-out call with its id returns one
    # outcome, and stock, holds and movements agree.
    for i in range(30):
        await stub.Reserve(_reserve(f"l{i}", "LOCKED"), timeout=10)
    (level,) = (
        await stub.GetStock(pb.GetStockRequest(skus=["LOCKED"], consistency=pb.CONSISTENCY_STRONG))
    ).levels
    assert level.reserved == 30 + 10
    async with connected(settings.pg_dsn) as conn:
        await assert_invariants_hold(conn)


async def test_a_redis_asleep_for_two_seconds_is_bypassed_and_the_gate_comes_back_true(
    app: App, stub: Stub, settings: Settings, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    if servers.redis is None:
        pytest.skip("Redis is external (STOCKCORE_REDIS_URL); DEBUG SLEEP needs our own")
    for sku in ("R1", "R2"):
        await _stock(stub, sku, 15)
    assert settings.redis_url is not None and settings.pg_dsn is not None
    assert app.core.mirror.usable
    sleeper = aioredis.Redis.from_url(settings.redis_url)
    prober = aioredis.Redis.from_url(settings.redis_url, socket_timeout=0.2)

    async def redis_asleep() -> bool:
        try:
            await prober.ping()
        except redis.exceptions.TimeoutError:
            return True
        return False

    caplog.set_level(logging.WARNING, logger="server.inventory.mirror")
    try:
        asleep = asyncio.create_task(sleeper.execute_command("DEBUG", "SLEEP", "2"))
        await until(redis_asleep, "Redis not answering a PING", timeout=1.0)
        outcomes = await asyncio.gather(
            *(
                _timed(
                    lambda timeout, i=i: stub.Reserve(
                        _reserve(f"s{i}", f"R{1 + i % 2}"), timeout=timeout
                    ),
                    3.0,
                )
                for i in range(20)
            )
        )
        await asleep
    finally:
        await sleeper.aclose()
        await prober.aclose()
    # Served by PostgreSQL alone while Redis slept, within the callers' deadlines: the
    # gate was found unusable and bypassed (it said so when it was).
    assert all(code is grpc.StatusCode.OK for code, _ in outcomes), outcomes
    assert any(
        "redis gate unusable, serving from PostgreSQL alone" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]

    # The gate comes back, and agrees with PostgreSQL on every SKU.
    async def gate_back() -> bool:
        return app.core.mirror.usable

    await until(gate_back, "the gate in use again after Redis woke", timeout=15)
    await assert_mirror_converges(settings.pg_dsn, settings.redis_url)
    # It admits what PostgreSQL holds: the 5 units left of each, and not one more.
    for i in range(10):
        await stub.Reserve(_reserve(f"rest{i}", f"R{1 + i % 2}"), timeout=5)
    for sku in ("R1", "R2"):
        try:
            await stub.Reserve(_reserve(f"over-{sku}", sku), timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
        else:
            raise AssertionError(f"{sku} oversold")
