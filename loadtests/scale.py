"""`make load-scale`: Reserve and CreateOrder latency on a 1,000,000-SKU catalogue with
100,000 active holds, beside a 1,000-SKU catalogue, and what the SKUs and holds cost in Redis
memory and PostgreSQL memory and disk.

    python -m loadtests.scale --skus 1000000 --holds 100000

Always a fresh local stack (under .data/scale): sizes are only comparable from empty. All SKUs
are loaded through AdjustStock and all holds through Reserve, as callers would. The summary
goes to .reports/scale-<time>/; the run fails when a measured call is not answered OK or
stockcore.invariant_violations() finds anything after it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import redis
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as pb
from stockcore.v1 import inventory_pb2_grpc as pb_grpc

from loadtests import invariants, knee, report
from loadtests.arguments import non_negative_int, positive_float, positive_int
from loadtests.driver import RunResult, run_in_processes
from loadtests.locust.options import sku_name
from loadtests.stack import open_stack, stock_catalogue
from runtime.processes import spawn

ROOT = Path(__file__).resolve().parent.parent
_CALLER = (("stockcore-caller", "loadtests-scale"),)


@dataclass(frozen=True)
class Footprint:
    """What the stack holds, in bytes."""

    redis_used: int
    pg_database: int
    pg_stock: int
    pg_reservations: int
    pg_movements: int
    pg_adjustments: int
    pg_disk: int


def footprint(dsn: str, redis_url: str, pg_dir: Path) -> Footprint:
    """Redis used_memory, PostgreSQL relation and database sizes, the cluster's disk use."""
    sizes = asyncio.run(_relation_sizes(dsn))
    client = redis.Redis.from_url(redis_url)
    try:
        used = int(client.info("memory")["used_memory"])
    finally:
        client.close()
    du = subprocess.run(["du", "-sb", str(pg_dir)], capture_output=True, text=True, check=False)
    return Footprint(
        used,
        sizes[0],
        sizes[1],
        sizes[2],
        sizes[3],
        sizes[4],
        int(du.stdout.split()[0]) if du.stdout else 0,
    )


async def _relation_sizes(dsn: str) -> tuple[int, int, int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")  # so the disk figure includes what is only in WAL
        sizes = await conn.fetchrow(
            """
            SELECT pg_database_size(current_database()) AS db,
                   (SELECT sum(pg_total_relation_size(relid))
                      FROM pg_partition_tree('stockcore.stock')) AS stock,
                   pg_total_relation_size('stockcore.reservations') AS reservations,
                   pg_total_relation_size('stockcore.movements') AS movements,
                   pg_total_relation_size('stockcore.adjustments') AS adjustments
            """
        )
    finally:
        await conn.close()
    assert sizes is not None
    return (
        int(sizes["db"]),
        int(sizes["stock"] or 0),
        int(sizes["reservations"]),
        int(sizes["movements"]),
        int(sizes["adjustments"]),
    )


async def _drain(target: str, requests: Iterator[tuple[str, object]], concurrency: int) -> int:
    """Send every (method, request) with `concurrency` calls in flight; count them."""
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)

        async def worker() -> None:
            nonlocal done
            for method, request in requests:
                await getattr(stub, method)(request, timeout=60.0, metadata=_CALLER)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def _load_range(target: str, first: int, last: int, on_hand: int, key: str) -> int:
    requests = (
        (
            "AdjustStock",
            pb.AdjustStockRequest(
                sku=sku_name("SCALE", i),
                on_hand=on_hand,
                reason="scale test stock",
                idempotency_key=f"{key}:{i}",
            ),
        )
        for i in range(first, last)
    )
    return asyncio.run(_drain(target, requests, 64))


def _hold_range(target: str, seed: int, count: int, skus: int, key: str) -> int:
    rng = random.Random(seed)
    ttl = duration_pb2.Duration(seconds=3 * 3600)
    requests = (
        (
            "Reserve",
            pb.ReserveRequest(
                reservation_id=f"{key}-{seed}-{n}",
                lines=[pb.Line(sku=sku_name("SCALE", rng.randrange(skus)), quantity=1)],
                ttl=ttl,
            ),
        )
        for n in range(count)
    )
    return asyncio.run(_drain(target, requests, 64))


def _in_processes(parts: Sequence[Sequence[str]]) -> int:
    """Run `python -m loadtests.scale part <part...>` for each part at once, each a process
    of its own; the sum of the counts they print."""
    children = [
        spawn(
            [sys.executable, "-m", "loadtests.scale", "part", *part],
            death_signal=signal.SIGTERM,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for part in parts
    ]
    total = 0
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"a loading process exited with {child.returncode}")
        total += int(out)
    return total


def _part(argv: Sequence[str]) -> None:
    """One loading process: `load <target> <first> <last> <on_hand> <key>` or
    `hold <target> <seed> <count> <skus> <key>`; prints how many calls it made."""
    what, target, a, b, c, key = argv
    if what == "load":
        print(_load_range(target, int(a), int(b), int(c), key))
    else:
        print(_hold_range(target, int(a), int(b), int(c), key))


