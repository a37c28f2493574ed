"""The reference day: 500,000 orders with a 237 orders/s peak, compressed into a few minutes.

    locust -f loadtests/locust/day.py --headless --host 127.0.0.1:50051 \
        --day-duration 240 --peak-hold 60 --scale 1

(`make load-day` seeds a catalogue first and runs this with several load processes.)

Buyers each start one journey every `--pacing` seconds on average (Poisson arrivals), so the
shape sets the buyer count to rate x pacing. A journey browses stock (GetStock of a few variants, one to three pages),
creates an order of one to three lines, thinks, then pays the order's total (most: with
--provider-url, at the payment provider, whose webhook pays it, the page then reading the
order until it is paid, as loadtests/locust/provider.py says), cancels
it (some) or abandons it (a few: its hold expires after --payment-window), and afterwards
looks the order up (GetOrder) and lists the customer's orders (ListOrders). A small share of
paid orders is cancelled for a refund. Warehouse users ship what was paid in their own load
process (ShipOrder with an allowed carrier, RecordInTransit, RecordDelivery).

Expected rejections (FAILED_PRECONDITION: sold out, a hold that expired before payment, a
cancellation that came after shipping) are reported under the RPC name with a
" [FAILED_PRECONDITION]" suffix and are not failures. Every other non-OK status is a failure
listed by its status code.
"""

from __future__ import annotations

# First: patches gRPC for gevent before anything opens a channel.
from loadtests.locust.grpc_user import GrpcUser  # isort: skip

import math
import random
import time
from typing import Any

import gevent
import grpc
from gevent.queue import Empty, Queue
from locust import LoadTestShape, constant, events, task
from locust.runners import MasterRunner

from loadtests.locust.daycurve import CompressedDay, DayCurve
from loadtests.locust.interceptor import RejectionPolicy
from loadtests.locust.options import add_common_options, catalogue
from loadtests.locust.pacing import PoissonPacing
from loadtests.locust.provider import ProviderCheckout
from loadtests.locust.record import install_tally, write_plan
from loadtests.locust.shop import Api, OrderIds, OrderShop, Outcome, make_shop, tally

_REJECTED = frozenset({grpc.StatusCode.FAILED_PRECONDITION})
REJECTIONS = RejectionPolicy(
    expected={
        "OrderService/CreateOrder": _REJECTED,
        "OrderService/ConfirmPayment": _REJECTED,
        "OrderService/CancelOrder": _REJECTED,
        "OrderService/ShipOrder": _REJECTED,
        "InventoryService/Reserve": _REJECTED,
        "InventoryService/Commit": _REJECTED,
        "InventoryService/Release": _REJECTED,
    }
)

# Paid orders waiting for a warehouse user of this load process.
paid_orders: Queue[str] = Queue()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_common_options(parser)
    group = parser.add_argument_group("reference day")
    group.add_argument("--day-duration", type=float, default=240.0, help="seconds the day lasts")
    group.add_argument("--peak-hold", type=float, default=60.0, help="seconds at the peak")
    group.add_argument("--scale", type=float, default=1.0, help="factor on every order rate")
    group.add_argument("--pacing", type=float, default=2.0, help="seconds between journeys")
    group.add_argument("--customers", type=int, default=20_000, help="distinct customers")
    group.add_argument("--pay-share", type=float, default=0.87)
    group.add_argument("--cancel-share", type=float, default=0.08)
    group.add_argument("--refund-share", type=float, default=0.02, help="of paid orders")
    group.add_argument("--carrier", default="sf-express", help="one of the server's carriers")
    group.add_argument(
        "--provider-url",
        default="",
        help="pay at this payment provider (its webhook pays the order); empty: ConfirmPayment",
    )
    group.add_argument(
        "--warehouse-per-process", type=int, default=8, help="warehouse users per load process"
    )


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    install_tally(environment, tally)
    # Quitting listeners run last-added first: this one must run before the tally is written.
    environment.events.quitting.add_listener(_left_unshipped)
    processes = options.expect_workers if isinstance(environment.runner, MasterRunner) else 1
    # Fixed users are dispatched first and round-robin, so each load process gets its share.
    Warehouse.fixed_count = options.warehouse_per_process * max(1, processes)


def _day(options: Any) -> CompressedDay:
    return CompressedDay(
        DayCurve(),
        duration_s=options.day_duration,
        peak_hold_s=options.peak_hold,
        scale=options.scale,
    )


