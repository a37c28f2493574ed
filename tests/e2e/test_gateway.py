"""The HTTP/JSON gateway (Envoy's grpc_json_transcoder) in front of the real server,
called over real HTTP: every route, errors with their details, the edge's limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.credentials import DevCredentials
from gateway.bootstrap import describe_routes
from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from server.app import App
from server.auth import scopes
from server.config import Settings
from tests import callers
from tests.e2e.conftest import STOREFRONT, GatewayCaller
from tests.servers import serving
from tests.support import connected

Json = dict[str, Any]


async def http(api: GatewayCaller, method: str, path: str, **kwargs: Any) -> requests.Response:
    """One request to the gateway, in a thread: the server shares the test's loop."""
    return await asyncio.to_thread(api.request, method, path, **kwargs)


async def ok(api: GatewayCaller, method: str, path: str, **kwargs: Any) -> Json:
    """A call that must succeed; its JSON body."""
    reply = await http(api, method, path, **kwargs)
    assert reply.status_code == 200, reply.text
    body: Json = reply.json()
    return body


async def stock(api: GatewayCaller, sku: str, units: int) -> None:
    await ok(
        api,
        "POST",
        f"/v1/stock/{sku}:adjust",
        json={"onHand": str(units), "reason": "count", "idempotencyKey": f"count-{sku}-{units}"},
    )


def detail(body: Json, kind: str) -> Json:
    """The one detail of google.rpc type `kind` in a google.rpc.Status body."""
    found = [d for d in body["details"] if d["@type"] == f"type.googleapis.com/google.rpc.{kind}"]
    assert len(found) == 1, body
    return found[0]


async def test_inventory_routes_reserve_commit_release_read(api: GatewayCaller) -> None:
    adjusted = await ok(
        api,
        "POST",
        "/v1/stock/SHOE-1:adjust",
        json={"delta": "5", "reason": "restock", "idempotencyKey": "restock-1"},
    )
    assert adjusted["level"] == {"sku": "SHOE-1", "onHand": "5", "reserved": "0", "available": "5"}
    await stock(api, "SHOE-2", 3)

    held = await ok(
        api,
        "POST",
        "/v1/reservations",
        json={
            "reservationId": "cart-1",
            "lines": [{"sku": "SHOE-1", "quantity": "2"}],
            "ttl": "60s",
        },
    )
    assert held["reservation"]["status"] == "RESERVATION_STATUS_HELD"
    levels = await ok(api, "GET", "/v1/stock?skus=SHOE-1&skus=SHOE-2")
    assert {lv["sku"]: lv["available"] for lv in levels["levels"]} == {"SHOE-1": "3", "SHOE-2": "3"}
    strong = await ok(api, "GET", "/v1/stock?skus=SHOE-1&consistency=CONSISTENCY_STRONG")
    assert strong["levels"][0]["reserved"] == "2"

    committed = await ok(api, "POST", "/v1/reservations/cart-1:commit", json={})
    assert committed["reservation"]["status"] == "RESERVATION_STATUS_COMMITTED"
    await ok(
        api,
        "POST",
        "/v1/reservations",
        json={"reservationId": "cart-2", "lines": [{"sku": "SHOE-2", "quantity": "1"}]},
    )
    released = await ok(api, "POST", "/v1/reservations/cart-2:release", json={})
    assert released["reservation"]["status"] == "RESERVATION_STATUS_RELEASED"
    read = await ok(api, "GET", "/v1/reservations/cart-1")
    assert read["reservation"]["lines"] == [{"sku": "SHOE-1", "quantity": "2"}]
    final = await ok(api, "GET", "/v1/stock?skus=SHOE-1&skus=SHOE-2")
    assert [(lv["onHand"], lv["available"]) for lv in final["levels"]] == [("3", "3"), ("3", "3")]


