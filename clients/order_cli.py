"""`stockctl order ...`: create, read, pay, cancel, refund, ship and watch orders from a
shell."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO, assert_never

from clients.commands import Leaf, bounded_int, rfc3339
from clients.orders import (
    EventType,
    Order,
    OrderClient,
    OrderEvent,
    OrderStatus,
    Refund,
    StatusChange,
    event_type_name,
    refund_reason_name,
    refund_state_name,
    status_name,
)


@dataclass(frozen=True)
class CreateOrder:
    """`order create`: hold stock and create an order."""

    order_id: str
    customer_id: str
    currency_code: str
    lines: tuple[tuple[str, int, int], ...]
    payment_window: float | None
    from_reservation: bool = False


@dataclass(frozen=True)
class GetOrder:
    """`order get`: an order and its status history."""

    order_id: str


@dataclass(frozen=True)
class ListOrders:
    """`order list`: one page of a customer's orders."""

    customer_id: str
    status: OrderStatus.ValueType | None
    page_size: int
    page_token: str


@dataclass(frozen=True)
class PayOrder:
    """`order pay`: report a payment."""

    order_id: str
    payment_id: str
    amount_minor: int
    currency_code: str


@dataclass(frozen=True)
class CancelOrder:
    """`order cancel`: cancel an order that has not shipped."""

    order_id: str
    reason: str


@dataclass(frozen=True)
class RefundLine:
    """`order refund`: owe back some units of one line of a paid order (None: a new line
    refund id)."""

    order_id: str
    sku: str
    quantity: int
    reason: str
    line_refund_id: str | None


@dataclass(frozen=True)
class ShipOrder:
    """`order ship`: record a carrier's pick-up."""

    order_id: str
    carrier: str
    tracking_no: str
    carrier_ack_id: str


@dataclass(frozen=True)
class RecordInTransit:
    """`order transit`: record the carrier's in-transit scan (None: now)."""

    order_id: str
    event_time: datetime | None


@dataclass(frozen=True)
class RecordDelivery:
    """`order deliver`: record the carrier's delivery (None: now)."""

    order_id: str
    event_time: datetime | None


@dataclass(frozen=True)
class WatchOrders:
    """`order watch`: print events as they happen, from a cursor on."""

    customer_id: str
    order_id: str
    types: tuple[EventType.ValueType, ...]
    after_cursor: int
    limit: int | None


OrderCommand = (
    CreateOrder
    | GetOrder
    | ListOrders
    | PayOrder
    | CancelOrder
    | RefundLine
    | ShipOrder
    | RecordInTransit
    | RecordDelivery
    | WatchOrders
)
ORDER_COMMANDS = (
    CreateOrder,
    GetOrder,
    ListOrders,
    PayOrder,
    CancelOrder,
    RefundLine,
    ShipOrder,
    RecordInTransit,
    RecordDelivery,
    WatchOrders,
)


def parse_priced_line(text: str) -> tuple[str, int, int]:
    """Parse SKU=QTY@PRICE (price in minor units) into (sku, quantity, unit price)."""
    sku, sep, rest = text.partition("=")
    quantity, at, price = rest.partition("@")
    if not sep or not at or not sku.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not SKU=QTY@PRICE")
    try:
        amount, unit = int(quantity), int(price)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: quantity and price must be integers") from None
    if amount < 1 or unit < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: quantity must be at least 1, price at least 0")
    return sku, amount, unit


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (e.g. Z or +08:00)")
    return moment


def _status(text: str) -> OrderStatus.ValueType:
    known = {status_name(s): s for s in OrderStatus.values() if s}
    try:
        return known[text.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(known)}") from None


def _event_type(text: str) -> EventType.ValueType:
    known = {event_type_name(t): t for t in EventType.values() if t}
    name = text.upper()
    try:
        # PAID for ORDER_PAID; the refund events' names (REFUNDED) as they are.
        return known[name] if name in known else known[f"ORDER_{name}"]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an order event type") from None


