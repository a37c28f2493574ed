"""Typed async client of stockcore.v1.OrderService, with deadlines, safe retries and a
WatchOrders stream that resumes by itself after a disconnect.

Its Order, StatusChange and OrderEvent are the one client-side view of the contract's
messages (times as timezone-aware datetimes, no shipment as None); their statuses and event
types are the contract's own enums, not copies of them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2
from stockcore.v1 import orders_pb2 as pb
from stockcore.v1 import orders_pb2_grpc as pb_grpc

from clients.credentials import Credentials
from clients.errors import StatusCode, from_rpc_error
from clients.inventory import (
    DEFAULT_CHANNEL_OPTIONS,
    DEFAULT_RETRY_POLICY,
    ChannelClient,
    RetryPolicy,
    call_with_retry,
    check_timeout,
    to_datetime,
    to_duration,
)

_T = TypeVar("_T")
_V = TypeVar("_V")
_Request = TypeVar("_Request")

#: Metadata key of the request id the server records on the status history.
REQUEST_ID_METADATA_KEY = "x-request-id"


#: Where an order stands: the contract's enum, re-exported so that the list of statuses is
#: written once, in protos/stockcore/v1/orders.proto. An order's status is one of its values
#: (`OrderStatus.ORDER_STATUS_PAID`), or a number added to the contract after this client was
#: built; `status_name` says it for people.
OrderStatus = pb.OrderStatus

#: What happened to an order: the contract's enum, as OrderStatus is.
EventType = pb.EventType
#: Why a refund is owed, and how far it got: the contract's enums (a refund event's Refund).
RefundReason = pb.RefundReason
RefundState = pb.RefundState


def status_name(status: OrderStatus.ValueType) -> str:
    """A status as people read it (`PAID`); the number of one this client does not know."""
    return _short_name(OrderStatus.Name, status, "ORDER_STATUS_")


def event_type_name(event_type: EventType.ValueType) -> str:
    """An event type as people read it (`ORDER_PAID`); the number of one this client does
    not know."""
    return _short_name(EventType.Name, event_type, "EVENT_TYPE_")


def refund_reason_name(reason: RefundReason.ValueType) -> str:
    """A refund's reason as people read it (`LINE_REFUNDED`); the number of one this client
    does not know."""
    return _short_name(RefundReason.Name, reason, "REFUND_REASON_")


def refund_state_name(state: RefundState.ValueType) -> str:
    """A refund's state as people read it (`REFUNDED`); the number of one this client does
    not know."""
    return _short_name(RefundState.Name, state, "REFUND_STATE_")


def _short_name(name: Callable[[_V], str], value: _V, prefix: str) -> str:
    try:
        return name(value).removeprefix(prefix)
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class OrderLine:
    """One SKU of an order; money in minor units of the order currency; `refunded_quantity`
    of its units were refunded (refund_line)."""

    sku: str
    quantity: int
    unit_price_minor: int
    line_total_minor: int = 0
    refunded_quantity: int = 0


@dataclass(frozen=True)
class Shipment:
    """What carriers told the server about the parcel; times are timezone-aware UTC."""

    carrier: str
    tracking_no: str
    carrier_ack_id: str
    ship_time: datetime | None
    in_transit_time: datetime | None
    delivered_time: datetime | None
    last_sync_time: datetime | None


@dataclass(frozen=True)
class Order:
    """An order as the server stores it."""

    order_id: str
    customer_id: str
    status: OrderStatus.ValueType
    currency_code: str
    lines: tuple[OrderLine, ...]
    total_minor: int
    create_time: datetime
    payment_deadline: datetime
    update_time: datetime
    payment_id: str
    paid_minor: int
    shipment: Shipment | None
    refund_owed_minor: int
    cancel_reason: str
    version: int
    # What its lines refunded owe back; refund_owed_minor is what its cancel owes besides.
    line_refunds_minor: int = 0


@dataclass(frozen=True)
class StatusChange:
    """One row of an order's status history; from_status is None for the creation."""

    from_status: OrderStatus.ValueType | None
    to_status: OrderStatus.ValueType
    change_time: datetime
    caller: str
    reason: str
    request_id: str


