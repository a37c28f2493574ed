"""A simulated warehouse: it acknowledges hand-offs, packs each order `pack_s` seconds
after it got it, answers status queries and takes cancelled orders back.

    POST   /v1/handoffs                 {order_id, customer_id, lines: [{sku, quantity}], paid_at}
                                        -> {order_id, warehouse_ref, state}; idempotent on order_id
    POST   /v1/handoffs/status          {order_ids: [...]} -> {orders: [{order_id, state, packed_at}]}
                                        (orders it does not know are left out)
    POST   /v1/handoffs/{order_id}/cancel  -> {order_id, cancelled}
    GET    /_handoffs                   every order it was given, with its state
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from simulators.faults import STATE_KEY, broken_json, fault_app


@dataclass
class Parcel:
    """An order at the warehouse."""

    order_id: str
    warehouse_ref: str
    received_at: float
    cancelled: bool = False


@dataclass
class WarehouseState:
    """The warehouse's orders and its packing time."""

    pack_s: float
    orders: dict[str, Parcel]

    def state_of(self, parcel: Parcel, now: float) -> tuple[str, float | None]:
        """(state, packed at) of an order."""
        if parcel.cancelled:
            return "cancelled", None
        packed_at = parcel.received_at + self.pack_s
        return ("packed", packed_at) if now >= packed_at else ("accepted", None)


WAREHOUSE_KEY: web.AppKey[WarehouseState] = web.AppKey("warehouse", WarehouseState)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def hand_off(request: web.Request) -> web.Response:
    """Accept an order (once)."""
    body: Any = await request.json()
    order_id = body.get("order_id") if isinstance(body, dict) else None
    if not isinstance(order_id, str) or not order_id or not isinstance(body.get("lines"), list):
        return _bad("order_id and lines are required")
    warehouse = request.app[WAREHOUSE_KEY]
    parcel = warehouse.orders.get(order_id)
    if parcel is None:
        parcel = Parcel(order_id, f"WH-{uuid.uuid4().hex[:12]}", time.time())
        warehouse.orders[order_id] = parcel
    state, _ = warehouse.state_of(parcel, time.time())
    reply = {"order_id": order_id, "warehouse_ref": parcel.warehouse_ref, "state": state}
    if request.app[STATE_KEY].malformed([order_id]):
        return broken_json(reply)
    return web.json_response(reply)


async def statuses(request: web.Request) -> web.Response:
    """Where the named orders are."""
    body: Any = await request.json()
    ids = body.get("order_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _bad("order_ids must be a list of strings")
    warehouse = request.app[WAREHOUSE_KEY]
    now = time.time()
    found = []
    for order_id in ids:
        parcel = warehouse.orders.get(order_id)
        if parcel is None:
            continue
        state, packed_at = warehouse.state_of(parcel, now)
        found.append(
            {
                "order_id": order_id,
                "state": state,
                "packed_at": None if packed_at is None else _iso(packed_at),
            }
        )
    reply = {"orders": found}
    if request.app[STATE_KEY].malformed(ids):
        return broken_json(reply)
    return web.json_response(reply)


async def cancel(request: web.Request) -> web.Response:
    """Take an order back."""
    order_id = request.match_info["order_id"]
    parcel = request.app[WAREHOUSE_KEY].orders.get(order_id)
    if parcel is not None:
        parcel.cancelled = True
    return web.json_response({"order_id": order_id, "cancelled": parcel is not None})


async def handoffs(request: web.Request) -> web.Response:
    """Every order the warehouse was given, for checks: id, reference, state."""
    warehouse = request.app[WAREHOUSE_KEY]
    now = time.time()
    return web.json_response(
        {
            "orders": [
                {
                    "order_id": p.order_id,
                    "warehouse_ref": p.warehouse_ref,
                    "state": warehouse.state_of(p, now)[0],
                }
                for p in warehouse.orders.values()
            ]
        }
    )


def warehouse_app(pack_s: float = 0.5, seed: int | None = None) -> web.Application:
    """The warehouse's application."""
    app = fault_app(seed)
    app[WAREHOUSE_KEY] = WarehouseState(pack_s, {})
    app.router.add_post("/v1/handoffs", hand_off, name="hand_off")
    app.router.add_post("/v1/handoffs/status", statuses, name="status")
    app.router.add_post("/v1/handoffs/{order_id}/cancel", cancel, name="cancel")
    app.router.add_get("/_handoffs", handoffs)
    return app