class Buyer(GrpcUser):
    """One buyer journey per --pacing seconds."""

    rejections = REJECTIONS
    wait_time = constant(0)  # replaced per user in on_start, once options are known

    def on_start(self) -> None:
        super().on_start()
        self.options = self.environment.parsed_options
        self.api = Api(self.options.api)
        checkout = (
            ProviderCheckout(self.options.provider_url, self.environment.events.request.fire)
            if self.options.provider_url
            else None
        )
        self.shop = make_shop(self.api, self.inventory, self.orders, checkout, gevent.sleep)
        self.skus = catalogue(self.options.catalogue_prefix, self.options.catalogue_size)
        self.ids = OrderIds(self.options.run_tag)
        pacing = PoissonPacing(self.options.pacing)
        self.wait_time = pacing  # type: ignore[method-assign]
        gevent.sleep(pacing.first_delay())

    @task
    def journey(self) -> None:
        """Browse, order, then pay, cancel or walk away; look the order up afterwards."""
        buyer_journey(self.shop, self.api is not Api.INVENTORY, self.options, self.ids, self.skus)


def buyer_journey(
    shop: Any, orders_api: bool, options: Any, ids: OrderIds, skus: list[str]
) -> None:
    """One buyer's visit through `shop` (gRPC or HTTP), paid orders queued for shipping."""
    customer = f"cust-{random.randrange(options.customers)}"
    for _ in range(random.randint(1, 3)):
        if shop.browse(random.sample(skus, random.randint(1, 4))) is not Outcome.DONE:
            return
    lines = [
        (sku, random.choice((1, 1, 1, 2)))
        for sku in random.sample(skus, random.choice((1, 1, 1, 2, 2, 3)))
    ]
    outcome, placed = shop.place(ids.next(), customer, lines, options.payment_window)
    if placed is None:
        tally[f"place_{outcome.value}"] += 1
        return
    tally["orders_placed"] += 1
    gevent.sleep(random.uniform(0.2, 1.0))  # to the payment page and back
    roll = random.random()
    if roll >= options.pay_share + options.cancel_share:
        tally["orders_abandoned"] += 1
        return
    if roll >= options.pay_share:
        outcome = shop.cancel(placed, "changed my mind")
        tally[f"cancel_{outcome.value}"] += 1
        return
    outcome = shop.pay(placed)
    tally[f"pay_{outcome.value}"] += 1
    if outcome is not Outcome.DONE:
        return
    tally["units_paid"] += placed.units
    if random.random() < 0.6:
        shop.look_up(placed)
    if random.random() < 0.25:
        shop.list_mine(customer)
    # A hold cannot be released once committed: refunds exist only with orders.
    if orders_api and random.random() < options.refund_share:
        outcome = shop.cancel(placed, "refund requested")
        tally[f"refund_{outcome.value}"] += 1
        if outcome is Outcome.DONE:
            tally["units_refunded"] += placed.units
        return
    if orders_api:
        paid_orders.put(placed.order_id)


class Warehouse(GrpcUser):
    """Ships the orders paid in this load process, then records transit and delivery."""

    rejections = REJECTIONS
    wait_time = constant(0)
    fixed_count = 8  # set per run in _init

    def on_start(self) -> None:
        super().on_start()
        self.shop = OrderShop(self.inventory, self.orders)
        self.carrier = self.environment.parsed_options.carrier

    @task
    def ship_next(self) -> None:
        """Take one paid order and see it delivered."""
        try:
            order_id = paid_orders.get(timeout=1.0)
        except Empty:
            return
        tracking = f"SF{random.getrandbits(40):012d}"
        outcome = self.shop.ship(order_id, self.carrier, tracking)
        tally[f"ship_{outcome.value}"] += 1
        if outcome is not Outcome.DONE:
            return
        if self.shop.in_transit(order_id) is Outcome.DONE:
            tally[f"deliver_{self.shop.delivered(order_id).value}"] += 1


def _left_unshipped(**_: Any) -> None:
    if paid_orders.qsize():
        tally["left_unshipped"] = paid_orders.qsize()


class ReferenceDay(LoadTestShape):
    """Buyers for the compressed day's order rate, plus the warehouse users."""

    def __init__(self) -> None:
        super().__init__()
        self._day: CompressedDay | None = None
        self._planned = False

    def tick(self) -> tuple[int, float] | None:
        """Users for this second of the run."""
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        if self._day is None:
            self._day = _day(options)
        run_s = self.get_run_time()
        if not self._planned:
            self._planned = True
            write_plan(
                options.run_dir,
                {
                    "scenario": "day",
                    "started_at": time.time() - run_s,
                    "duration_s": self._day.duration_s,
                    "plateau": list(self._day.plateau),
                    "peak_per_s": self._day.peak_per_s,
                    "scale": self._day.scale,
                    "pacing_s": options.pacing,
                    "api": options.api,
                },
            )
        if run_s >= self._day.duration_s:
            return None
        buyers = max(1, math.ceil(self._day.rate(run_s) * options.pacing))
        return buyers + Warehouse.fixed_count, 100.0