@dataclass(frozen=True)
class OrderEvent:
    """One change of one order; de-duplicate by event_id, resume by cursor."""

    event_id: str
    cursor: int
    type: EventType.ValueType
    order_id: str
    order_version: int
    occur_time: datetime
    order: Order
    # The status change; None for a refund event (EVENT_TYPE_REFUND_*), which has `refund`.
    change: StatusChange | None
    refund: Refund | None = None


@dataclass(frozen=True)
class Refund:
    """The refund a refund event reports (protos/stockcore/v1/orders.proto, Refund)."""

    refund_id: str
    reason: RefundReason.ValueType
    amount_minor: int
    currency_code: str
    state: RefundState.ValueType
    charge_id: str
    provider_refund_id: str
    # A line refunded (REFUND_REASON_LINE_REFUNDED): its SKU, the units, the caller's
    # line refund id and why; empty for other refunds.
    sku: str = ""
    quantity: int = 0
    line_refund_id: str = ""
    note: str = ""


@dataclass(frozen=True)
class OrderPage:
    """One page of ListOrders; next_page_token is empty on the last page."""

    orders: tuple[Order, ...]
    next_page_token: str


class OrderClient(ChannelClient):
    """Async client of the order service over one reused channel; create it inside a loop."""

    def __init__(
        self,
        target: str,
        *,
        credentials: Credentials | None = None,
        default_timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        channel_options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        super().__init__(
            target,
            credentials=credentials,
            default_timeout=default_timeout,
            retry=retry,
            channel_options=channel_options,
        )
        self._stub = pb_grpc.OrderServiceStub(self._channel)

    async def create_order(
        self,
        order_id: str,
        customer_id: str,
        lines: Iterable[tuple[str, int, int]],
        currency_code: str,
        payment_window: float | None = None,
        *,
        from_reservation: bool = False,
        timeout: float | None = None,
    ) -> Order:
        """Hold stock for (sku, quantity, unit price) lines and create the order; a retry
        with the same id and content returns the order as it is now. With
        `from_reservation`, the order is made of the HELD reservation `order_id` (a cart),
        whose lines `lines` must be, and takes over its hold instead of holding anew."""
        request = pb.CreateOrderRequest(
            order_id=order_id,
            customer_id=customer_id,
            lines=[pb.OrderLine(sku=s, quantity=q, unit_price_minor=p) for s, q, p in lines],
            currency_code=currency_code,
            payment_window=None if payment_window is None else to_duration(payment_window),
            reservation_id=order_id if from_reservation else "",
        )
        reply = await self._call(self._stub.CreateOrder, request, read=False, timeout=timeout)
        return order_from_message(reply.order)

    async def get_order(
        self, order_id: str, *, timeout: float | None = None
    ) -> tuple[Order, list[StatusChange]]:
        """An order and its status history, oldest first."""
        request = pb.GetOrderRequest(order_id=order_id)
        reply = await self._call(self._stub.GetOrder, request, read=True, timeout=timeout)
        return order_from_message(reply.order), [_change(c) for c in reply.history]

    async def list_orders(
        self,
        customer_id: str,
        *,
        status: OrderStatus.ValueType | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> OrderPage:
        """One page of a customer's orders, newest first."""
        request = pb.ListOrdersRequest(
            customer_id=customer_id,
            status=OrderStatus.ORDER_STATUS_UNSPECIFIED if status is None else status,
            created_after=None if created_after is None else _timestamp(created_after),
            created_before=None if created_before is None else _timestamp(created_before),
            page_size=page_size,
            page_token=page_token,
        )
        reply = await self._call(self._stub.ListOrders, request, read=True, timeout=timeout)
        return OrderPage(tuple(order_from_message(o) for o in reply.orders), reply.next_page_token)

    async def confirm_payment(
        self,
        order_id: str,
        payment_id: str,
        amount_minor: int,
        currency_code: str,
        *,
        timeout: float | None = None,
    ) -> Order:
        """Report a payment of the order total; idempotent on payment_id."""
        request = pb.ConfirmPaymentRequest(
            order_id=order_id,
            payment_id=payment_id,
            amount_minor=amount_minor,
            currency_code=currency_code,
        )
        reply = await self._call(self._stub.ConfirmPayment, request, read=False, timeout=timeout)
        return order_from_message(reply.order)

    async def cancel_order(
        self, order_id: str, reason: str, *, timeout: float | None = None
    ) -> Order:
        """Cancel an order that has not shipped."""
        request = pb.CancelOrderRequest(order_id=order_id, reason=reason)
        reply = await self._call(self._stub.CancelOrder, request, read=False, timeout=timeout)
        return order_from_message(reply.order)

    async def refund_line(
        self,
        order_id: str,
        sku: str,
        quantity: int,
        reason: str,
        *,
        line_refund_id: str | None = None,
        timeout: float | None = None,
    ) -> tuple[Order, Refund]:
        """Owe back `quantity` units of the line `sku` of a paid order (money only: no stock
        comes back); the order and its refund. Idempotent on `line_refund_id`: the same id
        and request again answer with the same refund as it is now, never a second one.
        Without one, a new id is made for this call, which its retries share."""
        request = pb.RefundLineRequest(
            order_id=order_id,
            sku=sku,
            quantity=quantity,
            reason=reason,
            line_refund_id=line_refund_id or f"line-refund-{uuid.uuid4().hex}",
        )
        reply = await self._call(self._stub.RefundLine, request, read=False, timeout=timeout)
        return order_from_message(reply.order), _refund(reply.refund)

    async def ship_order(
        self,
        order_id: str,
        carrier: str,
        tracking_no: str,
        carrier_ack_id: str,
        *,
        timeout: float | None = None,
    ) -> Order:
        """Record a carrier's acknowledged pick-up."""
        request = pb.ShipOrderRequest(
            order_id=order_id,
            carrier=carrier,
            tracking_no=tracking_no,
            carrier_ack_id=carrier_ack_id,
        )
        reply = await self._call(self._stub.ShipOrder, request, read=False, timeout=timeout)
        return order_from_message(reply.order)

    async def record_in_transit(
        self, order_id: str, event_time: datetime, *, timeout: float | None = None
    ) -> Order:
        """Record the carrier's in-transit scan at its time (timezone-aware). A time before
        the order was created is EventBeforeOrder; one before 2000 or more than 5 minutes
        ahead, InvalidArgument."""
        request = pb.RecordInTransitRequest(order_id=order_id, event_time=_timestamp(event_time))
        reply = await self._call(self._stub.RecordInTransit, request, read=False, timeout=timeout)
        return order_from_message(reply.order)

    async def record_delivery(
        self, order_id: str, event_time: datetime, *, timeout: float | None = None
    ) -> Order:
        """Record the carrier's delivery at its time (timezone-aware). A time before
        the order was created is EventBeforeOrder; one before 2000 or more than 5 minutes
        ahead, InvalidArgument."""
        request = pb.RecordDeliveryRequest(order_id=order_id, event_time=_timestamp(event_time))
        reply = await self._call(self._stub.RecordDelivery, request, read=False, timeout=timeout)
        return order_from_message(reply.order)

    async def watch(
        self,
        *,
        customer_id: str = "",
        order_id: str = "",
        types: Iterable[EventType.ValueType] = (),
        after_cursor: int = 0,
        resume: bool = True,
    ) -> AsyncIterator[OrderEvent]:
        """Order events after `after_cursor`, then live ones, for as long as the caller
        reads. With `resume`, a dropped stream (UNAVAILABLE) is reopened after the last
        event seen, so nothing is missed or repeated, and a stream refused at a bound
        (RESOURCE_EXHAUSTED: the caller's share of streams, or the server's) is opened
        again after the delay the refusal gives; other errors are raised."""
        cursor = after_cursor
        wanted = list(types)
        failures = 0
        while True:
            request = pb.WatchOrdersRequest(
                customer_id=customer_id, order_id=order_id, types=wanted, after_cursor=cursor
            )
            call = self._stub.WatchOrders(request, metadata=self._metadata())
            try:
                async for message in call:
                    failures = 0
                    event = event_from_message(message)
                    cursor = event.cursor
                    yield event
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                failures += 1
                if not resume or error.code not in _REOPENED:
                    raise error from exc
                backoff = self._retry.backoff(min(failures, self._retry.max_attempts))
                await asyncio.sleep(error.retry_delay or backoff)
            finally:
                call.cancel()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (*self._auth(), (REQUEST_ID_METADATA_KEY, uuid.uuid4().hex))

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _T],
        request: _Request,
        *,
        read: bool,
        timeout: float | None,
    ) -> _T:
        budget = self._default_timeout if timeout is None else timeout
        check_timeout(budget)
        # One request id for every attempt, so the server's history ties retries together.
        metadata = self._metadata()

        async def send(seconds_left: float) -> _T:
            return await method(request, timeout=seconds_left, metadata=metadata)

        return await call_with_retry(
            send, policy=self._retry, read=read, timeout=budget, throttle=self._throttle
        )


