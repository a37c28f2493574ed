"""kill -9 of a fulfilment worker mid-batch, twice, while orders keep being paid: every
paid order ships exactly once, none is lost, none is booked with two carriers. The
workers are real `python -m fulfilment` processes; each kill lands while the victim
holds a carrier's booking it has not recorded yet."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from clients.orders import OrderClient, OrderStatus
from fulfilment.config import FulfilmentSettings, to_env
from runtime.processes import spawn, stop_child
from server.app import App
from server.config import Settings
from tests.e2e.fulfilment_stack import (
    SHIPPED,
    Partners,
    fulfil_settings,
    paid_orders,
    stock,
    wait_statuses,
)
from tests.waiting import until

pytestmark = pytest.mark.slow

SHOPPERS = 4
KILLS = 2


def _worker(settings: FulfilmentSettings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **to_env(settings)}
    with open(log, "ab") as out:
        return spawn(
            [sys.executable, "-m", "fulfilment"],
            death_signal=signal.SIGKILL,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _booked_unrecorded(conn: asyncpg.Connection, worker: str, booked: set[str]) -> int:
    """Orders the carrier booked whose rows `worker` still leases in BOOKING."""
    rows = await conn.fetch(
        "SELECT order_id FROM stockcore.fulfilments WHERE lease_owner = $1 AND stage = 3",
        worker,
    )
    return len({r["order_id"] for r in rows} & booked)


async def test_kill_9_of_workers_mid_batch_ships_every_paid_order_once(
    app: App, settings: Settings, tmp_path: Path, partners: Partners
) -> None:
    workers: list[subprocess.Popen[bytes]] = []
    try:
        await stock(app)
        # Replies spread over half a second keep bookings of one batch in flight while
        # others are already made.
        await partners.faults(partners.primary, latency_s=0.05, latency_jitter_s=0.5)
        config = fulfil_settings(settings, app, partners, fulfil_batch=20, fulfil_lease_s=5.0)
        workers = [_worker(config, tmp_path / f"worker-{i}.log") for i in range(2)]

        paid: list[str] = []
        stop = asyncio.Event()

        async def shopper(index: int) -> None:
            while not stop.is_set():
                paid.extend(await paid_orders(app, 3, prefix=f"crash{index}"))
                await asyncio.sleep(0.02)

        shoppers = [asyncio.create_task(shopper(i)) for i in range(SHOPPERS)]
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            for kill in range(KILLS):
                victim = workers[kill]
                name = f"{socket.gethostname()}-{victim.pid}"
                caught: list[int] = []

                async def mid_booking(name: str = name, caught: list[int] = caught) -> bool:
                    booked = {b["order_id"] for b in await partners.bookings(partners.primary)}
                    caught.append(await _booked_unrecorded(conn, name, booked))
                    return caught[-1] > 0

                await until(mid_booking, f"worker {name} holding unrecorded bookings", 60)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                workers.append(_worker(config, tmp_path / f"worker-{kill + 2}.log"))
                await asyncio.sleep(2.0)
        finally:
            stop.set()
            await asyncio.gather(*shoppers)
            await conn.close()

        assert paid, "no order was paid while the workers were killed"
        await wait_statuses(app, paid, SHIPPED, timeout=120)

        primary = await partners.bookings(partners.primary)
        fallback = await partners.bookings(partners.fallback)
        per_order = Counter(b["order_id"] for b in primary + fallback)
        assert set(per_order) == set(paid), "an order shipped without a booking, or the reverse"
        assert [o for o, n in per_order.items() if n > 1] == [], "booked twice"
        # The kills made the carrier see some bookings again (same key, same parcel).
        assert any(b["requests"] > 1 for b in primary), "no kill landed between send and record"
        async with OrderClient(f"127.0.0.1:{app.port}") as orders:
            tracking = {b["order_id"]: b["tracking_no"] for b in primary + fallback}
            for order_id in paid:
                order, history = await orders.get_order(order_id)
                assert [c.to_status for c in history].count(OrderStatus.ORDER_STATUS_SHIPPED) == 1
                assert order.shipment is not None
                assert order.shipment.tracking_no == tracking[order_id]
    finally:
        for proc in workers:
            if proc.poll() is None:
                stop_child(proc)