def add_order_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf
) -> None:
    """Add `order` and its subcommands to stockctl's parser."""
    order = commands.add_parser("order", help="create, pay, cancel, refund, ship and watch orders")
    group = order.add_subparsers(dest="order_command", required=True, metavar="COMMAND")

    create = leaf(group, "create", "hold stock for every line and create an order")
    create.add_argument("order_id", metavar="ID")
    create.add_argument("lines", nargs="+", type=parse_priced_line, metavar="SKU=QTY@PRICE")
    create.add_argument("--customer", required=True, help="who orders")
    create.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    create.add_argument(
        "--window", type=float, metavar="SECONDS", help="payment window (server default)"
    )
    create.add_argument(
        "--from-reservation",
        action="store_true",
        help="make the order of the held reservation ID (a cart): the lines must be its"
        " lines, and its hold becomes the order's",
    )
    create.set_defaults(
        make=lambda ns: CreateOrder(
            ns.order_id,
            ns.customer,
            ns.currency,
            tuple(ns.lines),
            ns.window,
            ns.from_reservation,
        )
    )

    get = leaf(group, "get", "show an order and its status history")
    get.add_argument("order_id", metavar="ID")
    get.set_defaults(make=lambda ns: GetOrder(ns.order_id))

    listing = leaf(group, "list", "list a customer's orders, newest first")
    listing.add_argument("--customer", required=True)
    listing.add_argument("--status", type=_status, help="only orders in this status")
    listing.add_argument(
        "--page-size", type=bounded_int(0, 500), default=0, help="1-500 (0: server default, 50)"
    )
    listing.add_argument("--page-token", default="", help="next_page_token of the previous page")
    listing.set_defaults(
        make=lambda ns: ListOrders(ns.customer, ns.status, ns.page_size, ns.page_token)
    )

    pay = leaf(group, "pay", "report a payment of the order total")
    pay.add_argument("order_id", metavar="ID")
    pay.add_argument("--payment", required=True, help="the payment provider's id")
    pay.add_argument("--amount", type=bounded_int(0), required=True, help="minor units paid")
    pay.add_argument("--currency", required=True)
    pay.set_defaults(make=lambda ns: PayOrder(ns.order_id, ns.payment, ns.amount, ns.currency))

    cancel = leaf(group, "cancel", "cancel an order that has not shipped")
    cancel.add_argument("order_id", metavar="ID")
    cancel.add_argument("--reason", required=True)
    cancel.set_defaults(make=lambda ns: CancelOrder(ns.order_id, ns.reason))

    refund = leaf(
        group, "refund", "owe back some units of one line of a paid order (no stock comes back)"
    )
    refund.add_argument("order_id", metavar="ID")
    refund.add_argument("--sku", required=True, help="the line's SKU")
    refund.add_argument(
        "--quantity", type=bounded_int(1, 1_000_000), required=True, help="units to refund"
    )
    refund.add_argument("--reason", required=True)
    refund.add_argument(
        "--id",
        dest="line_refund_id",
        help="the refund's idempotency id: the same id again makes no second refund"
        " (a new one when left out, printed with the refund)",
    )
    refund.set_defaults(
        make=lambda ns: RefundLine(ns.order_id, ns.sku, ns.quantity, ns.reason, ns.line_refund_id)
    )

    ship = leaf(group, "ship", "record a carrier's acknowledged pick-up")
    ship.add_argument("order_id", metavar="ID")
    ship.add_argument("--carrier", required=True)
    ship.add_argument("--tracking", required=True, help="the carrier's tracking number")
    ship.add_argument("--ack", required=True, help="the carrier's acknowledgement id")
    ship.set_defaults(make=lambda ns: ShipOrder(ns.order_id, ns.carrier, ns.tracking, ns.ack))

    for name, kind, summary in (
        ("transit", RecordInTransit, "record the carrier's in-transit scan"),
        ("deliver", RecordDelivery, "record the carrier's delivery"),
    ):
        carrier = leaf(group, name, summary)
        carrier.add_argument("order_id", metavar="ID")
        carrier.add_argument("--at", type=_moment, help="the carrier's time, ISO 8601 (now)")
        carrier.set_defaults(make=lambda ns, kind=kind: kind(ns.order_id, ns.at))

    watch = leaf(group, "watch", "print order events as they happen (Ctrl-C stops)")
    watch.add_argument("--customer", default="", help="only this customer's orders")
    watch.add_argument("--order", default="", help="only this order")
    watch.add_argument(
        "--type", dest="types", type=_event_type, action="append", default=[], help="repeatable"
    )
    watch.add_argument("--after", type=bounded_int(0), default=0, help="resume after this cursor")
    watch.add_argument("--limit", type=bounded_int(0), help="stop after this many events")
    watch.set_defaults(
        make=lambda ns: WatchOrders(ns.customer, ns.order, tuple(ns.types), ns.after, ns.limit)
    )


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def order_data(order: Order) -> dict[str, object]:
    """An order as JSON-ready data."""
    shipment = order.shipment
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "status": status_name(order.status),
        "version": order.version,
        "currency_code": order.currency_code,
        "total_minor": order.total_minor,
        "lines": [
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "unit_price_minor": line.unit_price_minor,
                "line_total_minor": line.line_total_minor,
                "refunded_quantity": line.refunded_quantity,
            }
            for line in order.lines
        ],
        "create_time": _time(order.create_time),
        "payment_deadline": _time(order.payment_deadline),
        "update_time": _time(order.update_time),
        "payment_id": order.payment_id,
        "paid_minor": order.paid_minor,
        "refund_owed_minor": order.refund_owed_minor,
        "line_refunds_minor": order.line_refunds_minor,
        "cancel_reason": order.cancel_reason,
        "shipment": None
        if shipment is None
        else {
            "carrier": shipment.carrier,
            "tracking_no": shipment.tracking_no,
            "carrier_ack_id": shipment.carrier_ack_id,
            "ship_time": _time(shipment.ship_time),
            "in_transit_time": _time(shipment.in_transit_time),
            "delivered_time": _time(shipment.delivered_time),
            "last_sync_time": _time(shipment.last_sync_time),
        },
    }


