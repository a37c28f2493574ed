"""The checkout page's way to the payment provider under `make run`: development only.

A shopper's browser may not confirm a payment (its token has no orders:pay): the page asks
for one (POST /session/pay, devstack/page_session.py), and this hands the order to the
payment provider (simulators/payments.py under `make run`), as a real page hands the
shopper to a provider's payment form. The provider captures a charge of the order's total
(which nobody pays); its signed webhook reaches stockcore's receiver (python -m payments),
which confirms the payment through ConfirmPayment: the provider's word is what pays the
order, never the page's. The order is read first with a token bound to the session's
customer, so the server refuses another shopper's order (OTHER_CUSTOMER) before anything
is charged. The charge's Idempotency-Key follows from the order id, so asking twice
charges once.

The answer waits, a few seconds at most, until the order is paid, as a provider's page
returns the shopper once the payment went through; a confirmation still on its way then
is `PaymentPending` (the page follows the order's status in its event stream anyway).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from clients.credentials import Credentials
from clients.errors import ErrorInfo, FailedPrecondition, StatusCode, Unavailable
from clients.orders import Order, OrderClient, OrderStatus, status_name
from clients.tokens import issue_token
from server.auth import scopes

CHECKOUT_SUBJECT = "checkout-payments-dev"
# Each call mints its own token: it never leaves this process, and lives a minute.
_TOKEN_TTL_S = 60.0
# How long an answer waits for the provider's confirmation to pay the order.
CONFIRM_WAIT_S = 10.0
_POLL_S = 0.1
_PROVIDER_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
_PAID = OrderStatus.ORDER_STATUS_PAID
_PENDING = OrderStatus.ORDER_STATUS_PENDING_PAYMENT
# The ErrorInfo reason of a charge the provider declined.
PAYMENT_DECLINED = "PAYMENT_DECLINED"


def _not_payable(message: str, reason: str) -> FailedPrecondition:
    return FailedPrecondition(
        StatusCode.FAILED_PRECONDITION, message, error_info=ErrorInfo(reason, "stockcore.v1")
    )


@dataclass(frozen=True)
class Paid:
    """An order the provider's charge paid."""

    order_id: str
    #: The provider's charge, which is the order's payment id.
    charge_id: str


class PaymentPending(Exception):
    """The provider captured the charge, and its confirmation has not paid the order yet."""

    def __init__(self, order_id: str, charge_id: str) -> None:
        super().__init__(f"order {order_id}: charge {charge_id} captured, confirmation pending")
        self.order_id = order_id
        self.charge_id = charge_id


class SimulatedPayments:
    """Charges a shopper's orders at the provider `provider_url`, for orders of the order
    server `target` (reached with `tls`, no token of its own; the customer's tokens are
    signed by `signing_key` for `audience`)."""

    def __init__(
        self,
        target: str,
        tls: Credentials,
        signing_key: dict[str, Any],
        audience: str,
        provider_url: str,
        *,
        confirm_wait_s: float = CONFIRM_WAIT_S,
    ) -> None:
        self._target = target
        self._tls = tls
        self._signing_key = signing_key
        self._audience = audience
        self._provider_url = provider_url.rstrip("/")
        self._confirm_wait_s = confirm_wait_s
        # The charge made for each order (a customer's view of an order does not show its
        # payment id), so that paying again answers the same payment.
        self._charges: dict[str, str] = {}

    def _shopper(self, customer_id: str) -> Credentials:
        return self._tls.with_token(
            issue_token(
                self._signing_key,
                CHECKOUT_SUBJECT,
                (scopes.CUSTOMER,),
                ttl_s=_TOKEN_TTL_S,
                customer_id=customer_id,
                audience=self._audience,
            )
        )

    async def pay(self, customer_id: str, order_id: str) -> Paid:
        """Have the provider charge `customer_id`'s order `order_id` in full, once paid. The client's errors as they come (PermissionDenied: not that
        customer's); FailedPrecondition when it is not pending payment (ErrorInfo
        ILLEGAL_TRANSITION) or the provider declines (PAYMENT_DECLINED), PaymentPending
        when the confirmation is late."""
        async with OrderClient(self._target, credentials=self._shopper(customer_id)) as orders:
            order, _ = await orders.get_order(order_id)
            if order.status == _PAID and order_id in self._charges:
                return Paid(order_id, self._charges[order_id])
            if order.status != _PENDING:
                raise _not_payable(
                    f"order {order_id} is {status_name(order.status)}: only an order pending"
                    " payment can be paid",
                    "ILLEGAL_TRANSITION",
                )
            charge_id = self._charges[order_id] = await self._charge(order, customer_id)
            deadline = time.monotonic() + self._confirm_wait_s
            while True:
                order, _ = await orders.get_order(order_id)
                if order.status == _PAID:
                    return Paid(order_id, charge_id)
                if order.status != _PENDING:
                    # Cancelled or expired meanwhile: the charge paid nothing, and is money
                    # to return (the receiver records it so).
                    raise _not_payable(
                        f"order {order_id} became {status_name(order.status)} before the"
                        f" charge {charge_id} reached it: the charge will be returned",
                        "ILLEGAL_TRANSITION",
                    )
                if time.monotonic() >= deadline:
                    raise PaymentPending(order_id, charge_id)
                await asyncio.sleep(_POLL_S)

    async def _charge(self, order: Order, customer_id: str) -> str:
        body = {
            "order_id": order.order_id,
            "customer_id": customer_id,
            "amount": order.total_minor,
            "currency": order.currency_code,
        }
        headers = {"Idempotency-Key": f"checkout:{order.order_id}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=_PROVIDER_TIMEOUT) as http,
                http.post(f"{self._provider_url}/v1/charges", json=body, headers=headers) as reply,
            ):
                charge = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Nothing was charged that the same key would not find again: safe to retry.
            raise Unavailable(
                StatusCode.UNAVAILABLE,
                f"the payment provider at {self._provider_url} is not reachable ({exc}); nothing"
                " was paid: try again",
            ) from exc
        if reply.status == 402:
            raise _not_payable(
                f"the provider declined the charge of order {order.order_id}: nothing was paid",
                PAYMENT_DECLINED,
            )
        if reply.status != 200:
            raise RuntimeError(f"the provider answered {reply.status}: {charge}")
        return str(charge["id"])
