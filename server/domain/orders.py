"""Orders: the status machine (one table, the only place transitions are written down),
the values an order is made of, the validated requests that change orders, and the
errors a refused change is answered with. The changes themselves are made by the order
functions in PostgreSQL (server/storage/sql/live/orders.sql), which apply this table
under the order's lock. Queries that read orders are in order_queries."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from server.domain.errors import (
    EventBeforeOrder,
    FieldViolation,
    IllegalTransition,
    InvalidArgument,
    LineRefundExceeded,
    NoSuchLine,
    NotRefundable,
    PaymentMismatch,
    PermissionDenied,
)
from server.domain.inventory import (
    MAX_QUANTITY,
    OTHER_CUSTOMER,
    Line,
    ReserveCommand,
    check_id,
    check_reason,
    check_sku,
    merge_lines,
    ttl_ms,
)

MAX_UNIT_PRICE = 10**10
# Totals are stored as PostgreSQL bigint; 100 lines of 10^6 units at 10^10 stay far below.
MAX_TOTAL = 2**63 - 1
MAX_CARRIER_ACK = 128
MAX_CARRIER_SKEW = timedelta(minutes=5)
# No parcel of ours moved before this: an earlier carrier time is a broken clock or a
# default value (the epoch), never a scan.
EARLIEST_CARRIER_TIME = datetime(2000, 1, 1, tzinfo=UTC)

CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
TRACKING_PATTERN = re.compile(r"[A-Za-z0-9-]{1,64}")


class OrderStatus(IntEnum):
    """Where an order stands; the values are stored in PostgreSQL and sent on the wire."""

    PENDING_PAYMENT = 1
    PAID = 2
    SHIPPED = 3
    IN_TRANSIT = 4
    DELIVERED = 5
    CANCELLED = 6
    EXPIRED = 7


class EventType(IntEnum):
    """What happened to an order; the values are stored and sent on the wire."""

    ORDER_CREATED = 1
    ORDER_PAID = 2
    ORDER_CANCELLED = 3
    ORDER_EXPIRED = 4
    ORDER_SHIPPED = 5
    ORDER_IN_TRANSIT = 6
    ORDER_DELIVERED = 7
    # A refund's steps (REFUND_EVENTS): events of the order, not status changes.
    REFUND_REQUESTED = 8
    REFUNDED = 9
    REFUND_FAILED = 10


#: The events of a refund of the order (sql/live/refunds.sql writes them): no status
#: change, no history row, the order's version unchanged.
REFUND_EVENTS = frozenset({EventType.REFUND_REQUESTED, EventType.REFUNDED, EventType.REFUND_FAILED})


class RefundReason(IntEnum):
    """Why a refund is owed; the values are stored and sent on the wire."""

    ORDER_CANCELLED = 1
    CHARGE_TO_RETURN = 2
    LINE_REFUNDED = 3


class RefundState(IntEnum):
    """How far a refund got; the values are stored and sent on the wire."""

    REQUESTED = 1
    SENT = 2
    REFUNDED = 3
    FAILED = 4


INITIAL_STATUS = OrderStatus.PENDING_PAYMENT
CREATED_EVENT = EventType.ORDER_CREATED

# THE status machine: from each status, the statuses it may move to and the event each
# move emits. A status with no entries is final. Nothing else decides a transition.
TRANSITIONS: Mapping[OrderStatus, Mapping[OrderStatus, EventType]] = {
    OrderStatus.PENDING_PAYMENT: {
        OrderStatus.PAID: EventType.ORDER_PAID,
        OrderStatus.CANCELLED: EventType.ORDER_CANCELLED,
        OrderStatus.EXPIRED: EventType.ORDER_EXPIRED,
    },
    OrderStatus.PAID: {
        OrderStatus.SHIPPED: EventType.ORDER_SHIPPED,
        OrderStatus.CANCELLED: EventType.ORDER_CANCELLED,
    },
    OrderStatus.SHIPPED: {
        OrderStatus.IN_TRANSIT: EventType.ORDER_IN_TRANSIT,
        # The carrier may report the delivery before any in-transit scan.
        OrderStatus.DELIVERED: EventType.ORDER_DELIVERED,
    },
    OrderStatus.IN_TRANSIT: {OrderStatus.DELIVERED: EventType.ORDER_DELIVERED},
    OrderStatus.DELIVERED: {},
    OrderStatus.CANCELLED: {},
    OrderStatus.EXPIRED: {},
}


def allowed_next(status: OrderStatus) -> tuple[OrderStatus, ...]:
    """The statuses an order in `status` may move to."""
    return tuple(TRANSITIONS[status])


def decide(order_id: str, path: Sequence[OrderStatus], wanted: OrderStatus) -> EventType | None:
    """The event of moving an order that went through `path` to `wanted`; None when that
    move was already made (a repeat: answer with the order as it is). Raises
    IllegalTransition naming the current status and the allowed next ones otherwise."""
    current = path[-1]
    if wanted in path:
        return None
    event = TRANSITIONS[current].get(wanted)
    if event is None:
        allowed = [status.name for status in allowed_next(current)]
        raise IllegalTransition(
            order_id,
            current.name,
            wanted.name,
            f"order {order_id!r} is {current.name} and cannot become {wanted.name};"
            f" allowed next: {', '.join(allowed) or 'none (final)'}",
            allowed,
        )
    return event


def status_diagram() -> str:
    """The status machine as a Mermaid stateDiagram, generated from TRANSITIONS."""
    rows = ["stateDiagram-v2", f"    [*] --> {INITIAL_STATUS.name}: {CREATED_EVENT.name}"]
    for source, targets in TRANSITIONS.items():
        for target, event in targets.items():
            rows.append(f"    {source.name} --> {target.name}: {event.name}")
    rows += [f"    {status.name} --> [*]" for status, targets in TRANSITIONS.items() if not targets]
    return "\n".join(rows) + "\n"


# --- values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderLine:
    """One SKU of an order, priced in minor units of the order currency; `refunded_quantity`
    of its units were refunded (RefundLine)."""

    sku: str
    quantity: int
    unit_price_minor: int
    refunded_quantity: int = 0

    @property
    def total_minor(self) -> int:
        """quantity * unit price."""
        return self.quantity * self.unit_price_minor


@dataclass(frozen=True, slots=True)
class Shipment:
    """What carriers told us about an order's parcel."""

    carrier: str
    tracking_no: str
    carrier_ack_id: str
    shipped_at: datetime
    in_transit_at: datetime | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """An order as stored; `path` is every status it has been in, oldest first."""

    order_id: str
    customer_id: str
    status: OrderStatus
    currency: str
    lines: tuple[OrderLine, ...]
    total_minor: int
    created_at: datetime
    payment_deadline: datetime
    updated_at: datetime
    path: tuple[OrderStatus, ...]
    fingerprint: bytes
    payment_id: str = ""
    paid_minor: int = 0
    shipment: Shipment | None = None
    last_sync_at: datetime | None = None
    refund_owed_minor: int = 0
    cancel_reason: str = ""

    @property
    def version(self) -> int:
        """Number of status changes so far, the creation included."""
        return len(self.path)

    @property
    def line_refunds_minor(self) -> int:
        """What its lines refunded owe back: each one's refunded units at its price."""
        return sum(line.refunded_quantity * line.unit_price_minor for line in self.lines)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change, and under which request id."""

    caller: str
    request_id: str


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One row of an order's status history; from_status is None for the creation."""

    order_id: str
    version: int
    from_status: OrderStatus | None
    to_status: OrderStatus
    changed_at: datetime
    caller: str
    reason: str
    request_id: str


