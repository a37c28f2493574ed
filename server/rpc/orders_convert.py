"""Protobuf <-> domain conversion for the order API and the order event wire format."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from stockcore.v1 import orders_pb2 as pb

from server.domain.orders import Order, OrderEvent, RefundNote, StatusChange
from server.rpc.convert import timestamp
from server.storage.orders_pg import StoredEvent, event_from_body


def order(value: Order) -> pb.Order:
    """The wire form of an order."""
    message = pb.Order(
        order_id=value.order_id,
        customer_id=value.customer_id,
        status=pb.OrderStatus.ValueType(int(value.status)),
        currency_code=value.currency,
        lines=[
            pb.OrderLine(
                sku=line.sku,
                quantity=line.quantity,
                unit_price_minor=line.unit_price_minor,
                line_total_minor=line.total_minor,
                refunded_quantity=line.refunded_quantity,
            )
            for line in value.lines
        ],
        total_minor=value.total_minor,
        create_time=timestamp(value.created_at),
        payment_deadline=timestamp(value.payment_deadline),
        update_time=timestamp(value.updated_at),
        payment_id=value.payment_id,
        paid_minor=value.paid_minor,
        refund_owed_minor=value.refund_owed_minor,
        cancel_reason=value.cancel_reason,
        version=value.version,
        line_refunds_minor=value.line_refunds_minor,
    )
    shipment = value.shipment
    if shipment is not None:
        message.shipment.CopyFrom(
            pb.Shipment(
                carrier=shipment.carrier,
                tracking_no=shipment.tracking_no,
                carrier_ack_id=shipment.carrier_ack_id,
                ship_time=timestamp(shipment.shipped_at),
                in_transit_time=timestamp(shipment.in_transit_at),
                delivered_time=timestamp(shipment.delivered_at),
                last_sync_time=timestamp(value.last_sync_at),
            )
        )
    return message


def status_change(value: StatusChange) -> pb.StatusChange:
    """The wire form of a status-history row."""
    return pb.StatusChange(
        from_status=pb.OrderStatus.ValueType(int(value.from_status or 0)),
        to_status=pb.OrderStatus.ValueType(int(value.to_status)),
        change_time=timestamp(value.changed_at),
        caller=value.caller,
        reason=value.reason,
        request_id=value.request_id,
    )


def refund_note(value: RefundNote) -> pb.Refund:
    """The wire form of a refund (a refund event's, or RefundLine's)."""
    return pb.Refund(
        refund_id=value.refund_id,
        reason=pb.RefundReason.ValueType(int(value.reason)),
        amount_minor=value.amount_minor,
        currency_code=value.currency,
        state=pb.RefundState.ValueType(int(value.state)),
        charge_id=value.charge_id,
        provider_refund_id=value.provider_refund_id or "",
        sku=value.sku,
        quantity=value.quantity,
        line_refund_id=value.line_refund_id,
        note=value.note,
    )


def event(value: OrderEvent, cursor: int) -> pb.OrderEvent:
    """The wire form of an order event at its cursor."""
    message = pb.OrderEvent(
        event_id=value.event_id,
        cursor=cursor,
        type=pb.EventType.ValueType(int(value.type)),
        order_id=value.order.order_id,
        order_version=value.order.version,
        occur_time=timestamp(value.occurred_at),
        order=order(value.order),
    )
    if value.change is not None:
        message.change.CopyFrom(status_change(value.change))
    if value.refund is not None:
        message.refund.CopyFrom(refund_note(value.refund))
    return message


def stored_event(stored: StoredEvent) -> pb.OrderEvent:
    """The wire form of an outbox row: rows written before the order functions kept the
    serialized event (without its cursor); theirs keep a jsonb body."""
    if stored.body is not None:
        return event(event_from_body(stored.body, stored.type), stored.cursor)
    assert stored.payload is not None
    message = pb.OrderEvent.FromString(stored.payload)
    message.cursor = stored.cursor
    return message


def encoded_event(stored: StoredEvent) -> bytes:
    """The serialized wire form of an outbox row, as published to the event stream."""
    return stored_event(stored).SerializeToString()


def moment(value: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime from a Timestamp."""
    return value.ToDatetime(tzinfo=UTC)