async def test_order_routes_walk_an_order_to_delivered(api: GatewayCaller) -> None:
    await stock(api, "BAG-1", 4)
    created = await ok(
        api,
        "POST",
        "/v1/orders",
        json={
            "orderId": "order-1",
            "customerId": "alice",
            "lines": [{"sku": "BAG-1", "quantity": "2", "unitPriceMinor": "1250"}],
            "currencyCode": "EUR",
            "paymentWindow": "120s",
        },
    )
    assert created["order"]["status"] == "ORDER_STATUS_PENDING_PAYMENT"
    assert created["order"]["totalMinor"] == "2500"
    paid = await ok(
        api,
        "POST",
        "/v1/orders/order-1:pay",
        json={"paymentId": "psp-1", "amountMinor": "2500", "currencyCode": "EUR"},
    )
    assert paid["order"]["status"] == "ORDER_STATUS_PAID"
    shipped = await ok(
        api,
        "POST",
        "/v1/orders/order-1:ship",
        json={"carrier": "dhl", "trackingNo": "JD1", "carrierAckId": "ack-1"},
    )
    assert shipped["order"]["status"] == "ORDER_STATUS_SHIPPED"
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    moving = await ok(api, "POST", "/v1/orders/order-1:recordInTransit", json={"eventTime": now})
    assert moving["order"]["status"] == "ORDER_STATUS_IN_TRANSIT"
    done = await ok(api, "POST", "/v1/orders/order-1:recordDelivery", json={"eventTime": now})
    assert done["order"]["status"] == "ORDER_STATUS_DELIVERED"
    # One of the two bags came back torn: its price is owed back, the order stays delivered.
    refunded = await ok(
        api,
        "POST",
        "/v1/orders/order-1:refundLine",
        json={"sku": "BAG-1", "quantity": "1", "reason": "arrived torn"},
        headers={"Idempotency-Key": "refund-order-1-bag"},
    )
    assert refunded["order"]["status"] == "ORDER_STATUS_DELIVERED"
    assert refunded["order"]["lines"][0]["refundedQuantity"] == "1"
    assert refunded["order"]["lineRefundsMinor"] == "1250"
    assert (refunded["refund"]["reason"], refunded["refund"]["state"]) == (
        "REFUND_REASON_LINE_REFUNDED",
        "REFUND_STATE_REQUESTED",
    )
    assert refunded["refund"]["lineRefundId"] == "refund-order-1-bag"

    read = await ok(api, "GET", "/v1/orders/order-1")
    assert [h["toStatus"] for h in read["history"]][-1] == "ORDER_STATUS_DELIVERED"
    listed = await ok(api, "GET", "/v1/orders?customerId=alice&pageSize=10")
    assert [o["orderId"] for o in listed["orders"]] == ["order-1"]

    await ok(
        api,
        "POST",
        "/v1/orders",
        json={
            "orderId": "order-2",
            "customerId": "alice",
            "lines": [{"sku": "BAG-1", "quantity": "1", "unitPriceMinor": "1250"}],
            "currencyCode": "EUR",
        },
    )
    cancelled = await ok(api, "POST", "/v1/orders/order-2:cancel", json={"reason": "changed mind"})
    assert cancelled["order"]["status"] == "ORDER_STATUS_CANCELLED"


def _stream_lines(api: GatewayCaller, path: str, wanted: int) -> Iterator[Json]:
    with api.request("GET", path, stream=True) as reply:
        assert reply.status_code == 200, reply.text
        for n, line in enumerate(reply.iter_lines()):
            if line:
                yield json.loads(line)
            if n + 1 >= wanted:
                return


async def test_watch_orders_streams_events_as_they_happen(api: GatewayCaller) -> None:
    await stock(api, "HAT-1", 2)
    body = {
        "orderId": "order-w",
        "customerId": "bob",
        "lines": [{"sku": "HAT-1", "quantity": "1", "unitPriceMinor": "900"}],
        "currencyCode": "EUR",
    }
    await ok(api, "POST", "/v1/orders", json=body)

    def watch_two() -> list[Json]:
        return list(_stream_lines(api, "/v1/orders:watch?customerId=bob", 2))

    watching = asyncio.create_task(asyncio.to_thread(watch_two))
    # The first event is already there; the second happens while the response streams.
    await asyncio.sleep(0.5)
    assert not watching.done()
    pay = {"paymentId": "psp-w", "amountMinor": "900", "currencyCode": "EUR"}
    await ok(api, "POST", "/v1/orders/order-w:pay", json=pay)
    events = await asyncio.wait_for(watching, 10)
    assert [e["type"] for e in events] == ["EVENT_TYPE_ORDER_CREATED", "EVENT_TYPE_ORDER_PAID"]
    assert events[1]["order"]["status"] == "ORDER_STATUS_PAID"
    assert int(events[1]["cursor"]) > int(events[0]["cursor"])
    # list(): the generator runs to its end, closing the streamed response.
    after = f"/v1/orders:watch?customerId=bob&afterCursor={events[0]['cursor']}"
    resumed = await asyncio.to_thread(lambda: list(_stream_lines(api, after, 1)))
    assert [e["type"] for e in resumed] == ["EVENT_TYPE_ORDER_PAID"]


