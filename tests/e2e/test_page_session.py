"""The checkout page's session through the gateway, over real HTTP, as under `make run`:
a token for one customer, for minutes, with the least the page needs, handed only to the
gateway's own pages; nothing of it in Envoy's admin interface; and the page's token
refused what is not the shopper's to do."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import jwt
import requests

from devstack.credentials import DevCredentials
from devstack.page_session import CHECKOUT_PAGE_SCOPES, CHECKOUT_PAGE_SUBJECT, SESSION_COOKIE
from gateway.envoy import Gateway
from tests.e2e.conftest import PAGE_TOKEN_TTL_S, STOREFRONT, GatewayCaller
from tests.e2e.payments_stack import Provider

JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


async def http(api: GatewayCaller, method: str, path: str, **kwargs: Any) -> requests.Response:
    """One request to the gateway, in a thread: the server shares the test's loop."""
    return await asyncio.to_thread(api.request, method, path, **kwargs)


async def session(api: GatewayCaller, jar: requests.cookies.RequestsCookieJar) -> Any:
    return await asyncio.to_thread(api.page_session, jar)


def reason(reply: requests.Response) -> str:
    (info,) = [d for d in reply.json()["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    return str(info["reason"])


async def test_the_page_gets_a_short_lived_token_bound_to_one_customer(
    api: GatewayCaller,
) -> None:
    alice = requests.cookies.RequestsCookieJar()
    first = await session(api, alice)
    again = await session(api, alice)
    other = await session(api, requests.cookies.RequestsCookieJar())

    claims = jwt.decode(first["token"], options={"verify_signature": False})
    assert claims["sub"] == CHECKOUT_PAGE_SUBJECT
    assert set(claims["scope"].split()) == set(CHECKOUT_PAGE_SCOPES)
    assert claims["customer_id"] == first["customerId"]
    assert claims["exp"] - claims["iat"] == PAGE_TOKEN_TTL_S <= 15 * 60
    assert first["expiresIn"] == PAGE_TOKEN_TTL_S
    # The session, kept in its cookie, is the same customer; another browser another.
    assert again["customerId"] == first["customerId"]
    assert other["customerId"] != first["customerId"]
    cookie = next(c for c in alice if c.name == SESSION_COOKIE)
    assert cookie.path == "/session"
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Strict"
    assert cookie.value not in first["customerId"]


async def test_the_session_answer_is_json_no_other_origin_may_read(api: GatewayCaller) -> None:
    origin = {"Origin": api.url, "Sec-Fetch-Site": "same-origin"}
    reply = await http(api, "POST", "/session", headers=origin)
    storefront = await http(api, "POST", "/session", headers={"Origin": STOREFRONT})
    preflight = await http(
        api,
        "OPTIONS",
        "/session",
        headers={"Origin": STOREFRONT, "Access-Control-Request-Method": "POST"},
    )
    script = await http(api, "GET", "/session", headers={"Sec-Fetch-Dest": "script"})
    config = await http(api, "GET", "/config.js")

    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cross-origin-resource-policy"] == "same-origin"
    assert not any(h.lower().startswith("access-control-") for h in reply.headers)
    # Not even a storefront allowed to call the API from its pages (CORS) gets one.
    assert storefront.status_code == 403 and not JWT.search(storefront.text)
    assert "access-control-allow-origin" not in storefront.headers
    assert "access-control-allow-origin" not in preflight.headers
    # Nothing a <script> tag could run: no GET, no /config.js.
    assert script.status_code == 405 and not JWT.search(script.text)
    assert config.status_code == 404 and not JWT.search(config.text)


async def test_a_request_from_another_site_or_origin_gets_no_session(api: GatewayCaller) -> None:
    port = api.settings.gateway_port
    refused = [
        {"Sec-Fetch-Site": "cross-site"},
        # Another port of the same host is the same site, but another origin.
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar, or a bookmark
        {"Origin": "https://evil.example"},
        {"Origin": f"http://127.0.0.1:{port + 1}"},
        {"Origin": "null"},  # a sandboxed frame, a file
        {"Origin": api.url, "Sec-Fetch-Site": "same-site"},
    ]
    for headers in refused:
        reply = await http(api, "POST", "/session", headers=headers)
        assert reply.status_code == 403, (headers, reply.text)
        assert reason(reply) == "CROSS_ORIGIN"
        assert "set-cookie" not in reply.headers and not JWT.search(reply.text)
    for host in ("evil.example", f"evil.example:{port}"):
        rebound = await http(api, "POST", "/session", headers={"Host": host})
        assert rebound.status_code == 421 and not JWT.search(rebound.text)
    for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        reply = await http(api, "POST", "/session", headers={"Origin": own})
        assert reply.status_code == 200 and JWT.search(reply.text)
    # Not a browser (curl, a test): no Origin, nothing to refuse.
    assert (await http(api, "POST", "/session")).status_code == 200


def _admin_pages(gateway: Gateway) -> dict[str, str]:
    pages = {}
    for path in (
        "/config_dump",
        "/config_dump?include_eds",
        "/clusters",
        "/listeners",
        "/server_info",
        "/runtime",
        "/stats",
        "/certs",
    ):
        status, text = gateway.admin(path, timeout=10)
        assert status == 200, (path, text)
        pages[path] = text
    return pages


async def test_envoys_admin_interface_holds_no_token_and_no_key(
    gateway: Gateway, api: GatewayCaller, credentials: DevCredentials
) -> None:
    token = (await session(api, requests.cookies.RequestsCookieJar()))["token"]
    private = json.loads(credentials.signing_key.read_text())["d"]

    pages = await asyncio.to_thread(_admin_pages, gateway)

    for path, text in pages.items():
        assert not JWT.search(text), path
        assert token not in text and private not in text, path
    on_disk = await asyncio.to_thread(gateway.config_path.read_text)
    assert not JWT.search(on_disk) and private not in on_disk


async def test_a_page_token_creates_for_its_customer_only_and_cannot_pay(
    api: GatewayCaller,
) -> None:
    page = await session(api, requests.cookies.RequestsCookieJar())
    shopper = api.with_token(page["token"])
    await http(
        api,
        "POST",
        "/v1/stock/PAGE-1:adjust",
        json={"onHand": "5", "reason": "count", "idempotencyKey": "count-page-1"},
    )
    lines = [{"sku": "PAGE-1", "quantity": "1", "unitPriceMinor": "500"}]

    created = await http(
        shopper,
        "POST",
        "/v1/orders",
        json={"orderId": "page-o1", "customerId": page["customerId"], "lines": lines,
              "currencyCode": "EUR"},
    )  # fmt: skip
    for_another = await http(
        shopper,
        "POST",
        "/v1/orders",
        json={"orderId": "page-o2", "customerId": "alice", "lines": lines, "currencyCode": "EUR"},
    )
    paid = await http(
        shopper,
        "POST",
        "/v1/orders/page-o1:pay",
        json={"paymentId": "psp-forged", "amountMinor": "500", "currencyCode": "EUR"},
    )
    stock = await http(shopper, "GET", "/v1/stock?skus=PAGE-1")
    adjust = await http(
        shopper,
        "POST",
        "/v1/stock/PAGE-1:adjust",
        json={"delta": "5", "reason": "restock", "idempotencyKey": "page-restock"},
    )

    assert created.status_code == 200, created.text
    assert for_another.status_code == 403 and reason(for_another) == "OTHER_CUSTOMER"
    assert paid.status_code == 403 and reason(paid) == "CUSTOMER_TOKEN"
    assert stock.status_code == 200 and stock.json()["levels"][0]["available"] == "4"
    assert adjust.status_code == 403 and reason(adjust) == "CUSTOMER_TOKEN"
    order = (await http(api, "GET", "/v1/orders/page-o1")).json()["order"]
    assert order["status"] == "ORDER_STATUS_PENDING_PAYMENT" and order["paymentId"] == ""


async def test_the_payment_provider_pays_the_sessions_own_orders_only(
    api: GatewayCaller,
) -> None:
    alice, bob = requests.cookies.RequestsCookieJar(), requests.cookies.RequestsCookieJar()
    alice_page = await session(api, alice)
    await session(api, bob)
    await http(
        api,
        "POST",
        "/v1/stock/PAY-1:adjust",
        json={"onHand": "5", "reason": "count", "idempotencyKey": "count-pay-1"},
    )
    for order_id in ("pay-o1", "pay-o2"):
        created = await http(
            api.with_token(alice_page["token"]),
            "POST",
            "/v1/orders",
            json={"orderId": order_id, "lines": [
                {"sku": "PAY-1", "quantity": "1", "unitPriceMinor": "700"}
            ], "currencyCode": "EUR"},
        )  # fmt: skip
        assert created.status_code == 200, created.text

    def pay(jar: requests.cookies.RequestsCookieJar, order_id: str) -> requests.Response:
        return requests.post(
            api.url + "/session/pay",
            json={"orderId": order_id},
            headers={"Origin": api.url},
            cookies=jar,
            timeout=10,
        )

    by_alice = await asyncio.to_thread(pay, alice, "pay-o1")
    twice = await asyncio.to_thread(pay, alice, "pay-o1")
    by_bob = await asyncio.to_thread(pay, bob, "pay-o2")
    cross_site = await asyncio.to_thread(
        lambda: requests.post(
            api.url + "/session/pay",
            json={"orderId": "pay-o2"},
            headers={"Origin": "https://evil.example"},
            cookies=alice,
            timeout=10,
        )
    )

    assert by_alice.status_code == 200, by_alice.text
    assert twice.status_code == 200 and twice.json() == by_alice.json()
    assert by_bob.status_code == 403 and reason(by_bob) == "OTHER_CUSTOMER"
    assert cross_site.status_code == 403
    first = (await http(api, "GET", "/v1/orders/pay-o1")).json()["order"]
    second = (await http(api, "GET", "/v1/orders/pay-o2")).json()["order"]
    assert (first["status"], first["paidMinor"]) == ("ORDER_STATUS_PAID", "700")
    assert first["customerId"] == alice_page["customerId"]
    assert second["status"] == "ORDER_STATUS_PENDING_PAYMENT"


async def test_a_declined_or_unconfirmed_charge_leaves_the_order_unpaid_and_says_so(
    api: GatewayCaller, provider: Provider
) -> None:
    alice = requests.cookies.RequestsCookieJar()
    page = await session(api, alice)
    await http(
        api,
        "POST",
        "/v1/stock/PAY-2:adjust",
        json={"onHand": "5", "reason": "count", "idempotencyKey": "count-pay-2"},
    )
    for order_id in ("declined-o1", "unconfirmed-o1"):
        created = await http(
            api.with_token(page["token"]),
            "POST",
            "/v1/orders",
            json={"orderId": order_id, "lines": [
                {"sku": "PAY-2", "quantity": "1", "unitPriceMinor": "900"}
            ], "currencyCode": "EUR"},
        )  # fmt: skip
        assert created.status_code == 200, created.text

    def pay(order_id: str) -> requests.Response:
        return requests.post(
            api.url + "/session/pay",
            json={"orderId": order_id},
            headers={"Origin": api.url},
            cookies=alice,
            timeout=30,
        )

    await provider.faults(decline_rate=1.0)
    declined = await asyncio.to_thread(pay, "declined-o1")
    # Captured, but its webhook is never sent: the answer says the payment is pending.
    await provider.faults(decline_rate=0.0, confirmation_lost_rate=1.0)
    unconfirmed = await asyncio.to_thread(pay, "unconfirmed-o1")

    assert declined.status_code == 400 and reason(declined) == "PAYMENT_DECLINED"
    assert unconfirmed.status_code == 202, unconfirmed.text
    body = unconfirmed.json()
    assert body["status"] == "PENDING" and body["paymentId"].startswith("ch_")
    for order_id in ("declined-o1", "unconfirmed-o1"):
        order = (await http(api, "GET", f"/v1/orders/{order_id}")).json()["order"]
        assert order["status"] == "ORDER_STATUS_PENDING_PAYMENT", order
