"""The idempotency-key metadata against the decoded request: it fills an empty id, a
different id is refused, and the table of id fields matches the messages and their
proto comments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import message_factory
from stockcore.v1 import inventory_pb2, orders_pb2, reconciliation_pb2

from server.domain.errors import FieldViolation, InvalidArgument
from server.rpc import idempotency
from server.rpc.idempotency import METADATA_KEY

ROOT = Path(__file__).resolve().parents[2]
SERVICES = (
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
    orders_pb2.DESCRIPTOR.services_by_name["OrderService"],
    reconciliation_pb2.DESCRIPTOR.services_by_name["ReconciliationService"],
)


def _request(full_name: str) -> Any:
    kind = next(
        m.input_type for s in SERVICES for m in s.methods if m.input_type.full_name == full_name
    )
    return message_factory.GetMessageClass(kind)()


def _bind(request: Any, *keys: str) -> None:
    bind = idempotency.binder(request.DESCRIPTOR)
    assert bind is not None
    bind(request, [("authorization", "Bearer x"), *((METADATA_KEY, k) for k in keys)])


@pytest.mark.parametrize(("full_name", "field"), sorted(idempotency.ID_FIELDS.items()))
def test_the_key_fills_an_empty_id(full_name: str, field: str) -> None:
    request = _request(full_name)
    _bind(request, "key-1")
    assert getattr(request, field) == "key-1"


@pytest.mark.parametrize(("full_name", "field"), sorted(idempotency.ID_FIELDS.items()))
def test_an_id_other_than_the_key_is_refused(full_name: str, field: str) -> None:
    request = _request(full_name)
    setattr(request, field, "key-2")
    with pytest.raises(InvalidArgument) as raised:
        _bind(request, "key-1")
    assert [v.field for v in raised.value.violations] == [field]
    assert getattr(request, field) == "key-2"


def test_the_same_id_as_the_key_is_kept() -> None:
    request = inventory_pb2.ReserveRequest(reservation_id="cart/1")
    _bind(request, "cart/1")
    assert request.reservation_id == "cart/1"


def test_no_key_or_an_empty_one_leaves_the_request_alone() -> None:
    request = inventory_pb2.ReserveRequest(reservation_id="cart-1")
    _bind(request)
    _bind(request, "")
    assert request.reservation_id == "cart-1"


def test_two_different_keys_are_refused_and_the_same_one_twice_is_one() -> None:
    request = inventory_pb2.ReserveRequest()
    with pytest.raises(InvalidArgument) as raised:
        _bind(request, "cart-1", "cart-2")
    assert raised.value.violations == (
        FieldViolation("reservation_id", f"the call names 2 different {METADATA_KEY}s"),
    )
    assert request.reservation_id == ""
    _bind(request, "cart-1", "cart-1")
    assert request.reservation_id == "cart-1"


def test_rpcs_without_an_id_ignore_the_key() -> None:
    unnamed = {
        m.input_type.full_name
        for s in SERVICES
        for m in s.methods
        if idempotency.binder(m.input_type) is None
    }
    assert {
        "stockcore.v1.CommitRequest",
        "stockcore.v1.GetStockRequest",
        "stockcore.v1.CancelOrderRequest",
    } <= unnamed
    assert unnamed.isdisjoint(idempotency.ID_FIELDS)


def test_an_id_field_the_message_lacks_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(idempotency.ID_FIELDS, "stockcore.v1.CommitRequest", "commit_id")
    with pytest.raises(idempotency.UnknownIdField, match="CommitRequest has no string"):
        idempotency.binder(inventory_pb2.CommitRequest.DESCRIPTOR)


@pytest.mark.parametrize(("full_name", "field"), sorted(idempotency.ID_FIELDS.items()))
def test_the_proto_comment_names_the_key(full_name: str, field: str) -> None:
    message = full_name.split(".")[-1]
    proto = "\n".join(p.read_text() for p in (ROOT / "protos/stockcore/v1").glob("*.proto"))
    body = proto[proto.index(f"message {message} {{") :]
    above = body[: body.index(f" {field} = ")].splitlines()[-3:-1]
    assert "idempotency-key metadata" in " ".join(above), above