def test_every_rpc_has_a_route() -> None:
    routes = describe_routes()
    assert len(routes) == 21
    assert routes["GetStatement"] == ("GET", "/v1/reconciliation/statements/{id}")
    assert routes["ResolveException"] == (
        "POST",
        "/v1/reconciliation/exceptions/{exception_id}:resolve",
    )
    assert routes["Reserve"] == ("POST", "/v1/reservations")
    assert routes["SetReservationLine"] == ("POST", "/v1/reservations/{reservation_id}:setLine")
    assert routes["Commit"] == ("POST", "/v1/reservations/{reservation_id}:commit")
    assert routes["GetStock"] == ("GET", "/v1/stock")
    assert routes["CreateOrder"] == ("POST", "/v1/orders")
    assert routes["GetOrder"] == ("GET", "/v1/orders/{order_id}")
    assert routes["ConfirmPayment"] == ("POST", "/v1/orders/{order_id}:pay")
    assert routes["RefundLine"] == ("POST", "/v1/orders/{order_id}:refundLine")
    assert routes["WatchOrders"] == ("GET", "/v1/orders:watch")


# --- errors -----------------------------------------------------------------------------


async def test_short_stock_is_400_naming_the_sku_and_what_is_left(api: GatewayCaller) -> None:
    await stock(api, "LAST-1", 1)
    reply = await http(
        api,
        "POST",
        "/v1/reservations",
        json={"reservationId": "cart-s", "lines": [{"sku": "LAST-1", "quantity": "3"}]},
    )
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == 9  # FAILED_PRECONDITION
    assert detail(body, "ErrorInfo")["reason"] == "INSUFFICIENT_STOCK"
    violation = detail(body, "PreconditionFailure")["violations"][0]
    assert (violation["subject"], violation["description"]) == (
        "LAST-1",
        "available 1, requested 3",
    )
    (figures,) = [d for d in body["details"] if d["@type"].endswith("/stockcore.v1.StockShortages")]
    assert figures["shortages"] == [{"sku": "LAST-1", "available": "1", "requested": "3"}]


async def test_invalid_argument_is_400_with_field_violations(api: GatewayCaller) -> None:
    reply = await http(
        api,
        "POST",
        "/v1/reservations",
        json={"reservationId": "cart-i", "lines": [{"sku": "X", "quantity": "0"}]},
    )
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == 3
    fields = [v["field"] for v in detail(body, "BadRequest")["fieldViolations"]]
    assert any("quantity" in f for f in fields), fields


async def test_unknown_order_is_404_with_resource_info(api: GatewayCaller) -> None:
    reply = await http(api, "GET", "/v1/orders/nobody")
    assert reply.status_code == 404
    body = reply.json()
    assert body["code"] == 5
    info = detail(body, "ResourceInfo")
    assert (info["resourceType"], info["resourceName"]) == ("order", "nobody")


async def test_reused_id_with_other_content_is_409(api: GatewayCaller) -> None:
    await stock(api, "CAP-1", 5)
    first = {"reservationId": "cart-d", "lines": [{"sku": "CAP-1", "quantity": "1"}]}
    await ok(api, "POST", "/v1/reservations", json=first)
    other = {"reservationId": "cart-d", "lines": [{"sku": "CAP-1", "quantity": "2"}]}
    reply = await http(api, "POST", "/v1/reservations", json=other)
    assert reply.status_code == 409
    body = reply.json()
    assert body["code"] == 6
    assert detail(body, "ErrorInfo")["reason"] == "ALREADY_EXISTS"


async def test_illegal_transition_is_400_naming_the_status(api: GatewayCaller) -> None:
    await stock(api, "MUG-1", 2)
    order = {
        "orderId": "order-t",
        "customerId": "carol",
        "lines": [{"sku": "MUG-1", "quantity": "1", "unitPriceMinor": "500"}],
        "currencyCode": "EUR",
    }
    await ok(api, "POST", "/v1/orders", json=order)
    reply = await http(
        api,
        "POST",
        "/v1/orders/order-t:ship",
        json={"carrier": "dhl", "trackingNo": "T", "carrierAckId": "a"},
    )
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == 9
    violation = detail(body, "PreconditionFailure")["violations"][0]
    assert violation["description"].startswith("status is PENDING_PAYMENT")


