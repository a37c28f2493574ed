"""Orders in PostgreSQL (sql/live/orders.sql): each change of a batch of orders is one
call of an order function, which locks, decides, writes the order, history, outbox and
ledger rows and answers with typed rows; and the reads. The relay's side of the outbox is
in outbox_pg."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import asyncpg

from server.domain.errors import Shortage
from server.domain.inventory import Reservation
from server.domain.order_queries import ListOrders, PagePosition, WatchFilter
from server.domain.orders import (
    CancelOrder,
    CarrierReport,
    ConfirmPayment,
    CreateOrder,
    EventType,
    Order,
    OrderEvent,
    OrderLine,
    OrderStatus,
    RefundLine,
    RefundNote,
    RefundReason,
    RefundState,
    Shipment,
    ShipOrder,
    StatusChange,
)
from server.domain.sharding import shard_of
from server.storage.postgres import (
    MirrorLevel,
    StockStore,
    mirror_levels,
    reservation_from_row,
    shortages_of,
)


class CreateCode(IntEnum):
    """What create_orders did with one request (codes of the SQL function)."""

    CREATED = 0
    REPEAT = 1
    CONFLICT = 2
    REJECTED = 3
    RESERVATION = 4


class TakeOverCode(IntEnum):
    """What order_holds did with one CreateOrder from a held reservation (codes of the
    SQL function)."""

    CREATED = 0
    REPEAT = 1
    CONFLICT = 2
    UNKNOWN = 3
    OTHER_CUSTOMER = 4
    NOT_HELD = 5
    LINES_DIFFER = 6


@dataclass(frozen=True, slots=True)
class TakenOver:
    """The outcome of one CreateOrder from a held reservation: the order (created, or as it
    is on a repeat), or the reservation as found when it could not become the order."""

    code: TakeOverCode
    order: Order | None
    hold: Reservation | None


class ChangeCode(IntEnum):
    """What an order function did with one request (codes of the SQL functions)."""

    DONE = 0
    REPEAT = 1
    UNKNOWN = 2
    MISMATCH = 3
    PAYMENT_TAKEN = 4
    REFUSED = 5
    DISAGREE = 6
    NOT_CUSTOMERS = 7
    PAID = 8
    PAID_BY_OTHER = 9
    """Another payment paid the order."""
    LAPSED = 10
    """The order's hold had lapsed: the order expired now, and the request is refused."""
    OTHER_PARCEL = 11
    """The order shipped already, as another parcel."""
    BEFORE_CREATION = 12
    """The carrier's event time is before the order was created."""


class LineRefundCode(IntEnum):
    """What refund_lines did with one RefundLine (codes of the SQL function)."""

    REFUNDED = 0
    REPEAT = 1
    UNKNOWN = 2
    CONFLICT = 3
    NOT_REFUNDABLE = 4
    NO_SUCH_LINE = 5
    FREE_LINE = 6
    EXCEEDS_LINE = 7


@dataclass(frozen=True, slots=True)
class LineRefunded:
    """The outcome of one RefundLine: the order and its refund (new, or as they are on a
    repeat), the order alone when it could not be refunded, and for EXCEEDS_LINE the
    line's units bought and refunded already."""

    code: LineRefundCode
    order: Order | None
    refund: RefundNote | None
    bought: int = 0
    refunded: int = 0


