"""`make load-knee`: the throughput knee by closed loop: CreateOrder alone, and create-then-pay
checkouts, at several caller counts, each beside the empty-call rate measured in the same run.

    python -m loadtests.knee --levels 16,32,64,128,256 --duration 5 --processes 1

Each caller (an asyncio task; the tasks spread over --processes load processes) starts its
next operation as soon as the last one ends, so the server is as busy as those callers can
make it: the rate where more callers only add latency is the knee. The empty call is a
do-nothing gRPC method served by a server process like stockcore's (loadtests/edge.py), which
bounds what any handler could reach with the same runtime on this machine. Rates and
percentiles are the driver's own (loadtests/driver.py: every latency kept, exact percentiles).

Like the Locust scenarios it starts a fresh local stack under .data/load (or uses the server
named by STOCKCORE_TARGET, whose catalogue it stocks), checks the invariants after the run,
and writes summary.md and knee.png to .reports/knee-<time>/.

With --api inventory the same is measured on Reserve and Reserve+Commit.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as inv
from stockcore.v1 import inventory_pb2_grpc as inv_grpc
from stockcore.v1 import orders_pb2 as ords
from stockcore.v1 import orders_pb2_grpc as ords_grpc

from loadtests import invariants, plots, report
from loadtests.arguments import caller_counts, positive_float, positive_int
from loadtests.ceiling import measure_ceiling
from loadtests.driver import Op, RunResult, run_in_processes
from loadtests.locust.options import catalogue
from loadtests.locust.shop import CURRENCY, unit_price_minor
from loadtests.stack import open_stack, stock_catalogue

ROOT = Path(__file__).resolve().parent.parent
# Deep enough that no SKU sells out however long the knee runs.
DEEP_STOCK = 1_000_000_000

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
    run: report.Run,
    target: str,
    *,
    api: str,
    prefix: str,
    size: int,
    levels: Sequence[int],
    duration: float,
    processes: int,
) -> list[KneeRow]:
    """Empty call, create alone and checkout at each caller count, reported as it goes."""
    rows: list[KneeRow] = []
    run.say(*table_header(api))
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
        run.say(format_row(row))
    return rows


def labels(api: str) -> tuple[str, str]:
    """What create alone and a checkout are, in `api`."""
    return ("CreateOrder", "checkout") if api == "orders" else ("Reserve", "Reserve+Commit")


def table_header(api: str) -> list[str]:
    """The Markdown header of the knee table."""
    create, checkout = labels(api)
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
    return report.table(cells, [])


def non_ok(row: KneeRow) -> dict[str, int]:
    """Calls of the row answered otherwise than created or paid, by outcome (the stock is
    too deep for any to be refused)."""
    found: dict[str, int] = {}
    for result in (row.create, row.checkout):
        for outcome, count in result.outcomes.items():
            if outcome not in ("created", "paid"):
                found[outcome] = found.get(outcome, 0) + count
    return found


def format_row(row: KneeRow) -> str:
    """One Markdown row of the knee table."""
    bad = non_ok(row)
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make load-knee`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", choices=["orders", "inventory"], default="orders")
    parser.add_argument(
        "--levels", type=caller_counts, default="16,32,64,128,256", help="caller counts"
    )
    parser.add_argument("--duration", type=positive_float, default=5.0, help="seconds per cell")
    parser.add_argument("--processes", type=positive_int, default=1, help="load processes per cell")
    parser.add_argument(
        "--p99-bound", type=positive_float, default=100.0, help="ms, for the targets"
    )
    parser.add_argument("--server-workers", type=positive_int, default=1, help="(fresh stack)")
    parser.add_argument("--catalogue", type=positive_int, default=1000, help="SKUs")
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    args = parser.parse_args(argv)
    if min(args.levels) < args.processes:
        parser.error(
            f"every level needs at least one caller per load process: --levels {min(args.levels)}"
            f" is below --processes {args.processes}"
        )
    return args


def main() -> int:
    """Entry point of `make load-knee`."""
    args = parse_args()
    run = report.Run("knee", Path(args.reports))
    prefix = f"KNEE{run.tag[-6:]}"
    skus = catalogue(prefix, args.catalogue)
    with open_stack(ROOT / ".data" / "load", server_workers=args.server_workers) as stack:
        run.say(
            f"# Throughput knee, closed loop beside the empty call ({args.api} API)",
            "",
            f"- command: `{' '.join(sys.argv[1:])}` (python -m loadtests.knee)",
            f"- machine: {report.describe_machine()}",
            "- the load processes, the server, PostgreSQL and Redis all share this machine's cores",
            f"- server: {'fresh local stack' if stack.owned else 'existing, ' + stack.target}, "
            f"{args.server_workers} worker process(es)",
            f"- each cell: {args.duration:g} s after 1 s warm-up, {args.processes} load "
            "process(es); rates and percentiles over every call of the window (the driver's)",
            f"- load average before the run: {Path('/proc/loadavg').read_text().split()[:3]}",
            "",
        )
        asyncio.run(stock_catalogue(stack.target, skus, DEEP_STOCK, key=run.tag))
        sampler = stack.sampler([])
        sampler.start()
        try:
            rows = measure(
                run,
                stack.target,
                api=args.api,
                prefix=prefix,
                size=args.catalogue,
                levels=args.levels,
                duration=args.duration,
                processes=args.processes,
            )
        finally:
            sampler.stop()
        run.say("", "## After the run", "")
        unanswered = {f"{row.callers} callers": bad for row in rows if (bad := non_ok(row))}
        run.check(
            not unanswered,
            "every call answered created or paid" + (f"; not: {unanswered}" if unanswered else ""),
        )
        invariants.check_after_run(run, stack.target, stack.pg_dsn, skus)
    server_rss, _ = sampler.max_rss_mb("server")
    create_label, checkout_label = labels(args.api)
    run.say("", "## Targets", "")
    for name, checkout, wanted in ((create_label, False, 1500), (checkout_label, True, 600)):
        best = best_within(rows, args.p99_bound, checkout)
        result = None if best is None else best.checkout if checkout else best.create
        run.target(
            best is not None and result is not None and result.ops_per_s >= wanted,
            f"closed loop, {name} >= {wanted:,}/s with p99 <= {args.p99_bound:g} ms: "
            + (
                f"{result.ops_per_s:,.0f}/s at {best.callers} callers (p99 {result.p99_ms:.0f} ms;"
                f" empty call {best.empty.ops_per_s:,.0f}/s)"
                if best is not None and result is not None
                else "none within the bound"
            ),
        )
    run.target(
        server_rss <= 150.0,
        f"server RSS per process, max over the run: {server_rss:,.0f} MB <= 150 MB",
    )
    title = f"Throughput knee, closed loop beside the empty call ({args.api} API)"
    if plots.plot_knee(rows, labels(args.api), run.dir / "knee.png", title):
        run.say("", f"plot: {run.dir.name}/knee.png")
    return run.finish()


if __name__ == "__main__":
    raise SystemExit(main())
