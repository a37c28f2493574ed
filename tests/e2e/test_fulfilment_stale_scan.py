"""The stale-sync scan against the real stack: which orders it counts and pushes again, what
the pushed orders do next, and that its interval and threshold are the settings'. Time is
moved by writing old timestamps into the database, never by waiting for them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from clients.orders import OrderClient, OrderStatus
from fulfilment.config import FulfilmentSettings
from fulfilment.domain import Stage
from fulfilment.metrics import REGISTRY
from server.app import App
from server.config import Settings
from tests.e2e.fulfilment_stack import (
    SKU,
    Partners,
    fulfil_settings,
    fulfilment_rows,
    idle_worker,
    paid_orders,
    running_partners,
    running_worker,
    statuses,
    stock,
    wait_statuses,
)
from tests.support import connected
from tests.waiting import until

STALE_AFTER_S = 60.0
# No poll comes due by itself within a test: only the scan brings a row forward.
NEVER_S = 3600.0


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@dataclass
class Cast:
    """Orders in each state the scan tells apart: `stale` ones have had no sync for longer
    than the threshold, `fresh` ones synced just now, `elsewhere` are old but in a status
    the scan leaves alone."""

    stale_paid: str
    stale_unheard: str
    stale_shipped: str
    stale_in_transit: str
    fresh: list[str]
    elsewhere: list[str]

    @property
    def pushable(self) -> list[str]:
        """The stale orders a worker already has a fulfilment for."""
        return [self.stale_paid, self.stale_shipped, self.stale_in_transit]

    @property
    def stale(self) -> list[str]:
        """Every stale order."""
        return [*self.pushable, self.stale_unheard]


def _quiet(settings: Settings, app: App, partners: Partners, **changes: Any) -> FulfilmentSettings:
    base: dict[str, Any] = {
        "pack_poll_s": NEVER_S,
        "track_poll_s": NEVER_S,
        "stale_after_s": STALE_AFTER_S,
        "stale_scan_interval_s": NEVER_S,
    }
    base.update(changes)
    return fulfil_settings(settings, app, partners, **base)


async def _parked(dsn: str, ids: list[str], stage: Stage) -> bool:
    """Whether every row is at `stage`, unleased and not due for a long while."""
    async with connected(dsn) as conn:
        parked = await conn.fetchval(
            "SELECT count(*) FROM stockcore.fulfilments WHERE order_id = ANY($1) AND stage = $2"
            " AND lease_owner IS NULL AND due_at > now() + interval '10 minutes'",
            ids,
            stage.value,
        )
    return bool(parked == len(ids))


async def _age(dsn: str, ages: dict[str, float]) -> None:
    """Make each order's last change and last sync `ages[order]` seconds old."""
    async with connected(dsn) as conn:
        for order_id, age in ages.items():
            ago = timedelta(seconds=age)
            await conn.execute(
                "UPDATE stockcore.orders SET updated_at = now() - $2::interval,"
                " last_sync_at = CASE WHEN last_sync_at IS NULL THEN NULL"
                " ELSE now() - $2::interval END WHERE order_id = $1",
                order_id,
                ago,
            )
            await conn.execute(
                "UPDATE stockcore.fulfilments SET last_sync_at = now() - $2::interval"
                " WHERE order_id = $1 AND last_sync_at IS NOT NULL",
                order_id,
                ago,
            )