def refund_data(refund: Refund) -> dict[str, object]:
    """A refund as JSON-ready data."""
    return {
        "refund_id": refund.refund_id,
        "reason": refund_reason_name(refund.reason),
        "state": refund_state_name(refund.state),
        "amount_minor": refund.amount_minor,
        "currency_code": refund.currency_code,
        "charge_id": refund.charge_id,
        "provider_refund_id": refund.provider_refund_id,
        "sku": refund.sku,
        "quantity": refund.quantity,
        "line_refund_id": refund.line_refund_id,
        "note": refund.note,
    }


def format_refund(refund: Refund) -> str:
    """A refund as one readable line."""
    text = (
        f"refund    {refund.refund_id}  {refund.amount_minor} {refund.currency_code}"
        f"  {refund_state_name(refund.state)}"
    )
    if refund.sku:
        text += f"  ({refund.sku} x {refund.quantity}, id {refund.line_refund_id})"
    return text


def _change_data(change: StatusChange) -> dict[str, object]:
    return {
        "from": None if change.from_status is None else status_name(change.from_status),
        "to": status_name(change.to_status),
        "time": _time(change.change_time),
        "caller": change.caller,
        "reason": change.reason,
        "request_id": change.request_id,
    }


def format_order(order: Order, history: Sequence[StatusChange] = ()) -> str:
    """An order as readable text: fields, lines, then history."""
    rows = [
        f"order     {order.order_id} (v{order.version})",
        f"customer  {order.customer_id}",
        f"status    {status_name(order.status)}",
        f"total     {order.total_minor} {order.currency_code}",
        f"deadline  {_time(order.payment_deadline)}",
    ]
    if order.payment_id:
        rows.append(f"paid      {order.paid_minor} by {order.payment_id}")
    if order.refund_owed_minor:
        rows.append(f"refund    {order.refund_owed_minor} owed")
    if order.line_refunds_minor:
        rows.append(f"lines     {order.line_refunds_minor} owed back for lines refunded")
    if order.shipment is not None:
        rows.append(f"parcel    {order.shipment.carrier} {order.shipment.tracking_no}")
    rows += [
        f"  {line.sku}  {line.quantity} x {line.unit_price_minor} = {line.line_total_minor}"
        + (f"  ({line.refunded_quantity} refunded)" if line.refunded_quantity else "")
        for line in order.lines
    ]
    rows += [
        f"  {_time(c.change_time)}"
        f"  {'-' if c.from_status is None else status_name(c.from_status)}"
        f" -> {status_name(c.to_status)}  {c.caller}: {c.reason}"
        for c in history
    ]
    return "\n".join(rows)


