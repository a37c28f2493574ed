"""Who may call what: the one table from RPC to the scope it needs, and the one place
that decides, before any servicer runs (so a refused call changes nothing).

A call without a token, or with one that is expired or does not verify, is
UNAUTHENTICATED; a verified caller without the RPC's scope is PERMISSION_DENIED; both
carry google.rpc.ErrorInfo (domain stockcore.v1, the reasons below). A token bound to a
customer (scope `customer`) is admitted only where the table names a `customer_scope`
and the token carries it, and `OrderView` (below) is then the one place that decides what
of the orders such a caller sees and makes: only that customer's, without payment ids.
(CancelOrder's ownership is decided again under the order's lock, in SQL, where the
cancel is: a check before it would race.)
Health and reflection are separate services: they need no token.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from stockcore.v1 import orders_pb2 as pb

from server.auth import scopes
from server.auth.principal import ANONYMOUS, Principal
from server.auth.tls import certificate_subject
from server.auth.tokens import TOKEN_MISSING, TokenVerifier
from server.domain.errors import PermissionDenied, Unauthenticated
from server.domain.orders import Order, not_customers, other_customer
from server.metrics import CALLS_REFUSED

# ErrorInfo reasons of PERMISSION_DENIED (part of the API).
SCOPE_MISSING = "SCOPE_MISSING"
CUSTOMER_TOKEN = "CUSTOMER_TOKEN"
"""A customer-bound token called an RPC no customer's token may call. (Its refusals
within an RPC it may call are OTHER_CUSTOMER and PAID_ORDER: server/domain/orders.py.)"""

AUTHORIZATION_KEY = "authorization"
_BEARER = "bearer "

_INVENTORY = "/stockcore.v1.InventoryService/"
_ORDERS = "/stockcore.v1.OrderService/"
_RECONCILIATION = "/stockcore.v1.ReconciliationService/"


@dataclass(frozen=True)
class Rule:
    """What an RPC needs: a service token with `scope`, or a customer-bound token with
    `customer_scope` (None: no customer's token may make the call). A customer's token
    then sees and changes only that customer's orders (OrderView)."""

    scope: str
    customer_scope: str | None = None


RULES: Mapping[str, Rule] = {
    # A checkout page holds its cart by a reservation of its customer's, which it changes
    # and releases (never another's: decided under the reservation's lock).
    _INVENTORY + "Reserve": Rule(scopes.INVENTORY_HOLD, customer_scope=scopes.INVENTORY_HOLD),
    _INVENTORY + "SetReservationLine": Rule(
        scopes.INVENTORY_HOLD, customer_scope=scopes.INVENTORY_HOLD
    ),
    # A deduction without a payment: never a shopper's.
    _INVENTORY + "Commit": Rule(scopes.INVENTORY_HOLD),
    _INVENTORY + "Release": Rule(scopes.INVENTORY_HOLD, customer_scope=scopes.INVENTORY_HOLD),
    # A hold's lines are an order's: not for a shopper, whose own orders show them.
    _INVENTORY + "GetReservation": Rule(scopes.INVENTORY_READ),
    # Stock levels are no customer's: a checkout page shows them.
    _INVENTORY + "GetStock": Rule(scopes.INVENTORY_READ, customer_scope=scopes.INVENTORY_READ),
    _INVENTORY + "AdjustStock": Rule(scopes.STOCK_ADJUST),
    _ORDERS + "CreateOrder": Rule(scopes.ORDERS_CREATE, customer_scope=scopes.ORDERS_CREATE),
    _ORDERS + "GetOrder": Rule(scopes.ORDERS_READ, customer_scope=scopes.CUSTOMER),
    _ORDERS + "ListOrders": Rule(scopes.ORDERS_READ, customer_scope=scopes.CUSTOMER),
    # Paying is the payment provider's word, never a shopper's.
    _ORDERS + "ConfirmPayment": Rule(scopes.ORDERS_PAY),
    _ORDERS + "CancelOrder": Rule(scopes.ORDERS_CANCEL, customer_scope=scopes.CUSTOMER),
    # Money back is the merchant's word, as a paid order's cancel is (a shopper may cancel
    # only unpaid orders): never a shopper's token, not even for its own order.
    _ORDERS + "RefundLine": Rule(scopes.ORDERS_REFUND),
    _ORDERS + "ShipOrder": Rule(scopes.ORDERS_FULFIL),
    _ORDERS + "RecordInTransit": Rule(scopes.ORDERS_FULFIL),
    _ORDERS + "RecordDelivery": Rule(scopes.ORDERS_FULFIL),
    _ORDERS + "WatchOrders": Rule(scopes.ORDERS_WATCH, customer_scope=scopes.CUSTOMER),
    # The business's records of money: finance's, never a shopper's.
    _RECONCILIATION + "GetStatement": Rule(scopes.FINANCE_READ),
    _RECONCILIATION + "ListExceptions": Rule(scopes.FINANCE_READ),
    _RECONCILIATION + "GetDailyClose": Rule(scopes.FINANCE_READ),
    _RECONCILIATION + "ResolveException": Rule(scopes.FINANCE_RESOLVE),
}
"""Every RPC of the API; a method missing here cannot be served (service_handler refuses)."""

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("stockcore_principal")


def current_principal() -> Principal:
    """The caller of the call being handled (grpc.aio runs each call in its own task)."""
    return _current.get()


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The token of the call's `authorization: Bearer <token>` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_KEY and isinstance(value, str):
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip() or None
            return None
    return None


class Gatekeeper:
    """Decides every call from RULES. With no verifier (STOCKCORE_AUTH_DISABLED) every
    call is admitted, as the `unauthenticated` caller."""

    def __init__(self, verifier: TokenVerifier | None, *, client_certificates: bool) -> None:
        self._verifier = verifier
        self._client_certificates = client_certificates

    def rule(self, method: str) -> Rule:
        """The rule of a full method name; KeyError for a method outside the table."""
        return RULES[method]

    def admit(self, rule: Rule, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The call's principal, made current for the servicer; raises Unauthenticated or
        PermissionDenied when the call may not proceed."""
        try:
            principal = self._decide(rule, context)
        except (Unauthenticated, PermissionDenied) as refused:
            CALLS_REFUSED.labels(refused.reason).inc()
            raise
        _current.set(principal)
        return principal

    def _decide(self, rule: Rule, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        principal = self._authenticate(context)
        required = rule.scope
        if principal.customer_id is not None:
            if rule.customer_scope is None:
                raise PermissionDenied(
                    CUSTOMER_TOKEN,
                    "a customer's token may read stock, hold, change and release that"
                    " customer's reservations, and create, read, watch and cancel that"
                    " customer's orders; nothing else",
                )
            required = rule.customer_scope
        if self._verifier is not None and required not in principal.scopes:
            raise PermissionDenied(
                SCOPE_MISSING,
                f"this call needs the scope {required!r}",
                {"required_scope": required},
            )
        return principal

    def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        verifier = self._verifier
        if verifier is None:
            return ANONYMOUS
        token = bearer_token(context)
        if token is None:
            # Callers of every kind read this, not only stockctl: where tokens come from, briefly.
            raise Unauthenticated(
                TOKEN_MISSING,
                "send a token as `authorization: Bearer <token>` metadata"
                " (from your token issuer; in development, `stockctl token issue`)",
            )
        principal = verifier.principal(token)
        if self._client_certificates:
            principal = principal.with_certificate(certificate_subject(context))
        return principal


# A customer's token sees its own orders without the payment provider's ids: they are the
# business's records of money, not the shopper's (the order total and paid amount stay).
_PAYMENT_REASON = "payment"
# Who made a change, as a customer's token sees it: the internal callers (token subjects,
# certificate names) are the business's, not the shopper's.
_CUSTOMER_ACTOR = "customer"
_MERCHANT_ACTOR = "merchant"


def _made_by_customer(caller: str, customer_id: str) -> bool:
    """Whether a history row's caller (Principal.name) is a token of `customer_id`."""
    marker = f" for customer {customer_id}"
    return caller.endswith(marker) or f"{marker} via " in caller


@dataclass(frozen=True)
class OrderView:
    """What the current caller may see and make of orders. A service token sees every
    order whole. A customer's token sees its customer's orders only (another customer's
    order is refused as if it might not exist: its existence is not told), never a payment
    id, and creates orders for its own customer only."""

    customer_id: str | None

    @classmethod
    def of_caller(cls) -> OrderView:
        """The view of the call being handled."""
        return cls(current_principal().customer_id)

    def customer(self, requested: str) -> str:
        """The customer a call is about or creates an order for: a customer token's own
        (it may name no other; naming none means its own), else what the request named."""
        if self.customer_id is None:
            return requested
        if requested and requested != self.customer_id:
            raise other_customer(self.customer_id, requested)
        return self.customer_id

    def check(self, order_id: str, found: Order | None) -> None:
        """Raise for an order this caller may not see (`found` None: no such order)."""
        if self.customer_id is not None and (
            found is None or found.customer_id != self.customer_id
        ):
            raise not_customers(self.customer_id, order_id)

    def order(self, message: pb.Order) -> pb.Order:
        """`message` as this caller may see it (changed in place and returned)."""
        if self.customer_id is not None:
            message.payment_id = ""
        return message

    def change(self, message: pb.StatusChange) -> pb.StatusChange:
        """A status-history row as this caller may see it (in place). A customer sees who
        made a change only as "customer" (made with a token of this customer) or
        "merchant" (anyone else: services, the expiry sweep), the request id only of its
        own changes, and not the payment a PAID change's reason names."""
        if self.customer_id is None:
            return message
        if message.to_status == pb.ORDER_STATUS_PAID:
            message.reason = _PAYMENT_REASON
        if _made_by_customer(message.caller, self.customer_id):
            message.caller = _CUSTOMER_ACTOR
        else:
            message.caller = _MERCHANT_ACTOR
            message.request_id = ""
        return message

    def event(self, message: pb.OrderEvent) -> pb.OrderEvent:
        """An event as this caller may see it; the event is shared by every stream, so a
        customer's is a copy."""
        if self.customer_id is None:
            return message
        copy = pb.OrderEvent()
        copy.CopyFrom(message)
        self.order(copy.order)
        if copy.HasField("change"):
            self.change(copy.change)
        if copy.HasField("refund"):
            # As with a payment, a customer does not see the provider's ids, nor the id a
            # service refunded a line under (as it does not see services' request ids).
            copy.refund.charge_id = ""
            copy.refund.provider_refund_id = ""
            copy.refund.line_refund_id = ""
        return copy