@dataclass(frozen=True, slots=True)
class Created:
    """The outcome of one CreateOrder: the order (created or as it is, on a repeat), or
    why none was created."""

    code: CreateCode
    order: Order | None
    shortages: tuple[Shortage, ...] = ()
    unknown_skus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Changed:
    """The outcome of one change of an order: the order after the call (None when it is
    unknown) and, for some refusals, more about why."""

    code: ChangeCode
    order: Order | None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An outbox row: the event as protobuf bytes (rows written before 003) or as the
    jsonb body the order functions write, with what WatchOrders filters on."""

    cursor: int
    event_id: str
    order_id: str
    customer_id: str
    type: EventType
    payload: bytes | None
    body: str | None


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
    refunded = row["refunded_quantities"] or [0] * len(row["skus"])
    return Order(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        status=OrderStatus(row["status"]),
        currency=row["currency"],
        lines=tuple(
            OrderLine(sku, quantity, price, done)
            for sku, quantity, price, done in zip(
                row["skus"], row["quantities"], row["unit_prices"], refunded, strict=True
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


def refund_from_row(row: asyncpg.Record) -> RefundNote:
    """A refund as its stockcore.refunds row holds it now, as of its last step."""
    line = row["reason"] == RefundReason.LINE_REFUNDED
    return RefundNote(
        row["refund_id"],
        RefundReason(row["reason"]),
        row["amount_minor"],
        row["currency"],
        RefundState(row["state"]),
        row["charge_id"],
        row["provider_refund_id"],
        row["settled_at"] or row["sent_at"] or row["created_at"],
        sku=row["sku"] or "",
        quantity=row["quantity"] or 0,
        line_refund_id=row["source_id"] if line else "",
        note=row["note"] or "",
    )


def change_from_row(row: asyncpg.Record) -> StatusChange:
    """A StatusChange from a stockcore.order_history row."""
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


def _created(command: CreateOrder, row: asyncpg.Record) -> Created:
    code = CreateCode(row["code"])
    found = row["ord"]
    if code is CreateCode.REJECTED:
        return Created(
            code,
            None,
            shortages_of(command.reserve, row["short_skus"], row["short_available"]),
            tuple(row["unknown_skus"]),
        )
    return Created(code, None if found is None else order_from_row(found))


def _changed(row: asyncpg.Record) -> Changed:
    found = row["ord"]
    return Changed(
        ChangeCode(row["code"]), None if found is None else order_from_row(found), row["detail"]
    )


def _by_order_id(items: Sequence[Any]) -> list[int]:
    """Positions of `items` (which have order_id) sorted by order id: the order functions
    take batches in lock order."""
    return sorted(range(len(items)), key=lambda i: items[i].order_id)


_CREATE = "SELECT * FROM stockcore.create_orders($1)"
_TAKE_OVER = "SELECT * FROM stockcore.order_holds($1, $2)"
_PAY = "SELECT * FROM stockcore.pay_orders($1, $2, $3, $4, $5, $6, $7, $8)"
_CANCEL = "SELECT * FROM stockcore.cancel_orders_as($1, $2, $3, $4, $5, $6)"
_ADVANCE = "SELECT * FROM stockcore.advance_orders($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_REFUND_LINES = "SELECT * FROM stockcore.refund_lines($1)"

_WITH_HISTORY = """
SELECT o AS ord,
       (SELECT array_agg(h ORDER BY h.version) FROM stockcore.order_history h
         WHERE h.order_id = o.order_id) AS history
  FROM stockcore.orders o
 WHERE o.order_id = ANY($1::text[])
"""

# Many ListOrders queries in one statement: each is a keyset page of one customer's
# orders, newest first, read through orders_by_customer.
_PAGES = """
SELECT q.i, o::stockcore.orders AS ord
  FROM unnest($1::text[], $2::smallint[], $3::timestamptz[], $4::timestamptz[],
              $5::timestamptz[], $6::text[], $7::int[])
       WITH ORDINALITY AS q(customer, status, after_t, before_t, pos_t, pos_id, lim, i)
 CROSS JOIN LATERAL (
       SELECT * FROM stockcore.orders o
        WHERE o.customer_id = q.customer
          AND (q.status IS NULL OR o.status = q.status)
          AND (q.after_t IS NULL OR o.created_at >= q.after_t)
          AND (q.before_t IS NULL OR o.created_at < q.before_t)
          AND (q.pos_t IS NULL OR (o.created_at, o.order_id) < (q.pos_t, q.pos_id))
        ORDER BY o.created_at DESC, o.order_id DESC
        LIMIT q.lim) o
 ORDER BY q.i, o.created_at DESC, o.order_id DESC
