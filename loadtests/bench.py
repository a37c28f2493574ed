"""`make bench`: Reserve/Commit throughput and latency beside the empty-call ceiling
from the same run, sold-out rejections, and two classic designs under the same
hot-SKU contention with their oversell counts.

PostgreSQL and Redis are project-owned (under .data/bench) unless STOCKCORE_PG_DSN and
STOCKCORE_REDIS_URL name servers; the stockcore server runs in its own process and the
load comes from another, as a caller's would.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import platform
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from loadtests.ceiling import measure_ceiling
from loadtests.classic import ClassicResult, run_classic
from loadtests.driver import Op, RunResult, run_in_processes
from server.devservers import LocalStockcore, local_servers
from server.storage.migrations import migrate

SHARDS = 16
HOT = [f"BENCH-HOT-{i}" for i in range(4)]
SOLD_OUT = "BENCH-SOLD-OUT"
DEEP_STOCK = 1_000_000_000


class _Alternating:
    """Each worker reserves one unit of a hot SKU, then commits it: one call per op."""

    def __init__(self, channel: grpc.aio.Channel, skus: list[str]) -> None:
        self._channel = channel
        self._stub = pb_grpc.InventoryServiceStub(channel)
        self._skus = skus
        self._held: dict[int, str] = {}
        self._ids = itertools.count()
        self._prefix = f"b{os.getpid()}-{random.getrandbits(32):x}-"

    async def __call__(self, worker: int) -> object:
        held = self._held.pop(worker, None)
        if held is not None:
            await self._stub.Commit(pb.CommitRequest(reservation_id=held), timeout=10)
            return "commit"
        rid = f"{self._prefix}{next(self._ids)}"
        request = pb.ReserveRequest(
            reservation_id=rid, lines=[pb.Line(sku=random.choice(self._skus), quantity=1)]
        )
        await self._stub.Reserve(request, timeout=10)
        self._held[worker] = rid
        return "reserve"

    async def aclose(self) -> None:
        await self._channel.close()


class _SoldOut:
    """Every call asks for a SKU with nothing left: the gate must turn it away."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stub = pb_grpc.InventoryServiceStub(channel)
        self._ids = itertools.count()

    async def __call__(self, worker: int) -> object:
        request = pb.ReserveRequest(
            reservation_id=f"so-{os.getpid()}-{next(self._ids)}",
            lines=[pb.Line(sku=SOLD_OUT, quantity=1)],
        )
        try:
            await self._stub.Reserve(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return "rejected"
            raise
        return "held?!"

    async def aclose(self) -> None:
        await self._channel.close()


async def open_alternating(target: str) -> Op:
    """Op factory for Reserve/Commit (module level so worker processes can build it)."""
    return _Alternating(grpc.aio.insecure_channel(target), HOT)


async def open_sold_out(target: str) -> Op:
    """Op factory for sold-out Reserves."""
    return _SoldOut(grpc.aio.insecure_channel(target))


@dataclass
class Sale:
    """stockcore under the classic designs' contention: reserve then commit one unit."""

    attempts_per_s: float
    p50_ms: float
    p99_ms: float
    sold: int
    oversold: int
    initial: int


async def _stockcore_sale(target: str, concurrency: int, duration: float, per_sku: int) -> Sale:
    from loadtests.driver import run_closed_loop

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        skus = [f"SALE-{random.getrandbits(32):x}-{i}" for i in range(4)]
        for sku in skus:
            await stub.AdjustStock(
                pb.AdjustStockRequest(
                    sku=sku, on_hand=per_sku, reason="bench", idempotency_key=f"init-{sku}"
                )
            )
        offered = list(skus)
        stop = asyncio.Event()
        ids = itertools.count()
        sold = 0

        async def buy(worker: int) -> object:
            nonlocal sold
            if not offered:
                stop.set()
                return "sold-out"
            sku = random.choice(offered)
            rid = f"sale-{next(ids)}"
            try:
                await stub.Reserve(
                    pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, quantity=1)]),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                if sku in offered:
                    offered.remove(sku)
                return "empty"
            await stub.Commit(pb.CommitRequest(reservation_id=rid), timeout=10)
            sold += 1
            return "sold"

        run = await run_closed_loop(
            buy, concurrency=concurrency, duration=duration, warmup=0.0, stop=stop
        )
        levels = (await stub.GetStock(pb.GetStockRequest(skus=skus))).levels
        deducted = sum(per_sku - level.on_hand for level in levels)
        assert deducted == sold, f"stock moved by {deducted} but {sold} sales were acknowledged"
        return Sale(
            run.ops_per_s, run.p50_ms, run.p99_ms, sold, max(0, sold - 4 * per_sku), 4 * per_sku
        )


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ms(value: float) -> str:
    return f"{value:.1f}"


