"""What a buyer and a warehouse do, over either API.

`OrderShop` uses OrderService (CreateOrder, ConfirmPayment ...). `HoldShop` plays the same
journeys on InventoryService alone (Reserve as the order, Commit as the payment, Release as the
cancellation), for servers without OrderService. Each method makes its calls through stubs
whose channel reports them to Locust, and answers with an `Outcome` instead of raising, so a
failed call ends a journey without a second, duplicate report.
"""

from __future__ import annotations

import enum
import itertools
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from stockcore.v1 import inventory_pb2 as inv
from stockcore.v1 import orders_pb2 as ords

from clients.errors import StatusCode, error_from_status

if TYPE_CHECKING:
    from loadtests.locust.provider import ProviderCheckout

CURRENCY = "CNY"

tally: Counter[str] = Counter()
"""What this load process's users did, by business outcome (units paid, orders shipped ...),
written to the run's folder (record.py) so a run can be reconciled with the server's stock."""


class Api(enum.Enum):
    """Which service the journeys use."""

    ORDERS = "orders"
    INVENTORY = "inventory"
    HTTP = "http"
    """Half the buyers on OrderService over HTTP/JSON through the gateway, half over gRPC."""


class Outcome(enum.Enum):
    """How a step of a journey ended."""

    DONE = "done"
    REJECTED = "rejected"
    """An expected business rejection: sold out, already shipped, hold expired."""
    FAILED = "failed"
    """Anything else (already reported to Locust as a failure)."""
    AMBIGUOUS = "ambiguous"
    """The deadline passed: the server may or may not have applied it."""
    REFUSED = "refused"
    """The server was at capacity and applied nothing: send it again, with the same id,
    after the shop's `pushback` (the server's RetryInfo delay)."""


@dataclass(frozen=True)
class Placed:
    """An order (or hold) that was accepted."""

    order_id: str
    customer_id: str
    total_minor: int
    units: int


def unit_price_minor(sku: str) -> int:
    """A stable price per SKU, 1.00 to 500.99 in minor units."""
    return 100 + zlib.crc32(sku.encode()) % 50_000