@dataclass(frozen=True, slots=True)
class RefundNote:
    """A refund as a refund event or RefundLine reports it: its state then, and since
    when. A line refunded (LINE_REFUNDED) names the line's SKU, the units, the caller's
    line refund id and why; other refunds leave them empty."""

    refund_id: str
    reason: RefundReason
    amount_minor: int
    currency: str
    state: RefundState
    charge_id: str
    provider_refund_id: str | None
    at: datetime
    sku: str = ""
    quantity: int = 0
    line_refund_id: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One change of one order, as written to the outbox: a status change (`change`), or
    a step of one of its refunds (`refund`, a REFUND_EVENTS type)."""

    type: EventType
    order: Order
    change: StatusChange | None
    refund: RefundNote | None = None

    @property
    def event_id(self) -> str:
        """Unique and stable: "<order_id>/<order_version>", and for a refund event
        "<order_id>/<order_version>/refund/<refund_id>/<type>"."""
        if self.refund is not None:
            return (
                f"{self.order.order_id}/{self.order.version}/refund/{self.refund.refund_id}"
                f"/{int(self.type)}"
            )
        return f"{self.order.order_id}/{self.order.version}"

    @property
    def occurred_at(self) -> datetime:
        """When the change was made."""
        if self.refund is not None:
            return self.refund.at
        assert self.change is not None
        return self.change.changed_at


# --- requests -----------------------------------------------------------------------


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)


def check_currency(value: str, field: str) -> list[FieldViolation]:
    """Violations of the ISO 4217 code format."""
    if CURRENCY_PATTERN.fullmatch(value) is None:
        return [_violation(field, "must be an ISO 4217 code of three upper-case letters")]
    return []


@dataclass(frozen=True, slots=True)
class CreateOrder:
    """A validated CreateOrder: lines merged per SKU and sorted, prices checked. With
    `from_reservation`, the order takes over the HELD plain reservation whose id is its own
    (CreateOrderRequest.reservation_id), which must hold exactly its lines, instead of
    holding stock anew; `bound_customer` is the customer the caller's token is bound to
    (None for a service), who may take over only a reservation held for it."""

    order_id: str
    customer_id: str
    currency: str
    lines: tuple[OrderLine, ...]
    ttl_ms: int
    actor: Actor
    from_reservation: bool = False
    bound_customer: str | None = None

    @property
    def total_minor(self) -> int:
        """The order total, computed here and nowhere else."""
        return sum(line.total_minor for line in self.lines)

    @property
    def fingerprint(self) -> bytes:
        """What makes two CreateOrder requests with one id the same request."""
        body = "|".join(f"{x.sku}={x.quantity}@{x.unit_price_minor}" for x in self.lines)
        text = f"order|{self.customer_id}|{self.currency}|{body}|{self.ttl_ms}"
        if self.from_reservation:
            text += "|from reservation"
        return hashlib.sha256(text.encode()).digest()[:16]

    @property
    def reserve(self) -> ReserveCommand:
        """The hold this order needs: one reservation, whose id is the order id."""
        return ReserveCommand(
            self.order_id,
            tuple(Line(line.sku, line.quantity) for line in self.lines),
            self.ttl_ms,
            self.actor.caller,
        )


def create_order(
    order_id: str,
    customer_id: str,
    lines: Sequence[tuple[str, int, int]],
    currency: str,
    payment_window_s: float | None,
    actor: Actor,
    *,
    default_ttl_s: float,
    min_ttl_s: float,
    max_ttl_s: float,
    reservation_id: str = "",
    bound_customer: str | None = None,
) -> CreateOrder:
    """Validate a CreateOrder request (lines are (sku, quantity, unit price)), reporting
    every violation at once. With a `reservation_id` the order takes over that
    reservation, whose id becomes the order's: `order_id` must be empty or the same."""
    violations: list[FieldViolation] = []
    if reservation_id:
        violations += check_id(reservation_id, "reservation_id")
        if order_id and order_id != reservation_id:
            violations.append(
                _violation(
                    "order_id",
                    "must be empty or reservation_id: the reservation becomes the order's"
                    " hold, and an order's hold has the order's id",
                )
            )
        order_id = order_id or reservation_id
    violations += check_id(order_id, "order_id") + check_id(customer_id, "customer_id")
    try:
        merged = merge_lines([(sku, quantity) for sku, quantity, _ in lines])
    except InvalidArgument as exc:
        violations += exc.violations
        merged = ()
    prices: dict[str, tuple[int, int]] = {}
    for index, (sku, _, price) in enumerate(lines):
        field = f"lines[{index}].unit_price_minor"
        if not 0 <= price <= MAX_UNIT_PRICE:
            violations.append(_violation(field, f"must be 0 to {MAX_UNIT_PRICE}, got {price}"))
            continue
        first = prices.setdefault(sku, (index, price))
        if first[1] != price:
            violations.append(
                _violation(field, f"differs from lines[{first[0]}], which has the same SKU")
            )
    violations += check_currency(currency, "currency_code")
    try:
        ttl = ttl_ms(payment_window_s, default_s=default_ttl_s, min_s=min_ttl_s, max_s=max_ttl_s)
    except InvalidArgument as exc:
        violations += [_violation("payment_window", v.description) for v in exc.violations]
        ttl = 0
    priced = tuple(
        OrderLine(line.sku, line.quantity, prices[line.sku][1])
        for line in merged
        if line.sku in prices
    )
    if sum(line.total_minor for line in priced) > MAX_TOTAL:
        violations.append(_violation("lines", f"the order total exceeds {MAX_TOTAL} minor units"))
    if violations:
        raise InvalidArgument(violations)
    return CreateOrder(
        order_id,
        customer_id,
        currency,
        priced,
        ttl,
        actor,
        from_reservation=bool(reservation_id),
        bound_customer=bound_customer,
    )


