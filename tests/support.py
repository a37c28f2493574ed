"""What many tests build and ask: stock put on hand, holds, orders, and the details of a
refused call. Over a real channel (the stubs) or straight at the stores."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_status import rpc_status
from stockcore.v1 import inventory_pb2 as ipb
from stockcore.v1 import orders_pb2 as opb

from server.domain.inventory import AdjustCommand, Line, ReserveCommand
from server.storage.postgres import AdjustCode, StockStore

HOUR_MS = 3_600_000

# --- over a channel ----------------------------------------------------------------------


async def put_stock(inventory: Any, sku: str, on_hand: int) -> None:
    """Set `sku`'s on_hand through AdjustStock (created if unknown)."""
    await inventory.AdjustStock(
        ipb.AdjustStockRequest(
            sku=sku, on_hand=on_hand, reason="restock", idempotency_key=f"set-{sku}-{on_hand}"
        )
    )


async def stock_levels(inventory: Any, *skus: str) -> dict[str, tuple[int, int, int]]:
    """(on_hand, reserved, available) of each SKU, by SKU."""
    reply = await inventory.GetStock(ipb.GetStockRequest(skus=list(skus)))
    return {lv.sku: (lv.on_hand, lv.reserved, lv.available) for lv in reply.levels}


async def on_hand_reserved(inventory: Any, sku: str) -> tuple[int, int]:
    """(on_hand, reserved) of one SKU."""
    (level,) = (await inventory.GetStock(ipb.GetStockRequest(skus=[sku]))).levels
    return level.on_hand, level.reserved


def reserve_request(rid: str, ttl: int | None = None, **lines: int) -> ipb.ReserveRequest:
    """A Reserve of `lines` (SKU=quantity; `_` in a name stands for `-`)."""
    request = ipb.ReserveRequest(
        reservation_id=rid,
        lines=[ipb.Line(sku=sku.replace("_", "-"), quantity=q) for sku, q in lines.items()],
    )
    if ttl is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl))
    return request


def create_request(
    order_id: str,
    *lines: tuple[str, int, int],
    customer: str = "cust-1",
    window: float | None = None,
    currency: str = "EUR",
) -> opb.CreateOrderRequest:
    """A CreateOrder of (sku, quantity, unit price) lines; two of "A" at 150 by default."""
    request = opb.CreateOrderRequest(
        order_id=order_id,
        customer_id=customer,
        currency_code=currency,
        lines=[
            opb.OrderLine(sku=s, quantity=q, unit_price_minor=p)
            for s, q, p in lines or [("A", 2, 150)]
        ],
    )
    if window is not None:
        request.payment_window.CopyFrom(duration_pb2.Duration(seconds=int(window)))
    return request


def now_stamp(delta: timedelta = timedelta()) -> timestamp_pb2.Timestamp:
    """A Timestamp `delta` from now."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + delta)
    return stamp


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    """The error a call must end with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


def details_of(error: grpc.aio.AioRpcError, kind: Any) -> list[Any]:
    """The google.rpc.Status details of type `kind` the error carries."""
    status = rpc_status.from_call(error)
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


# --- at the stores ------------------------------------------------------------------------


def hold(rid: str, *lines: tuple[str, int], ttl_ms: int = HOUR_MS) -> ReserveCommand:
    """A reserve command with its lines in the order given."""
    return ReserveCommand(rid, tuple(Line(sku, qty) for sku, qty in lines), ttl_ms, "tests")


async def stock_up(store: StockStore, levels: Mapping[str, int]) -> None:
    """Create SKUs in PostgreSQL through adjustments, so the ledger accounts for them."""
    for sku, units in levels.items():
        result = await store.adjust(
            AdjustCommand(sku, units, None, "count", f"initial-{sku}", "tests")
        )
        assert result.code is AdjustCode.APPLIED


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A PostgreSQL connection of its own, closed on the way out."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
