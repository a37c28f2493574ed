"""SIGTERM under load: health turns NOT_SERVING first, calls in flight finish, new ones
are refused as UNAVAILABLE with nothing done, and no call fails any other way; with
several workers, a dead one is started again and all stop together."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from clients.errors import from_rpc_error
from devstack.credentials import DevCredentials
from tests.conftest import ChannelOpener, Servers
from tests.servers import server_process
from tests.support import connected
from tests.waiting import until_true

CALLERS = 200
# Refusals before any work: at the process's bound of calls in flight, or shutting down.
REFUSED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
CHANNELS = 8
SKUS = [f"T-{i}" for i in range(20)]


@dataclass
class Attempt:
    reservation_id: str
    sent: float
    ended: float
    code: grpc.StatusCode
    reason: str = ""


async def _stock(open_channel: ChannelOpener, target: str) -> None:
    async with open_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        for sku in SKUS:
            await stub.AdjustStock(
                pb.AdjustStockRequest(
                    sku=sku, on_hand=1_000_000, reason="restock", idempotency_key=f"s-{sku}"
                )
            )


async def _caller(
    stub: pb_grpc.InventoryServiceStub,
    ids: itertools.count[int],
    attempts: list[Attempt],
    until: asyncio.Event,
) -> None:
    # A well-behaved caller: a new hold as soon as the last ended, and after a refusal
    # the wait its RetryInfo asks for.
    while not until.is_set():
        rid = f"t{next(ids)}"
        request = pb.ReserveRequest(
            reservation_id=rid, lines=[pb.Line(sku=SKUS[hash(rid) % 20], quantity=1)]
        )
        sent = time.monotonic()
        try:
            await stub.Reserve(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            reason = error.error_info.reason if error.error_info else ""
            attempts.append(Attempt(rid, sent, time.monotonic(), exc.code(), reason))
            await asyncio.sleep(error.retry_delay or 0.1)
        else:
            attempts.append(Attempt(rid, sent, time.monotonic(), grpc.StatusCode.OK))


async def _watch_health(
    open_channel: ChannelOpener, target: str, seen: list[tuple[float, int]]
) -> None:
    async with open_channel(target) as channel:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for reply in health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            ):
                seen.append((time.monotonic(), reply.status))


async def test_sigterm_under_200_callers_fails_no_admitted_call(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    async with server_process(clean, credentials) as server:
        assert server.proc is not None
        proc = server.proc
        await _stock(open_channel, server.target)
        health: list[tuple[float, int]] = []
        watcher = asyncio.create_task(_watch_health(open_channel, server.target, health))
        attempts: list[Attempt] = []
        ids = itertools.count()
        until = asyncio.Event()
        channels = [open_channel(server.target) for _ in range(CHANNELS)]
        try:
            stubs = [pb_grpc.InventoryServiceStub(c) for c in channels]
            callers = [
                asyncio.create_task(_caller(stubs[i % CHANNELS], ids, attempts, until))
                for i in range(CALLERS)
            ]
            await asyncio.sleep(2.0)
            sigterm_at = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            exit_code = await asyncio.to_thread(proc.wait, 30)
            exited_at = time.monotonic()
            await asyncio.sleep(1.0)  # callers meet the closed port
            until.set()
            await asyncio.gather(*callers)
        finally:
            for channel in channels:
                await channel.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    assert exit_code == 0, f"the server exited with {exit_code}"
    codes = {a.code for a in attempts}
    failed = [a for a in attempts if a.code is not grpc.StatusCode.OK and a.code not in REFUSED]
    assert not failed, f"{len(failed)} calls failed otherwise than refused: {failed[:5]}"
    in_flight = [a for a in attempts if a.sent < sigterm_at < a.ended]
    finished = [a for a in in_flight if a.code is grpc.StatusCode.OK]
    assert finished, f"no call in flight at SIGTERM finished ({len(in_flight)} in flight; {codes})"
    refused = [a for a in attempts if a.reason == "SHUTTING_DOWN"]
    assert all(a.ended >= sigterm_at for a in refused)
    # Health said NOT_SERVING after SIGTERM, before the process was gone.
    not_serving = [t for t, s in health if s == health_pb2.HealthCheckResponse.NOT_SERVING]
    assert not_serving and sigterm_at <= not_serving[0] <= exited_at, health

    # Every OK is a hold in PostgreSQL, every refusal left nothing behind.
    async with connected(clean.pg_dsn) as conn:
        stored = {
            r["reservation_id"]
            for r in await conn.fetch("SELECT reservation_id FROM stockcore.reservations")
        }
    ok = {a.reservation_id for a in attempts if a.code is grpc.StatusCode.OK}
    not_done = {a.reservation_id for a in attempts if a.code in REFUSED}
    assert ok <= stored
    assert not (not_done & stored), f"refused calls applied: {sorted(not_done & stored)[:5]}"


def _workers(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(c)
        for c in children
        if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_dead_worker_is_started_again_and_all_stop_together(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    async with server_process(clean, credentials, STOCKCORE_WORKERS="2") as server:
        assert server.proc is not None
        proc = server.proc
        await _stock(open_channel, server.target)
        await until_true(lambda: len(_workers(proc.pid)) == 2, "two workers", timeout=20)
        first = _workers(proc.pid)
        assert len(first) == 2, first
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await until_true(
            lambda: len(now := _workers(proc.pid)) == 2 and victim not in now,
            "the killed worker replaced",
            timeout=20,
        )
        replaced = _workers(proc.pid)
        assert len(replaced) == 2 and victim not in replaced, replaced
        # The new worker serves: new connections land on both, every one answers.
        for i in range(20):
            options = [("grpc.use_local_subchannel_pool", 1), ("grpc.primary_user_agent", f"w{i}")]
            async with open_channel(server.target, options=options) as channel:
                reply = await pb_grpc.InventoryServiceStub(channel).GetStock(
                    pb.GetStockRequest(skus=["T-0"]), timeout=10
                )
                assert reply.levels[0].available == 1_000_000
        stopping = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        exit_code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - stopping
        assert exit_code == 0
        assert not any(_alive(pid) for pid in replaced)
        assert took < 10, f"stopping two idle workers took {took:.1f} s"
        assert "starting it again" in server.log.read_text()
