"""A flash sale: thousands of buyers at once for one SKU with --flash-stock units.

    locust -f loadtests/locust/flash.py --headless --host 127.0.0.1:50051 \
        -u 2000 -r 500 -t 120s --flash-sku FLASH-1 --flash-stock 1000

(`make load-flash` stocks a fresh SKU first and runs this with several load processes.)

Each buyer wants one unit. It creates an order (or, with --api inventory, reserves) and pays
it (or commits), except a few who walk away; their holds expire after --payment-window and
the units go back on sale. A buyer turned away as sold out (FAILED_PRECONDITION, reported
under the suffixed name "... [FAILED_PRECONDITION]", not a failure) looks at the stock: while
units are still held by others it tries again a little later, once nothing is held or
available it leaves. A call the server refuses for being at capacity (RESOURCE_EXHAUSTED,
reported as "... [RESOURCE_EXHAUSTED]" and counted as `refused` in the tally) is sent again
with the same id after the delay the refusal asks for, as the typed clients do.

The master watches the SKU and ends the run when it is sold out with nothing held. On exit it
checks through the API that exactly the stock was sold: on_hand 0, reserved 0, and as many
successful payments as units. The exit code is 1 when that does not hold.
"""

from __future__ import annotations

# First: patches gRPC for gevent before anything opens a channel.
from loadtests.locust.grpc_user import CHANNEL_OPTIONS, GrpcUser  # isort: skip

import random
from typing import Any

import gevent
import grpc
from locust import constant, events, task
from locust.exception import StopUser
from locust.runners import WorkerRunner
from stockcore.v1 import inventory_pb2, inventory_pb2_grpc

from loadtests.locust.interceptor import RejectionPolicy
from loadtests.locust.options import add_common_options
from loadtests.locust.record import install_tally
from loadtests.locust.shop import Api, OrderIds, Outcome, make_shop, tally

_REJECTED = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED})
REJECTIONS = RejectionPolicy(
    expected={
        "OrderService/CreateOrder": _REJECTED,
        "OrderService/ConfirmPayment": _REJECTED,
        "InventoryService/Reserve": _REJECTED,
        "InventoryService/Commit": _REJECTED,
        "InventoryService/GetStock": frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}),
    }
)
_PAY = {Api.ORDERS: "OrderService/ConfirmPayment", Api.INVENTORY: "InventoryService/Commit"}
_FAILURES_BEFORE_GIVING_UP = 3


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_common_options(parser)
    group = parser.add_argument_group("flash sale")
    group.add_argument("--flash-sku", default="FLASH-SALE-1", help="the SKU on sale")
    group.add_argument("--flash-stock", type=int, default=1000, help="units it was stocked with")
    group.add_argument("--abandon-share", type=float, default=0.05, help="buyers who never pay")


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    if environment.parsed_options is not None:
        install_tally(environment, tally)


class FlashBuyer(GrpcUser):
    """Wants one unit of the flash SKU."""

    rejections = REJECTIONS
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.options = self.environment.parsed_options
        self.shop = make_shop(Api(self.options.api), self.inventory, self.orders)
        self.ids = OrderIds(self.options.run_tag)
        self.customer = f"flash-{random.getrandbits(48):x}"
        self.failures = 0

    @task
    def buy(self) -> None:
        """Try once; leave after buying, walking away, or seeing the sale over."""
        sku = self.options.flash_sku
        order_id = self.ids.next()
        while True:
            outcome, placed = self.shop.place(
                order_id, self.customer, [(sku, 1)], self.options.payment_window
            )
            if outcome is not Outcome.REFUSED:
                break
            self._wait_as_told()
        if placed is not None:
            tally["orders_placed"] += 1
            if random.random() < self.options.abandon_share:
                tally["orders_abandoned"] += 1
                raise StopUser
            while (outcome := self.shop.pay(placed)) is Outcome.REFUSED:
                self._wait_as_told()
            tally[f"pay_{outcome.value}"] += 1
            if outcome is Outcome.DONE:
                tally["units_paid"] += placed.units
            raise StopUser
        if outcome is Outcome.REJECTED:
            tally["sold_out_seen"] += 1
            level = self.shop.stock(sku)
            if level is not None and level.reserved == 0 and level.available == 0:
                raise StopUser
            gevent.sleep(random.uniform(1.0, 3.0))  # others hold units that may come back
            return
        self.failures += 1
        if self.failures >= _FAILURES_BEFORE_GIVING_UP:
            tally["buyers_gave_up"] += 1
            raise StopUser
        gevent.sleep(1.0)

    def _wait_as_told(self) -> None:
        """A refusal: nothing was applied; wait as long as it asked (jittered)."""
        tally["refused"] += 1
        gevent.sleep(self.shop.pushback * random.uniform(0.8, 1.2))


def _stock(environment: Any, channel: grpc.Channel) -> inventory_pb2.StockLevel:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    request = inventory_pb2.GetStockRequest(skus=[environment.parsed_options.flash_sku])
    return stub.GetStock(request, timeout=5.0).levels[0]


def _watch_sale(environment: Any) -> None:
    """End the run once the SKU is sold out with nothing held (or no buyer is left)."""
    with grpc.insecure_channel(environment.host, options=CHANNEL_OPTIONS) as channel:
        gevent.sleep(3.0)
        while True:
            try:
                level = _stock(environment, channel)
                if level.on_hand == 0 and level.reserved == 0:
                    break
            except grpc.RpcError:
                pass
            if environment.runner.user_count == 0:
                break
            gevent.sleep(1.0)
    # Workers report statistics every 3 s: let the last payments reach the master's totals.
    gevent.sleep(5.0)
    environment.runner.quit()


@events.test_start.add_listener
def _start_watching(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_watch_sale, environment)


@events.quitting.add_listener
def _verdict(environment: Any, **_: Any) -> None:
    """Exactly the stock sold, nothing oversold: print it, and fail the run otherwise."""
    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    pay_name = _PAY[Api(options.api)]
    entry = environment.stats.entries.get((pay_name, "grpc"))
    paid = entry.num_requests - entry.num_failures if entry is not None else 0
    try:
        with grpc.insecure_channel(environment.host, options=CHANNEL_OPTIONS) as channel:
            level = _stock(environment, channel)
    except grpc.RpcError as error:
        print(f"flash sale: GetStock failed after the run: {error.code().name}", flush=True)
        environment.process_exit_code = 1
        return
    stock = options.flash_stock
    sold = stock - level.on_hand
    oversold = max(0, paid - stock, -level.on_hand)
    exact = level.on_hand == 0 and level.reserved == 0 and paid == stock
    print(
        f"flash sale of {options.flash_sku}: stock {stock}, successful payments {paid}, "
        f"deducted {sold}, on_hand {level.on_hand}, reserved {level.reserved}, "
        f"oversold {oversold} -> "
        + ("OK: exactly the stock sold, none oversold" if exact else "NOT EXACT"),
        flush=True,
    )
    if not exact:
        environment.process_exit_code = 1
