"""The health service stays open to probes without costing the server: statuses are
published only when they change, and Watch streams, which need no token, are capped per
peer address and in total, the excess refused at once with RESOURCE_EXHAUSTED and a
RetryInfo."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import psutil
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stockcore.v1 import inventory_pb2_grpc

from devstack.credentials import DevCredentials
from devstack.servers import LocalStockcore
from server.app import INVENTORY_SERVICE, ORDER_SERVICE, RECONCILIATION_SERVICE, App
from server.domain.errors import Unavailable
from tests import callers
from tests.servers import Servers, server_process
from tests.support import details_of, put_stock, reserve_request
from tests.waiting import until_true

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

PER_PEER = 20
TOTAL = 30
ATTEMPTS = 10_000
# Attempts in flight at once from the test: enough to crowd the server, few enough that
# the test process itself keeps up.
WAVE = 500
IDLE_WINDOW_S = 3.0


async def test_health_is_published_only_when_a_status_changes(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[tuple[str, int]] = []
    pings = 0
    failing = False
    set_status = app.health.set
    ping = app.store.ping

    async def recording_set(service: str, status: int) -> None:
        published.append((service, status))
        await set_status(service, status)  # type: ignore[arg-type]

    async def counted_ping() -> None:
        nonlocal pings
        pings += 1
        if failing:
            raise Unavailable("PostgreSQL unavailable: made to fail by the test")
        await ping()

    monkeypatch.setattr(app.health, "set", recording_set)
    monkeypatch.setattr(app.store, "ping", counted_ping)

    # Three whole rounds of the reporter (a ping opens each) with nothing changed.
    await until_true(lambda: pings >= 4, "four rounds of the health reporter")
    assert published == []

    failing = True
    start = pings
    await until_true(lambda: pings >= start + 4, "four rounds with PostgreSQL failing")
    services = {"", INVENTORY_SERVICE, ORDER_SERVICE, RECONCILIATION_SERVICE}
    assert sorted(published) == sorted((s, NOT_SERVING) for s in services)

    published.clear()
    failing = False
    start = pings
    await until_true(lambda: pings >= start + 4, "four rounds with PostgreSQL back")
    assert sorted(published) == sorted((s, SERVING) for s in services)


@dataclass
class Flood:
    """What the Watch attempts of one peer came to."""

    open: list[grpc.aio.UnaryStreamCall] = field(default_factory=list)  # type: ignore[type-arg]
    refused: list[grpc.aio.AioRpcError] = field(default_factory=list)


async def attempt(channel: grpc.aio.Channel, flood: Flood) -> None:
    """One Watch: kept open when its first answer (the current status) comes, noted when
    it is refused."""
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=120
    )
    try:
        reply = await call.read()
    except grpc.aio.AioRpcError as refused:
        flood.refused.append(refused)
        return
    assert reply.status == SERVING, reply
    flood.open.append(call)


async def flood(channels: list[grpc.aio.Channel], attempts: int, into: Flood) -> None:
    """`attempts` Watch attempts spread over `channels`, `WAVE` at a time."""
    for first in range(0, attempts, WAVE):
        await asyncio.gather(
            *(
                attempt(channels[i % len(channels)], into)
                for i in range(first, min(first + WAVE, attempts))
            )
        )


def cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU time the process has used so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


async def cpu_share(process: psutil.Process, seconds: float) -> float:
    """Cores the process kept busy over the next `seconds` (CPU seconds per second)."""
    used, started = cpu_seconds(process), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(process) - used) / (time.monotonic() - started)


def refusal_of(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, float]:
    """Code, ErrorInfo reason and RetryInfo delay (s) of a refused Watch."""
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    (retry,) = details_of(error, error_details_pb2.RetryInfo)
    return error.code(), info.reason, retry.retry_delay.ToTimedelta().total_seconds()


@pytest.fixture
async def server(clean: Servers, credentials: DevCredentials) -> AsyncIterator[LocalStockcore]:
    """A server process on IPv4 and IPv6 loopback (two peer addresses to tell apart),
    allowing PER_PEER health watches per peer and TOTAL in all."""
    async with server_process(
        clean,
        credentials,
        STOCKCORE_GRPC_HOST="localhost",
        STOCKCORE_HEALTH_WATCHES_PER_PEER=str(PER_PEER),
        STOCKCORE_MAX_HEALTH_WATCHES=str(TOTAL),
    ) as started:
        yield started


async def test_ten_thousand_health_watches_get_the_caps_and_cost_neither_cpu_nor_reserve(
    server: LocalStockcore, credentials: DevCredentials, service_token: str
) -> None:
    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    v4, v6 = f"127.0.0.1:{server.port}", f"[::1]:{server.port}"
    # Health needs no token: these channels carry none.
    v4_channels = [callers.secure_channel(v4, credentials, None) for _ in range(4)]
    v6_channels = [callers.secure_channel(v6, credentials, None)]
    from_v4, from_v6 = Flood(), Flood()
    async with callers.secure_channel(v4, credentials, service_token) as service:
        stub = inventory_pb2_grpc.InventoryServiceStub(service)
        await put_stock(stub, "A", 100)
        try:
            without = await cpu_share(process, IDLE_WINDOW_S)

            # Most of one peer's attempts, with a Reserve sent while they arrive.
            flood_started, cpu_before = time.monotonic(), cpu_seconds(process)
            during = asyncio.ensure_future(stub.Reserve(reserve_request("during", A=1), timeout=10))
            await flood(v4_channels, ATTEMPTS - 1000, from_v4)
            # The other peer: what the first left of the total, then refusals.
            await flood(v6_channels, 1000, from_v6)
            reply = await during
            flood_took = time.monotonic() - flood_started
            flood_cpu = cpu_seconds(process) - cpu_before

            idle = await cpu_share(process, IDLE_WINDOW_S)
            after = await stub.Reserve(reserve_request("after", A=1), timeout=5)
        finally:
            for call in from_v4.open + from_v6.open:
                call.cancel()
            for channel in v4_channels + v6_channels:
                await channel.close()

    print(
        f"\nserver CPU, cores busy over {IDLE_WINDOW_S:.0f} s: {without:.3f} without watches,"
        f" {idle:.3f} with {len(from_v4.open) + len(from_v6.open)} idle watches open after"
        f" {ATTEMPTS} attempts ({len(from_v4.refused) + len(from_v6.refused)} refused);"
        f" the attempts took {flood_took:.1f} s and {flood_cpu:.2f} s of the server's CPU"
        f" ({flood_cpu / ATTEMPTS * 1e6:.0f} us each)"
    )
    assert len(from_v4.open) == PER_PEER
    assert len(from_v6.open) == TOTAL - PER_PEER
    assert len(from_v4.refused) + len(from_v6.refused) == ATTEMPTS - TOTAL
    # One peer is refused its excess as past its own share, the other as past the total.
    v4_refusals = {refusal_of(e)[:2] for e in from_v4.refused}
    v6_refusals = {refusal_of(e)[:2] for e in from_v6.refused}
    assert v4_refusals == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_LIMIT")}
    assert v6_refusals == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")}
    assert all(0 < refusal_of(e)[2] <= 10 for e in from_v4.refused + from_v6.refused)
    # The watches did not keep Reserve from its answer, during the flood or after it.
    assert reply.reservation.reservation_id == "during"
    assert after.reservation.reservation_id == "after"
    # Idle watches cost nothing a tenth of a core would notice (a loose bound: the figure
    # is printed above).
    assert idle <= without + 0.1, (without, idle)