@dataclass(frozen=True, slots=True)
class ConfirmPayment:
    """A validated ConfirmPayment."""

    order_id: str
    payment_id: str
    amount_minor: int
    currency: str
    actor: Actor

    @property
    def reason(self) -> str:
        """What the status history says of the payment."""
        return f"payment {self.payment_id}"


def confirm_payment(
    order_id: str, payment_id: str, amount_minor: int, currency: str, actor: Actor
) -> ConfirmPayment:
    """Validate a ConfirmPayment request."""
    violations = check_id(order_id, "order_id") + check_id(payment_id, "payment_id")
    if not 0 <= amount_minor <= MAX_TOTAL:
        violations.append(_violation("amount_minor", f"must be 0 to {MAX_TOTAL}"))
    violations += check_currency(currency, "currency_code")
    if violations:
        raise InvalidArgument(violations)
    return ConfirmPayment(order_id, payment_id, amount_minor, currency, actor)


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """A validated CancelOrder; with `customer_id`, asked for by that customer, who may
    cancel only their own order, and only before it is paid."""

    order_id: str
    reason: str
    actor: Actor
    customer_id: str | None = None


def cancel_order(
    order_id: str, reason: str, actor: Actor, customer_id: str | None = None
) -> CancelOrder:
    """Validate a CancelOrder request."""
    violations = check_id(order_id, "order_id") + check_reason(reason)
    if violations:
        raise InvalidArgument(violations)
    return CancelOrder(order_id, reason, actor, customer_id)


