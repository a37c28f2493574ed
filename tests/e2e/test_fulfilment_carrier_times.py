"""A carrier that reports scans dated 1970, or before the order was created: the order
server refuses those times, the worker spends the tracking step's budget on them and
dead-letters it, and the order keeps no impossible time."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from clients.orders import OrderClient, OrderStatus
from fulfilment.domain import Stage
from server.app import App
from server.config import Settings
from simulators.carrier import CARRIER_KEY, carrier_app
from simulators.run import start
from tests.e2e.fulfilment_stack import (
    PRIMARY,
    Partners,
    dead_letters,
    fulfil_settings,
    pay_orders,
    running_worker,
    stock,
    until_dead,
    wait_statuses,
)

IN_1970 = "1970-01-01T00:00:00+00:00"
# Each misdated order's scans: at the epoch, or an hour before it was booked (so before
# it was created).
MISDATED = {"scan-1970": "epoch", "scan-early": "before creation"}


def misdating_carrier() -> web.Application:
    """The simulated primary carrier, whose scans of MISDATED's parcels carry wrong times."""

    @web.middleware
    async def misdate(request: web.Request, handler: Any) -> web.StreamResponse:
        answer = await handler(request)
        if request.path != "/v1/tracking" or not isinstance(answer, web.Response):
            return answer
        assert isinstance(answer.body, bytes)
        reply = json.loads(answer.body)
        by_tracking = request.app[CARRIER_KEY].by_tracking
        for parcel in reply["parcels"]:
            booked = by_tracking[parcel["tracking_no"]]
            how = MISDATED.get(booked.order_id)
            for event in parcel["events"]:
                if how == "epoch":
                    event["at"] = IN_1970
                elif how == "before creation":
                    event["at"] = datetime.fromtimestamp(booked.booked_at - 3600, UTC).isoformat()
        return web.json_response(reply)

    app = carrier_app(PRIMARY, transit_s=0.1, deliver_s=0.2)
    app.middlewares.append(misdate)
    return app


async def test_carrier_scans_dated_1970_or_before_the_order_are_refused_and_dead_lettered(
    app: App, settings: Settings, partners: Partners
) -> None:
    dsn = settings.pg_dsn or ""
    misdating = await start(misdating_carrier())
    stack = Partners(partners.warehouse, misdating, partners.fallback)
    try:
        await stock(app)
        async with OrderClient(f"127.0.0.1:{app.port}") as orders:
            async with running_worker(fulfil_settings(settings, app, stack)):
                await pay_orders(app, [*MISDATED, "scan-good"])
                await wait_statuses(app, ["scan-good"], {OrderStatus.ORDER_STATUS_DELIVERED})
                await until_dead(
                    dsn, MISDATED, "the misdated orders' tracking in the dead letters", 30
                )
            found = {i: (await orders.get_order(i))[0] for i in MISDATED}
    finally:
        await misdating.stop()
    for order in found.values():
        assert order.status == OrderStatus.ORDER_STATUS_SHIPPED
        assert order.shipment is not None and order.shipment.in_transit_time is None
    letters = await dead_letters(dsn)
    assert {(r["stage"], r["partner"]) for r in letters.values()} == {(Stage.TRACKING, PRIMARY)}
    assert "INVALID_ARGUMENT" in letters["scan-1970"]["error"]
    assert "FAILED_PRECONDITION" in letters["scan-early"]["error"]
