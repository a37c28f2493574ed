"""OrderShop's journeys over HTTP/JSON through the gateway, with a FastHttpUser's client.

A call is reported under "HTTP " and the RPC name it becomes ("HTTP OrderService/CreateOrder"),
so each sits beside its gRPC twin in Locust's tables. An expected rejection (400 with the
google.rpc.Status code FAILED_PRECONDITION) is reported as the gRPC reporter does, under the
name with " [FAILED_PRECONDITION]", and is not a failure; a 504 is ambiguous (the deadline
passed) and a failure; any other non-2xx is a failure named by its HTTP status.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from loadtests.locust.shop import CURRENCY, Outcome, Placed, unit_price_minor

HTTP_PREFIX = "HTTP "
_FAILED_PRECONDITION = 9
_DEADLINE_EXCEEDED = 4


class HttpShop:
    """Buyer journeys on the REST routes of OrderService and InventoryService."""

    def __init__(self, client: Any, caller: str) -> None:
        self.client = client
        self.headers = {"content-type": "application/json", "stockcore-caller": caller}

    def _call(
        self,
        rpc: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        expect_rejection: bool = False,
    ) -> tuple[Outcome, dict[str, Any] | None]:
        name = HTTP_PREFIX + rpc
        data = None if body is None else json.dumps(body)
        with self.client.request(
            method, path, data=data, headers=self.headers, name=name, catch_response=True
        ) as reply:
            if reply.status_code == 200:
                return Outcome.DONE, reply.json()
            try:
                code = int(reply.json().get("code", -1))
            except (ValueError, TypeError, AttributeError):
                code = -1
            if expect_rejection and reply.status_code == 400 and code == _FAILED_PRECONDITION:
                reply.request_meta["name"] = f"{name} [FAILED_PRECONDITION]"
                reply.success()
                return Outcome.REJECTED, None
            reply.failure(f"HTTP {reply.status_code}")
            if code == _DEADLINE_EXCEEDED:
                return Outcome.AMBIGUOUS, None
            return Outcome.FAILED, None

    def browse(self, skus: list[str]) -> Outcome:
        """GET /v1/stock?skus=..."""
        query = "&".join(f"skus={quote(sku)}" for sku in skus)
        return self._call("InventoryService/GetStock", "GET", f"/v1/stock?{query}")[0]

    def place(
        self, order_id: str, customer_id: str, lines: list[tuple[str, int]], window_s: float
    ) -> tuple[Outcome, Placed | None]:
        """POST /v1/orders."""
        body = {
            "orderId": order_id,
            "customerId": customer_id,
            "lines": [
                {"sku": sku, "quantity": str(qty), "unitPriceMinor": str(unit_price_minor(sku))}
                for sku, qty in lines
            ],
            "currencyCode": CURRENCY,
            "paymentWindow": f"{max(1, round(window_s))}s",
        }
        outcome, reply = self._call(
            "OrderService/CreateOrder", "POST", "/v1/orders", body, expect_rejection=True
        )
        if reply is None:
            return outcome, None
        order = reply["order"]
        units = sum(int(line["quantity"]) for line in order["lines"])
        return outcome, Placed(order_id, customer_id, int(order["totalMinor"]), units)

    def pay(self, placed: Placed) -> Outcome:
        """POST /v1/orders/{id}:pay with the order's total."""
        body = {
            "paymentId": f"pay-{placed.order_id}",
            "amountMinor": str(placed.total_minor),
            "currencyCode": CURRENCY,
        }
        path = f"/v1/orders/{quote(placed.order_id)}:pay"
        return self._call("OrderService/ConfirmPayment", "POST", path, body, expect_rejection=True)[
            0
        ]

    def cancel(self, placed: Placed, reason: str) -> Outcome:
        """POST /v1/orders/{id}:cancel."""
        path = f"/v1/orders/{quote(placed.order_id)}:cancel"
        return self._call(
            "OrderService/CancelOrder", "POST", path, {"reason": reason}, expect_rejection=True
        )[0]

    def look_up(self, placed: Placed) -> Outcome:
        """GET /v1/orders/{id}."""
        path = f"/v1/orders/{quote(placed.order_id)}"
        return self._call("OrderService/GetOrder", "GET", path)[0]

    def list_mine(self, customer_id: str) -> Outcome:
        """GET /v1/orders?customerId=...&pageSize=10."""
        path = f"/v1/orders?customerId={quote(customer_id)}&pageSize=10"
        return self._call("OrderService/ListOrders", "GET", path)[0]