async def _prepare(dsn: str, target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        for sku in HOT:
            await stub.AdjustStock(
                pb.AdjustStockRequest(
                    sku=sku,
                    on_hand=DEEP_STOCK,
                    reason="bench",
                    idempotency_key=f"bench-{sku}-{random.random()}",
                )
            )
        await stub.AdjustStock(
            pb.AdjustStockRequest(
                sku=SOLD_OUT, on_hand=0, reason="bench", idempotency_key=f"so-{random.random()}"
            )
        )


def _describe_machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = subprocess.run(
        ["postgres", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"{os.cpu_count()} cores, {cpu}; Python {platform.python_version()}; {pg}"


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, SHARDS)
    finally:
        await conn.close()


def run_bench(
    pg_dsn: str,
    redis_url: str,
    levels: list[int],
    duration: float,
    data_dir: Path,
    contention: bool = True,
) -> None:
    """Run every measurement and print the tables."""
    asyncio.run(_migrate(pg_dsn))
    server = LocalStockcore(pg_dsn, redis_url, SHARDS, data_dir)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    try:
        loop.run_until_complete(_prepare(pg_dsn, server.target))
        print(f"machine: {_describe_machine()}")
        print(f"each cell: one closed-loop run of {duration:g} s, load from one separate process\n")
        print(
            _row(
                [
                    "callers",
                    "empty call/s",
                    "Reserve+Commit call/s",
                    "ratio",
                    "p50 ms",
                    "p99 ms",
                    "sold-out reject/s",
                    "ratio",
                    "p50 ms",
                    "p99 ms",
                ]
            )
        )
        print(_row(["---"] * 10))
        for concurrency in levels:
            ceiling = measure_ceiling(concurrency, duration, 1)
            rc = run_in_processes(
                functools.partial(open_alternating, server.target),
                processes=1,
                concurrency=concurrency,
                duration=duration,
            )
            so = run_in_processes(
                functools.partial(open_sold_out, server.target),
                processes=1,
                concurrency=concurrency,
                duration=duration,
            )
            _check(rc, {"reserve", "commit"})
            _check(so, {"rejected"})
            print(
                _row(
                    [
                        str(concurrency),
                        f"{ceiling.ops_per_s:,.0f}",
                        f"{rc.ops_per_s:,.0f}",
                        f"{rc.ops_per_s / ceiling.ops_per_s:.0%}",
                        _ms(rc.p50_ms),
                        _ms(rc.p99_ms),
                        f"{so.ops_per_s:,.0f}",
                        f"{so.ops_per_s / ceiling.ops_per_s:.0%}",
                        _ms(so.p50_ms),
                        _ms(so.p99_ms),
                    ]
                ),
                flush=True,
            )

        if not contention:
            return
        buyers = 64
        print(
            f"\nhot-SKU contention: {buyers} buyers, 4 SKUs x 200 units, one unit per purchase, until sold out\n"
        )
        print(_row(["design", "attempts/s", "p50 ms", "p99 ms", "sold", "stock", "oversold"]))
        print(_row(["---"] * 7))
        sale = loop.run_until_complete(_stockcore_sale(server.target, buyers, 30.0, 200))
        print(
            _row(
                [
                    "stockcore (Reserve+Commit)",
                    f"{sale.attempts_per_s:,.0f}",
                    _ms(sale.p50_ms),
                    _ms(sale.p99_ms),
                    str(sale.sold),
                    str(sale.initial),
                    str(sale.oversold),
                ]
            ),
            flush=True,
        )
        for design in ("select-check-update", "select-for-update"):
            result: ClassicResult = loop.run_until_complete(
                run_classic(
                    pg_dsn,
                    design,
                    concurrency=buyers,
                    duration=30.0,
                    hot_skus=4,
                    stock_per_sku=200,
                )
            )
            print(
                _row(
                    [
                        design,
                        f"{result.attempts_per_s:,.0f}",
                        _ms(result.p50_ms),
                        _ms(result.p99_ms),
                        str(result.sold),
                        str(result.initial_stock),
                        str(result.oversold),
                    ]
                ),
                flush=True,
            )
    finally:
        server.stop()
        loop.close()


def _check(result: RunResult, allowed: set[str]) -> None:
    unexpected = {k: v for k, v in result.outcomes.items() if k not in allowed}
    if unexpected:
        raise SystemExit(f"unexpected outcomes {unexpected}: {result.summary()}")


def main() -> None:
    """Entry point of `make bench`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="16,64,128", help="comma-separated caller counts")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--skip-contention",
        action="store_true",
        help="leave out the hot-SKU comparison with classic designs",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    data_dir = Path(".data/bench").resolve()
    pg_dsn = os.environ.get("STOCKCORE_PG_DSN")
    redis_url = os.environ.get("STOCKCORE_REDIS_URL")
    if pg_dsn is None:
        # Every run starts from an empty cluster: no bloat or schema left by earlier runs.
        shutil.rmtree(data_dir, ignore_errors=True)
    with local_servers(
        data_dir, 54339, 56399, want_pg=pg_dsn is None, want_redis=redis_url is None
    ) as (pg, rd):
        run_bench(
            pg_dsn or pg.dsn,
            redis_url or rd.url,
            levels,
            args.duration,
            data_dir,
            not args.skip_contention,
        )  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
