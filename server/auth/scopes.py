"""The scopes a token may carry. Which RPC needs which is one table: server/rpc/access.py."""

from __future__ import annotations

INVENTORY_READ = "inventory:read"
"""GetStock, GetReservation."""
INVENTORY_HOLD = "inventory:hold"
"""Reserve, Commit, Release."""
STOCK_ADJUST = "stock:adjust"
"""AdjustStock: restock, shrinkage, counts."""
ORDERS_WRITE = "orders:write"
"""CreateOrder, ConfirmPayment, CancelOrder."""
ORDERS_READ = "orders:read"
"""GetOrder, ListOrders: every customer's orders."""
ORDERS_WATCH = "orders:watch"
"""WatchOrders: every customer's events."""
ORDERS_FULFIL = "orders:fulfil"
"""ShipOrder, RecordInTransit, RecordDelivery."""
CUSTOMER = "customer"
"""A shopper's token, minted by a checkout gateway with the shopper's customer_id claim:
that customer's orders only (read, watch, cancel while unpaid), nothing else."""

SERVICE_SCOPES = (
    INVENTORY_READ,
    INVENTORY_HOLD,
    STOCK_ADJUST,
    ORDERS_WRITE,
    ORDERS_READ,
    ORDERS_WATCH,
    ORDERS_FULFIL,
)
"""Scopes of internal services; a customer-bound token carries none of them."""

ALL_SCOPES = (*SERVICE_SCOPES, CUSTOMER)