def _event_line(event: OrderEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {
                "cursor": event.cursor,
                "event_id": event.event_id,
                "type": event_type_name(event.type),
                "time": _time(event.occur_time),
                "order": order_data(event.order),
            }
        )
    return (
        f"{event.cursor}  {_time(event.occur_time)}  {event_type_name(event.type)}"
        f"  {event.order_id}  -> {status_name(event.order.status)}"
    )


async def execute_order(
    client: OrderClient, command: OrderCommand, *, out: TextIO, as_json: bool
) -> None:
    """Perform an order command and print its result."""
    history: list[StatusChange] = []
    match command:
        case CreateOrder():
            order = await client.create_order(
                command.order_id,
                command.customer_id,
                command.lines,
                command.currency_code,
                command.payment_window,
                from_reservation=command.from_reservation,
            )
        case GetOrder(order_id=order_id):
            order, history = await client.get_order(order_id)
        case ListOrders():
            page = await client.list_orders(
                command.customer_id,
                status=command.status,
                page_size=command.page_size,
                page_token=command.page_token,
            )
            if as_json:
                data: dict[str, object] = {
                    "orders": [order_data(o) for o in page.orders],
                    "next_page_token": page.next_page_token,
                }
                print(json.dumps(data, indent=2), file=out)
            else:
                for o in page.orders:
                    print(
                        f"{o.order_id}  {status_name(o.status)}  {o.total_minor} {o.currency_code}"
                        f"  {_time(o.create_time)}",
                        file=out,
                    )
                if page.next_page_token:
                    print(f"next page: --page-token {page.next_page_token}", file=out)
            return
        case PayOrder():
            order = await client.confirm_payment(
                command.order_id, command.payment_id, command.amount_minor, command.currency_code
            )
        case CancelOrder(order_id=order_id, reason=reason):
            order = await client.cancel_order(order_id, reason)
        case RefundLine():
            order, refund = await client.refund_line(
                command.order_id,
                command.sku,
                command.quantity,
                command.reason,
                line_refund_id=command.line_refund_id,
            )
            if as_json:
                print(
                    json.dumps(order_data(order) | {"refund": refund_data(refund)}, indent=2),
                    file=out,
                )
            else:
                print(format_order(order), file=out)
                print(format_refund(refund), file=out)
            return
        case ShipOrder():
            order = await client.ship_order(
                command.order_id, command.carrier, command.tracking_no, command.carrier_ack_id
            )
        case RecordInTransit(order_id=order_id, event_time=at):
            order = await client.record_in_transit(order_id, at or datetime.now(UTC))
        case RecordDelivery(order_id=order_id, event_time=at):
            order = await client.record_delivery(order_id, at or datetime.now(UTC))
        case WatchOrders():
            if command.limit == 0:
                return
            seen = 0
            async for event in client.watch(
                customer_id=command.customer_id,
                order_id=command.order_id,
                types=command.types,
                after_cursor=command.after_cursor,
            ):
                print(_event_line(event, as_json), file=out, flush=True)
                seen += 1
                if command.limit is not None and seen >= command.limit:
                    return
            return
        case _:
            assert_never(command)
    if as_json:
        data = order_data(order)
        if history:
            data["history"] = [_change_data(c) for c in history]
        print(json.dumps(data, indent=2), file=out)
    else:
        print(format_order(order, history), file=out)