"""

_EVENT_COLUMNS = "cursor, event_id, order_id, customer_id, type, payload, body::text AS body"


_BODY_TIMES = (
    "created_at",
    "payment_deadline",
    "updated_at",
    "shipped_at",
    "in_transit_at",
    "delivered_at",
    "last_sync_at",
)


# Columns an outbox body may leave out because they were null (stockcore.event_body,
# sql/live/orders.sql).
_BODY_NULLABLE = (
    "payment_id",
    "carrier",
    "tracking_no",
    "carrier_ack_id",
    "shipped_at",
    "in_transit_at",
    "delivered_at",
    "last_sync_at",
    "cancel_reason",
    "refunded_quantities",
)


def event_from_body(body: str, event_type: EventType) -> OrderEvent:
    """The OrderEvent an outbox body (jsonb written by the order functions) holds."""
    data = json.loads(body)
    order = dict.fromkeys(_BODY_NULLABLE) | data["order"]
    for name in _BODY_TIMES:
        if order[name] is not None:
            order[name] = datetime.fromisoformat(order[name])
    order["fingerprint"] = b""
    refund = data.get("refund")
    if refund is not None:
        # A refund event (sql/live/refunds.sql): the order as it was, and the refund.
        note = RefundNote(
            refund["refund_id"],
            RefundReason(refund["reason"]),
            refund["amount_minor"],
            refund["currency"],
            RefundState(refund["state"]),
            refund["charge_id"],
            refund.get("provider_refund_id"),
            datetime.fromisoformat(refund["at"]),
            sku=refund.get("sku", ""),
            quantity=refund.get("quantity", 0),
            line_refund_id=refund.get("line_refund_id", ""),
            note=refund.get("note", ""),
        )
        return OrderEvent(event_type, order_from_row(order), None, note)
    change = {"from_status": None, "order_id": order["order_id"], "version": order["version"]}
    change |= data["change"]
    change["changed_at"] = datetime.fromisoformat(change["changed_at"])
    return OrderEvent(event_type, order_from_row(order), change_from_row(change))


def stored_event(row: asyncpg.Record) -> StoredEvent:
    """A StoredEvent from an order_events row (body as text)."""
    payload = row["payload"]
    return StoredEvent(
        row["cursor"],
        row["event_id"],
        row["order_id"],
        row["customer_id"],
        EventType(row["type"]),
        None if payload is None else bytes(payload),
        row["body"],
    )


def order_request(command: CreateOrder, shard_count: int) -> tuple[object, ...]:
    """`command` as a stockcore.order_request (013_order_requests.sql)."""
    return (
        command.order_id,
        command.reserve.fingerprint,
        command.ttl_ms,
        command.actor.caller,
        command.actor.request_id,
        command.customer_id,
        command.currency,
        command.total_minor,
        command.fingerprint,
        [
            (shard_of(line.sku, shard_count), line.sku, line.quantity, line.unit_price_minor)
            for line in command.lines
        ],
    )


class OrderStore:
    """Orders, their history, payments and the event outbox."""

    def __init__(self, stock: StockStore) -> None:
        self.stock = stock

    # --- changes: one statement per batch ------------------------------------------

    async def create(
        self, commands: Sequence[CreateOrder]
    ) -> tuple[list[Created], list[MirrorLevel]]:
        """Hold each order's stock and create it, or say why not."""
        order = _by_order_id(commands)
        shards = self.stock.shard_count
        row = await self.stock.call(_CREATE, [order_request(commands[i], shards) for i in order])
        results: list[Created | None] = [None] * len(commands)
        for position, found in zip(order, row["results"], strict=True):
            results[position] = _created(commands[position], found)
        return results, mirror_levels(row["levels"])  # type: ignore[return-value]

    async def take_over(self, commands: Sequence[CreateOrder]) -> list[TakenOver]:
        """Make each order of the HELD reservation with its id, or say why not; no stock
        row changes (the reservation's units are held already)."""
        order = _by_order_id(commands)
        shards = self.stock.shard_count
        row = await self.stock.call(
            _TAKE_OVER,
            [order_request(commands[i], shards) for i in order],
            [commands[i].bound_customer for i in order],
        )
        results: list[TakenOver | None] = [None] * len(commands)
        for position, found in zip(order, row["results"], strict=True):
            made, hold = found["ord"], found["hold"]
            results[position] = TakenOver(
                TakeOverCode(found["code"]),
                None if made is None else order_from_row(made),
                None if hold is None else reservation_from_row(hold),
            )
        return results  # type: ignore[return-value]

    async def pay(
        self, payments: Sequence[ConfirmPayment], expiry_caller: str
    ) -> tuple[list[Changed], list[MirrorLevel]]:
        """Commit each order's hold and mark it PAID, or say why not."""
        order = _by_order_id(payments)
        batch = [payments[i] for i in order]
        row = await self.stock.call(
            _PAY,
            [p.order_id for p in batch],
            [p.payment_id for p in batch],
            [p.amount_minor for p in batch],
            [p.currency for p in batch],
            [p.actor.caller for p in batch],
            [p.actor.request_id for p in batch],
            [p.reason for p in batch],
            expiry_caller,
        )
        return _in_request_order(order, row), mirror_levels(row["levels"])

    async def cancel(
        self, requests: Sequence[CancelOrder], expiry_caller: str
    ) -> tuple[list[Changed], list[MirrorLevel]]:
        """Cancel each order (an unpaid one gives its hold back, a paid one its units); a
        request bound to a customer cancels only that customer's unpaid order."""
        order = _by_order_id(requests)
        batch = [requests[i] for i in order]
        row = await self.stock.call(
            _CANCEL,
            [r.order_id for r in batch],
            [r.reason for r in batch],
            [r.actor.caller for r in batch],
            [r.actor.request_id for r in batch],
            [r.customer_id for r in batch],
            expiry_caller,
        )
        return _in_request_order(order, row), mirror_levels(row["levels"])

    async def ship(self, requests: Sequence[ShipOrder]) -> list[Changed]:
        """Move each order to SHIPPED with its parcel."""
        order = _by_order_id(requests)
        batch = [requests[i] for i in order]
        row = await self.stock.call(
            _ADVANCE,
            int(OrderStatus.SHIPPED),
            [r.order_id for r in batch],
            [r.carrier for r in batch],
            [r.tracking_no for r in batch],
            [r.carrier_ack_id for r in batch],
            [None] * len(batch),
            [r.actor.caller for r in batch],
            [r.actor.request_id for r in batch],
            [r.reason for r in batch],
        )
        return _in_request_order(order, row)

    async def record_carrier(
        self, wanted: OrderStatus, reports: Sequence[CarrierReport]
    ) -> list[Changed]:
        """Move each order to IN_TRANSIT or DELIVERED at the carrier's time."""
        order = _by_order_id(reports)
        batch = [reports[i] for i in order]
        none: list[str | None] = [None] * len(batch)
        row = await self.stock.call(
            _ADVANCE,
            int(wanted),
            [r.order_id for r in batch],
            none,
            none,
            none,
            [r.event_time for r in batch],
            [r.actor.caller for r in batch],
            [r.actor.request_id for r in batch],
            [r.reason(wanted) for r in batch],
        )
        return _in_request_order(order, row)

    async def refund_lines(self, requests: Sequence[RefundLine]) -> list[LineRefunded]:
        """Owe back each request's units of its line, or say why not."""
        row = await self.stock.call(
            _REFUND_LINES,
            [
                (
                    r.line_refund_id,
                    r.order_id,
                    r.sku,
                    r.quantity,
                    r.reason,
                    r.actor.caller,
                    r.actor.request_id,
                )
                for r in requests
            ],
        )
        return [
            LineRefunded(
                LineRefundCode(found["code"]),
                None if found["ord"] is None else order_from_row(found["ord"]),
                None if found["refund"] is None else refund_from_row(found["refund"]),
                found["bought"] or 0,
                found["refunded"] or 0,
            )
            for found in row["results"]
        ]

    # --- reads ----------------------------------------------------------------------

    async def find(self, order_ids: Sequence[str]) -> dict[str, Order]:
        """The named orders that exist."""
        rows = await self.stock.read(
            lambda c: c.fetch(
                "SELECT * FROM stockcore.orders WHERE order_id = ANY($1::text[])", list(order_ids)
            )
        )
        return {r["order_id"]: order_from_row(r) for r in rows}

    async def with_history(
        self, order_ids: Sequence[str]
    ) -> dict[str, tuple[Order, list[StatusChange]]]:
        """The named orders that exist, each with its status history, oldest first, read in
        one statement (one snapshot)."""
        rows = await self.stock.read(lambda c: c.fetch(_WITH_HISTORY, list(order_ids)))
        found = {}
        for row in rows:
            order = order_from_row(row["ord"])
            found[order.order_id] = (order, [change_from_row(h) for h in row["history"] or ()])
        return found

    async def pages(
        self, queries: Sequence[ListOrders]
    ) -> list[tuple[list[Order], PagePosition | None]]:
        """One page per query, newest first, and where each next page starts (None on the
        last page). Keyset paging: orders created meanwhile never shift a page."""
        rows = await self.stock.read(
            lambda c: c.fetch(
                _PAGES,
                [q.customer_id for q in queries],
                [None if q.status is None else int(q.status) for q in queries],
                [q.created_after for q in queries],
                [q.created_before for q in queries],
                [None if q.after is None else q.after.created_at for q in queries],
                [None if q.after is None else q.after.order_id for q in queries],
                [q.page_size + 1 for q in queries],
            )
        )
        found: list[list[Order]] = [[] for _ in queries]
        for row in rows:
            found[row["i"] - 1].append(order_from_row(row["ord"]))
        answers = []
        for query, orders in zip(queries, found, strict=True):
            page = orders[: query.page_size]
            more = len(orders) > query.page_size
            answers.append(
                (page, PagePosition(page[-1].created_at, page[-1].order_id) if more else None)
            )
        return answers

    async def page(self, query: ListOrders) -> tuple[list[Order], PagePosition | None]:
        """One page of one query (see pages)."""
        return (await self.pages([query]))[0]

    async def events(
        self, wanted: WatchFilter, after: int, upto: int, limit: int
    ) -> list[StoredEvent]:
        """Sequenced events in (after, upto] passing the filter, in cursor order."""
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
            f"SELECT {_EVENT_COLUMNS} FROM stockcore.order_events WHERE "
            + " AND ".join(where)
            + f" ORDER BY cursor LIMIT ${len(args)}"
        )
        rows = await self.stock.read(lambda c: c.fetch(sql, *args))
        return [stored_event(r) for r in rows]

    async def last_cursor(self) -> int:
        """The highest cursor given so far (0 before any); every lower one is visible."""
        value: int = await self.stock.read(
            lambda c: c.fetchval("SELECT coalesce(max(cursor), 0) FROM stockcore.order_events")
        )
        return value


def _in_request_order(order: Sequence[int], row: asyncpg.Record) -> list[Changed]:
    results: list[Changed | None] = [None] * len(order)
    for position, found in zip(order, row["results"], strict=True):
        results[position] = _changed(found)
    return results  # type: ignore[return-value]
