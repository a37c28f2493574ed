"""`--profile` of a load run: where the server's CPU and PostgreSQL's time go, per order.

Two instruments, both standard: py-spy samples the server's Python stacks (every worker,
`--subprocesses`) for the whole run, and PostgreSQL's `pg_stat_statements` (loaded by the
project's own PostgreSQL, devstack/servers.py) counts every top-level statement from a
reset at the start. The report gives the share of the server's busy samples by area of
code (a sample counts for every area on its stack) and by leaf function, and the
statements per order with their share of execution time. py-spy sees Python frames only:
time in the event loop's native code (grpc.aio's Cython server, uvloop) shows under the
Python frame that called into it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from loadtests import report

# Areas of the server's code, by what a frame's file path contains; first match names it.
AREAS: tuple[tuple[str, str], ...] = (
    ("server/rpc/", "gRPC edge: servicers, conversion, admission (server/rpc)"),
    ("server/inventory/batching.py", "batchers (server/inventory/batching.py)"),
    ("server/orders/relay.py", "outbox relay (server/orders/relay.py)"),
    ("server/orders/watch.py", "WatchOrders feed (server/orders/watch.py)"),
    ("server/inventory/", "inventory core, gate, mirror (server/inventory)"),
    ("server/orders/", "order core (server/orders)"),
    ("server/storage/", "storage adapters (server/storage)"),
    ("asyncpg/", "asyncpg"),
    ("redis/", "redis-py"),
    ("google/protobuf/", "protobuf"),
    ("grpc/", "grpc (Python part)"),
    ("prometheus_client/", "prometheus_client"),
    ("logging/", "logging"),
)
# Leaves whose time is native code below the Python frame py-spy shows.
NATIVE_LEAVES = {
    "Runner.run (asyncio/runners.py)": "native, under the event loop: grpc.aio's Cython server,"
    " uvloop I/O (Runner.run)",
    "Thread.run (threading.py)": "native, in a thread with no Python frames below it: grpc's"
    " completion-queue poller (Thread.run)",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


@dataclass(frozen=True)
class Stacks:
    """py-spy's samples of the server, summed."""

    samples: int
    by_area: Counter[str]
    by_leaf: Counter[str]


def read_raw(path: Path) -> Stacks:
    """Sum a py-spy `--format raw` file (one `frame;frame;...;leaf count` line per stack)."""
    samples = 0
    by_area: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        areas = {area for frame in frames for part, area in AREAS if part in frame}
        for area in areas:
            by_area[area] += count
        leaf = _FRAME.match(frames[-1])
        name = f"{leaf['func']} ({leaf['file']})" if leaf else frames[-1]
        by_leaf[NATIVE_LEAVES.get(name, name)] += count
    return Stacks(samples, by_area, by_leaf)


@dataclass(frozen=True)
class Statement:
    """One row of pg_stat_statements."""

    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    query: str


async def _reset(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
        return True
    except asyncpg.PostgresError:
        return False  # not loaded (shared_preload_libraries) on this server
    finally:
        await conn.close()


async def _statements(dsn: str) -> list[Statement]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT calls, total_exec_time, mean_exec_time, rows,"
            " regexp_replace(query, '\\s+', ' ', 'g') AS query"
            "  FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            "   AND query NOT LIKE '%pg_stat_statements%'"
            " ORDER BY total_exec_time DESC"
        )
    finally:
        await conn.close()
    return [
        Statement(r["calls"], r["total_exec_time"], r["mean_exec_time"], r["rows"], r["query"])
        for r in rows
    ]


class Profile:
    """Samples a server and its database over a load run."""

    def __init__(self, server_pid: int, pg_dsn: str | None, out: Path, seconds: float) -> None:
        self._pid = server_pid
        self._dsn = pg_dsn
        self._raw = out / "server-stacks.txt"
        self._seconds = seconds
        self._spy: subprocess.Popen[bytes] | None = None
        self._statements = False

    def start(self) -> None:
        """Reset the statement counts and start sampling."""
        if self._dsn is not None:
            self._statements = asyncio.run(_reset(self._dsn))
        beside = Path(sys.executable).with_name("py-spy")
        spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if spy is None:
            return
        self._spy = subprocess.Popen(
            [
                spy,
                "record",
                "--nonblocking",
                "--subprocesses",
                "--format",
                "raw",
                "-r",
                "50",
                "-d",
                str(round(self._seconds)),
                "-p",
                str(self._pid),
                "-o",
                str(self._raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def report(self, run: report.Run, orders: int) -> None:
        """Wait for the sampler and write both breakdowns into the run's summary."""
        per = max(orders, 1)
        run.say("", f"## Profile: where the time goes ({orders:,} orders created)", "")
        if self._spy is not None:
            try:
                self._spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._spy.terminate()
                self._spy.wait(timeout=10)
        if self._raw.exists():
            stacks = read_raw(self._raw)
            run.say(
                f"Server, py-spy at 50 Hz over the run ({stacks.samples:,} samples of busy "
                f"threads; raw stacks: {self._raw.name}). By area of code (a sample counts "
                "for every area on its stack):",
                "",
                *report.table(
                    ["area", "share of busy samples"],
                    [
                        [area, f"{n / stacks.samples:.1%}"]
                        for area, n in stacks.by_area.most_common()
                    ],
                ),
                "",
                "Top leaf functions (self time):",
                "",
                *report.table(
                    ["function (file)", "share"],
                    [
                        [name, f"{n / stacks.samples:.1%}"]
                        for name, n in stacks.by_leaf.most_common(15)
                    ],
                ),
                "",
            )
        else:
            run.say("- no py-spy samples (py-spy missing, or it could not attach)", "")
        if not self._statements or self._dsn is None:
            run.say("- no statement counts (pg_stat_statements is not loaded on this server)")
            return
        statements = asyncio.run(_statements(self._dsn))
        calls = sum(s.calls for s in statements)
        total = sum(s.total_ms for s in statements) or 1e-9
        run.say(
            f"PostgreSQL, pg_stat_statements over the run: {calls:,} statements, "
            f"{calls / per:.2f} per order, {total / per:.2f} ms of execution per order.",
            "",
            *report.table(
                ["statement", "calls", "per order", "mean ms", "share of time"],
                [
                    [
                        f"`{s.query[:90]}`",
                        f"{s.calls:,}",
                        f"{s.calls / per:.2f}",
                        f"{s.mean_ms:.2f}",
                        f"{s.total_ms / total:.1%}",
                    ]
                    for s in statements[:12]
                ],
            ),
        )