# A watch stream ended by these is opened again: dropped, or refused before it began.
_REOPENED = frozenset({StatusCode.UNAVAILABLE, StatusCode.RESOURCE_EXHAUSTED})


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _optional_time(message: pb.Shipment, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return to_datetime(value)


def order_from_message(message: pb.Order) -> Order:
    """An Order from its wire form."""
    shipment = None
    if message.HasField("shipment"):
        parcel = message.shipment
        shipment = Shipment(
            carrier=parcel.carrier,
            tracking_no=parcel.tracking_no,
            carrier_ack_id=parcel.carrier_ack_id,
            ship_time=_optional_time(parcel, "ship_time"),
            in_transit_time=_optional_time(parcel, "in_transit_time"),
            delivered_time=_optional_time(parcel, "delivered_time"),
            last_sync_time=_optional_time(parcel, "last_sync_time"),
        )
    return Order(
        order_id=message.order_id,
        customer_id=message.customer_id,
        status=message.status,
        currency_code=message.currency_code,
        lines=tuple(
            OrderLine(
                line.sku,
                line.quantity,
                line.unit_price_minor,
                line.line_total_minor,
                line.refunded_quantity,
            )
            for line in message.lines
        ),
        total_minor=message.total_minor,
        create_time=to_datetime(message.create_time),
        payment_deadline=to_datetime(message.payment_deadline),
        update_time=to_datetime(message.update_time),
        payment_id=message.payment_id,
        paid_minor=message.paid_minor,
        shipment=shipment,
        refund_owed_minor=message.refund_owed_minor,
        cancel_reason=message.cancel_reason,
        version=message.version,
        line_refunds_minor=message.line_refunds_minor,
    )


def _change(message: pb.StatusChange) -> StatusChange:
    return StatusChange(
        from_status=message.from_status or None,
        to_status=message.to_status,
        change_time=to_datetime(message.change_time),
        caller=message.caller,
        reason=message.reason,
        request_id=message.request_id,
    )


def event_from_message(message: pb.OrderEvent) -> OrderEvent:
    """An OrderEvent from its wire form."""
    return OrderEvent(
        event_id=message.event_id,
        cursor=message.cursor,
        type=message.type,
        order_id=message.order_id,
        order_version=message.order_version,
        occur_time=to_datetime(message.occur_time),
        order=order_from_message(message.order),
        change=_change(message.change) if message.HasField("change") else None,
        refund=_refund(message.refund) if message.HasField("refund") else None,
    )


def _refund(message: pb.Refund) -> Refund:
    return Refund(
        refund_id=message.refund_id,
        reason=message.reason,
        amount_minor=message.amount_minor,
        currency_code=message.currency_code,
        state=message.state,
        charge_id=message.charge_id,
        provider_refund_id=message.provider_refund_id,
        sku=message.sku,
        quantity=message.quantity,
        line_refund_id=message.line_refund_id,
        note=message.note,
    )


def decode_event(data: bytes) -> OrderEvent:
    """An OrderEvent from its serialized form (as published on the Redis stream)."""
    return event_from_message(pb.OrderEvent.FromString(data))
