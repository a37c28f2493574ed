"""A simulated carrier: it books parcels (one per idempotency key), scans them in transit
`transit_s` seconds after booking and delivered `deliver_s` seconds after booking, and
voids bookings.

    POST /v1/bookings             {booking_key, order_id, lines} (also Idempotency-Key header)
                                  -> {booking_key, tracking_no, ack_id, carrier}
    POST /v1/tracking             {tracking_nos: [...]}
                                  -> {parcels: [{tracking_no, events: [{kind, at}]}]}
    POST /v1/bookings/{key}/void  -> {booking_key, voided}
    GET  /_bookings               every booking with how many requests asked for it

A poisoned order's booking is answered with a tracking number no one accepts (spaces and a
slash) for as long as it is on the poison list; the booking itself is kept, so once the
order is off the list the same key is answered properly.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from simulators.faults import STATE_KEY, broken_json, fault_app


@dataclass
class Parcel:
    """A booked parcel."""

    booking_key: str
    order_id: str
    tracking_no: str
    ack_id: str
    booked_at: float
    requests: int = 1
    voided: bool = False


@dataclass
class CarrierState:
    """The carrier's bookings and its timings."""

    code: str
    prefix: str
    transit_s: float
    deliver_s: float
    by_key: dict[str, Parcel]
    by_tracking: dict[str, Parcel]
    serial: itertools.count[int]


CARRIER_KEY: web.AppKey[CarrierState] = web.AppKey("carrier", CarrierState)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


async def book(request: web.Request) -> web.Response:
    """Book a parcel once per key."""
    body: Any = await request.json()
    if not isinstance(body, dict):
        return web.json_response({"error": "a JSON object is required"}, status=400)
    key = request.headers.get("Idempotency-Key") or body.get("booking_key")
    order_id = body.get("order_id")
    if not isinstance(key, str) or not key or not isinstance(order_id, str) or not order_id:
        return web.json_response({"error": "booking_key and order_id are required"}, status=400)
    carrier = request.app[CARRIER_KEY]
    parcel = carrier.by_key.get(key)
    if parcel is None:
        number = next(carrier.serial)
        parcel = Parcel(
            key,
            order_id,
            f"{carrier.prefix}{number:012d}",
            f"{carrier.code}-ack-{uuid.uuid4().hex[:16]}",
            time.time(),
        )
        carrier.by_key[key] = parcel
        carrier.by_tracking[parcel.tracking_no] = parcel
    else:
        parcel.requests += 1
        if parcel.order_id != order_id:
            return web.json_response({"error": "the key booked another order"}, status=409)
    faults = request.app[STATE_KEY].faults
    tracking = parcel.tracking_no
    if order_id in faults.poison:
        tracking = f"{carrier.prefix} {parcel.tracking_no[-6:]}/X"
    reply = {
        "booking_key": key,
        "tracking_no": tracking,
        "ack_id": parcel.ack_id,
        "carrier": carrier.code,
    }
    if order_id not in faults.poison and request.app[STATE_KEY].malformed([order_id]):
        return broken_json(reply)
    return web.json_response(reply)


async def track(request: web.Request) -> web.Response:
    """Scans of the named parcels."""
    body: Any = await request.json()
    numbers = body.get("tracking_nos") if isinstance(body, dict) else None
    if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
        return web.json_response({"error": "tracking_nos must be a list of strings"}, status=400)
    carrier = request.app[CARRIER_KEY]
    now = time.time()
    parcels = []
    for number in numbers:
        parcel = carrier.by_tracking.get(number)
        if parcel is None or parcel.voided:
            continue
        events = []
        if now >= parcel.booked_at + carrier.transit_s:
            events.append({"kind": "in_transit", "at": _iso(parcel.booked_at + carrier.transit_s)})
        if now >= parcel.booked_at + carrier.deliver_s:
            events.append({"kind": "delivered", "at": _iso(parcel.booked_at + carrier.deliver_s)})
        parcels.append({"tracking_no": number, "events": events})
    reply = {"parcels": parcels}
    if request.app[STATE_KEY].malformed([]):
        return broken_json(reply)
    return web.json_response(reply)


async def void(request: web.Request) -> web.Response:
    """Void a booking (nothing booked under the key: voided is false)."""
    key = request.match_info["key"]
    parcel = request.app[CARRIER_KEY].by_key.get(key)
    if parcel is not None:
        parcel.voided = True
    return web.json_response({"booking_key": key, "voided": parcel is not None})


async def bookings(request: web.Request) -> web.Response:
    """Every booking, for checks: key, order, tracking number, requests, voided."""
    carrier = request.app[CARRIER_KEY]
    return web.json_response(
        {
            "carrier": carrier.code,
            "bookings": [
                {
                    "booking_key": p.booking_key,
                    "order_id": p.order_id,
                    "tracking_no": p.tracking_no,
                    "requests": p.requests,
                    "voided": p.voided,
                }
                for p in carrier.by_key.values()
            ],
        }
    )


def carrier_app(
    code: str,
    *,
    transit_s: float = 1.0,
    deliver_s: float = 2.0,
    seed: int | None = None,
) -> web.Application:
    """A carrier's application; `code` is its carrier code (one ShipOrder accepts)."""
    app = fault_app(seed)
    prefix = "".join(c for c in code.upper() if c.isalnum())[:2] or "XX"
    app[CARRIER_KEY] = CarrierState(code, prefix, transit_s, deliver_s, {}, {}, itertools.count(1))
    app.router.add_post("/v1/bookings", book, name="book")
    app.router.add_post("/v1/tracking", track, name="track")
    app.router.add_post("/v1/bookings/{key}/void", void, name="void")
    app.router.add_get("/_bookings", bookings)
    return app