def _latency(
    target: str, api: str, prefix: str, size: int, callers: int, duration: float
) -> RunResult:
    return run_in_processes(
        functools.partial(knee.open_op, target, api, prefix, size, False),
        processes=1,
        concurrency=callers,
        duration=duration,
    )


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:,.1f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make load-scale`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skus", type=positive_int, default=1_000_000)
    parser.add_argument("--holds", type=non_negative_int, default=100_000)
    parser.add_argument("--small", type=positive_int, default=1000, help="the comparison catalogue")
    parser.add_argument("--callers", type=positive_int, default=32)
    parser.add_argument("--duration", type=positive_float, default=5.0)
    parser.add_argument("--processes", type=positive_int, default=2, help="processes loading SKUs")
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    return parser.parse_args(argv)


def main() -> int:
    """Load, hold, measure, print; the exit code (1 when a check fails)."""
    if sys.argv[1:2] == ["part"]:
        _part(sys.argv[2:])
        return 0
    args = parse_args()
    if os.environ.get("STOCKCORE_TARGET"):
        raise SystemExit("load-scale measures sizes from empty: it always starts a fresh stack")
    run = report.Run("scale", Path(args.reports))
    say = run.say
    data = ROOT / ".data" / "scale"
    with open_stack(data) as stack:
        assert stack.pg_dsn and stack.redis_url
        say(f"# Scale: {args.skus:,} SKUs and {args.holds:,} active holds", "")
        say(
            f"- machine: {report.describe_machine()}",
            "- load, server, PostgreSQL and Redis share the machine",
            "",
        )
        asyncio.run(
            stock_catalogue(
                stack.target, [sku_name("SMALL", i) for i in range(args.small)], 10**9, key="small"
            )
        )
        rows = []
        for api in ("inventory", "orders"):
            rows.append(
                (
                    f"{args.small:,} SKUs",
                    api,
                    _latency(stack.target, api, "SMALL", args.small, args.callers, args.duration),
                )
            )
        # The baseline includes the small catalogue and the holds its measurement left.
        empty = footprint(stack.pg_dsn, stack.redis_url, data / "pg")
        began = time.monotonic()
        bounds = [args.skus * i // args.processes for i in range(args.processes + 1)]
        loaded = _in_processes(
            [
                ["load", stack.target, str(a), str(b), str(10**6), "scale"]
                for a, b in itertools.pairwise(bounds)
            ]
        )
        load_s = time.monotonic() - began
        say(
            f"loaded {loaded:,} SKUs through AdjustStock in {load_s:,.0f} s ({loaded / load_s:,.0f}/s)"
        )
        skus_only = footprint(stack.pg_dsn, stack.redis_url, data / "pg")
        began = time.monotonic()
        per = args.holds // args.processes
        held = _in_processes(
            [
                ["hold", stack.target, str(seed), str(per), str(args.skus), "scale-hold"]
                for seed in range(args.processes)
            ]
        )
        hold_s = time.monotonic() - began
        say(
            f"took {held:,} holds (3 h TTL) through Reserve in {hold_s:,.0f} s ({held / hold_s:,.0f}/s)",
            "",
        )
        with_holds = footprint(stack.pg_dsn, stack.redis_url, data / "pg")
        for api in ("inventory", "orders"):
            rows.append(
                (
                    f"{args.skus:,} SKUs + {held:,} holds",
                    api,
                    _latency(stack.target, api, "SCALE", args.skus, args.callers, args.duration),
                )
            )
        sql = asyncio.run(invariants.check_via_sql(stack.pg_dsn))
    say(
        f"## Latency, {args.callers} closed-loop callers, {args.duration:g} s each (one order line, random SKU)",
        "",
    )
    say(
        *report.table(
            ["catalogue", "call", "per s", "mean ms", "p50 ms", "p99 ms", "non-OK"],
            [
                [
                    cat,
                    "Reserve" if api == "inventory" else "CreateOrder",
                    f"{r.ops_per_s:,.0f}",
                    f"{r.mean_ms:.1f}",
                    f"{r.p50_ms:.1f}",
                    f"{r.p99_ms:.1f}",
                    ", ".join(f"{k}={v}" for k, v in r.outcomes.items() if k != "created") or "0",
                ]
                for cat, api, r in rows
            ],
        )
    )
    million = 1_000_000 / max(1, args.skus)
    per_hold = 100_000 / max(1, held)
    say("", "## Footprint (MB)", "")
    say(
        *report.table(
            [
                "",
                "baseline",
                f"+{args.skus:,} SKUs",
                f"+{held:,} holds",
                "per 1M SKUs",
                "per 100k holds",
            ],
            [
                [
                    name,
                    _mb(getattr(empty, f)),
                    _mb(getattr(skus_only, f)),
                    _mb(getattr(with_holds, f)),
                    _mb((getattr(skus_only, f) - getattr(empty, f)) * million),
                    _mb((getattr(with_holds, f) - getattr(skus_only, f)) * per_hold),
                ]
                for name, f in [
                    ("Redis used_memory", "redis_used"),
                    ("PostgreSQL database", "pg_database"),
                    ("  stock (all shards, with indexes)", "pg_stock"),
                    ("  reservations", "pg_reservations"),
                    ("  movements (ledger)", "pg_movements"),
                    ("  adjustments (idempotency keys)", "pg_adjustments"),
                    ("PostgreSQL data folder on disk (WAL included)", "pg_disk"),
                ]
            ],
        )
    )
    run.say("", "## After the run", "")
    unanswered = {
        f"{cat}, {api}: {outcome}": count
        for cat, api, r in rows
        for outcome, count in r.outcomes.items()
        if outcome != "created"
    }
    run.check(
        not unanswered,
        "every call of the latency runs answered OK"
        + (f"; not: {unanswered}" if unanswered else ""),
    )
    run.check(sql.ok, sql.describe())
    return run.finish()


if __name__ == "__main__":
    raise SystemExit(main())
