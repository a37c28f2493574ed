"""The fulfilment worker against the simulated partners: the way of a paid order, each
circuit breaker trigger, recovery, a lost acknowledgement, a poison reply and its replay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from clients.cli import ExitCode
from clients.orders import OrderClient, OrderStatus
from server.app import App
from server.config import Settings
from tests.e2e.fulfilment_stack import (
    PRIMARY,
    SHIPPED,
    SKU,
    Partners,
    fulfil_settings,
    fulfilment_rows,
    paid_orders,
    running_worker,
    stock,
    transitions,
    wait_statuses,
)
from tests.support import connected
from tests.waiting import until


async def test_a_paid_order_is_handed_off_booked_shipped_and_delivered(
    app: App, settings: Settings, partners: Partners
) -> None:
    await stock(app)
    async with running_worker(fulfil_settings(settings, app, partners)):
        [order_id] = await paid_orders(app, 1)
        await wait_statuses(app, [order_id], {OrderStatus.ORDER_STATUS_DELIVERED})
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        order, history = await orders.get_order(order_id)
    assert order.shipment is not None and order.shipment.carrier == PRIMARY
    booked = await partners.bookings(partners.primary)
    assert [(b["order_id"], b["tracking_no"]) for b in booked] == [
        (order_id, order.shipment.tracking_no)
    ]
    assert [c.to_status for c in history][-3:] == [
        OrderStatus.ORDER_STATUS_SHIPPED,
        OrderStatus.ORDER_STATUS_IN_TRANSIT,
        OrderStatus.ORDER_STATUS_DELIVERED,
    ]
    row = (await fulfilment_rows(settings.pg_dsn or "", [order_id]))[order_id]
    assert row["stage"] == 6 and row["warehouse_ref"].startswith("WH-")
    assert row["last_sync_at"] is not None and order.shipment.last_sync_time is not None
    async with connected(settings.pg_dsn) as conn:
        steps = [
            r["what"]
            for r in await conn.fetch(
                "SELECT what FROM stockcore.fulfilment_history WHERE order_id = $1 ORDER BY id",
                order_id,
            )
        ]
    assert steps == [
        "paid",
        "handed off",
        "packed",
        "bound",
        "booked",
        "shipped",
        "in transit",
        "delivered",
    ]


async def test_carrier_down_opens_the_breaker_after_5_failures_and_the_fallback_carries_every_new_order(
    app: App, settings: Settings, partners: Partners
) -> None:
    await stock(app)
    await partners.faults(partners.primary, outage_s=600)
    # Rate triggers need 100 calls here: only the consecutive failures can open it.
    config = fulfil_settings(settings, app, partners, breaker_min_calls=100)
    async with running_worker(config):
        ids = await paid_orders(app, 20)
        await wait_statuses(app, ids, SHIPPED)
    assert await partners.bookings(partners.primary) == []
    carried = {b["order_id"] for b in await partners.bookings(partners.fallback)}
    assert carried == set(ids)
    moves = await transitions(settings.pg_dsn or "", PRIMARY)
    assert moves[0] == ("CLOSED", "OPEN", "5 consecutive failures")


async def test_a_slow_carrier_opens_the_breaker_on_slow_calls(
    app: App, settings: Settings, partners: Partners
) -> None:
    await stock(app)
    await partners.faults(partners.primary, latency_s=4.0)
    config = fulfil_settings(
        settings,
        app,
        partners,
        partner_timeout_s=6.0,
        fulfil_lease_s=30.0,
        breaker_min_calls=5,
        # Open for the whole test: on a loaded machine the first five take long
        # enough that a 30 s open time ends, and a probe would book a later order.
        breaker_open_s=600.0,
    )
    async with running_worker(config):
        first = await paid_orders(app, 5)
        await wait_statuses(app, first, SHIPPED, 30)
        later = await paid_orders(app, 5)
        await wait_statuses(app, later, SHIPPED, 30)
    moves = await transitions(settings.pg_dsn or "", PRIMARY)
    assert moves[0][:2] == ("CLOSED", "OPEN") and moves[0][2].startswith("slow calls 5/5"), moves
    # Slow is not failed: the first five were booked by the slow carrier, once each.
    assert {b["order_id"] for b in await partners.bookings(partners.primary)} == set(first)
    assert {b["order_id"] for b in await partners.bookings(partners.fallback)} == set(later)


async def test_six_percent_errors_over_the_window_open_the_breaker_on_rate(
    app: App, settings: Settings, partners: Partners
) -> None:
    await stock(app)
    await partners.faults(partners.primary, error_rate=0.06)
    config = fulfil_settings(settings, app, partners, breaker_min_calls=20, breaker_open_s=60.0)
    async with running_worker(config):
        ids = await paid_orders(app, 60)
        await wait_statuses(app, ids, SHIPPED)
    moves = await transitions(settings.pg_dsn or "", PRIMARY)
    assert moves[0][:2] == ("CLOSED", "OPEN") and moves[0][2].startswith("error rate 2/"), moves
    primary = {b["order_id"] for b in await partners.bookings(partners.primary)}
    fallback = {b["order_id"] for b in await partners.bookings(partners.fallback)}
    assert primary and fallback and not primary & fallback and primary | fallback == set(ids)


async def test_a_recovered_carrier_is_probed_half_open_then_closed(
    app: App, settings: Settings, partners: Partners
) -> None:
    await stock(app)
    await partners.faults(partners.primary, outage_s=600)
    config = fulfil_settings(settings, app, partners, breaker_open_s=0.5, breaker_half_open_calls=2)
    async with running_worker(config):
        down = await paid_orders(app, 5)
        await wait_statuses(app, down, SHIPPED)
        await partners.faults(partners.primary, outage_s=0)
        # Half-open probes ride on live traffic: new orders keep coming.
        probing: list[str] = []

        async def closed() -> bool:
            probing.extend(await paid_orders(app, 2))
            moves = await transitions(settings.pg_dsn or "", PRIMARY)
            return ("HALF_OPEN", "CLOSED") in [m[:2] for m in moves]

        await until(closed, "the primary's breaker closed again", 20)
        up = await paid_orders(app, 5)
        await wait_statuses(
            app,
            probing + up,
            SHIPPED,
        )
    moves = [m[:2] for m in await transitions(settings.pg_dsn or "", PRIMARY)]
    assert moves[0] == ("CLOSED", "OPEN") and ("OPEN", "HALF_OPEN") in moves
    assert moves[-1] == ("HALF_OPEN", "CLOSED")
    assert set(up) <= {b["order_id"] for b in await partners.bookings(partners.primary)}


async def test_a_lost_acknowledgement_is_retried_and_booked_once(
    app: App, settings: Settings, partners: Partners
) -> None:
    await stock(app)
    await partners.faults(partners.primary, lose_next=1)
    async with running_worker(fulfil_settings(settings, app, partners)):
        [order_id] = await paid_orders(app, 1)
        await wait_statuses(
            app,
            [order_id],
            SHIPPED,
        )
    [booking] = await partners.bookings(partners.primary)
    assert booking["order_id"] == order_id and booking["requests"] == 2
    assert await partners.bookings(partners.fallback) == []
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        order, history = await orders.get_order(order_id)
    assert order.shipment is not None and order.shipment.tracking_no == booking["tracking_no"]
    assert [c.to_status for c in history].count(OrderStatus.ORDER_STATUS_SHIPPED) == 1


async def _stockctl(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "clients.cli", "fulfilment", *args, "--pg", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_poison_reply_goes_to_the_dead_letters_and_a_replay_after_the_fix_ships_it(
    app: App, settings: Settings, partners: Partners
) -> None:
    dsn = settings.pg_dsn or ""
    await stock(app)
    async with running_worker(fulfil_settings(settings, app, partners)):
        [poisoned, healthy] = await paid_orders(app, 2)
        await partners.faults(partners.primary, poison=[poisoned])

        async def dead() -> bool:
            # No row yet until a worker has taken the order from the stream.
            row = (await fulfilment_rows(dsn, [poisoned])).get(poisoned)
            return row is not None and row["stage"] == 9

        await until(dead, "the poisoned order's booking in the dead letters", 30)
        await wait_statuses(app, [healthy], SHIPPED)

        listed = await _stockctl(dsn, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [letter] = json.loads(listed.stdout)["dead_letters"]
        assert letter["order_id"] == poisoned and letter["stage"] == "BOOKING"
        assert letter["partner"] == PRIMARY and letter["attempts"] == 3
        shown = await _stockctl(dsn, "dlq", "show", str(letter["id"]), "--json")
        assert shown.returncode == 0, shown.stderr
        history = [h["what"] for h in json.loads(shown.stdout)["history"]]
        assert history[:4] == ["paid", "handed off", "packed", "bound"]
        assert history[-1] == "dead"
        order = await _stockctl(dsn, "show", poisoned, "--json")
        assert order.returncode == 0, order.stderr
        row = json.loads(order.stdout)
        assert (row["stage"], row["carrier"], row["lines"]) == ("DEAD", PRIMARY, [[SKU, 1]])
        assert [h["what"] for h in row["history"]][-1] == "dead"
        assert all(h["worker"] for h in row["history"]), row["history"]

        # The carrier fixes its replies; the replay books the same key, with the same
        # carrier, and the order ships.
        await partners.faults(partners.primary, poison=[])
        replayed = await _stockctl(dsn, "dlq", "replay", str(letter["id"]))
        assert replayed.returncode == 0, replayed.stderr
        assert f"order {poisoned}" in replayed.stdout
        await wait_statuses(
            app,
            [poisoned],
            SHIPPED,
        )
        again = await _stockctl(dsn, "dlq", "replay", str(letter["id"]))
        assert again.returncode == ExitCode.NOT_FOUND, again.stdout
        waiting = await _stockctl(dsn, "dlq", "list")
        assert waiting.stdout.strip().endswith("0 dead letters shown")
    [booking] = [b for b in await partners.bookings(partners.primary) if b["order_id"] == poisoned]
    assert booking["requests"] >= 2
    assert poisoned not in {b["order_id"] for b in await partners.bookings(partners.fallback)}


async def test_stockctl_fulfilment_status_shows_stages_workers_and_breaker_moves(
    app: App, settings: Settings, partners: Partners
) -> None:
    dsn = settings.pg_dsn or ""
    await stock(app)
    await partners.faults(partners.primary, outage_s=600)
    config = fulfil_settings(settings, app, partners, breaker_open_s=60.0)
    async with running_worker(config, name="status-worker"):
        ids = await paid_orders(app, 8)
        await wait_statuses(app, ids, SHIPPED)

        async def reported() -> bool:
            done = await _stockctl(dsn, "status", "--json")
            assert done.returncode == 0, done.stderr
            data = json.loads(done.stdout)
            workers = {w["worker"]: w for w in data["workers"]}
            seen.update(data)
            return (
                "status-worker" in workers
                and workers["status-worker"]["breakers"][PRIMARY]["state"] == "OPEN"
                and sum(data["stages"].values()) == len(ids)
            )

        seen: dict[str, Any] = {}
        await until(reported, f"the status to show the open breaker: {seen}", 15)
        assert seen["workers"][0]["alive"] and seen["dead_letters_waiting"] == 0
        assert set(seen["stages"]) <= {"TRACKING", "DELIVERED"}
        assert (
            seen["recent_transitions"][-1]["from"],
            seen["recent_transitions"][-1]["to"],
        ) == (
            "CLOSED",
            "OPEN",
        )
        text = await _stockctl(dsn, "status")
        assert f"{PRIMARY}" in text.stdout and "OPEN" in text.stdout
    missing = await _stockctl(dsn, "show", "no-such-order")
    assert missing.returncode == ExitCode.NOT_FOUND