async def _cast(app: App, settings: Settings, partners: Partners) -> Cast:
    """Orders brought to each state by real workers, then the stale ones aged."""
    dsn = settings.pg_dsn or ""
    await stock(app)
    # In transit: tracked until the carrier reports it moving, then parked.
    async with running_worker(_quiet(settings, app, partners, pack_poll_s=0.05, track_poll_s=0.05)):
        in_transit = await paid_orders(app, 2, "transit")
        await wait_statuses(app, in_transit, {OrderStatus.ORDER_STATUS_IN_TRANSIT})
    # Shipped: no tracking poll comes due after ShipOrder.
    async with running_worker(_quiet(settings, app, partners, pack_poll_s=0.05)):
        shipped = await paid_orders(app, 2, "shipped")
        await wait_statuses(app, shipped, {OrderStatus.ORDER_STATUS_SHIPPED})
        await until(
            lambda: _parked(dsn, in_transit + shipped, Stage.TRACKING), "tracking rows parked"
        )
    # Paid: handed off to the warehouse, whose packing nobody asks about again.
    async with running_worker(_quiet(settings, app, partners)):
        paid = await paid_orders(app, 2, "paid")
        await until(lambda: _parked(dsn, paid, Stage.PACKING), "paid orders packing")
    # Paid while no worker runs: no fulfilment exists for it.
    [unheard] = await paid_orders(app, 1, "unheard")
    async with OrderClient(f"127.0.0.1:{app.port}") as orders:
        await orders.create_order("pending-1", "cust-1", [(SKU, 1, 500)], "EUR", 600)
        await orders.create_order("cancelled-1", "cust-1", [(SKU, 1, 500)], "EUR", 600)
        await orders.cancel_order("cancelled-1", "changed my mind")
    cast = Cast(
        stale_paid=paid[0],
        stale_unheard=unheard,
        stale_shipped=shipped[0],
        stale_in_transit=in_transit[0],
        fresh=[paid[1], shipped[1], in_transit[1]],
        elsewhere=["pending-1", "cancelled-1"],
    )
    await _age(
        dsn,
        {
            cast.stale_paid: 600,
            cast.stale_shipped: 700,
            cast.stale_in_transit: 800,
            cast.stale_unheard: 900,
            # Older than any stale one: the oldest age shows they are not counted either.
            "pending-1": 3000,
            "cancelled-1": 3000,
        },
    )
    return cast


async def _due_now(dsn: str) -> set[str]:
    async with connected(dsn) as conn:
        rows = await conn.fetch("SELECT order_id FROM stockcore.fulfilments WHERE due_at <= now()")
    return {r["order_id"] for r in rows}


async def _history(dsn: str, what: str) -> list[str]:
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT order_id FROM stockcore.fulfilment_history WHERE what = $1 ORDER BY id", what
        )
    return [r["order_id"] for r in rows]


async def test_the_scan_counts_and_pushes_paid_shipped_and_in_transit_orders_past_the_threshold_only(
    app: App, settings: Settings
) -> None:
    dsn = settings.pg_dsn or ""
    async with running_partners(transit_s=0.05, deliver_s=NEVER_S) as partners:
        cast = await _cast(app, settings, partners)
        pushed_before = _sample("stockcore_fulfilment_stale_pushed_total")
        async with idle_worker(_quiet(settings, app, partners)) as worker:
            found = await worker.scan()

        assert (found.stale, found.pushed, found.created) == (4, 3, 1), found
        # The unheard order's 900 s, plus the few seconds the test has taken since.
        assert 900 <= found.oldest_s < 960, found
        assert _sample("stockcore_fulfilment_stale_orders") == 4
        assert _sample("stockcore_fulfilment_stale_oldest_seconds") == found.oldest_s
        assert _sample("stockcore_fulfilment_stale_pushed_total") - pushed_before == 4

        # Pushed: due now, at the stage they were at; the unheard one starts at the hand-off.
        rows = await fulfilment_rows(dsn, [*cast.stale, *cast.fresh, *cast.elsewhere])
        assert await _due_now(dsn) == set(cast.stale)
        assert rows[cast.stale_paid]["stage"] == Stage.PACKING
        assert rows[cast.stale_shipped]["stage"] == Stage.TRACKING
        assert rows[cast.stale_in_transit]["stage"] == Stage.TRACKING
        assert rows[cast.stale_unheard]["stage"] == Stage.HAND_OFF
        assert sorted(await _history(dsn, "stale")) == sorted(cast.pushable)
        # Fresh orders and other statuses are left alone.
        assert await _parked(dsn, cast.fresh[:1], Stage.PACKING)
        assert await _parked(dsn, cast.fresh[1:], Stage.TRACKING)
        assert not set(cast.elsewhere) & rows.keys()


