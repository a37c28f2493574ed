"""Outbox bodies decode to the same event whether they carry every column (rows written
by 003) or leave nulls and repeats out (008)."""

from __future__ import annotations

import json

from stockcore.v1 import orders_pb2 as pb

from server.domain.orders import EventType, OrderStatus
from server.rpc import orders_convert as convert
from server.storage.orders_pg import event_from_body

ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "status": 2,
    "path": [1, 2],
    "version": 2,
    "currency": "EUR",
    "skus": ["A"],
    "quantities": [2],
    "unit_prices": [150],
    "total_minor": 300,
    "created_at": "2030-01-01T00:00:00+00:00",
    "payment_deadline": "2030-01-01T00:05:00+00:00",
    "updated_at": "2030-01-01T00:01:00.5+00:00",
    "payment_id": "p-1",
    "paid_minor": 300,
    "refund_owed_minor": 0,
}
NULLS = dict.fromkeys(
    [
        "carrier",
        "tracking_no",
        "carrier_ack_id",
        "shipped_at",
        "in_transit_at",
        "delivered_at",
        "last_sync_at",
        "cancel_reason",
    ]
)
CHANGE = {
    "from_status": 1,
    "to_status": 2,
    "changed_at": "2030-01-01T00:01:00.5+00:00",
    "caller": "tests",
    "reason": "payment p-1",
    "request_id": "req-1",
}


def test_a_compact_body_decodes_to_the_event_a_full_one_does() -> None:
    full = {"order": ORDER | NULLS, "change": CHANGE | {"order_id": "o-1", "version": 2}}
    compact = {"order": ORDER, "change": CHANGE}

    a = event_from_body(json.dumps(full), EventType.ORDER_PAID)
    b = event_from_body(json.dumps(compact), EventType.ORDER_PAID)

    assert a == b
    assert (b.event_id, b.order.status, b.order.payment_id, b.order.shipment) == (
        "o-1/2",
        OrderStatus.PAID,
        "p-1",
        None,
    )
    assert (b.change.order_id, b.change.version, b.change.from_status) == (
        "o-1",
        2,
        OrderStatus.PENDING_PAYMENT,
    )


def test_a_creation_leaves_out_the_status_it_came_from() -> None:
    created = {
        "order": ORDER | {"status": 1, "path": [1], "version": 1, "paid_minor": 0},
        "change": {k: v for k, v in CHANGE.items() if k != "from_status"} | {"to_status": 1},
    }
    event = event_from_body(json.dumps(created), EventType.ORDER_CREATED)
    assert (event.change.from_status, event.change.to_status) == (None, OrderStatus.PENDING_PAYMENT)


def test_a_refund_body_decodes_to_a_refund_event_without_a_status_change() -> None:
    refund = {
        "refund_id": "rf_0123",
        "reason": 1,
        "charge_id": "ch_1",
        "amount_minor": 300,
        "currency": "EUR",
        "state": 3,
        "provider_refund_id": "re_1",
        "at": "2030-01-01T00:02:00.25+00:00",
    }
    body = {"order": ORDER | {"status": 6, "path": [1, 2, 6], "version": 3}, "refund": refund}

    event = event_from_body(json.dumps(body), EventType.REFUNDED)
    message = convert.event(event, 7)

    assert event.change is None and event.refund is not None
    assert event.event_id == "o-1/3/refund/rf_0123/9"
    assert (message.event_id, message.type, message.order_version) == (
        "o-1/3/refund/rf_0123/9",
        pb.EVENT_TYPE_REFUNDED,
        3,
    )
    assert not message.HasField("change")
    assert (message.refund.refund_id, message.refund.state, message.refund.amount_minor) == (
        "rf_0123",
        pb.REFUND_STATE_REFUNDED,
        300,
    )
    assert message.occur_time.ToJsonString() == "2030-01-01T00:02:00.250Z"