@dataclass(frozen=True, slots=True)
class RefundLine:
    """A validated RefundLine: owe back `quantity` units of the line `sku` of a paid order;
    `line_refund_id` makes it idempotent."""

    order_id: str
    sku: str
    quantity: int
    reason: str
    line_refund_id: str
    actor: Actor


def refund_line(
    order_id: str, sku: str, quantity: int, reason: str, line_refund_id: str, actor: Actor
) -> RefundLine:
    """Validate a RefundLine request, reporting every violation at once. (Whether the order
    is paid, has the line and has that many units left to refund is decided under the
    order's lock, by the refund function.)"""
    violations = (
        check_id(order_id, "order_id")
        + check_sku(sku, "sku")
        + check_reason(reason)
        + check_id(line_refund_id, "line_refund_id")
    )
    if not 1 <= quantity <= MAX_QUANTITY:
        violations.append(_violation("quantity", f"must be 1 to {MAX_QUANTITY}, got {quantity}"))
    if violations:
        raise InvalidArgument(violations)
    return RefundLine(order_id, sku, quantity, reason, line_refund_id, actor)


@dataclass(frozen=True, slots=True)
class ShipOrder:
    """A validated ShipOrder: the carrier is allowed and acknowledged the tracking number."""

    order_id: str
    carrier: str
    tracking_no: str
    carrier_ack_id: str
    actor: Actor

    @property
    def reason(self) -> str:
        """What the status history says of the pick-up."""
        return f"picked up by {self.carrier}"


