"""The checkout page's payment provider under `make run`: simulated, development only.

A shopper's browser may not confirm a payment (its token has no orders:pay): the page asks
this provider instead (POST /session/pay, devstack/page_session.py), as a real page hands
the shopper to a payment provider whose word reaches stockcore from the provider's side.
It "charges" the order's total, which nobody pays, and reports the payment with a token
of its own that may do nothing but ConfirmPayment. It reads the order first with a token
bound to the session's customer, so the server refuses another shopper's order
(OTHER_CUSTOMER) before anything is paid. A payment's id follows from the order's, so
asking twice pays once.
"""

from __future__ import annotations

import hashlib
from typing import Any

from clients.credentials import Credentials
from clients.orders import Order, OrderClient
from clients.tokens import issue_token
from server.auth import scopes

PAYMENTS_SUBJECT = "payments-simulator-dev"
# Each call mints its own tokens: they never leave this process, and live a minute.
_TOKEN_TTL_S = 60.0


class SimulatedPayments:
    """Pays a shopper's orders at the order server `target`, reached with `tls` (no token
    of its own), with tokens signed by `signing_key` for `audience`."""

    def __init__(
        self, target: str, tls: Credentials, signing_key: dict[str, Any], audience: str
    ) -> None:
        self._target = target
        self._tls = tls
        self._signing_key = signing_key
        self._audience = audience

    def _token(self, granted: tuple[str, ...], customer_id: str | None = None) -> str:
        return issue_token(
            self._signing_key,
            PAYMENTS_SUBJECT,
            granted,
            ttl_s=_TOKEN_TTL_S,
            customer_id=customer_id,
            audience=self._audience,
        )

    @staticmethod
    def payment_id(order_id: str) -> str:
        """The provider's id of the payment of an order (one per order)."""
        return "sim-" + hashlib.sha256(order_id.encode()).hexdigest()[:32]

    async def pay(self, customer_id: str, order_id: str) -> Order:
        """Pay `customer_id`'s order `order_id` in full; the client's errors as they come
        (PermissionDenied: not that customer's; FailedPrecondition: not payable)."""
        shopper = self._tls.with_token(self._token((scopes.CUSTOMER,), customer_id))
        async with OrderClient(self._target, credentials=shopper) as orders:
            order, _ = await orders.get_order(order_id)
        provider = self._tls.with_token(self._token((scopes.ORDERS_PAY,)))
        async with OrderClient(self._target, credentials=provider) as orders:
            return await orders.confirm_payment(
                order_id, self.payment_id(order_id), order.total_minor, order.currency_code
            )
