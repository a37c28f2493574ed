"""The conservation test: many clients hammer a few hot SKUs with random reserves,
commits, releases, short holds and adjustments, against a server in its own process.
At checkpoints (clients paused) and at the end the database's invariants are checked
(stockcore.invariant_violations()), and the Redis mirror and what the clients saw
acknowledged against them. Variants kill -9
Redis, then the server, mid-run."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from devstack.credentials import DevCredentials
from devstack.servers import LocalStockcore
from tests.conftest import ChannelOpener, Servers
from tests.invariants import assert_invariants_hold, assert_mirror_converges
from tests.servers import QUICK_RECOVERY, server_process
from tests.support import connected
from tests.waiting import no_short_holds_left

pytestmark = pytest.mark.slow

HOT = ("HOT-A", "HOT-B", "HOT-C", "HOT-D")
# Touched now and then, so that every check also covers SKUs the faults catch idle.
COLD = tuple(f"COLD-{i}" for i in range(8))
SKUS = HOT + COLD
INITIAL = 300
CLIENTS = 64
DURATION = 20.0
SHORT_TTL_S = 3  # holds of 1-3 s expire during the run; 30 s ones outlive it
T = TypeVar("T")
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # refused before any work: at capacity
}
DEFINITE = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}


@dataclass
class Seen:
    """What clients saw acknowledged."""

    reservations: dict[str, dict[str, int]] = field(default_factory=dict)
    commits: set[str] = field(default_factory=set)
    releases: set[str] = field(default_factory=set)
    ops: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Run:
    """Shared state of one run: pause/resume for checkpoints, in-flight count."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen = Seen()
        self.running = asyncio.Event()
        self.running.set()
        self.inflight = 0
        self.done = False

    async def quiesce(self) -> None:
        """Pause clients and wait for calls in flight to finish."""
        self.running.clear()
        while self.inflight:  # noqa: ASYNC110 - a counter, polled briefly at checkpoints
            await asyncio.sleep(0.01)


async def call(
    run: Run, fn: Callable[[], Awaitable[T]], budget: float = 60.0
) -> T | grpc.StatusCode:
    """Call until answered: retry UNAVAILABLE with the same id (the server may be down);
    return the status code of a definite refusal."""
    deadline = time.monotonic() + budget
    while True:
        try:
            return await fn()
        except grpc.aio.AioRpcError as exc:
            if exc.code() in DEFINITE:
                return exc.code()
            if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def client(run: Run, index: int, stub: pb_grpc.InventoryServiceStub) -> None:
    rng = random.Random(index)
    held: list[str] = []
    seq = 0
    while not run.done:
        await run.running.wait()
        if run.done:
            return
        run.inflight += 1
        try:
            seq += 1
            roll = rng.random()
            if roll < 0.5 or not held:
                rid = f"c{index}-{seq}"
                pool = COLD if rng.random() < 0.1 else HOT
                lines = {sku: rng.randint(1, 3) for sku in rng.sample(pool, rng.randint(1, 2))}
                ttl = duration_pb2.Duration(seconds=rng.choice((1, 2, SHORT_TTL_S, 30)))
                request = pb.ReserveRequest(
                    reservation_id=rid,
                    lines=[pb.Line(sku=s, quantity=q) for s, q in lines.items()],
                    ttl=ttl,
                )
                reply = await call(run, lambda request=request: stub.Reserve(request, timeout=5))
                if isinstance(reply, pb.ReserveResponse):
                    assert {line.sku: line.quantity for line in reply.reservation.lines} == lines
                    run.seen.reservations[rid] = lines
                    held.append(rid)
                    run.seen.ops["reserved"] += 1
                else:
                    assert reply == grpc.StatusCode.FAILED_PRECONDITION
                    run.seen.ops["rejected"] += 1
            elif roll < 0.75:
                rid = held.pop(rng.randrange(len(held)))
                reply = await call(
                    run,
                    lambda rid=rid: stub.Commit(pb.CommitRequest(reservation_id=rid), timeout=5),
                )
                if isinstance(reply, pb.CommitResponse):
                    assert reply.reservation.status == pb.RESERVATION_STATUS_COMMITTED
                    run.seen.commits.add(rid)
                    run.seen.ops["committed"] += 1
                else:
                    # Only its hold's expiry (1-3 s) may refuse a commit.
                    assert reply == grpc.StatusCode.FAILED_PRECONDITION, reply
                    run.seen.ops["commit_refused"] += 1
            elif roll < 0.95:
                rid = held.pop(rng.randrange(len(held)))
                reply = await call(
                    run,
                    lambda rid=rid: stub.Release(pb.ReleaseRequest(reservation_id=rid), timeout=5),
                )
                assert isinstance(reply, pb.ReleaseResponse), reply
                run.seen.releases.add(rid)
                run.seen.ops["released"] += 1
            else:
                sku = rng.choice(HOT if rng.random() < 0.8 else COLD)
                request = pb.AdjustStockRequest(
                    sku=sku,
                    delta=rng.choice((-5, -2, 3, 5, 10)),
                    reason="cycle count",
                    idempotency_key=f"adj-c{index}-{seq}",
                )
                reply = await call(
                    run, lambda request=request: stub.AdjustStock(request, timeout=5)
                )
                if isinstance(reply, pb.AdjustStockResponse):
                    run.seen.ops["adjusted"] += 1
                else:
                    # Only the floor may refuse it: a removal below what is reserved.
                    assert reply == grpc.StatusCode.FAILED_PRECONDITION, reply
                    assert request.delta < 0, request
                    run.seen.ops["adjust_refused"] += 1
        finally:
            run.inflight -= 1


