"""Admission by queue delay over a real TLS channel: a class of calls whose queue stands
(its requests waited past the target for an interval) has its new calls refused at once,
with a retry hint and nothing applied, while the other class is served; the state ends
once the queue drains."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc

from clients.errors import StatusCode, StockcoreError, from_rpc_error
from server.app import App
from server.config import Settings
from tests.support import connected
from tests.waiting import until


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Admission by queue delay on (the suite's settings turn it off), with a short target
    # and interval so that the queue stands soon after a row is locked.
    return dataclasses.replace(settings, overload_target_s=0.05, overload_interval_s=0.2).validate()


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return check()

    return condition


async def _stock(stub: inventory_pb2_grpc.InventoryServiceStub, units: int) -> None:
    await stub.AdjustStock(
        pb.AdjustStockRequest(sku="HOT", on_hand=units, reason="restock", idempotency_key="s1")
    )


async def test_a_standing_write_queue_refuses_new_writes_at_once_and_still_serves_reads(
    app: App, stub: inventory_pb2_grpc.InventoryServiceStub, dsn: str
) -> None:
    await _stock(stub, 100)
    shedder = app.shedder
    assert shedder is not None
    async with connected(dsn) as locker:
        # A long transaction holds the SKU's row: the Reserve batch in flight waits on it
        # and the requests behind it queue.
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM stockcore.stock WHERE sku = 'HOT' FOR UPDATE")

        async def reserve(rid: str) -> grpc.StatusCode | StockcoreError:
            request = pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku="HOT", quantity=1)])
            try:
                await stub.Reserve(request, timeout=20)
            except grpc.aio.AioRpcError as exc:
                return from_rpc_error(exc)
            return grpc.StatusCode.OK

        queued = [asyncio.create_task(reserve(f"q{i}")) for i in range(10)]
        await until(_true(lambda: shedder.in_flight >= 10), "10 Reserves in flight")
        # Waited past the target for a whole interval with no batch started: the premise.
        await until(
            _true(lambda: shedder.writes.refuses(time.monotonic())), "the write queue stands"
        )
        started = time.monotonic()
        refused = await reserve("late")
        took = time.monotonic() - started
        assert isinstance(refused, StockcoreError), refused
        assert refused.code is StatusCode.RESOURCE_EXHAUSTED
        assert refused.retry_delay is not None and refused.retry_delay > 0
        assert took < 5, f"a refusal at entry took {took:.2f} s"
        # Reads queue apart: the mirror still answers.
        (level,) = (await stub.GetStock(pb.GetStockRequest(skus=["HOT"]), timeout=5)).levels
        assert level.on_hand == 100
        await tx.rollback()
    outcomes = await asyncio.gather(*queued)
    ok = [o for o in outcomes if o is grpc.StatusCode.OK]
    late = [o for o in outcomes if o is not grpc.StatusCode.OK]
    # The batch in flight is served; what queued past the target behind it is refused
    # unapplied, and every refusal says when to come back.
    assert ok, outcomes
    for error in late:
        assert isinstance(error, StockcoreError), error
        assert error.code is StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None
    # Nothing refused was applied, and the queue no longer stands once it drains.
    (level,) = (await stub.GetStock(pb.GetStockRequest(skus=["HOT"]))).levels
    assert level.reserved == len(ok)
    assert await reserve("after") is grpc.StatusCode.OK
    assert not shedder.writes.standing
