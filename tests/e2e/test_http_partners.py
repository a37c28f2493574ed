"""The HTTP adapters of fulfilment/http_partners.py against real HTTP servers: every id
reaches the simulators as exactly the id it is, whatever characters it holds, and an
operation on one order never lands on another's; a partner that redirects, floods or
drips its reply is a failed attempt within the call's time, retried and counted by the
breaker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fulfilment.guard import CallFailed, PartnerGuard, RetryPolicy
from fulfilment.http_partners import HttpCarrier, HttpWarehouse
from fulfilment.partners import (
    BookingRequest,
    HandOff,
    MalformedReply,
    OutcomeUnknown,
    PackState,
    PartnerError,
    Rejected,
)
from runtime.breaker import BreakerSettings, CircuitBreaker
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


# --- partners that misbehave --------------------------------------------------------

MiB = 1 << 20
TIMEOUT_S = 1.0


def booked(body: dict[str, Any]) -> bytes:
    """A well-formed booking reply for a booking request."""
    return json.dumps(
        {
            "booking_key": body["booking_key"],
            "tracking_no": "SF000000000001",
            "ack_id": "sf-ack-1",
            "carrier": "sf-express",
        }
    ).encode()


def misbehaving_carrier(followed: list[str]) -> web.Application:
    """A carrier whose booking endpoint, under each path prefix, misbehaves one way."""

    async def redirect(request: web.Request) -> web.Response:
        # 307 asks the client to send the same POST elsewhere.
        raise web.HTTPTemporaryRedirect("/elsewhere/v1/bookings")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.Response(body=booked(await request.json()), content_type="application/json")

    async def flood(request: web.Request, declared: bool) -> web.StreamResponse:
        # A valid reply followed by 50 MB of JSON whitespace: still valid JSON.
        reply = booked(await request.json())
        headers = {"Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(len(reply) + 50 * MiB)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            await response.write(reply)
            for _ in range(50):
                await response.write(b" " * MiB)
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up, as it should
        return response

    async def drip(request: web.Request) -> web.StreamResponse:
        reply = booked(await request.json())
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": str(len(reply))}
        )
        await response.prepare(request)
        try:
            for byte in reply:
                await response.write(bytes([byte]))
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass
        return response

    async def huge(request: web.Request) -> web.StreamResponse:
        return await flood(request, declared=False)

    async def huge_declared(request: web.Request) -> web.StreamResponse:
        return await flood(request, declared=True)

    app = web.Application()
    app.router.add_post("/redirect/v1/bookings", redirect)
    app.router.add_post("/elsewhere/v1/bookings", elsewhere)
    app.router.add_post("/huge/v1/bookings", huge)
    app.router.add_post("/huge-declared/v1/bookings", huge_declared)
    app.router.add_post("/drip/v1/bookings", drip)
    return app


@pytest.fixture
async def misbehaving() -> AsyncIterator[tuple[RunningSimulator, list[str]]]:
    """The misbehaving carrier, and the paths a followed redirect reached."""
    followed: list[str] = []
    sim = await start(misbehaving_carrier(followed))
    try:
        yield sim, followed
    finally:
        await sim.stop()


FAILURES: list[tuple[str, type[PartnerError], str]] = [
    ("redirect", MalformedReply, "redirect"),
    ("huge", MalformedReply, "more than"),
    ("huge-declared", MalformedReply, "more than"),
    ("drip", OutcomeUnknown, "no answer in time"),
]


@pytest.mark.parametrize(("mode", "error", "says"), FAILURES, ids=[m for m, _, _ in FAILURES])
async def test_a_misbehaving_reply_is_a_failure_within_the_calls_time(
    misbehaving: tuple[RunningSimulator, list[str]],
    mode: str,
    error: type[PartnerError],
    says: str,
) -> None:
    sim, followed = misbehaving
    carrier = HttpCarrier(
        "sf-express", f"{sim.url}/{mode}", timeout_s=TIMEOUT_S, max_reply_bytes=MiB
    )
    try:
        started = time.monotonic()
        with pytest.raises(error, match=says):
            await carrier.book(booking("o-1"))
        assert time.monotonic() - started < TIMEOUT_S + 0.5
    finally:
        await carrier.close()
    assert followed == []


@pytest.mark.parametrize("mode", [m for m, _, _ in FAILURES])
async def test_a_misbehaving_reply_is_retried_and_counted_by_the_breaker(
    misbehaving: tuple[RunningSimulator, list[str]], mode: str
) -> None:
    sim, followed = misbehaving
    carrier = HttpCarrier(
        "sf-express", f"{sim.url}/{mode}", timeout_s=TIMEOUT_S, max_reply_bytes=MiB
    )
    breaker = CircuitBreaker("sf-express", BreakerSettings(min_calls=100, consecutive_failures=2))
    guard = PartnerGuard(breaker, RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02))
    try:
        with pytest.raises(CallFailed) as failed:
            await guard.call("book", lambda: carrier.book(booking("o-1")))
    finally:
        await carrier.close()
    assert failed.value.sent == 2 and failed.value.maybe_applied
    snapshot = breaker.snapshot()
    assert (snapshot["failures"], snapshot["state"]) == (2, "OPEN")
    assert followed == []


async def test_an_error_reply_is_read_only_as_far_as_the_cap() -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=400, headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        try:
            for _ in range(50):
                await response.write(b"no " * MiB)
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    app = web.Application()
    app.router.add_post("/v1/handoffs/{order_id}/cancel", refuse)
    sim = await start(app)
    warehouse = HttpWarehouse(sim.url, timeout_s=TIMEOUT_S, max_reply_bytes=MiB)
    try:
        with pytest.raises(Rejected) as refused:
            await warehouse.cancel("o-1")
    finally:
        await warehouse.close()
        await sim.stop()
    assert "HTTP 400" in refused.value.detail and len(refused.value.detail) < 1000