def ship_order(
    order_id: str,
    carrier: str,
    tracking_no: str,
    carrier_ack_id: str,
    actor: Actor,
    *,
    carriers: Iterable[str],
) -> ShipOrder:
    """Validate a ShipOrder request against the carrier allow-list."""
    allowed = tuple(carriers)
    violations = check_id(order_id, "order_id")
    if carrier not in allowed:
        violations.append(_violation("carrier", f"must be one of {', '.join(allowed)}"))
    if not tracking_no:
        violations.append(_violation("tracking_no", "must not be empty"))
    elif TRACKING_PATTERN.fullmatch(tracking_no) is None:
        violations.append(_violation("tracking_no", "must be 1-64 characters of [A-Za-z0-9-]"))
    if not carrier_ack_id.strip():
        violations.append(_violation("carrier_ack_id", "must not be empty"))
    elif len(carrier_ack_id) > MAX_CARRIER_ACK or not carrier_ack_id.isprintable():
        violations.append(
            _violation("carrier_ack_id", f"must be 1-{MAX_CARRIER_ACK} printable characters")
        )
    if violations:
        raise InvalidArgument(violations)
    return ShipOrder(order_id, carrier, tracking_no, carrier_ack_id, actor)


@dataclass(frozen=True, slots=True)
class CarrierReport:
    """A validated carrier event (in transit, delivered) with the carrier's time."""

    order_id: str
    event_time: datetime
    actor: Actor

    def reason(self, wanted: OrderStatus) -> str:
        """What the status history says of the carrier's report."""
        return f"carrier reported {wanted.name} at {self.event_time.isoformat()}"


def carrier_report(
    order_id: str, event_time: datetime | None, actor: Actor, *, now: datetime
) -> CarrierReport:
    """Validate a carrier event: the time is required, not more than 5 min ahead and not
    before 2000. (Not before the order's creation either: the order function decides
    that, under the order's lock, where the creation time is.)"""
    violations = check_id(order_id, "order_id")
    if event_time is None:
        violations.append(_violation("event_time", "must be set to the carrier's event time"))
    elif event_time > now + MAX_CARRIER_SKEW:
        violations.append(_violation("event_time", "must not be more than 5 minutes ahead"))
    elif event_time < EARLIEST_CARRIER_TIME:
        violations.append(_violation("event_time", "must not be before 2000-01-01T00:00:00Z"))
    if violations or event_time is None:
        raise InvalidArgument(violations)
    return CarrierReport(order_id, event_time, actor)


# --- refusals ----------------------------------------------------------------------
# The order functions in PostgreSQL apply TRANSITIONS (copied there at start-up) under
# the order's lock; when they refuse, these say why, in the caller's terms.


def refusal(order: Order, wanted: OrderStatus) -> IllegalTransition:
    """The error for a move of `order` to `wanted` that the status machine refuses."""
    try:
        decide(order.order_id, order.path, wanted)
    except IllegalTransition as exc:
        return exc
    raise RuntimeError(
        f"the database refused {order.order_id!r} {order.status.name} -> {wanted.name},"
        " which the status machine allows"
    )


def paid_by_another(order: Order) -> IllegalTransition:
    """A payment for an order another payment paid."""
    return IllegalTransition(
        order.order_id,
        order.status.name,
        OrderStatus.PAID.name,
        f"order {order.order_id!r} was already paid by another payment",
        [status.name for status in allowed_next(order.status)],
    )