async def check_invariants(servers: Servers, run: Run, *, final: bool) -> None:
    """The database's invariants (stockcore.invariant_violations()) and every acknowledged
    operation, from one PostgreSQL snapshot, plus the Redis mirror."""
    async with connected(servers.pg_dsn) as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await assert_invariants_hold(conn)
            reservations = {
                r["reservation_id"]: r
                for r in await conn.fetch("SELECT * FROM stockcore.reservations")
            }

    for rid, lines in run.seen.reservations.items():
        assert rid in reservations, f"acknowledged reservation {rid} lost"
        found = dict(zip(reservations[rid]["skus"], reservations[rid]["quantities"], strict=True))
        assert found == lines, rid
    for rid in run.seen.commits:
        assert reservations[rid]["status"] == 2, f"acknowledged commit {rid} lost"
    for rid in run.seen.releases:
        assert reservations[rid]["status"] in (3, 4), f"acknowledged release {rid} lost"

    await assert_mirror_converges(servers.pg_dsn, servers.redis_url)


async def hammer(
    servers: Servers,
    disruption: Callable[[LocalStockcore], Awaitable[None]] | None,
    credentials: DevCredentials,
    open_channel: ChannelOpener,
) -> Run:
    async with server_process(servers, credentials, **QUICK_RECOVERY) as server:
        run = Run(server.target)
        async with open_channel(server.target) as channel:
            stub = pb_grpc.InventoryServiceStub(channel)
            for sku in SKUS:
                await stub.AdjustStock(
                    pb.AdjustStockRequest(
                        sku=sku, on_hand=INITIAL, reason="initial", idempotency_key=f"init-{sku}"
                    )
                )
            clients = [asyncio.create_task(client(run, i, stub)) for i in range(CLIENTS)]
            started = time.monotonic()
            checkpoints = [5.0, 13.0]
            disrupted = False
            while time.monotonic() - started < DURATION:
                await asyncio.sleep(0.25)
                elapsed = time.monotonic() - started
                if disruption is not None and not disrupted and elapsed > 7.0:
                    disrupted = True
                    await disruption(server)
                if checkpoints and elapsed > checkpoints[0]:
                    checkpoints.pop(0)
                    await run.quiesce()
                    await check_invariants(servers, run, final=False)
                    run.running.set()
            run.done = True
            run.running.set()
            await asyncio.gather(*clients)
            await run.quiesce()
            await no_short_holds_left(servers.pg_dsn, SHORT_TTL_S, timeout=30)
            await check_invariants(servers, run, final=True)
        return run


def _assert_busy(run: Run) -> None:
    """The premise: every kind of operation ran, and stock ran out under the callers (a
    hold was refused), so the checks above saw contention, not a quiet run."""
    ops = run.seen.ops
    kinds = ("reserved", "rejected", "committed", "released", "adjusted")
    assert all(ops[kind] > 0 for kind in kinds), dict(ops)


async def test_conservation_under_contention(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    run = await hammer(clean, None, credentials, open_channel)
    _assert_busy(run)


async def test_conservation_when_redis_is_killed(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    if clean.redis is None:
        pytest.skip("Redis is external (STOCKCORE_REDIS_URL); this test needs to kill its own")
    redis_server = clean.redis

    async def kill_redis(_: LocalStockcore) -> None:
        redis_server.kill()
        await asyncio.sleep(2.0)  # an outage, not a wait for something
        await redis_server.restart()

    run = await hammer(clean, kill_redis, credentials, open_channel)
    _assert_busy(run)


async def test_conservation_when_server_is_killed(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    async def kill_server(server: LocalStockcore) -> None:
        server.kill()
        await asyncio.sleep(1.0)  # an outage, not a wait for something
        await server.start()

    run = await hammer(clean, kill_server, credentials, open_channel)
    _assert_busy(run)


async def test_conservation_when_postgres_is_killed(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    if clean.pg is None:
        pytest.skip("PostgreSQL is external (STOCKCORE_PG_DSN); this test needs to kill its own")
    postgres = clean.pg

    async def kill_postgres(_: LocalStockcore) -> None:
        postgres.kill()
        await asyncio.sleep(1.0)  # an outage, not a wait for something
        await postgres.restart()  # crash recovery replays the WAL (clients wait meanwhile)

    run = await hammer(clean, kill_postgres, credentials, open_channel)
    _assert_busy(run)
