"""`make load-fanout`: does a crowd of open WatchOrders streams slow the writers?

    python -m loadtests.fanout --streams 500 --duration 10

One fresh local stack (or STOCKCORE_TARGET), one load process, three phases of the same
closed loop of Reserves (`--callers`, 64) beside a steady trickle of CreateOrders
(`--orders-per-s`, 50) for `--customers` shoppers:

1. *no streams*;
2. *streams joining*: `--streams` WatchOrders streams open at once, each a checkout page
   following its shopper's orders from the start of the history (after_cursor 0), so
   they all catch up through PostgreSQL while the writers work;
3. *streams open*: the same streams, caught up, woken by every new event.

It prints each phase's Reserve rate and p99 and the CreateOrder p99, and the targets:
Reserve with the streams open at >= 80 % of its rate without, and every CreateOrder
answered (the writers' connection pool not starved by the readers).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as inv
from stockcore.v1 import inventory_pb2_grpc as inv_grpc
from stockcore.v1 import orders_pb2 as ords
from stockcore.v1 import orders_pb2_grpc as ords_grpc

from loadtests import report
from loadtests.arguments import non_negative_int, positive_float, positive_int
from loadtests.driver import RunResult, merge, percentile, record_closed_loop, run_on_uvloop
from loadtests.locust.options import catalogue
from loadtests.locust.shop import CURRENCY, unit_price_minor
from loadtests.stack import open_stack, stock_catalogue

ROOT = Path(__file__).resolve().parent.parent
DEEP_STOCK = 1_000_000_000
_CALLER = (("stockcore-caller", "loadtests-fanout"),)
_TTL = duration_pb2.Duration(seconds=900)


class Orders:
    """CreateOrders at a steady rate, round-robin over the shoppers; latencies kept."""

    def __init__(self, channel: grpc.aio.Channel, skus: list[str], customers: int) -> None:
        self._stub = ords_grpc.OrderServiceStub(channel)
        self._skus = skus
        self._customers = customers
        self._ids = itertools.count()
        self._prefix = f"fo-{os.getpid()}-{random.getrandbits(24):x}-"
        self.latencies: list[tuple[float, float]] = []
        self.failed: dict[str, int] = {}

    async def one(self) -> None:
        n = next(self._ids)
        sku = random.choice(self._skus)
        sent = time.monotonic()
        try:
            await self._stub.CreateOrder(
                ords.CreateOrderRequest(
                    order_id=f"{self._prefix}{n}",
                    customer_id=f"shopper-{n % self._customers}",
                    lines=[
                        ords.OrderLine(sku=sku, quantity=1, unit_price_minor=unit_price_minor(sku))
                    ],
                    currency_code=CURRENCY,
                    payment_window=_TTL,
                ),
                timeout=10,
                metadata=_CALLER,
            )
        except grpc.aio.AioRpcError as exc:
            self.failed[exc.code().name] = self.failed.get(exc.code().name, 0) + 1
        else:
            self.latencies.append((sent, time.monotonic() - sent))

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            task = asyncio.create_task(self.one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*pending)

    def p99_ms(self, start: float, end: float) -> float:
        window = sorted(took for sent, took in self.latencies if start <= sent < end)
        return percentile(window, 99) * 1000


class Watchers:
    """Streams following one shopper's orders each, counting the events they receive."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = ords_grpc.OrderServiceStub(channel)
        self.events = 0
        self.ended: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def open(self, count: int, customers: int) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(f"shopper-{i % customers}")) for i in range(count)
        ]

    async def _follow(self, customer: str) -> None:
        call = self._stub.WatchOrders(
            ords.WatchOrdersRequest(customer_id=customer, after_cursor=0), metadata=_CALLER
        )
        try:
            async for _ in call:
                self.events += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                self.ended[exc.code().name] = self.ended.get(exc.code().name, 0) + 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _reserves(
    stub: inv_grpc.InventoryServiceStub, skus: list[str], callers: int, duration: float
) -> RunResult:
    ids = itertools.count()
    prefix = f"fr-{os.getpid()}-{random.getrandbits(24):x}-"

    async def reserve(_: int) -> object:
        await stub.Reserve(
            inv.ReserveRequest(
                reservation_id=f"{prefix}{next(ids)}",
                lines=[inv.Line(sku=random.choice(skus), quantity=1)],
                ttl=_TTL,
            ),
            timeout=10,
            metadata=_CALLER,
        )
        return "ok"

    return merge([await record_closed_loop(reserve, concurrency=callers, duration=duration)])


