"""Paying at the provider in the load runs: the shop's wait for the webhook's confirmation
(pure logic: the provider and the order service are stand-ins here; `make load-day` runs
the real ones, tests/e2e/test_make_targets.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stockcore.v1 import orders_pb2 as ords

from loadtests.locust.shop import OrderShop, Outcome, Placed

PLACED = Placed("o-1", "c-1", 500, 1)


@dataclass
class Checkout:
    """Charges with a given outcome, and waits as the real one's times say."""

    outcome: Outcome = Outcome.DONE
    confirm_wait_s: float = 1.0
    return_s: float = 0.3
    poll_s: float = 0.3
    charged: list[str] = field(default_factory=list)

    def charge(self, placed: Placed) -> Outcome:
        self.charged.append(placed.order_id)
        return self.outcome


class Orders:
    """GetOrder answering the statuses given, one a call (the last one again after)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.reads = 0

    def GetOrder(self, request: ords.GetOrderRequest) -> Any:
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return ords.GetOrderResponse(order=ords.Order(order_id=request.order_id, status=status))


def shop(orders: Orders, checkout: Checkout, slept: list[float]) -> OrderShop:
    return OrderShop(None, orders, checkout, slept.append)  # type: ignore[arg-type]


def test_the_page_reads_the_order_until_the_webhook_paid_it() -> None:
    pending, paid = ords.ORDER_STATUS_PENDING_PAYMENT, ords.ORDER_STATUS_PAID
    orders, checkout, slept = Orders(pending, pending, paid), Checkout(), []

    assert shop(orders, checkout, slept).pay(PLACED) is Outcome.DONE
    assert checkout.charged == ["o-1"] and orders.reads == 3
    assert slept == [0.3, 0.3, 0.3]


def test_a_declined_charge_reads_nothing_and_an_expired_order_is_a_rejection() -> None:
    declined = Checkout(outcome=Outcome.REJECTED)
    orders = Orders(ords.ORDER_STATUS_PENDING_PAYMENT)
    assert shop(orders, declined, []).pay(PLACED) is Outcome.REJECTED
    assert orders.reads == 0

    expired = Orders(ords.ORDER_STATUS_EXPIRED)
    assert shop(expired, Checkout(), []).pay(PLACED) is Outcome.REJECTED


def test_a_confirmation_that_never_comes_is_ambiguous_after_the_wait() -> None:
    orders = Orders(ords.ORDER_STATUS_PENDING_PAYMENT)
    checkout = Checkout(confirm_wait_s=0.0)

    assert shop(orders, checkout, []).pay(PLACED) is Outcome.AMBIGUOUS
    assert orders.reads == 1