async def test_json_that_does_not_fit_the_request_is_400(api: GatewayCaller) -> None:
    reply = await http(api, "POST", "/v1/reservations", json={"noSuchField": 1})
    assert reply.status_code == 400
    assert reply.json()["code"] == 3


async def test_unknown_path_is_404_as_json(api: GatewayCaller) -> None:
    reply = await http(api, "GET", "/v1/nothing-here")
    assert reply.status_code == 404
    assert reply.json()["code"] == 5


# --- the edge ---------------------------------------------------------------------------


async def test_cors_preflight_from_a_storefront_is_allowed(api: GatewayCaller) -> None:
    reply = await http(
        api,
        "OPTIONS",
        "/v1/reservations",
        headers={
            "Origin": STOREFRONT,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == STOREFRONT
    assert "POST" in reply.headers["access-control-allow-methods"]
    allowed = reply.headers["access-control-allow-headers"]
    assert {"authorization", "idempotency-key"} <= {h.strip() for h in allowed.split(",")}

    await stock(api, "CORS-1", 1)
    real = await http(api, "GET", "/v1/stock?skus=CORS-1", headers={"Origin": STOREFRONT})
    assert real.headers["access-control-allow-origin"] == STOREFRONT


async def test_cors_preflight_from_another_origin_gets_no_grant(api: GatewayCaller) -> None:
    reply = await http(
        api,
        "OPTIONS",
        "/v1/reservations",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in reply.headers


async def test_oversized_body_is_refused_with_413(api: GatewayCaller) -> None:
    lines = [{"sku": f"SKU-{n:05d}", "quantity": "1"} for n in range(800)]
    body = json.dumps({"reservationId": "cart-big", "lines": lines})
    assert len(body) > api.settings.gateway_max_request_bytes
    reply = await http(
        api, "POST", "/v1/reservations", data=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 413
    assert reply.json()["code"] == 8
    assert detail(reply.json(), "ErrorInfo")["reason"] == "PAYLOAD_TOO_LARGE"
    # Nothing reached the server.
    missing = await http(api, "GET", "/v1/reservations/cart-big")
    assert missing.status_code == 404


async def test_route_timeout_reaches_the_server_as_its_deadline(
    api: GatewayCaller, dsn: str
) -> None:
    """AdjustStock has 0.5 s (gateway_settings); a row lock held by the test makes it wait:
    the server's gRPC runtime ends the call at its deadline (grpc-timeout), before the
    gateway's own timeout (0.25 s later) would answer with its UPSTREAM_TIMEOUT body."""
    await stock(api, "SLOW-1", 1)
    async with connected(dsn) as conn:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM stockcore.stock WHERE sku = 'SLOW-1' FOR UPDATE")
            started = time.monotonic()
            reply = await http(
                api,
                "POST",
                "/v1/stock/SLOW-1:adjust",
                json={"delta": "1", "reason": "restock", "idempotencyKey": "slow-1"},
            )
            took = time.monotonic() - started
    assert reply.status_code == 504, reply.text
    body = reply.json()
    assert (body["code"], body["message"]) == (4, "Deadline Exceeded")
    assert body["details"] == []  # not the gateway's local reply, which has ErrorInfo
    assert 0.45 <= took < 2.0


async def test_idempotency_key_names_the_reservation(api: GatewayCaller) -> None:
    await stock(api, "IDEM-1", 5)
    body = {"lines": [{"sku": "IDEM-1", "quantity": "2"}]}
    headers = {"Idempotency-Key": "cart/42"}
    first = await ok(api, "POST", "/v1/reservations", json=body, headers=headers)
    again = await ok(api, "POST", "/v1/reservations", json=body, headers=headers)
    assert first["reservation"]["reservationId"] == "cart/42"
    assert again == first
    levels = await ok(api, "GET", "/v1/stock?skus=IDEM-1")
    assert levels["levels"][0]["available"] == "3"


async def test_idempotency_key_names_the_payment(api: GatewayCaller) -> None:
    await stock(api, "IDEM-2", 1)
    order = {
        "orderId": "order-i",
        "customerId": "dave",
        "lines": [{"sku": "IDEM-2", "quantity": "1", "unitPriceMinor": "700"}],
        "currencyCode": "EUR",
    }
    await ok(api, "POST", "/v1/orders", json=order)
    pay = {"amountMinor": "700", "currencyCode": "EUR"}
    headers = {"Idempotency-Key": "psp-77"}
    paid = await ok(api, "POST", "/v1/orders/order-i:pay", json=pay, headers=headers)
    assert paid["order"]["paymentId"] == "psp-77"


async def test_idempotency_key_differing_from_the_body_is_refused(api: GatewayCaller) -> None:
    body = {"reservationId": "cart-a", "lines": [{"sku": "X", "quantity": "1"}]}
    reply = await http(
        api, "POST", "/v1/reservations", json=body, headers={"Idempotency-Key": "cart-b"}
    )
    assert reply.status_code == 400
    assert reply.json()["code"] == 3


async def test_request_id_is_kept_and_recorded_in_the_order_history(api: GatewayCaller) -> None:
    await stock(api, "RID-1", 1)
    order = {
        "orderId": "order-r",
        "customerId": "erin",
        "lines": [{"sku": "RID-1", "quantity": "1", "unitPriceMinor": "100"}],
        "currencyCode": "EUR",
    }
    reply = await http(
        api, "POST", "/v1/orders", json=order, headers={"X-Request-Id": "storefront-req-9"}
    )
    assert reply.status_code == 200
    assert reply.headers["x-request-id"] == "storefront-req-9"
    read = await ok(api, "GET", "/v1/orders/order-r")
    assert read["history"][0]["requestId"] == "storefront-req-9"


async def test_access_log_has_one_json_line_per_request(api: GatewayCaller) -> None:
    await http(api, "GET", "/v1/orders/logged")
    log = Path(api.settings.gateway_access_log)
    text = ""
    for _ in range(50):  # Envoy flushes its access log on a timer
        text = await asyncio.to_thread(lambda: log.read_text() if log.exists() else "")
        if "/v1/orders/logged" in text:
            break
        await asyncio.sleep(0.1)
    lines = [json.loads(line) for line in text.splitlines() if line]
    entry = next(e for e in lines if e["path"] == "/v1/orders/logged")
    assert (entry["method"], entry["status"], entry["rpc"]) == ("GET", 404, "GetOrder")
    assert api.token and api.token not in text


async def test_checkout_page_is_served(api: GatewayCaller) -> None:
    page = await http(api, "GET", "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/checkout.js"' in page.text
    script = await http(api, "GET", "/checkout.js")
    assert script.status_code == 200 and "/v1/orders:watch" in script.text


async def test_a_request_for_another_host_name_is_refused_with_421(api: GatewayCaller) -> None:
    """A page of another site whose name was made to point at this machine (DNS
    rebinding) calls the gateway as if it were its own origin, Host naming that site:
    nothing is answered to a name the gateway is not configured for."""
    port = api.settings.gateway_port
    for host in ("evil.example", f"evil.example:{port}", "localhost:1", f"127.0.0.2:{port}"):
        for path in ("/", "/checkout.js", "/v1/stock?skus=HOST-1"):
            reply = await http(api, "GET", path, headers={"Host": host})
            assert reply.status_code == 421, (host, path, reply.text)
            body = reply.json()
            assert body["code"] == 7  # PERMISSION_DENIED
            assert detail(body, "ErrorInfo")["reason"] == "UNKNOWN_HOST"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        reply = await http(api, "GET", "/v1/stock?skus=HOST-1", headers={"Host": host})
        assert reply.status_code == 404, (host, reply.text)  # served: an unknown SKU


async def test_a_configured_host_name_is_served(
    app: App, gateway_settings: GatewaySettings, service_token: str, tmp_path: Path
) -> None:
    named = replace(gateway_settings, gateway_hosts=("shop-api.example.com",))
    with Gateway(named, tmp_path / "gw", grpc_port=app.port) as gateway:
        gw = GatewayCaller(gateway, service_token)
        served = await http(gw, "GET", "/", headers={"Host": "shop-api.example.com"})
        refused = await http(gw, "GET", "/", headers={"Host": "shop-web.example.com"})
    assert served.status_code == 200
    assert refused.status_code == 421


@pytest.mark.parametrize("path", ["/v1/stock?skus=A&bogus=1"])
async def test_unknown_query_parameter_is_refused(api: GatewayCaller, path: str) -> None:
    reply = await http(api, "GET", path)
    assert reply.status_code == 400


async def test_overload_refusal_is_429_with_its_retry_delay(
    settings: Settings,
    gateway_settings: GatewaySettings,
    service_token: str,
    tmp_path: Path,
    dsn: str,
) -> None:
    """One call in flight at most: while a row lock holds the first, the second is refused
    by the server at once, and the gateway answers 429 with the server's RetryInfo."""
    gw_settings = replace(gateway_settings, gateway_timeouts={})
    async with serving(replace(settings, max_in_flight=1)) as server:
        with Gateway(gw_settings, tmp_path / "gw", grpc_port=server.port) as gateway:
            gw = GatewayCaller(gateway, service_token)
            await stock(gw, "BUSY-1", 1)
            async with connected(dsn) as conn:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT 1 FROM stockcore.stock WHERE sku = 'BUSY-1' FOR UPDATE"
                    )
                    adjust = {"delta": "1", "reason": "restock", "idempotencyKey": "busy-1"}
                    held = asyncio.create_task(
                        http(gw, "POST", "/v1/stock/BUSY-1:adjust", json=adjust)
                    )
                    await asyncio.sleep(0.5)
                    refused = await http(gw, "GET", "/v1/stock?skus=BUSY-1")
            assert (await held).status_code == 200
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["code"] == 8
    assert detail(body, "RetryInfo")["retryDelay"].endswith("s")


# The server's own checks, through the gateway: the Authorization header reaches the
# secured server as call metadata, and its refusals come back as HTTP statuses with the
# google.rpc.Status body.


async def test_request_without_a_token_is_401_with_error_info(api: GatewayCaller) -> None:
    reply = await http(api.with_token(None), "GET", "/v1/stock?skus=AUTH-1")
    assert reply.status_code == 401, reply.text
    body = reply.json()
    assert body["code"] == 16  # UNAUTHENTICATED
    info = detail(body, "ErrorInfo")
    assert (info["reason"], info["domain"]) == ("TOKEN_MISSING", "stockcore.v1")


async def test_token_not_signed_by_the_server_key_is_401(api: GatewayCaller) -> None:
    other = DevCredentials(Path(api.settings.gateway_access_log).parent / "other").ensure()
    reply = await http(api.with_token(callers.token(other)), "GET", "/v1/stock?skus=AUTH-1")
    assert reply.status_code == 401, reply.text
    assert detail(reply.json(), "ErrorInfo")["domain"] == "stockcore.v1"


async def test_token_without_the_scope_is_403_and_changes_nothing(
    api: GatewayCaller, credentials: DevCredentials, dsn: str
) -> None:
    reader = api.with_token(callers.token(credentials, "reader", [scopes.INVENTORY_READ]))
    adjust = {"delta": "5", "reason": "restock", "idempotencyKey": "auth-restock"}
    reply = await http(reader, "POST", "/v1/stock/AUTH-1:adjust", json=adjust)
    assert reply.status_code == 403, reply.text
    body = reply.json()
    assert body["code"] == 7  # PERMISSION_DENIED
    info = detail(body, "ErrorInfo")
    assert (info["reason"], info["domain"]) == ("SCOPE_MISSING", "stockcore.v1")
    assert await _movements_of(dsn, "AUTH-1") == []


async def _movements_of(dsn: str, sku: str) -> list[tuple[int, str]]:
    """(on-hand change, caller) of each movement of `sku`, oldest first."""
    async with connected(dsn) as conn:
        rows = await conn.fetch(
            "SELECT on_hand_delta, caller FROM stockcore.movements WHERE sku = $1"
            " ORDER BY movement_id",
            sku,
        )
    return [(row["on_hand_delta"], row["caller"]) for row in rows]


async def test_token_with_the_scope_is_200_and_names_the_caller(
    api: GatewayCaller, credentials: DevCredentials, dsn: str
) -> None:
    adjuster = api.with_token(callers.token(credentials, "restocker", [scopes.STOCK_ADJUST]))
    adjust = {"delta": "5", "reason": "restock", "idempotencyKey": "auth-restock"}
    adjusted = await ok(adjuster, "POST", "/v1/stock/AUTH-1:adjust", json=adjust)
    assert adjusted["level"]["onHand"] == "5"
    assert await _movements_of(dsn, "AUTH-1") == [(5, "restocker")]
