"""The HTTP adapters of fulfilment/http_partners.py against the real simulators: every id
reaches the partner as exactly the id it is, whatever characters it holds, and an
operation on one order never lands on another's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fulfilment.http_partners import HttpCarrier, HttpWarehouse
from fulfilment.partners import BookingRequest, HandOff, MalformedReply, PackState
from simulators.carrier import carrier_app
from simulators.run import RunningSimulator, start
from simulators.warehouse import warehouse_app

VICTIM = "victim"
# Refused as an order id by the server; the adapters must not depend on that.
DOT_DOT = "x/../victim"
# Ids the server accepts, and strings it does not (%, ?, #, &, spaces), which the
# adapters must still carry intact.
IDS = [
    "a/b",
    "victim/cancel",
    "shop.eu/2024:07/" + "x" * 112,
    "y" * 128,
    DOT_DOT,
    "%2F",
    "x%2F..%2Fvictim",
    "a?b=c#d",
    "a&b",
    "a b",
]


@pytest.fixture
async def warehouse_sim() -> AsyncIterator[RunningSimulator]:
    """A warehouse that packs nothing during a test."""
    sim = await start(warehouse_app(pack_s=3600))
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def carrier_sim() -> AsyncIterator[RunningSimulator]:
    """A carrier whose parcels do not move during a test."""
    sim = await start(carrier_app("sf-express", transit_s=3600, deliver_s=3600))
    try:
        yield sim
    finally:
        await sim.stop()


async def listed(sim: RunningSimulator, path: str, key: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}{path}") as reply:
        found: list[dict[str, Any]] = (await reply.json())[key]
        return found


async def handoff_states(sim: RunningSimulator) -> dict[str, str]:
    return {o["order_id"]: o["state"] for o in await listed(sim, "/_handoffs", "orders")}


async def voided(sim: RunningSimulator) -> dict[str, bool]:
    return {b["booking_key"]: b["voided"] for b in await listed(sim, "/_bookings", "bookings")}


def handoff(order_id: str) -> HandOff:
    return HandOff(order_id, "cust-1", (("SKU-1", 1),), datetime.now(UTC))


def booking(key: str) -> BookingRequest:
    return BookingRequest(key, key, "cust-1", (("SKU-1", 1),))


async def test_cancelling_a_dot_dot_id_at_the_warehouse_leaves_the_order_it_names_alone(
    warehouse_sim: RunningSimulator,
) -> None:
    warehouse = HttpWarehouse(warehouse_sim.url, timeout_s=5.0)
    try:
        await warehouse.hand_off(handoff(VICTIM))
        await warehouse.hand_off(handoff(DOT_DOT))

        await warehouse.cancel(DOT_DOT)

        assert await handoff_states(warehouse_sim) == {VICTIM: "accepted", DOT_DOT: "cancelled"}
    finally:
        await warehouse.close()


async def test_voiding_a_dot_dot_key_at_a_carrier_leaves_the_booking_it_names_alone(
    carrier_sim: RunningSimulator,
) -> None:
    carrier = HttpCarrier("sf-express", carrier_sim.url, timeout_s=5.0)
    try:
        await carrier.book(booking(VICTIM))
        await carrier.book(booking(DOT_DOT))

        await carrier.cancel(DOT_DOT)

        assert await voided(carrier_sim) == {VICTIM: False, DOT_DOT: True}
    finally:
        await carrier.close()


async def test_the_warehouse_sees_every_id_exactly_in_hand_off_status_and_cancel(
    warehouse_sim: RunningSimulator,
) -> None:
    warehouse = HttpWarehouse(warehouse_sim.url, timeout_s=5.0)
    try:
        for order_id in IDS:
            ack = await warehouse.hand_off(handoff(order_id))
            assert ack.order_id == order_id
        found = await warehouse.statuses(IDS)
        assert {i: s.state for i, s in found.items()} == {i: PackState.ACCEPTED for i in IDS}

        for order_id in IDS:
            await warehouse.cancel(order_id)

        assert await handoff_states(warehouse_sim) == {i: "cancelled" for i in IDS}
    finally:
        await warehouse.close()


async def test_a_carrier_sees_every_key_exactly_in_booking_and_void(
    carrier_sim: RunningSimulator,
) -> None:
    carrier = HttpCarrier("sf-express", carrier_sim.url, timeout_s=5.0)
    try:
        for key in IDS:
            assert (await carrier.book(booking(key))).booking_key == key
        assert await voided(carrier_sim) == {key: False for key in IDS}

        for key in IDS:
            await carrier.cancel(key)

        assert await voided(carrier_sim) == {key: True for key in IDS}
    finally:
        await carrier.close()


async def test_a_cancel_acknowledged_for_another_id_is_a_malformed_reply() -> None:
    # A partner that normalised the path answers for the order it found there.
    async def cancel(request: web.Request) -> web.Response:
        return web.json_response({"order_id": "victim", "cancelled": True})

    app = web.Application()
    app.router.add_post("/v1/handoffs/{order_id}/cancel", cancel)
    sim = await start(app)
    warehouse = HttpWarehouse(sim.url, timeout_s=5.0)
    try:
        with pytest.raises(MalformedReply, match="another order"):
            await warehouse.cancel("a/b")
    finally:
        await warehouse.close()
        await sim.stop()
