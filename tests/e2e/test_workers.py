"""Several worker processes share one port, each with its own metrics endpoint."""

from __future__ import annotations

import asyncio
import urllib.request

from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from devstack.credentials import DevCredentials
from runtime.processes import free_port
from tests.conftest import ChannelOpener, Servers
from tests.servers import server_process
from tests.waiting import until


def _served(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("stockcore_rpc_duration_seconds_count{") and 'method="GetStock"' in line
    )


async def test_two_workers_share_the_port_and_both_serve(
    clean: Servers, credentials: DevCredentials, open_channel: ChannelOpener
) -> None:
    metrics = free_port()
    async with server_process(
        clean, credentials, STOCKCORE_WORKERS="2", STOCKCORE_METRICS_PORT=str(metrics)
    ) as server:
        async with open_channel(server.target) as channel:
            await pb_grpc.InventoryServiceStub(channel).AdjustStock(
                pb.AdjustStockRequest(sku="W-1", on_hand=3, reason="restock", idempotency_key="w1")
            )

        # Both workers start together, but health may answer from the first one up:
        # wait for both metrics endpoints, then make new connections (the kernel spreads
        # them over the listening workers) until each worker has served some.
        async def both_up() -> bool:
            try:
                await asyncio.gather(
                    asyncio.to_thread(_served, metrics), asyncio.to_thread(_served, metrics + 1)
                )
            except OSError:
                return False
            return True

        await until(both_up, "both workers' metrics endpoints answering", timeout=60)
        made = 0

        async def both_served() -> bool:
            nonlocal made
            for _ in range(10):
                options = [
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.primary_user_agent", f"c{made}"),
                ]
                async with open_channel(server.target, options=options) as channel:
                    reply = await pb_grpc.InventoryServiceStub(channel).GetStock(
                        pb.GetStockRequest(skus=["W-1"])
                    )
                    assert reply.levels[0].available == 3
                made += 1
            counts = await asyncio.gather(
                asyncio.to_thread(_served, metrics), asyncio.to_thread(_served, metrics + 1)
            )
            # Every call counted once, by the worker that served it.
            assert sum(counts) == made, (counts, made)
            return min(counts) > 0

        await until(both_served, "both workers serving calls", timeout=60)
