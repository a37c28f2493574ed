"""The Idempotency-Key header names the id of the RPCs that have one (Reserve's
reservation, CreateOrder's order, ConfirmPayment's payment, AdjustStock's key) exactly:
when the body names none the header's is used, and a body naming another is refused with
400, however the JSON spells it (escaped names or values, key order, whitespace, repeated
keys, an id in the query). Through the real Envoy in front of the real server; and the
same `idempotency-key` metadata on a gRPC call to the server."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import requests
from google.rpc import error_details_pb2
from stockcore.v1 import inventory_pb2, inventory_pb2_grpc

from tests.e2e.conftest import GatewayCaller
from tests.support import details_of

Json = dict[str, Any]


async def post(api: GatewayCaller, path: str, body: str, key: str) -> requests.Response:
    """POST `body` (JSON text, sent as it is written) with Idempotency-Key `key`."""
    headers = {"content-type": "application/json", "Idempotency-Key": key}
    return await asyncio.to_thread(api.request, "POST", path, data=body.encode(), headers=headers)


async def stock(api: GatewayCaller, sku: str, units: int) -> None:
    body = {"onHand": str(units), "reason": "count", "idempotencyKey": f"count-{sku}"}
    reply = await asyncio.to_thread(api.request, "POST", f"/v1/stock/{sku}:adjust", json=body)
    assert reply.status_code == 200, reply.text


async def reservation_ids(api: GatewayCaller, *ids: str) -> set[str]:
    """Which of `ids` name a reservation."""
    found = set()
    for held in ids:
        reply = await asyncio.to_thread(api.request, "GET", f"/v1/reservations/{held}")
        if reply.status_code == 200:
            found.add(held)
        else:
            assert reply.status_code == 404, reply.text
    return found


def refused_for_the_key(reply: requests.Response, field: str = "reservation_id") -> bool:
    """400 INVALID_ARGUMENT from the server, its one violation naming the id `field`."""
    if reply.status_code != 400:
        return False
    body: Json = reply.json()
    bad = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    violations = [v["field"] for d in bad for v in d["fieldViolations"]]
    return body["code"] == 3 and violations == [field]


LINES = '"lines": [{"sku": "KEY-1", "quantity": "1"}]'


@pytest.mark.parametrize(
    ("body", "key", "held"),
    [
        # The same id, however it is spelled: accepted under it.
        ('{"reservationId": "cart-1", ' + LINES + "}", "cart-1", "cart-1"),
        ('{"reservationId": "cart-\\u0031", ' + LINES + "}", "cart-1", "cart-1"),
        ('{"reservation\\u0049d": "cart-1", ' + LINES + "}", "cart-1", "cart-1"),
        ('{"reservation_id": "cart-1", ' + LINES + "}", "cart-1", "cart-1"),
        ("{" + LINES + ', "reservationId": "cart-1"}', "cart-1", "cart-1"),
        ('{\n  "reservationId"\n\t:\r\n  "cart-1",\n  ' + LINES + "\n}", "cart-1", "cart-1"),
        ("{" + LINES + "}", "cart-1", "cart-1"),
        ('{"reservationId": "", ' + LINES + "}", "cart-1", "cart-1"),
    ],
    ids=[
        "plain",
        "escaped value",
        "escaped name",
        "proto name",
        "last",
        "newlines",
        "no id",
        "empty id",
    ],
)
async def test_body_naming_the_keys_id_is_accepted_under_it(
    api: GatewayCaller, body: str, key: str, held: str
) -> None:
    await stock(api, "KEY-1", 5)
    reply = await post(api, "/v1/reservations", body, key)
    assert reply.status_code == 200, reply.text
    assert reply.json()["reservation"]["reservationId"] == held


@pytest.mark.parametrize(
    "body",
    [
        '{"reservationId": "cart-2", ' + LINES + "}",
        '{"reservationId": "cart-\\u0032", ' + LINES + "}",
        '{"reservation\\u0049d": "cart-2", ' + LINES + "}",
        '{"reservation_\\u0069d": "cart-2", ' + LINES + "}",
        '{"reservationId": "cart-1\\"", ' + LINES + "}",
        '{"reservationId": "cart-1\\\\", ' + LINES + "}",
        "{" + LINES + ', "reservationId": "cart-2"}',
        '{"reservationId"\n:\n"cart-2", ' + LINES + "}",
    ],
    ids=[
        "plain",
        "escaped value",
        "escaped name",
        "escaped proto name",
        "escaped quote",
        "escaped backslash",
        "last",
        "newlines",
    ],
)
async def test_body_naming_another_id_is_refused_and_holds_nothing(
    api: GatewayCaller, body: str
) -> None:
    await stock(api, "KEY-1", 5)
    reply = await post(api, "/v1/reservations", body, "cart-1")
    assert refused_for_the_key(reply), reply.text
    assert await reservation_ids(api, "cart-1", "cart-2") == set()


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("", '{"reservationId": "cart-1", "reservationId": "cart-2", ' + LINES + "}"),
        ("", '{"reservationId": "cart-2", "reservationId": "cart-1", ' + LINES + "}"),
        ("", '{"reservationId": "cart-1", "reservation_id": "cart-2", ' + LINES + "}"),
        ("", '{"reservation_id": "cart-2", "reservationId": "cart-1", ' + LINES + "}"),
        ("", '{"reservationId": "cart-\\u0031", "reservation\\u0049d": "cart-2", ' + LINES + "}"),
        ("?reservationId=cart-1", '{"reservationId": "cart-2", ' + LINES + "}"),
        ("?reservationId=cart-2", '{"reservationId": "cart-1", ' + LINES + "}"),
        ("?reservationId=cart-1&reservationId=cart-2", "{" + LINES + "}"),
    ],
    ids=[
        "other last",
        "other first",
        "both names",
        "both names, other first",
        "escaped",
        "query and body, other in the body",
        "query and body, other in the query",
        "query twice",
    ],
)
async def test_id_named_twice_holds_under_the_key_or_not_at_all(
    api: GatewayCaller, query: str, body: str
) -> None:
    """A request naming its id twice (a repeated key, both names, the query beside the
    body): the transcoder binds one, and that one, the id the server acts on, is what is
    compared with the key. Nothing is ever held under the other."""
    await stock(api, "KEY-1", 5)
    reply = await post(api, "/v1/reservations" + query, body, "cart-1")
    if reply.status_code == 200:
        assert reply.json()["reservation"]["reservationId"] == "cart-1"
        assert await reservation_ids(api, "cart-1", "cart-2") == {"cart-1"}
    else:
        assert refused_for_the_key(reply), reply.text
        assert await reservation_ids(api, "cart-1", "cart-2") == set()


async def test_id_in_the_query_that_differs_from_the_key_is_refused(api: GatewayCaller) -> None:
    await stock(api, "KEY-1", 5)
    reply = await post(api, "/v1/reservations?reservationId=cart-2", "{" + LINES + "}", "cart-1")
    assert refused_for_the_key(reply), reply.text
    assert await reservation_ids(api, "cart-1", "cart-2") == set()


async def test_payment_key_is_compared_with_the_decoded_payment_id(api: GatewayCaller) -> None:
    await stock(api, "KEY-2", 1)
    order = (
        '{"orderId": "order-\\u006b", "customerId": "kim", "currencyCode": "EUR",'
        ' "lines": [{"sku": "KEY-2", "quantity": "1", "unitPriceMinor": "300"}]}'
    )
    created = await post(api, "/v1/orders", order, "order-k")
    assert created.status_code == 200, created.text
    assert created.json()["order"]["orderId"] == "order-k"

    pay = '{"paymentId": "psp-\\u0039", "amountMinor": "300", "currencyCode": "EUR"}'
    refused = await post(api, "/v1/orders/order-k:pay", pay, "psp-8")
    assert refused_for_the_key(refused, "payment_id"), refused.text
    paid = await post(api, "/v1/orders/order-k:pay", pay, "psp-9")
    assert paid.status_code == 200, paid.text
    assert paid.json()["order"]["paymentId"] == "psp-9"


async def test_adjustment_key_is_compared_with_the_decoded_key(api: GatewayCaller) -> None:
    await stock(api, "KEY-3", 1)
    body = '{"delta": "2", "reason": "restock", "idempotency\\u004bey": "adj-2"}'
    refused = await post(api, "/v1/stock/KEY-3:adjust", body, "adj-1")
    assert refused_for_the_key(refused, "idempotency_key"), refused.text
    adjusted = await post(api, "/v1/stock/KEY-3:adjust", body, "adj-2")
    assert adjusted.status_code == 200, adjusted.text
    assert adjusted.json()["level"]["onHand"] == "3"


async def test_key_that_is_no_valid_id_is_refused_like_one(api: GatewayCaller) -> None:
    await stock(api, "KEY-1", 5)
    reply = await post(api, "/v1/reservations", "{" + LINES + "}", "cart 1")
    assert refused_for_the_key(reply), reply.text


async def test_key_on_other_routes_is_ignored(api: GatewayCaller) -> None:
    await stock(api, "KEY-4", 2)
    body = '{"reservationId": "cart-4", "lines": [{"sku": "KEY-4", "quantity": "1"}]}'
    assert (await post(api, "/v1/reservations", body, "cart-4")).status_code == 200
    committed = await post(api, "/v1/reservations/cart-4:commit", "{}", "something-else")
    assert committed.status_code == 200, committed.text


# --- the same metadata on a gRPC call -----------------------------------------------------


async def test_grpc_metadata_names_the_id_the_request_leaves_empty(
    stub: inventory_pb2_grpc.InventoryServiceStub,
) -> None:
    await stub.AdjustStock(
        inventory_pb2.AdjustStockRequest(sku="KEY-5", on_hand=3, reason="count"),
        metadata=(("idempotency-key", "count-key-5"),),
    )
    request = inventory_pb2.ReserveRequest(lines=[inventory_pb2.Line(sku="KEY-5", quantity=1)])
    held = await stub.Reserve(request, metadata=(("idempotency-key", "cart-5"),))
    assert held.reservation.reservation_id == "cart-5"


async def test_grpc_metadata_naming_another_id_is_invalid_argument(
    stub: inventory_pb2_grpc.InventoryServiceStub,
) -> None:
    await stub.AdjustStock(
        inventory_pb2.AdjustStockRequest(
            sku="KEY-6", on_hand=3, reason="count", idempotency_key="count-key-6"
        )
    )
    request = inventory_pb2.ReserveRequest(
        reservation_id="cart-6", lines=[inventory_pb2.Line(sku="KEY-6", quantity=1)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Reserve(request, metadata=(("idempotency-key", "cart-7"),))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(raised.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["reservation_id"]


async def test_grpc_metadata_given_twice_with_two_ids_is_invalid_argument(
    stub: inventory_pb2_grpc.InventoryServiceStub,
) -> None:
    await stub.AdjustStock(
        inventory_pb2.AdjustStockRequest(
            sku="KEY-6", on_hand=3, reason="count", idempotency_key="count-key-6"
        )
    )
    request = inventory_pb2.ReserveRequest(lines=[inventory_pb2.Line(sku="KEY-6", quantity=1)])
    twice = (("idempotency-key", "cart-8"), ("idempotency-key", "cart-9"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Reserve(request, metadata=twice)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