async def test_a_pushed_order_syncs_again_and_is_not_booked_twice(
    app: App, settings: Settings
) -> None:
    dsn = settings.pg_dsn or ""
    async with running_partners(transit_s=0.05, deliver_s=NEVER_S) as partners:
        cast = await _cast(app, settings, partners)
        booked_before = await partners.bookings(partners.primary)
        # The worker's first scan runs as it starts; it finds the stale orders and pushes them.
        async with running_worker(_quiet(settings, app, partners)) as worker:
            # The warehouse packed the paid order long ago: it is booked and shipped now.
            await wait_statuses(app, [cast.stale_paid], {OrderStatus.ORDER_STATUS_SHIPPED})
            # The carrier has been moving the shipped one since: its tracking says so.
            await wait_statuses(app, [cast.stale_shipped], {OrderStatus.ORDER_STATUS_IN_TRANSIT})

            async def synced() -> bool:
                async with connected(dsn) as conn:
                    recent = await conn.fetchval(
                        "SELECT count(*) FROM stockcore.orders o"
                        " JOIN stockcore.fulfilments f USING (order_id)"
                        " WHERE o.order_id = ANY($1) AND f.lease_owner IS NULL"
                        " AND o.last_sync_at > now() - interval '30 seconds'"
                        " AND f.last_sync_at > now() - interval '30 seconds'",
                        cast.stale,
                    )
                return bool(recent == len(cast.stale))

            await until(synced, "every stale order synchronised again", 20)
            found = await worker.scan()
        assert (found.stale, found.oldest_s) == (0, 0.0), found
        assert _sample("stockcore_fulfilment_stale_orders") == 0
        assert _sample("stockcore_fulfilment_stale_oldest_seconds") == 0

        rows = await fulfilment_rows(dsn, cast.stale)
        assert rows[cast.stale_unheard]["stage"] == Stage.PACKING
        assert rows[cast.stale_in_transit]["stage"] == Stage.TRACKING
        assert await statuses(app, [cast.stale_in_transit, cast.stale_unheard]) == {
            cast.stale_in_transit: OrderStatus.ORDER_STATUS_IN_TRANSIT,
            cast.stale_unheard: OrderStatus.ORDER_STATUS_PAID,
        }

        # One booking per order, each asked for once: the pushes repeated no booking.
        booked = await partners.bookings(partners.primary)
        assert len(booked) == len(booked_before) + 1
        assert sorted(b["order_id"] for b in booked) == sorted(
            [*(b["order_id"] for b in booked_before), cast.stale_paid]
        )
        assert all(b["requests"] == 1 for b in booked), booked
        assert await partners.bookings(partners.fallback) == []
        async with OrderClient(f"127.0.0.1:{app.port}") as orders:
            for order_id in cast.pushable:
                _, history = await orders.get_order(order_id)
                assert [c.to_status for c in history].count(OrderStatus.ORDER_STATUS_SHIPPED) == 1


async def test_the_scan_interval_and_the_stale_threshold_are_the_settings(
    app: App, settings: Settings, partners: Partners
) -> None:
    dsn = settings.pg_dsn or ""
    await stock(app)
    async with running_worker(_quiet(settings, app, partners)):
        [order_id] = await paid_orders(app, 1, "paid")
        await until(lambda: _parked(dsn, [order_id], Stage.PACKING), "the order packing")
    await _age(dsn, {order_id: 120})

    # 120 s is not stale under a 600 s threshold, however often the scan runs.
    scans = _sample("stockcore_fulfilment_stale_scans_total")
    async with running_worker(
        _quiet(settings, app, partners, stale_after_s=600.0, stale_scan_interval_s=0.05)
    ):

        async def scanned_often() -> bool:
            return _sample("stockcore_fulfilment_stale_scans_total") - scans >= 5

        await until(scanned_often, "five scans 0.05 s apart")
        assert _sample("stockcore_fulfilment_stale_orders") == 0
    assert await _parked(dsn, [order_id], Stage.PACKING)
    assert await _history(dsn, "stale") == []

    # Under a 60 s threshold it is; an hour's interval leaves one scan, the first.
    scans = _sample("stockcore_fulfilment_stale_scans_total")
    async with running_worker(
        _quiet(settings, app, partners, stale_after_s=60.0, stale_scan_interval_s=NEVER_S)
    ):
        await wait_statuses(app, [order_id], {OrderStatus.ORDER_STATUS_SHIPPED})
    assert _sample("stockcore_fulfilment_stale_scans_total") - scans == 1
    assert await _history(dsn, "stale") == [order_id]