async def measure(args: argparse.Namespace, target: str, run: report.Run) -> bool:
    skus = catalogue(f"FAN{run.tag[-6:]}", args.catalogue)
    await stock_catalogue(target, skus, DEEP_STOCK, key=f"fanout-{os.getpid()}")
    # Writers and readers on separate connections, as separate services would be.
    async with (
        grpc.aio.insecure_channel(target) as writers,
        grpc.aio.insecure_channel(target) as order_channel,
        grpc.aio.insecure_channel(target) as readers,
    ):
        stub = inv_grpc.InventoryServiceStub(writers)
        orders = Orders(order_channel, skus, args.customers)
        # A history for the streams to catch up on.
        for _ in range(args.history // 100):
            await asyncio.gather(*(orders.one() for _ in range(100)))
        stop = asyncio.Event()
        trickle = asyncio.create_task(orders.run(args.orders_per_s, stop))
        watchers = Watchers(readers)
        phases: list[tuple[str, RunResult, float, float]] = []
        try:
            started = time.monotonic()
            alone = await _reserves(stub, skus, args.callers, args.duration)
            phases.append(("no streams", alone, started, time.monotonic()))
            started = time.monotonic()
            watchers.open(args.streams, args.customers)
            joining = await _reserves(stub, skus, args.callers, args.duration)
            phases.append(("streams joining", joining, started, time.monotonic()))
            started = time.monotonic()
            events_before = watchers.events
            crowded = await _reserves(stub, skus, args.callers, args.duration)
            phases.append(("streams open", crowded, started, time.monotonic()))
            streamed = watchers.events - events_before
        finally:
            stop.set()
            await trickle
            await watchers.close()
    rows = [
        [name, f"{r.ops_per_s:,.0f}", f"{r.p99_ms:.1f}", f"{orders.p99_ms(s, e):.1f}", r.failures]
        for name, r, s, e in phases
    ]
    run.say(
        "# WatchOrders fan-out beside the writers",
        "",
        f"- command: `{' '.join(sys.argv[1:]) or '(defaults)'}` (python -m loadtests.fanout)",
        f"- machine: {report.describe_machine()}",
        "- one load process, the server, PostgreSQL and Redis share this machine's cores",
        f"- {args.callers} Reserve callers; CreateOrder at {args.orders_per_s:g}/s over "
        f"{args.customers} shoppers; {args.streams} streams, one per shopper's page, from "
        f"cursor 0 over a history of {args.history:,} orders; {args.duration:g} s per phase",
        "",
        *report.table(
            ["phase", "Reserve/s", "Reserve p99 ms", "CreateOrder p99 ms", "Reserve failures"],
            rows,
        ),
        "",
        f"- events delivered to the streams in the last phase: {streamed:,}; streams ended "
        f"by the server: {sum(watchers.ended.values())} {watchers.ended or ''}",
        f"- CreateOrders failed: {sum(orders.failed.values())} {orders.failed or ''}",
        "",
        "## Targets",
        "",
    )
    ratio = crowded.ops_per_s / alone.ops_per_s if alone.ops_per_s else 0.0
    joining_ratio = joining.ops_per_s / alone.ops_per_s if alone.ops_per_s else 0.0
    checks = [
        (
            ratio >= 0.8,
            f"Reserve with {args.streams} streams open >= 80 % of its rate without: "
            f"{ratio:.0%} (while they joined: {joining_ratio:.0%})",
        ),
        (
            not orders.failed and not watchers.ended,
            "every CreateOrder answered and no stream ended by the server "
            "(the writers' pool not starved)",
        ),
    ]
    run.target(checks[0][0], checks[0][1])
    run.check(checks[1][0], checks[1][1])
    return all(ok for ok, _ in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make load-fanout`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=non_negative_int, default=500)
    parser.add_argument("--callers", type=positive_int, default=64)
    parser.add_argument("--customers", type=positive_int, default=500)
    parser.add_argument("--orders-per-s", type=positive_float, default=50.0)
    parser.add_argument(
        "--history", type=non_negative_int, default=2000, help="orders before the streams"
    )
    parser.add_argument("--duration", type=positive_float, default=10.0, help="seconds per phase")
    parser.add_argument("--catalogue", type=positive_int, default=1000, help="SKUs")
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    return parser.parse_args(argv)


def main() -> None:
    """Entry point of `make load-fanout`."""
    args = parse_args()
    run = report.Run("fanout", Path(args.reports))
    with open_stack(ROOT / ".data" / "load") as stack:
        run_on_uvloop(measure(args, stack.target, run))
    raise SystemExit(run.finish())


if __name__ == "__main__":
    main()
