"""The scopes a token may carry. Which RPC needs which is one table: server/rpc/access.py."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

INVENTORY_READ = "inventory:read"
"""GetStock, GetReservation."""
INVENTORY_HOLD = "inventory:hold"
"""Reserve, SetReservationLine, Commit, Release (a customer's token: Reserve,
SetReservationLine and Release of that customer's reservations, never Commit)."""
STOCK_ADJUST = "stock:adjust"
"""AdjustStock: restock, shrinkage, counts."""
ORDERS_CREATE = "orders:create"
"""CreateOrder."""
ORDERS_PAY = "orders:pay"
"""ConfirmPayment: the payment provider's (or its webhook's) word that money arrived."""
ORDERS_CANCEL = "orders:cancel"
"""CancelOrder, of any customer's order, paid or not."""
ORDERS_REFUND = "orders:refund"
"""RefundLine: owe back part of any customer's paid order."""
ORDERS_WRITE = "orders:write"
"""An alias of orders:create, orders:pay and orders:cancel together, as tokens carried it
before the three were told apart."""
ORDERS_READ = "orders:read"
"""GetOrder, ListOrders: every customer's orders."""
ORDERS_WATCH = "orders:watch"
"""WatchOrders: every customer's events."""
ORDERS_FULFIL = "orders:fulfil"
"""ShipOrder, RecordInTransit, RecordDelivery."""
FINANCE_READ = "finance:read"
"""GetStatement, ListExceptions, GetDailyClose: what the reconciler found about the money,
and the provider balance's daily closes."""
FINANCE_RESOLVE = "finance:resolve"
"""ResolveException: a person's decision about a reconciliation discrepancy."""
CUSTOMER = "customer"
"""A shopper's token, minted by a checkout gateway with the shopper's customer_id claim:
that customer's orders only (read, watch, cancel while unpaid), nothing else unless it
also carries one of BESIDE_CUSTOMER."""

SERVICE_SCOPES = (
    INVENTORY_READ,
    INVENTORY_HOLD,
    STOCK_ADJUST,
    ORDERS_CREATE,
    ORDERS_PAY,
    ORDERS_CANCEL,
    ORDERS_REFUND,
    ORDERS_READ,
    ORDERS_WATCH,
    ORDERS_FULFIL,
    FINANCE_READ,
    FINANCE_RESOLVE,
)
"""Scopes of internal services; a customer-bound token carries none of them."""

BESIDE_CUSTOMER = (INVENTORY_READ, INVENTORY_HOLD, ORDERS_CREATE)
"""The only service scopes a customer-bound token may carry beside `customer`, as a
checkout page's does: stock levels are no customer's, and the reservations (its cart) and
orders it may make are its own customer's (server/rpc/access.py)."""

ALIASES: Mapping[str, frozenset[str]] = {
    ORDERS_WRITE: frozenset({ORDERS_CREATE, ORDERS_PAY, ORDERS_CANCEL}),
}
"""Scopes that stand for others: a token granting one is granted what it stands for."""

ALL_SCOPES = (*SERVICE_SCOPES, CUSTOMER)


def conferred(granted: Iterable[str]) -> frozenset[str]:
    """What a token granting `granted` may do: each scope, and what an alias stands for."""
    found = set(granted)
    for name in list(found):
        found |= ALIASES.get(name, frozenset())
    return frozenset(found)
