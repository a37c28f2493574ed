"""`make bench`: Reserve/Commit throughput and latency beside the empty-call ceiling from the
same run, sold-out rejections, and a hot-SKU sale: stockcore against two classic designs,
both behind the same gRPC edge and straight at PostgreSQL, with their oversell counts; and
what TLS with a bearer token costs on Reserve+Commit and CreateOrder, beside plaintext.

    make bench                                              # 16, 64, 128 callers; the sale
    python -m loadtests.bench --levels 64 --duration 5 --sale-units 500

PostgreSQL and Redis are project-owned (under .data/bench) unless STOCKCORE_PG_DSN and
STOCKCORE_REDIS_URL name servers; the stockcore server and the classic designs' gRPC edge
run in processes of their own and every cell's load comes from another, as a caller's would
(loadtests/driver.py, closed loop). The tables are printed and written with bench.png to
.reports/bench-<time>/; the run fails if stockcore.invariant_violations() finds anything
after it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import random
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc
from stockcore.v1 import orders_pb2 as opb
from stockcore.v1 import orders_pb2_grpc as opb_grpc

from clients.credentials import Credentials
from clients.tokens import SERVICE_SCOPES, issue_token, load_signing_key
from devstack.servers import LocalStockcore, local_servers
from loadtests import classic, invariants, plots, report, sale
from loadtests.arguments import caller_counts, positive_float, positive_int
from loadtests.ceiling import measure_ceiling
from loadtests.driver import Op, OpFactory, RunResult, run_in_processes
from loadtests.edge import edge_server
from loadtests.sampler import cpu_seconds
from loadtests.stack import PLAINTEXT_ENV, UNSHED_ENV, read_stock, stock_catalogue
from runtime.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 16
HOT = [f"BENCH-HOT-{i}" for i in range(4)]
SOLD_OUT = "BENCH-SOLD-OUT"
DEEP_STOCK = 1_000_000_000
SALE_SKUS = 4
GRPC_EDGE = "gRPC edge"
"""Where a design runs: behind a gRPC server, as stockcore does."""
STRAIGHT = "straight at PostgreSQL"
"""Where a design runs: in the load process, one statement or transaction per purchase."""


_PLAINTEXT = Credentials(plaintext=True)


class _Alternating:
    """Each worker reserves one unit of a hot SKU, then commits it: one call per op."""

    def __init__(
        self, channel: grpc.aio.Channel, skus: list[str], metadata: tuple[tuple[str, str], ...]
    ) -> None:
        self._channel = channel
        self._stub = pb_grpc.InventoryServiceStub(channel)
        self._metadata = metadata
        self._skus = skus
        self._held: dict[int, str] = {}
        self._ids = itertools.count()
        self._prefix = f"b{os.getpid()}-{random.getrandbits(32):x}-"

    async def __call__(self, worker: int) -> object:
        held = self._held.pop(worker, None)
        if held is not None:
            await self._stub.Commit(
                pb.CommitRequest(reservation_id=held), timeout=10, metadata=self._metadata
            )
            return "commit"
        rid = f"{self._prefix}{next(self._ids)}"
        request = pb.ReserveRequest(
            reservation_id=rid, lines=[pb.Line(sku=random.choice(self._skus), quantity=1)]
        )
        await self._stub.Reserve(request, timeout=10, metadata=self._metadata)
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


class _Refusable:
    """Reserves of one unit from deep stock, against a server that refuses most of them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stub = pb_grpc.InventoryServiceStub(channel)
        self._ids = itertools.count()
        self._prefix = f"rf{os.getpid()}-{random.getrandbits(32):x}-"

    async def __call__(self, worker: int) -> object:
        request = pb.ReserveRequest(
            reservation_id=f"{self._prefix}{next(self._ids)}",
            lines=[pb.Line(sku=random.choice(HOT), quantity=1)],
        )
        try:
            await self._stub.Reserve(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return "refused"
            raise
        return "reserve"

    async def aclose(self) -> None:
        await self._channel.close()


async def open_refusable(target: str) -> Op:
    """Op factory for Reserves a server at its ceiling mostly refuses."""
    return _Refusable(grpc.aio.insecure_channel(target))


class _Creating:
    """Each call creates an order of one unit of a hot SKU (left to expire unpaid)."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self._channel = channel
        self._stub = opb_grpc.OrderServiceStub(channel)
        self._metadata = metadata
        self._ids = itertools.count()
        self._prefix = f"bo{os.getpid()}-{random.getrandbits(32):x}-"

    async def __call__(self, worker: int) -> object:
        request = opb.CreateOrderRequest(
            order_id=f"{self._prefix}{next(self._ids)}",
            customer_id=f"bench-{worker}",
            currency_code="EUR",
            lines=[opb.OrderLine(sku=random.choice(HOT), quantity=1, unit_price_minor=100)],
        )
        await self._stub.CreateOrder(request, timeout=10, metadata=self._metadata)
        return "created"

    async def aclose(self) -> None:
        await self._channel.close()


async def open_alternating(target: str, credentials: Credentials = _PLAINTEXT) -> Op:
    """Op factory for Reserve/Commit (module level so load processes can build it)."""
    return _Alternating(credentials.aio_channel(target), HOT, credentials.metadata)


async def open_creating(target: str, credentials: Credentials = _PLAINTEXT) -> Op:
    """Op factory for CreateOrder."""
    return _Creating(credentials.aio_channel(target), credentials.metadata)


async def open_sold_out(target: str) -> Op:
    """Op factory for sold-out Reserves."""
    return _SoldOut(grpc.aio.insecure_channel(target))


@dataclass(frozen=True)
class SaleRow:
    """One design in the hot-SKU sale."""

    design: str
    runs: str
    """GRPC_EDGE or STRAIGHT."""
    result: RunResult
    sold: int
    """Units sold, as the design's own tables record them."""
    stock: int
    oversold: int

    @property
    def purchases_per_s(self) -> float:
        """Purchases that went through, per second of the sale."""
        return self.result.outcomes.get(sale.SOLD, 0) / self.result.window_s

    @property
    def sold_out(self) -> bool:
        """Whether the buyers found every SKU sold out before the time limit."""
        return self.result.outcomes.get(sale.SOLD_OUT, 0) > 0


@dataclass(frozen=True)
class SaleSize:
    """How big the sale is."""

    units: int
    """Per SKU."""
    buyers: int
    seconds: float
    """The most a design may take to sell out."""

    def run(self, make_op: OpFactory) -> RunResult:
        """The buyers' closed loop, from one load process, until sold out."""
        return run_in_processes(
            make_op,
            processes=1,
            concurrency=self.buyers,
            duration=self.seconds,
            warmup=0.0,
        )


def _stockcore_sale(target: str, size: SaleSize, tag: str) -> SaleRow:
    skus = [f"SALE-{tag}-{i}" for i in range(SALE_SKUS)]
    asyncio.run(stock_catalogue(target, skus, size.units, key=f"sale-{tag}"))
    result = size.run(functools.partial(sale.open_stockcore, target, skus))
    levels = asyncio.run(read_stock(target, skus))
    sold = sum(size.units - level.on_hand for level in levels)
    stock = SALE_SKUS * size.units
    return SaleRow(
        "stockcore (Reserve, then Commit)", GRPC_EDGE, result, sold, stock, max(0, sold - stock)
    )


async def _reset_classic(dsn: str, skus: Sequence[str], units: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await classic.reset(conn, skus, units)
    finally:
        await conn.close()


async def _tally_classic(dsn: str, units: int) -> classic.Tally:
    conn = await asyncpg.connect(dsn)
    try:
        return await classic.tally(conn, units)
    finally:
        await conn.close()


def _classic_sale(dsn: str, design: classic.Design, runs: str, size: SaleSize) -> SaleRow:
    skus = [f"hot-{n}" for n in range(SALE_SKUS)]
    asyncio.run(_reset_classic(dsn, skus, size.units))
    if runs == GRPC_EDGE:
        options = ["--dsn", dsn, "--design", design, "--pool", str(size.buyers)]
        with edge_server("classic", *options) as target:
            result = size.run(functools.partial(sale.open_edge, target, skus))
    else:
        result = size.run(functools.partial(sale.open_straight, dsn, design, skus, size.buyers))
    counted = asyncio.run(_tally_classic(dsn, size.units))
    return SaleRow(design, runs, result, counted.sold, SALE_SKUS * size.units, counted.oversold)


def _report_sale(run: report.Run, row: SaleRow) -> None:
    run.say(report.row(_sale_row(row)))
    acknowledged = row.result.outcomes.get(sale.SOLD, 0)
    if row.sold_out and acknowledged != row.sold:
        run.check(
            False,
            f"{row.design}, {row.runs}: {acknowledged:,} purchases acknowledged to the buyers, "
            f"{row.sold:,} recorded",
        )


def _sale_row(row: SaleRow) -> list[object]:
    return [
        row.design,
        row.runs,
        f"{row.purchases_per_s:,.0f}",
        report.ms(row.result.p50_ms),
        report.ms(row.result.p99_ms),
        f"{row.sold:,}" + ("" if row.sold_out else " (not sold out)"),
        f"{row.stock:,}",
        f"{row.oversold:,}",
    ]


async def _prepare(target: str, tag: str) -> None:
    await stock_catalogue(target, HOT, DEEP_STOCK, key=f"bench-{tag}")
    await stock_catalogue(target, [SOLD_OUT], 0, key=f"bench-{tag}")


def _check(result: RunResult, allowed: set[str]) -> None:
    unexpected = {k: v for k, v in result.outcomes.items() if k not in allowed}
    if unexpected:
        raise SystemExit(f"unexpected outcomes {unexpected}: {result.summary()}")


RATIO_HEADER = [
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
SALE_HEADER = [
    "design",
    "where it runs",
    "purchases/s",
    "p50 ms",
    "p99 ms",
    "sold",
    "stock",
    "oversold",
]


SECURITY_HEADER = [
    "callers",
    "call",
    "plaintext call/s",
    "p50 ms",
    "p99 ms",
    "server CPU µs/call",
    "TLS + token call/s",
    "p50 ms",
    "p99 ms",
    "server CPU µs/call",
    "CPU cost",
]
_WARMUP_S = 1.0


def _measured_cell(
    factory: OpFactory, server: LocalStockcore, concurrency: int, duration: float
) -> tuple[RunResult, float]:
    """A closed-loop cell and the server's CPU microseconds per call in it (warm-up calls
    counted at the measured rate): on a shared machine, CPU per call moves far less than
    throughput does."""
    assert server.proc is not None
    before = cpu_seconds(server.proc.pid)
    result = run_in_processes(
        factory, processes=1, concurrency=concurrency, duration=duration, warmup=_WARMUP_S
    )
    after = cpu_seconds(server.proc.pid)
    assert before is not None and after is not None, "the server went away"
    calls = result.count + result.ops_per_s * _WARMUP_S
    return result, (after - before) / calls * 1e6


def _median(cells: list[tuple[RunResult, float]]) -> tuple[RunResult, float]:
    """The round of median throughput, and the median CPU per call over the rounds."""
    by_rate = sorted(cells, key=lambda cell: cell[0].ops_per_s)
    return by_rate[len(by_rate) // 2][0], statistics.median(cpu for _, cpu in cells)


REFUSAL_HEADER = ["call", "calls/s", "refused", "p50 ms", "p99 ms", "server CPU µs/call"]
REFUSAL_CALLERS = 64


def _refusal_cost(run: report.Run, served: LocalStockcore, duration: float) -> None:
    """What a refusal costs the server, beside what a sold-out Reserve and a held one cost:
    a second server on the same databases whose ceiling is one call in flight refuses
    almost every Reserve of 64 callers at entry, the path a standing queue's refusals take."""
    ceiling = LocalStockcore(
        served.env["STOCKCORE_PG_DSN"],
        served.env["STOCKCORE_REDIS_URL"],
        SHARDS,
        served.log.parent,
        **{**UNSHED_ENV, "STOCKCORE_MAX_IN_FLIGHT": "1"},
        **PLAINTEXT_ENV,
    )
    asyncio.run(ceiling.start())
    try:
        run.say(
            "",
            f"What a refusal costs: {REFUSAL_CALLERS} callers, plaintext, server CPU from /proc"
            " over the cell. Refusals: a server whose ceiling is one call in flight (it refuses"
            " at entry, before decoding, as a standing queue does); beside it the same server"
            " type serving sold-out and held Reserves.",
            "",
            *report.table(REFUSAL_HEADER, []),
        )
        cells = (
            ("Reserve, refused at entry", open_refusable, ceiling, {"refused", "reserve"}),
            ("Reserve, sold out", open_sold_out, served, {"rejected"}),
            ("Reserve, held", open_refusable, served, {"reserve"}),
        )
        for label, factory, server, allowed in cells:
            result, cpu = _measured_cell(
                functools.partial(factory, server.target), server, REFUSAL_CALLERS, duration
            )
            _check(result, allowed)
            refused = result.outcomes.get("refused", 0) / max(sum(result.outcomes.values()), 1)
            run.say(
                report.row(
                    [
                        label,
                        f"{result.ops_per_s:,.0f}",
                        f"{refused:.0%}",
                        report.ms(result.p50_ms),
                        report.ms(result.p99_ms),
                        f"{cpu:,.0f}",
                    ]
                )
            )
    finally:
        ceiling.stop()


def _security_cost(
    run: report.Run, plaintext: LocalStockcore, levels: list[int], duration: float, rounds: int
) -> None:
    """The same calls over plaintext without token checks and over TLS with a verified
    bearer token (a second server on the same databases), cell beside cell, `rounds`
    times alternately; each figure is the median of its rounds, so a burst of other work
    on the machine moves one round, not the result."""
    secure = LocalStockcore(
        plaintext.env["STOCKCORE_PG_DSN"],
        plaintext.env["STOCKCORE_REDIS_URL"],
        SHARDS,
        plaintext.log.parent,
        credentials=plaintext.credentials,
        **UNSHED_ENV,
    )
    asyncio.run(secure.start())
    try:
        token = issue_token(
            load_signing_key(secure.credentials.signing_key), "bench", SERVICE_SCOPES
        )
        tls = Credentials.from_files(token=token, ca_file=secure.credentials.ca_cert)
        run.say(
            "",
            "TLS (ECDSA P-256 certificate) and an Ed25519-signed bearer token checked on every"
            " call, beside plaintext without token checks: one channel per load process, one"
            " token for all its calls (verified once, then found in the server's cache);"
            f" server CPU from /proc over the whole cell; medians of {rounds} alternating rounds"
            f" (load average before: {os.getloadavg()[0]:.1f})",
            "",
            *report.table(SECURITY_HEADER, []),
        )
        for concurrency in levels:
            for label, factory, allowed in (
                ("Reserve+Commit", open_alternating, {"reserve", "commit"}),
                ("CreateOrder", open_creating, {"created"}),
            ):
                cells: dict[str, list[tuple[RunResult, float]]] = {"plain": [], "tls": []}
                for _ in range(rounds):
                    for name, server, credentials in (
                        ("plain", plaintext, _PLAINTEXT),
                        ("tls", secure, tls),
                    ):
                        cells[name].append(
                            _measured_cell(
                                functools.partial(factory, server.target, credentials),
                                server,
                                concurrency,
                                duration,
                            )
                        )
                plain, plain_cpu = _median(cells["plain"])
                secured, secured_cpu = _median(cells["tls"])
                _check(plain, allowed)
                _check(secured, allowed)
                run.say(
                    report.row(
                        [
                            concurrency,
                            label,
                            f"{plain.ops_per_s:,.0f}",
                            report.ms(plain.p50_ms),
                            report.ms(plain.p99_ms),
                            f"{plain_cpu:,.0f}",
                            f"{secured.ops_per_s:,.0f}",
                            report.ms(secured.p50_ms),
                            report.ms(secured.p99_ms),
                            f"{secured_cpu:,.0f}",
                            f"{secured_cpu - plain_cpu:+,.0f} µs"
                            f" ({secured_cpu / plain_cpu - 1:+.0%})",
                        ]
                    )
                )
    finally:
        secure.stop()


def run_bench(
    run: report.Run,
    pg_dsn: str,
    redis_url: str,
    levels: list[int],
    duration: float,
    data_dir: Path,
    size: SaleSize | None,
    security_rounds: int = 3,
) -> None:
    """Run every measurement and report the tables."""
    # The server migrates the database as it starts; its bound on calls in flight is
    # lifted, as for every closed-loop tool (loadtests/stack.py, open_stack).
    server = LocalStockcore(
        pg_dsn,
        redis_url,
        SHARDS,
        data_dir,
        **UNSHED_ENV,
        **PLAINTEXT_ENV,
    )
    asyncio.run(server.start())
    try:
        asyncio.run(_prepare(server.target, run.tag))
        run.say(
            "# make bench",
            "",
            f"- machine: {report.describe_machine()}",
            f"- each cell: one closed-loop run of {duration:g} s after 1 s warm-up, load from one "
            "separate process; the empty call measured just before the cells beside it",
            "",
        )
        ratios: list[tuple[int, float, float]] = []
        run.say(*report.table(RATIO_HEADER, []))
        for concurrency in levels:
            ceiling = measure_ceiling(concurrency, duration, 1)
            rc, so = (
                run_in_processes(
                    functools.partial(factory, server.target),
                    processes=1,
                    concurrency=concurrency,
                    duration=duration,
                )
                for factory in (open_alternating, open_sold_out)
            )
            _check(rc, {"reserve", "commit"})
            _check(so, {"rejected"})
            ratios.append(
                (concurrency, rc.ops_per_s / ceiling.ops_per_s, so.ops_per_s / ceiling.ops_per_s)
            )
            run.say(
                report.row(
                    [
                        concurrency,
                        f"{ceiling.ops_per_s:,.0f}",
                        f"{rc.ops_per_s:,.0f}",
                        f"{ratios[-1][1]:.0%}",
                        report.ms(rc.p50_ms),
                        report.ms(rc.p99_ms),
                        f"{so.ops_per_s:,.0f}",
                        f"{ratios[-1][2]:.0%}",
                        report.ms(so.p50_ms),
                        report.ms(so.p99_ms),
                    ]
                )
            )
        _security_cost(run, server, levels, duration, security_rounds)
        _refusal_cost(run, server, duration)
        rows: list[SaleRow] = []
        if size is not None:
            run.say(
                "",
                f"hot-SKU sale: {size.buyers} buyers, {SALE_SKUS} SKUs x {size.units:,} units, one "
                f"unit per purchase until sold out (at most {size.seconds:g} s), load from one "
                "separate process; p50/p99 of every purchase attempt",
                "",
                *report.table(SALE_HEADER, []),
            )
            rows.append(_stockcore_sale(server.target, size, run.tag[-6:]))
            _report_sale(run, rows[-1])
            for runs in (GRPC_EDGE, STRAIGHT):
                for design in classic.DESIGNS:
                    rows.append(_classic_sale(pg_dsn, design, runs, size))
                    _report_sale(run, rows[-1])
        run.say("", "## After the run", "")
        sql = asyncio.run(invariants.check_via_sql(pg_dsn))
        run.check(sql.ok, sql.describe())
        _targets(run, ratios, rows)
    finally:
        server.stop()
    sold = [(f"{r.design}, {r.runs}", r.purchases_per_s, r.oversold) for r in rows]
    if plots.plot_bench(ratios, sold, run.dir / "bench.png"):
        run.say("", f"plot: {run.dir.name}/bench.png")


def _targets(run: report.Run, ratios: list[tuple[int, float, float]], rows: list[SaleRow]) -> None:
    """The performance targets, from this run's own figures (ratios to the empty call
    measured minutes earlier, and designs measured side by side)."""
    run.say("", "## Targets", "")
    at_64 = [r for r in ratios if r[0] == 64]
    if at_64:
        _, rc, so = at_64[0]
        run.target(rc >= 0.5, f"Reserve+Commit at 64 callers: {rc:.0%} of the empty call >= 50%")
        run.target(
            so >= 0.7, f"sold-out rejections at 64 callers: {so:.0%} of the empty call >= 70%"
        )
    ours = [r for r in rows if r.design.startswith("stockcore")]
    locks = [r for r in rows if r.design == "select-for-update" and r.runs == STRAIGHT]
    if ours and locks:
        us, them = ours[0], locks[0]
        run.target(
            us.purchases_per_s >= them.purchases_per_s
            and us.result.p99_ms <= them.result.p99_ms
            and us.oversold == 0,
            f"hot-SKU sale: stockcore {us.purchases_per_s:,.0f} purchases/s (p99"
            f" {us.result.p99_ms:.0f} ms, oversold {us.oversold}) >= SELECT ... FOR UPDATE"
            f" straight at PostgreSQL {them.purchases_per_s:,.0f}/s (p99"
            f" {them.result.p99_ms:.0f} ms), p99 no worse, 0 oversold",
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make bench`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--levels", type=caller_counts, default="16,64,128", help="comma-separated caller counts"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=5.0, help="seconds per measurement"
    )
    parser.add_argument(
        "--sale-units", type=positive_int, default=2000, help="units of each sale SKU"
    )
    parser.add_argument("--sale-buyers", type=positive_int, default=64, help="buyers in the sale")
    parser.add_argument(
        "--sale-seconds", type=positive_float, default=120.0, help="most a sale may take"
    )
    parser.add_argument("--skip-contention", action="store_true", help="leave out the hot-SKU sale")
    parser.add_argument(
        "--security-rounds",
        type=positive_int,
        default=3,
        help="alternating plaintext / TLS + token rounds per cell (median reported)",
    )
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    return parser.parse_args(argv)


def main() -> None:
    """Entry point of `make bench`."""
    args = parse_args()
    levels: list[int] = args.levels
    size = (
        None
        if args.skip_contention
        else SaleSize(args.sale_units, args.sale_buyers, args.sale_seconds)
    )
    data_dir = (ROOT / ".data" / "bench").resolve()
    pg_dsn = os.environ.get("STOCKCORE_PG_DSN")
    redis_url = os.environ.get("STOCKCORE_REDIS_URL")
    if pg_dsn is None:
        # Every run starts from an empty cluster: no bloat or schema left by earlier runs.
        shutil.rmtree(data_dir, ignore_errors=True)
    run = report.Run("bench", Path(args.reports))
    # Free ports: another checkout's bench, or the suite's, may run on the machine meanwhile.
    with local_servers(
        data_dir, free_port(), free_port(), want_pg=pg_dsn is None, want_redis=redis_url is None
    ) as (pg, rd):
        pg_dsn = pg_dsn or (pg.dsn if pg else None)
        redis_url = redis_url or (rd.url if rd else None)
        assert pg_dsn is not None and redis_url is not None
        run_bench(
            run, pg_dsn, redis_url, levels, args.duration, data_dir, size, args.security_rounds
        )
    raise SystemExit(run.finish())


if __name__ == "__main__":
    main()
