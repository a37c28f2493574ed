"""The reference day's plateau, for the carrier outage scenario (`make load-outage`).

    locust -f loadtests/locust/outage.py --headless --host 127.0.0.1:50051 \
        --plateau-duration 180 --scale 0.2

Buyers create an order and pay it, at the plateau's 237 orders/s times --scale, for
--plateau-duration seconds; Poisson arrivals as in the day (day.py). Nobody ships here: the
fulfilment workers do, through the simulated warehouse and carriers, and the scenario's
driver (loadtests/outage.py) takes the primary carrier down for part of the run and
measures what happened to the paid orders.
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
from locust import LoadTestShape, constant, events, task

from loadtests.locust.daycurve import DayCurve
from loadtests.locust.interceptor import RejectionPolicy
from loadtests.locust.options import add_common_options, catalogue
from loadtests.locust.pacing import PoissonPacing
from loadtests.locust.record import install_tally, write_plan
from loadtests.locust.shop import Api, OrderIds, Outcome, make_shop, tally

_REJECTED = frozenset({grpc.StatusCode.FAILED_PRECONDITION})
REJECTIONS = RejectionPolicy(
    expected={
        "OrderService/CreateOrder": _REJECTED,
        "OrderService/ConfirmPayment": _REJECTED,
    }
)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_common_options(parser)
    group = parser.add_argument_group("plateau")
    group.add_argument("--plateau-duration", type=float, default=180.0, help="seconds of load")
    group.add_argument("--scale", type=float, default=1.0, help="factor on the plateau's rate")
    group.add_argument("--pacing", type=float, default=2.0, help="seconds between journeys")
    group.add_argument("--customers", type=int, default=20_000, help="distinct customers")


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    if environment.parsed_options is not None:
        install_tally(environment, tally)


class Buyer(GrpcUser):
    """One order, paid, per --pacing seconds."""

    rejections = REJECTIONS
    wait_time = constant(0)  # replaced per user in on_start, once options are known

    def on_start(self) -> None:
        super().on_start()
        self.options = self.environment.parsed_options
        self.shop = make_shop(Api.ORDERS, self.inventory, self.orders)
        self.skus = catalogue(self.options.catalogue_prefix, self.options.catalogue_size)
        self.ids = OrderIds(self.options.run_tag)
        pacing = PoissonPacing(self.options.pacing)
        self.wait_time = pacing  # type: ignore[method-assign]
        gevent.sleep(pacing.first_delay())

    @task
    def order_and_pay(self) -> None:
        """CreateOrder of one to three lines, then ConfirmPayment."""
        customer = f"cust-{random.randrange(self.options.customers)}"
        lines = [
            (sku, random.choice((1, 1, 1, 2)))
            for sku in random.sample(self.skus, random.choice((1, 1, 1, 2, 2, 3)))
        ]
        outcome, placed = self.shop.place(
            self.ids.next(), customer, lines, self.options.payment_window
        )
        if placed is None:
            tally[f"place_{outcome.value}"] += 1
            return
        outcome = self.shop.pay(placed)
        tally[f"pay_{outcome.value}"] += 1
        if outcome is Outcome.DONE:
            tally["units_paid"] += placed.units


class Plateau(LoadTestShape):
    """Buyers for the plateau's rate times --scale, then stop."""

    def __init__(self) -> None:
        super().__init__()
        self._planned = False

    def tick(self) -> tuple[int, float] | None:
        """Users for this second of the run."""
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        rate = DayCurve().peak_per_s * options.scale
        run_s = self.get_run_time()
        if not self._planned:
            self._planned = True
            write_plan(
                options.run_dir,
                {
                    "scenario": "outage",
                    "started_at": time.time() - run_s,
                    "duration_s": options.plateau_duration,
                    "peak_per_s": rate,
                    "scale": options.scale,
                    "pacing_s": options.pacing,
                },
            )
        if run_s >= options.plateau_duration:
            return None
        return max(1, math.ceil(rate * options.pacing)), 100.0
