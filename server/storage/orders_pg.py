"""Orders in PostgreSQL (sql/002_orders.sql): writes that run on a connection inside the
caller's transaction (the order core joins them to stock changes), and reads. The relay's
side of the outbox is in outbox_pg."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from server.domain.order_queries import ListOrders, PagePosition, WatchFilter
from server.domain.orders import (
    ConfirmPayment,
    Order,
    OrderEvent,
    OrderLine,
    OrderStatus,
    Shipment,
    StatusChange,
    Step,
)
from server.storage.postgres import StockStore

# Serializes an event for the outbox (the wire format is the gRPC edge's business).
EventEncoder = Callable[[OrderEvent], bytes]


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """A payment that paid an order."""

    payment_id: str
    order_id: str
    amount_minor: int
    currency: str


def order_from_row(row: asyncpg.Record) -> Order:
    """An Order from a stockcore.orders row."""
    shipment = None
    if row["shipped_at"] is not None:
        shipment = Shipment(
            row["carrier"],
            row["tracking_no"],
            row["carrier_ack_id"],
            row["shipped_at"],
            row["in_transit_at"],
            row["delivered_at"],
        )
    return Order(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        status=OrderStatus(row["status"]),
        currency=row["currency"],
        lines=tuple(
            OrderLine(sku, quantity, price)
            for sku, quantity, price in zip(
                row["skus"], row["quantities"], row["unit_prices"], strict=True
            )
        ),
        total_minor=row["total_minor"],
        created_at=row["created_at"],
        payment_deadline=row["payment_deadline"],
        updated_at=row["updated_at"],
        path=tuple(OrderStatus(s) for s in row["path"]),
        fingerprint=bytes(row["fingerprint"]),
        payment_id=row["payment_id"] or "",
        paid_minor=row["paid_minor"],
        shipment=shipment,
        last_sync_at=row["last_sync_at"],
        refund_owed_minor=row["refund_owed_minor"],
        cancel_reason=row["cancel_reason"] or "",
    )


def _change_from_row(row: asyncpg.Record) -> StatusChange:
    return StatusChange(
        row["order_id"],
        row["version"],
        None if row["from_status"] is None else OrderStatus(row["from_status"]),
        OrderStatus(row["to_status"]),
        row["changed_at"],
        row["caller"],
        row["reason"],
        row["request_id"],
    )


_INSERT_ORDER = """
INSERT INTO stockcore.orders
       (order_id, customer_id, status, path, version, currency, skus, quantities, unit_prices,
        total_minor, fingerprint, created_at, payment_deadline, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""

# One statement for a batch of steps; each applies only to the version it was made from.
_UPDATE_ORDERS = """
UPDATE stockcore.orders o
   SET status = u.status, path = o.path || u.status, version = o.version + 1,
       updated_at = u.updated_at, payment_id = u.payment_id, paid_minor = u.paid_minor,
       carrier = u.carrier, tracking_no = u.tracking_no, carrier_ack_id = u.carrier_ack_id,
       shipped_at = u.shipped_at, in_transit_at = u.in_transit_at, delivered_at = u.delivered_at,
       last_sync_at = u.last_sync_at, refund_owed_minor = u.refund_owed_minor,
       cancel_reason = u.cancel_reason
  FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::timestamptz[], $5::text[],
              $6::bigint[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
              $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], $14::bigint[],
              $15::text[])
       AS u(order_id, version, status, updated_at, payment_id, paid_minor, carrier, tracking_no,
            carrier_ack_id, shipped_at, in_transit_at, delivered_at, last_sync_at,
            refund_owed_minor, cancel_reason)
 WHERE o.order_id = u.order_id AND o.version = u.version - 1
RETURNING o.order_id
"""

_INSERT_HISTORY = """
INSERT INTO stockcore.order_history
       (order_id, version, from_status, to_status, changed_at, caller, reason, request_id)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::smallint[],
                     $5::timestamptz[], $6::text[], $7::text[], $8::text[])
"""

_INSERT_EVENTS = """
INSERT INTO stockcore.order_events
       (event_id, order_id, order_version, type, customer_id, payload, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::smallint[], $5::text[],
                     $6::bytea[], $7::timestamptz[])
"""


class OrderStore:
    """Orders, their history, payments and the event outbox."""

    def __init__(self, stock: StockStore, encode: EventEncoder) -> None:
        self.stock = stock
        self._encode = encode

    # --- writes, on the caller's connection and transaction ---------------------

    async def insert_created(self, conn: asyncpg.Connection, steps: Sequence[Step]) -> None:
        """Insert new orders with their first history row and ORDER_CREATED event."""
        if not steps:
            return
        await conn.executemany(
            _INSERT_ORDER,
            [
                (
                    o.order_id,
                    o.customer_id,
                    int(o.status),
                    [int(s) for s in o.path],
                    o.version,
                    o.currency,
                    [line.sku for line in o.lines],
                    [line.quantity for line in o.lines],
                    [line.unit_price_minor for line in o.lines],
                    o.total_minor,
                    o.fingerprint,
                    o.created_at,
                    o.payment_deadline,
                    o.updated_at,
                )
                for o in (step.order for step in steps)
            ],
        )
        await self._record(conn, steps)

    async def write_steps(self, conn: asyncpg.Connection, steps: Sequence[Step]) -> None:
        """Apply transitions to orders locked by `lock`, with history rows and events."""
        if not steps:
            return
        orders = [step.order for step in steps]
        shipments = [o.shipment for o in orders]
        updated = await conn.fetch(
            _UPDATE_ORDERS,
            [o.order_id for o in orders],
            [o.version for o in orders],
            [int(o.status) for o in orders],
            [o.updated_at for o in orders],
            [o.payment_id or None for o in orders],
            [o.paid_minor for o in orders],
            [s.carrier if s else None for s in shipments],
            [s.tracking_no if s else None for s in shipments],
            [s.carrier_ack_id if s else None for s in shipments],
            [s.shipped_at if s else None for s in shipments],
            [s.in_transit_at if s else None for s in shipments],
            [s.delivered_at if s else None for s in shipments],
            [o.last_sync_at for o in orders],
            [o.refund_owed_minor for o in orders],
            [o.cancel_reason or None for o in orders],
        )
        if len(updated) != len(steps):
            # The rows were locked before the steps were made: this is a bug, and raising
            # rolls the whole transaction back.
            raise RuntimeError(f"{len(steps) - len(updated)} order updates found another version")
        await self._record(conn, steps)

    async def _record(self, conn: asyncpg.Connection, steps: Sequence[Step]) -> None:
        changes = [step.change for step in steps]
        await conn.execute(
            _INSERT_HISTORY,
            [c.order_id for c in changes],
            [c.version for c in changes],
            [None if c.from_status is None else int(c.from_status) for c in changes],
            [int(c.to_status) for c in changes],
            [c.changed_at for c in changes],
            [c.caller for c in changes],
            [c.reason for c in changes],
            [c.request_id for c in changes],
        )
        events = [step.event for step in steps]
        await conn.execute(
            _INSERT_EVENTS,
            [e.event_id for e in events],
            [e.order.order_id for e in events],
            [e.order.version for e in events],
            [int(e.type) for e in events],
            [e.order.customer_id for e in events],
            [self._encode(e) for e in events],
            [e.change.changed_at for e in events],
        )

    async def lock(
        self, conn: asyncpg.Connection, order_ids: Sequence[str]
    ) -> tuple[dict[str, Order], datetime]:
        """Lock the named orders (in id order, so lockers never deadlock each other) and
        return those that exist, with the transaction's time."""
        rows = await conn.fetch(
            "SELECT o.*, now() AS db_now FROM stockcore.orders o"
            " WHERE o.order_id = ANY($1::text[]) ORDER BY o.order_id FOR UPDATE",
            sorted(set(order_ids)),
        )
        now: datetime = rows[0]["db_now"] if rows else await conn.fetchval("SELECT now()")
        return {r["order_id"]: order_from_row(r) for r in rows}, now

    async def insert_payments(
        self, conn: asyncpg.Connection, payments: Sequence[ConfirmPayment], at: datetime
    ) -> None:
        """Record the payments that paid orders, in one statement; an id already recorded
        is left as it was."""
        if not payments:
            return
        await conn.execute(
            "INSERT INTO stockcore.payments"
            " (payment_id, order_id, amount_minor, currency, caller, request_id, created_at)"
            " SELECT p.id, p.order_id, p.amount, p.currency, p.caller, p.request_id, $7"
            " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])"
            " AS p(id, order_id, amount, currency, caller, request_id)"
            " ON CONFLICT (payment_id) DO NOTHING",
            [p.payment_id for p in payments],
            [p.order_id for p in payments],
            [p.amount_minor for p in payments],
            [p.currency for p in payments],
            [p.actor.caller for p in payments],
            [p.actor.request_id for p in payments],
            at,
        )

    # --- reads ----------------------------------------------------------------------

    async def find(
        self, order_ids: Sequence[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, Order]:
        """The named orders that exist (on `conn` when given, else a pooled connection)."""

        async def work(c: asyncpg.Connection) -> dict[str, Order]:
            rows = await c.fetch(
                "SELECT * FROM stockcore.orders WHERE order_id = ANY($1::text[])", list(order_ids)
            )
            return {r["order_id"]: order_from_row(r) for r in rows}

        return await work(conn) if conn is not None else await self.stock.read(work)

    async def get_with_history(self, order_id: str) -> tuple[Order, list[StatusChange]] | None:
        """An order and its status history, oldest first, read in one snapshot."""

        async def work(conn: asyncpg.Connection) -> tuple[Order, list[StatusChange]] | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(
                    "SELECT * FROM stockcore.orders WHERE order_id = $1", order_id
                )
                if row is None:
                    return None
                history = await conn.fetch(
                    "SELECT * FROM stockcore.order_history WHERE order_id = $1 ORDER BY version",
                    order_id,
                )
            return order_from_row(row), [_change_from_row(h) for h in history]

        return await self.stock.read(work)

    async def find_with_payment(
        self, order_id: str, payment_id: str
    ) -> tuple[Order | None, PaymentRecord | None]:
        """An order and the payment recorded under `payment_id` (for any order), if any."""

        async def work(conn: asyncpg.Connection) -> tuple[Order | None, PaymentRecord | None]:
            order = await conn.fetchrow(
                "SELECT * FROM stockcore.orders WHERE order_id = $1", order_id
            )
            payment = await conn.fetchrow(
                "SELECT * FROM stockcore.payments WHERE payment_id = $1", payment_id
            )
            return (
                None if order is None else order_from_row(order),
                None
                if payment is None
                else PaymentRecord(
                    payment["payment_id"],
                    payment["order_id"],
                    payment["amount_minor"],
                    payment["currency"],
                ),
            )

        return await self.stock.read(work)

    async def page(self, query: ListOrders) -> tuple[list[Order], PagePosition | None]:
        """One page of a customer's orders, newest first, and where the next page starts
        (None on the last page). Keyset paging: orders created meanwhile never shift it."""
        after = query.after
        rows = await self.stock.read(
            lambda c: c.fetch(
                "SELECT * FROM stockcore.orders WHERE customer_id = $1"
                " AND ($2::smallint IS NULL OR status = $2)"
                " AND ($3::timestamptz IS NULL OR created_at >= $3)"
                " AND ($4::timestamptz IS NULL OR created_at < $4)"
                " AND ($5::timestamptz IS NULL OR (created_at, order_id) < ($5, $6::text))"
                " ORDER BY created_at DESC, order_id DESC LIMIT $7",
                query.customer_id,
                None if query.status is None else int(query.status),
                query.created_after,
                query.created_before,
                None if after is None else after.created_at,
                None if after is None else after.order_id,
                query.page_size + 1,
            )
        )
        orders = [order_from_row(r) for r in rows[: query.page_size]]
        more = len(rows) > query.page_size
        last = orders[-1] if more else None
        return orders, None if last is None else PagePosition(last.created_at, last.order_id)

    async def events(
        self, wanted: WatchFilter, after: int, upto: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """(cursor, payload) of sequenced events in (after, upto] passing the filter."""
        where = ["cursor > $1", "cursor <= $2"]
        args: list[object] = [after, upto]
        if wanted.customer_id:
            args.append(wanted.customer_id)
            where.append(f"customer_id = ${len(args)}")
        if wanted.order_id:
            args.append(wanted.order_id)
            where.append(f"order_id = ${len(args)}")
        if wanted.types:
            args.append(sorted(int(t) for t in wanted.types))
            where.append(f"type = ANY(${len(args)}::smallint[])")
        args.append(limit)
        sql = (
            "SELECT cursor, payload FROM stockcore.order_events WHERE "
            + " AND ".join(where)
            + f" ORDER BY cursor LIMIT ${len(args)}"
        )
        rows = await self.stock.read(lambda c: c.fetch(sql, *args))
        return [(r["cursor"], bytes(r["payload"])) for r in rows]

    async def last_cursor(self) -> int:
        """The highest cursor given so far (0 before any); every lower one is visible."""
        value: int = await self.stock.read(
            lambda c: c.fetchval("SELECT coalesce(max(cursor), 0) FROM stockcore.order_events")
        )
        return value