def shipped_as_another(order: Order) -> IllegalTransition:
    """A ShipOrder naming another parcel than the one the order shipped as."""
    shipped = order.shipment
    parcel = f"{shipped.carrier} {shipped.tracking_no}" if shipped else "another parcel"
    return IllegalTransition(
        order.order_id,
        order.status.name,
        OrderStatus.SHIPPED.name,
        f"order {order.order_id!r} was already shipped as {parcel}",
        [status.name for status in allowed_next(order.status)],
    )


def reported_before_creation(order: Order, report: CarrierReport) -> EventBeforeOrder:
    """A carrier event dated before the order it reports on was created."""
    return EventBeforeOrder(
        order.order_id, report.event_time.isoformat(), order.created_at.isoformat()
    )


# RefundLine's refusals: the order or the line cannot be refunded (as much).

#: Statuses whose orders were paid and owe nothing back yet as a whole.
REFUNDABLE = frozenset(
    {OrderStatus.PAID, OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT, OrderStatus.DELIVERED}
)


def not_refundable(order: Order) -> NotRefundable:
    """RefundLine of an order not paid, or cancelled (what it was paid is owed back)."""
    why = (
        "what it was paid is owed back already"
        if order.status is OrderStatus.CANCELLED
        else "nothing was paid"
    )
    return NotRefundable(
        "STATUS",
        order.order_id,
        f"status is {order.status.name}: {why}",
        f"order {order.order_id!r} is {order.status.name}: {why}; a line can be refunded only"
        f" of an order {', '.join(s.name for s in sorted(REFUNDABLE))}",
    )


def free_line(order: Order, sku: str) -> NotRefundable:
    """RefundLine of a line that cost nothing."""
    return NotRefundable(
        "PRICE",
        sku,
        "the line cost nothing",
        f"line {sku!r} of order {order.order_id!r} cost nothing: there is nothing to refund",
    )


def no_such_line(order: Order, sku: str) -> NoSuchLine:
    """RefundLine naming a SKU the order has no line of."""
    return NoSuchLine(order.order_id, sku, [line.sku for line in order.lines])


def exceeds_line(request: RefundLine, bought: int, refunded: int) -> LineRefundExceeded:
    """RefundLine of more units than its line has left to refund."""
    return LineRefundExceeded(request.order_id, request.sku, bought, refunded, request.quantity)


def mismatch(order: Order, payment: ConfirmPayment) -> PaymentMismatch:
    """A payment whose amount or currency is not the order's."""
    return PaymentMismatch(
        order.order_id,
        f"{order.total_minor} {order.currency}",
        f"{payment.amount_minor} {payment.currency}",
    )


# --- a customer's own orders ----------------------------------------------------------
# A token bound to one customer sees and changes only that customer's orders; these are
# its refusals (ErrorInfo reasons, part of the API).

PAID_ORDER = "PAID_ORDER"


def not_customers(customer_id: str, order_id: str) -> PermissionDenied:
    """A customer's token named an order that is not that customer's. An order that does
    not exist is refused the same way, so a shopper learns nothing of others' orders."""
    return PermissionDenied(
        OTHER_CUSTOMER, f"order {order_id!r} is not among customer {customer_id!r}'s orders"
    )


def other_customer(bound: str, requested: str) -> PermissionDenied:
    """A customer's token asked about another customer."""
    return PermissionDenied(
        OTHER_CUSTOMER, f"the token acts for customer {bound!r}, not {requested!r}"
    )


def lines_text(lines: Iterable[tuple[str, int]]) -> str:
    """Lines as a person reads them: "A x 2, B x 1"."""
    return ", ".join(f"{sku} x {quantity}" for sku, quantity in lines)


def customer_cannot_cancel(order: Order) -> PermissionDenied:
    """A customer asked to cancel their order after it was paid: only a service may (the
    payment has to be refunded)."""
    return PermissionDenied(
        PAID_ORDER,
        f"order {order.order_id!r} is {order.status.name}: a customer may cancel an order"
        " only before it is paid",
    )
