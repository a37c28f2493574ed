"""Reading the payment provider's events (payments/events.py): a captured charge names its
order, amount and currency or is malformed; other events are noted as sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from payments.events import MalformedEvent, parse_event


def event(kind: str = "charge.succeeded", **fields: Any) -> bytes:
    target = {"id": "ch_1", "order_id": "order-7", "amount": 5999, "currency": "EUR", **fields}
    document = {"id": "evt_1", "type": kind, "created": 1_700_000_000, "data": {"object": target}}
    return json.dumps(document).encode()


def test_a_captured_charge_names_its_order_amount_and_currency() -> None:
    read = parse_event(event())
    assert (read.event_id, read.type, read.object_id) == ("evt_1", "charge.succeeded", "ch_1")
    assert (read.order_id, read.amount_minor, read.currency) == ("order-7", 5999, "EUR")
    assert read.captures_money and read.created.timestamp() == 1_700_000_000


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"id": "evt_1"}',
        event(order_id=""),
        event(order_id=7),
        event(amount=0),
        event(amount=-5),
        event(amount=59.99),
        event(amount=True),
        event(currency="eur"),
        event(currency="EURO"),
        event(id=""),
        event(id="x" * 129),
        json.dumps({"id": "evt\n1", "type": "charge.failed", "created": 1, "data": {}}).encode(),
        json.dumps({"id": "evt_1", "type": "x", "created": "yesterday", "data": {}}).encode(),
        event(order_id="order\u00007"),
    ],
)
def test_what_is_not_a_readable_event_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        parse_event(body)


def test_other_events_are_read_without_an_order_and_keep_what_they_name_well() -> None:
    refund = parse_event(event("refund.succeeded", id="re_1", amount=100, charge="ch_1"))
    assert not refund.captures_money and refund.settles_refund
    assert (refund.object_id, refund.order_id, refund.amount_minor) == ("re_1", "order-7", 100)
    assert refund.charge_id == "ch_1"
    payout = parse_event(event("payout.paid", id="po_1", order_id=None, currency="eur"))
    assert (payout.order_id, payout.currency) == (None, None)
