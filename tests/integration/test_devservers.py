"""The project's own servers start, restart and die with their starter, also from a process
whose gRPC threads are busy (a child forked from such a process must not run Python)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from devstack.config import DevSettings
from devstack.credentials import DevCredentials
from devstack.servers import LocalPostgres, LocalRedis, local_servers
from runtime.processes import free_port
from server.storage.migrations import migrate
from tests.conftest import ROOT, SHARDS, ChannelOpener
from tests.servers import server_settings, serving
from tests.support import connected
from tests.waiting import until

pytestmark = pytest.mark.slow

RESTARTS = 20


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A data folder of this test's own, removed afterwards."""
    path = ROOT / ".data" / f"test-{os.getpid()}-restarts"
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_servers(scratch: Path) -> Iterator[tuple[LocalPostgres, LocalRedis]]:
    """A PostgreSQL and a Redis that this test alone may kill."""
    pg = LocalPostgres(scratch / "pg", free_port())
    rd = LocalRedis(scratch / "redis", free_port())
    pg.start()
    rd.start()
    try:
        yield pg, rd
    finally:
        rd.stop()
        pg.stop()


@pytest.fixture
async def busy_stub(
    own_servers: tuple[LocalPostgres, LocalRedis],
    credentials: DevCredentials,
    open_channel: ChannelOpener,
) -> AsyncIterator[pb_grpc.InventoryServiceStub]:
    """An in-process grpc.aio server on those servers, and a client stub to it."""
    pg, rd = own_servers
    async with connected(pg.dsn) as conn:
        await migrate(conn, SHARDS)
    settings = server_settings(pg.dsn, rd.url, credentials, db_timeout_s=2)
    async with serving(settings) as app, open_channel(app.port) as channel:
        yield pb_grpc.InventoryServiceStub(channel)


async def _keep_calling(stub: pb_grpc.InventoryServiceStub, stop: asyncio.Event) -> int:
    """Call the server without pause (so gRPC's threads are busy at every fork)."""
    calls = 0
    while not stop.is_set():
        try:
            await stub.GetStock(pb.GetStockRequest(skus=["R-1"]), timeout=1)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0)  # refused while a server is down: go on calling
        calls += 1
    return calls


async def test_redis_and_postgres_restart_twenty_times_under_live_grpc_calls(
    own_servers: tuple[LocalPostgres, LocalRedis], busy_stub: pb_grpc.InventoryServiceStub
) -> None:
    pg, rd = own_servers
    await busy_stub.AdjustStock(
        pb.AdjustStockRequest(sku="R-1", on_hand=5, reason="restock", idempotency_key="r1")
    )
    stop = asyncio.Event()
    caller = asyncio.create_task(_keep_calling(busy_stub, stop))
    try:
        for round_ in range(RESTARTS):
            rd.kill()
            await rd.restart()
            client = aioredis.Redis.from_url(rd.url)
            try:
                assert await client.ping(), f"Redis restart {round_ + 1}"
            finally:
                await client.aclose()
            pg.kill()
            await pg.restart()
            async with connected(pg.dsn) as conn:
                assert await conn.fetchval("SELECT on_hand FROM stockcore.stock") == 5

            async def serves() -> bool:
                try:
                    reply = await busy_stub.GetStock(pb.GetStockRequest(skus=["R-1"]), timeout=1)
                except grpc.aio.AioRpcError:
                    return False
                return reply.levels[0].on_hand == 5

            await until(serves, f"the server serves after restart {round_ + 1}", timeout=20)
    finally:
        stop.set()
        calls = await caller
    assert calls > RESTARTS, "the client was not calling during the restarts"


def test_a_started_server_dies_with_the_process_that_started_it(scratch: Path) -> None:
    # A starter process starts Redis, prints its pid, and is then killed -9.
    scratch.mkdir(parents=True)
    port = free_port()
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            " from devstack.servers import LocalRedis;"
            f" r = LocalRedis(Path({str(scratch)!r}), {port}); r.start();"
            " print(r.proc.pid, flush=True); time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert starter.stdout is not None
        child = int(starter.stdout.readline())
        os.kill(child, 0)  # running
    finally:
        starter.kill()
        starter.wait()
        if starter.stdout is not None:
            starter.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("redis-server outlived the process that started it")


async def redis_memory_config(url: str) -> dict[str, str]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return dict(await client.config_get("maxmemory*"))
    finally:
        await client.aclose()


async def test_the_project_redis_refuses_writes_past_its_budget_rather_than_evicting(
    scratch: Path,
) -> None:
    # What the tests start (tests/conftest.py): the budget's default.
    tests_redis = LocalRedis(scratch / "tests-redis", free_port())
    tests_redis.start()
    try:
        config = await redis_memory_config(tests_redis.url)
    finally:
        tests_redis.stop()
    assert config["maxmemory"] == str(DevSettings().dev_redis_maxmemory_mb * 1024 * 1024)
    assert config["maxmemory-policy"] == "noeviction"

    # What `make run` starts (server/__main__.py's dev), with the setting it was given.
    with local_servers(scratch, 0, free_port(), want_pg=False, redis_maxmemory_mb=96) as (_, rd):
        assert rd is not None
        config = await redis_memory_config(rd.url)
    assert (config["maxmemory"], config["maxmemory-policy"]) == (
        str(96 * 1024 * 1024),
        "noeviction",
    )
