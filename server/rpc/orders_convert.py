"""Protobuf <-> domain conversion for the order API and the order event wire format."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from stockcore.v1 import orders_pb2 as pb

from server.domain.orders import Order, OrderEvent, StatusChange
from server.rpc.convert import timestamp


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


def event_payload(event: OrderEvent) -> bytes:
    """The serialized OrderEvent the outbox stores; its cursor is given later."""
    return pb.OrderEvent(
        event_id=event.event_id,
        type=pb.EventType.ValueType(int(event.type)),
        order_id=event.order.order_id,
        order_version=event.order.version,
        occur_time=timestamp(event.change.changed_at),
        order=order(event.order),
        change=status_change(event.change),
    ).SerializeToString()


def stamped_event(payload: bytes, cursor: int) -> pb.OrderEvent:
    """A stored event with its cursor set."""
    message = pb.OrderEvent.FromString(payload)
    message.cursor = cursor
    return message


def stamp(payload: bytes, cursor: int) -> bytes:
    """A stored event's bytes with its cursor set, as published."""
    return stamped_event(payload, cursor).SerializeToString()


def moment(value: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime from a Timestamp."""
    return value.ToDatetime(tzinfo=UTC)