class OrderIds:
    """Order ids unique across processes and runs: run tag, process id, counter."""

    def __init__(self, run_tag: str) -> None:
        self._prefix = f"{run_tag}-{os.getpid()}-{random.getrandbits(24):x}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        """A fresh id."""
        return f"{self._prefix}{next(self._counter)}"


def _outcome(error: grpc.RpcError) -> Outcome:
    code = error.code()
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return Outcome.REJECTED
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Outcome.REFUSED
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Outcome.AMBIGUOUS
    return Outcome.FAILED


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _pushback(error: grpc.RpcError) -> float:
    """The delay a refusal asks for (RetryInfo, else gRPC's pushback), 0.1 s without one."""
    refused = error_from_status(
        StatusCode.from_grpc(error.code()), error.details() or "", error.trailing_metadata() or ()
    )
    return refused.retry_delay if refused.retry_delay is not None else 0.1


class InventoryReads:
    """GetStock, common to both APIs."""

    pushback: float = 0.1
    """The delay the last refusal of place or pay asked for."""

    def __init__(self, inventory: Any) -> None:
        self.inventory = inventory

    def browse(self, skus: list[str]) -> Outcome:
        """Read stock levels of `skus`."""
        try:
            self.inventory.GetStock(inv.GetStockRequest(skus=skus))
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def stock(self, sku: str) -> inv.StockLevel | None:
        """One SKU's level, or None when the call failed."""
        try:
            return self.inventory.GetStock(inv.GetStockRequest(skus=[sku])).levels[0]
        except grpc.RpcError:
            return None


class OrderShop(InventoryReads):
    """Journeys on OrderService. With a `checkout` (loadtests/locust/provider.py), orders
    are paid at the payment provider, whose webhook pays them; `sleep` waits meanwhile."""

    def __init__(
        self,
        inventory: Any,
        orders: Any,
        checkout: ProviderCheckout | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inventory)
        self.orders = orders
        self.checkout = checkout
        self._sleep = sleep

    def place(
        self, order_id: str, customer_id: str, lines: list[tuple[str, int]], window_s: float
    ) -> tuple[Outcome, Placed | None]:
        """CreateOrder; the server prices the total."""
        request = ords.CreateOrderRequest(
            order_id=order_id,
            customer_id=customer_id,
            lines=[
                ords.OrderLine(sku=sku, quantity=qty, unit_price_minor=unit_price_minor(sku))
                for sku, qty in lines
            ],
            currency_code=CURRENCY,
            payment_window=duration_pb2.Duration(seconds=max(1, round(window_s))),
        )
        try:
            order = self.orders.CreateOrder(request).order
        except grpc.RpcError as error:
            self.pushback = _pushback(error)
            return _outcome(error), None
        units = sum(line.quantity for line in order.lines)
        return Outcome.DONE, Placed(order_id, customer_id, order.total_minor, units)

    def pay(self, placed: Placed) -> Outcome:
        """ConfirmPayment with the order's total; with a checkout, the provider's charge
        instead, and GetOrder until the provider's confirmation paid the order (AMBIGUOUS
        when it did not within the checkout's confirm_wait_s: the charge may pay it later)."""
        if self.checkout is not None:
            return self._pay_at_provider(placed, self.checkout)
        request = ords.ConfirmPaymentRequest(
            order_id=placed.order_id,
            payment_id=f"pay-{placed.order_id}",
            amount_minor=placed.total_minor,
            currency_code=CURRENCY,
        )
        try:
            self.orders.ConfirmPayment(request)
        except grpc.RpcError as error:
            self.pushback = _pushback(error)
            return _outcome(error)
        return Outcome.DONE

    def _pay_at_provider(self, placed: Placed, checkout: ProviderCheckout) -> Outcome:
        charged = checkout.charge(placed)
        if charged is not Outcome.DONE:
            return charged
        deadline = time.monotonic() + checkout.confirm_wait_s
        self._sleep(checkout.return_s)
        while True:
            try:
                status = self.orders.GetOrder(
                    ords.GetOrderRequest(order_id=placed.order_id)
                ).order.status
            except grpc.RpcError as error:
                return _outcome(error)
            if status == ords.ORDER_STATUS_PAID:
                return Outcome.DONE
            if status != ords.ORDER_STATUS_PENDING_PAYMENT:
                # Expired or cancelled first: the charge is money to return.
                return Outcome.REJECTED
            if time.monotonic() >= deadline:
                return Outcome.AMBIGUOUS
            self._sleep(checkout.poll_s)

    def cancel(self, placed: Placed, reason: str) -> Outcome:
        """CancelOrder."""
        try:
            self.orders.CancelOrder(
                ords.CancelOrderRequest(order_id=placed.order_id, reason=reason)
            )
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def look_up(self, placed: Placed) -> Outcome:
        """GetOrder."""
        try:
            self.orders.GetOrder(ords.GetOrderRequest(order_id=placed.order_id))
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def list_mine(self, customer_id: str) -> Outcome:
        """ListOrders, first page of 10."""
        try:
            self.orders.ListOrders(ords.ListOrdersRequest(customer_id=customer_id, page_size=10))
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def ship(self, order_id: str, carrier: str, tracking_no: str) -> Outcome:
        """ShipOrder with the carrier's acknowledgement."""
        request = ords.ShipOrderRequest(
            order_id=order_id,
            carrier=carrier,
            tracking_no=tracking_no,
            carrier_ack_id=f"ack-{tracking_no}",
        )
        try:
            self.orders.ShipOrder(request)
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def in_transit(self, order_id: str) -> Outcome:
        """RecordInTransit, stamped now."""
        try:
            self.orders.RecordInTransit(
                ords.RecordInTransitRequest(order_id=order_id, event_time=_now())
            )
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def delivered(self, order_id: str) -> Outcome:
        """RecordDelivery, stamped now."""
        try:
            self.orders.RecordDelivery(
                ords.RecordDeliveryRequest(order_id=order_id, event_time=_now())
            )
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE


class HoldShop(InventoryReads):
    """The same journeys on InventoryService: the order is a hold, payment commits it."""

    def place(
        self, order_id: str, customer_id: str, lines: list[tuple[str, int]], window_s: float
    ) -> tuple[Outcome, Placed | None]:
        """Reserve, with the payment window as the hold's TTL."""
        request = inv.ReserveRequest(
            reservation_id=order_id,
            lines=[inv.Line(sku=sku, quantity=qty) for sku, qty in lines],
            ttl=duration_pb2.Duration(seconds=max(1, round(window_s))),
        )
        try:
            self.inventory.Reserve(request)
        except grpc.RpcError as error:
            self.pushback = _pushback(error)
            return _outcome(error), None
        total = sum(unit_price_minor(sku) * qty for sku, qty in lines)
        return Outcome.DONE, Placed(order_id, customer_id, total, sum(q for _, q in lines))

    def pay(self, placed: Placed) -> Outcome:
        """Commit."""
        try:
            self.inventory.Commit(inv.CommitRequest(reservation_id=placed.order_id))
        except grpc.RpcError as error:
            self.pushback = _pushback(error)
            return _outcome(error)
        return Outcome.DONE

    def cancel(self, placed: Placed, reason: str) -> Outcome:
        """Release."""
        try:
            self.inventory.Release(inv.ReleaseRequest(reservation_id=placed.order_id))
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def look_up(self, placed: Placed) -> Outcome:
        """GetReservation."""
        try:
            self.inventory.GetReservation(inv.GetReservationRequest(reservation_id=placed.order_id))
        except grpc.RpcError as error:
            return _outcome(error)
        return Outcome.DONE

    def list_mine(self, customer_id: str) -> Outcome:
        """InventoryService has no listing by customer: nothing to call."""
        return Outcome.DONE


def make_shop(
    api: Api,
    inventory: Any,
    orders: Any,
    checkout: ProviderCheckout | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> OrderShop | HoldShop:
    """The gRPC shop for `api` (OrderShop for the gRPC half of an HTTP run), paying with
    `checkout` when given."""
    if api is Api.INVENTORY:
        return HoldShop(inventory)
    return OrderShop(inventory, orders, checkout, sleep)
