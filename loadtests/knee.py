"""The throughput knee by closed loop: CreateOrder alone, and create-then-pay checkouts, at
several caller counts, each beside the empty-call rate measured in the same run.

    python -m loadtests.knee --target 127.0.0.1:50051 --levels 16,64,128 --duration 5

Each caller (an asyncio task; the tasks spread over --processes spawned processes) starts its
next operation as soon as the last one ends, so the server is as busy as those callers can
make it: the rate where more callers only add latency is the knee. The empty call is a
do-nothing gRPC method served by a server process like stockcore's, which bounds what any
handler could reach with the same runtime on this machine.

With --api inventory the same is measured on Reserve and Reserve+Commit.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as inv
from stockcore.v1 import inventory_pb2_grpc as inv_grpc
from stockcore.v1 import orders_pb2 as ords
from stockcore.v1 import orders_pb2_grpc as ords_grpc

from loadtests.ceiling import measure_ceiling
from loadtests.driver import Op, RunResult, run_in_processes
from loadtests.locust.options import catalogue
from loadtests.locust.shop import CURRENCY, unit_price_minor

_TIMEOUT = 10.0
_CALLER = (("stockcore-caller", "loadtests-knee"),)
# Holds outlive the measurement, so no expiry sweep competes with it.
_WINDOW = duration_pb2.Duration(seconds=900)


class _Orders:
    """One order per call (and its payment when `pay`), on OrderService."""

    def __init__(self, channel: grpc.aio.Channel, skus: Sequence[str], pay: bool) -> None:
        self._channel = channel
        self._stub = ords_grpc.OrderServiceStub(channel)
        self._skus = skus
        self._pay = pay
        self._ids = itertools.count()
        self._prefix = f"knee-{os.getpid()}-{random.getrandbits(32):x}-"

    async def __call__(self, worker: int) -> object:
        order_id = f"{self._prefix}{next(self._ids)}"
        sku = random.choice(self._skus)
        try:
            reply = await self._stub.CreateOrder(
                ords.CreateOrderRequest(
                    order_id=order_id,
                    customer_id=f"knee-{worker}",
                    lines=[
                        ords.OrderLine(sku=sku, quantity=1, unit_price_minor=unit_price_minor(sku))
                    ],
                    currency_code=CURRENCY,
                    payment_window=_WINDOW,
                ),
                timeout=_TIMEOUT,
                metadata=_CALLER,
            )
            if not self._pay:
                return "created"
            await self._stub.ConfirmPayment(
                ords.ConfirmPaymentRequest(
                    order_id=order_id,
                    payment_id=f"pay-{order_id}",
                    amount_minor=reply.order.total_minor,
                    currency_code=CURRENCY,
                ),
                timeout=_TIMEOUT,
                metadata=_CALLER,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return "rejected"
            raise
        return "paid"

    async def aclose(self) -> None:
        await self._channel.close()


class _Holds:
    """The same on InventoryService: Reserve, and Commit when `pay`."""

    def __init__(self, channel: grpc.aio.Channel, skus: Sequence[str], pay: bool) -> None:
        self._channel = channel
        self._stub = inv_grpc.InventoryServiceStub(channel)
        self._skus = skus
        self._pay = pay
        self._ids = itertools.count()
        self._prefix = f"knee-{os.getpid()}-{random.getrandbits(32):x}-"

    async def __call__(self, worker: int) -> object:
        rid = f"{self._prefix}{next(self._ids)}"
        try:
            await self._stub.Reserve(
                inv.ReserveRequest(
                    reservation_id=rid,
                    lines=[inv.Line(sku=random.choice(self._skus), quantity=1)],
                    ttl=_WINDOW,
                ),
                timeout=_TIMEOUT,
                metadata=_CALLER,
            )
            if not self._pay:
                return "created"
            await self._stub.Commit(
                inv.CommitRequest(reservation_id=rid), timeout=_TIMEOUT, metadata=_CALLER
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return "rejected"
            raise
        return "paid"

    async def aclose(self) -> None:
        await self._channel.close()


async def open_op(target: str, api: str, prefix: str, size: int, pay: bool) -> Op:
    """Op factory (module level, so spawned load processes can build it)."""
    skus = catalogue(prefix, size)
    channel = grpc.aio.insecure_channel(target)
    return _Orders(channel, skus, pay) if api == "orders" else _Holds(channel, skus, pay)


@dataclass(frozen=True)
class KneeRow:
    """One caller count."""

    callers: int
    empty: RunResult
    create: RunResult
    checkout: RunResult


def measure(
    target: str,
    *,
    api: str,
    prefix: str,
    size: int,
    levels: Sequence[int],
    duration: float,
    processes: int,
) -> list[KneeRow]:
    """Empty call, create alone and checkout at each caller count, printing as it goes."""
    rows: list[KneeRow] = []
    print(table_header(api), flush=True)
    for callers in levels:
        empty = measure_ceiling(callers, duration, processes)
        results = [
            run_in_processes(
                functools.partial(open_op, target, api, prefix, size, pay),
                processes=processes,
                concurrency=callers,
                duration=duration,
            )
            for pay in (False, True)
        ]
        row = KneeRow(callers, empty, results[0], results[1])
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def table_header(api: str) -> str:
    """The Markdown header of the knee table."""
    create, checkout = (
        ("CreateOrder", "checkout (create+pay)")
        if api == "orders"
        else ("Reserve", "Reserve+Commit")
    )
    cells = [
        "callers",
        "empty call/s",
        f"{create}/s",
        "of empty",
        "p50 ms",
        "p99 ms",
        f"{checkout}/s",
        "of empty",
        "p50 ms",
        "p99 ms",
        "non-OK",
    ]
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def format_row(row: KneeRow) -> str:
    """One Markdown row of the knee table."""
    bad = {
        k: v
        for result in (row.create, row.checkout)
        for k, v in result.outcomes.items()
        if k not in ("created", "paid")
    }
    cells = [
        row.callers,
        f"{row.empty.ops_per_s:,.0f}",
        f"{row.create.ops_per_s:,.0f}",
        f"{row.create.ops_per_s / row.empty.ops_per_s:.0%}",
        f"{row.create.p50_ms:.1f}",
        f"{row.create.p99_ms:.1f}",
        f"{row.checkout.ops_per_s:,.0f}",
        f"{row.checkout.ops_per_s / row.empty.ops_per_s:.0%}",
        f"{row.checkout.p50_ms:.1f}",
        f"{row.checkout.p99_ms:.1f}",
        ", ".join(f"{k}={v}" for k, v in sorted(bad.items())) or "0",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def best_within(rows: Sequence[KneeRow], p99_bound_ms: float, checkout: bool) -> KneeRow | None:
    """The row with the highest rate whose p99 stays within the bound."""
    picked = [r for r in rows if (r.checkout if checkout else r.create).p99_ms <= p99_bound_ms]
    return max(picked, key=lambda r: (r.checkout if checkout else r.create).ops_per_s, default=None)


def main() -> None:
    """Measure against a running server whose catalogue is already stocked."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--api", choices=["orders", "inventory"], default="orders")
    parser.add_argument("--catalogue-prefix", default="LOAD")
    parser.add_argument("--catalogue-size", type=int, default=1000)
    parser.add_argument("--levels", default="16,64,128,256")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    measure(
        args.target,
        api=args.api,
        prefix=args.catalogue_prefix,
        size=args.catalogue_size,
        levels=[int(x) for x in args.levels.split(",")],
        duration=args.duration,
        processes=args.processes,
    )


if __name__ == "__main__":
    main()
