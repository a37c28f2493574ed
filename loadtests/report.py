"""A load run's folder and its tables: the summary printed and written to
.reports/<run>/summary.md with its verdict (`Run`), Markdown tables of Locust's statistics
and of the processes under test, and the reference day's headline figures beside the
competitor's. Every latency and rate of a Locust scenario comes from Locust's own statistics
(loadtests/locuststats.py); the tables name which statistic.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.locuststats import AGGREGATED, Entry, Failure, History, Span, pooled_mean_ms
from loadtests.sampler import ProcessSampler

ROOT = Path(__file__).resolve().parent.parent

CREATE = ("OrderService/CreateOrder", "InventoryService/Reserve")
"""Order creation, in the orders API and in the holds-only API."""
QUERIES = (
    "InventoryService/GetStock",
    "OrderService/GetOrder",
    "OrderService/ListOrders",
    "InventoryService/GetReservation",
)
"""What a buyer reads."""

COMPETITOR = {
    "create_mean": ("842 ms", "113 ms"),
    "create_p99": ("1.8 s", "327 ms"),
    "peak": ("237 orders/s", "237 orders/s"),
    "queries": ("63% cache hit, 12% slow queries", "98.7% cache hit, no slow queries"),
    "reconciliation": ("nightly, 2 h 17 min", "within 30 s of payment"),
}
"""The reference article's table: a 500,000 orders/day live-streaming shop, before and after."""


def describe_machine() -> str:
    """CPU, cores, memory, Python, PostgreSQL and Redis versions."""
    cpu = "unknown CPU"
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass

    def version(*command: str) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        except OSError:
            return "?"
        return out.strip().splitlines()[0] if out.strip() else "?"

    return (
        f"{os.cpu_count()} cores ({cpu}){mem}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; {version('postgres', '--version')}; "
        f"{version('redis-server', '--version').split(' sha=')[0]}"
    )


class Run:
    """One run: its folder under `reports`, its printed and written summary, its verdict."""

    def __init__(self, kind: str, reports: Path) -> None:
        """Make the folder <reports>/<kind>-<time>."""
        self.tag = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.dir = (reports / self.tag).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.failed: list[str] = []
        self.figures: dict[str, float] = {}
        """Named figures of the run that another report may set beside another run's."""

    def say(self, *lines: str) -> None:
        """Print and keep for summary.md."""
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def check(self, ok: bool, what: str) -> None:
        """Record a pass/fail line: a failed check fails the run."""
        self.say(f"- {'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            self.failed.append(what)

    def target(self, met: bool, what: str) -> None:
        """Record a performance target: reported, but only checks decide the exit code."""
        self.say(f"- {'MET' if met else 'MISSED'}: {what}")

    def unmeasured(self, what: str) -> None:
        """Record a target this run could not measure (neither met nor missed)."""
        self.say(f"- NOT MEASURED: {what}")

    def finish(self) -> int:
        """Write summary.md; the exit code."""
        (self.dir / "summary.md").write_text("\n".join(self.lines) + "\n")
        shown = self.dir.relative_to(ROOT) if self.dir.is_relative_to(ROOT) else self.dir
        print(f"\nreport folder: {shown}")
        return 1 if self.failed else 0


def ms(value: float) -> str:
    """Milliseconds for a table: one decimal below 100, none above, "-" for none."""
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def row(cells: Iterable[object]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table."""
    return [row(header), row(["---"] * len(header)), *(row(r) for r in rows)]


LATENCY_HEADER = ["request", "calls", "failed", "per s", "mean ms", "p50 ms", "p99 ms", "max ms"]
"""Columns of `latency_rows`: Locust's figures over the whole run."""


def latency_rows(stats: dict[str, Entry]) -> list[list[object]]:
    """Per request name, Locust's whole-run statistics (its _stats.csv)."""
    return [
        [
            e.name,
            f"{e.requests:,}",
            f"{e.failures:,}",
            f"{e.per_s:,.1f}",
            *map(ms, (e.mean_ms, e.p50_ms, e.p99_ms, e.max_ms)),
        ]
        for name, e in sorted(stats.items())
        if name != AGGREGATED
    ]


GATEWAY_HEADER = [
    "request",
    "gRPC calls",
    "HTTP calls",
    "gRPC mean ms",
    "HTTP mean ms",
    "added mean ms",
    "gRPC p50 ms",
    "HTTP p50 ms",
    "added p50 ms",
    "gRPC p99 ms",
    "HTTP p99 ms",
]
"""Columns of `gateway_rows`."""


def gateway_rows(stats: dict[str, Entry], http_prefix: str) -> list[list[object]]:
    """Each request made both ways in one run: gRPC straight to the server beside HTTP/JSON
    through the gateway (named `http_prefix` + the RPC), from Locust's _stats.csv."""
    rows: list[list[object]] = []
    for name, grpc_entry in sorted(stats.items()):
        http_entry = stats.get(http_prefix + name)
        if http_entry is None:
            continue
        rows.append(
            [
                name,
                f"{grpc_entry.requests:,}",
                f"{http_entry.requests:,}",
                ms(grpc_entry.mean_ms),
                ms(http_entry.mean_ms),
                ms(http_entry.mean_ms - grpc_entry.mean_ms),
                ms(grpc_entry.p50_ms),
                ms(http_entry.p50_ms),
                ms(http_entry.p50_ms - grpc_entry.p50_ms),
                ms(grpc_entry.p99_ms),
                ms(http_entry.p99_ms),
            ]
        )
    return rows


SPAN_HEADER = ["request", "calls", "not failed /s", "mean ms", "p99 ms", "worst p99 ms"]
"""Columns of `span_rows`."""


def span_rows(history: History, start: float, end: float) -> list[list[object]]:
    """Per request name over [start, end], from Locust's stats history: calls and mean from
    its cumulative columns; p99 the median, and the worst, of its 10-second p99s."""
    rows: list[list[object]] = []
    for name in history.names:
        span = history.span(name, start, end)
        if span.calls:
            rows.append(
                [
                    name,
                    f"{span.calls:,}",
                    f"{span.ok_per_s:,.1f}",
                    *map(ms, (span.mean_ms, span.p99_ms, span.worst_p99_ms)),
                ]
            )
    return rows


def status_rows(stats: dict[str, Entry], failures: Sequence[Failure]) -> list[list[object]]:
    """Non-OK outcomes: expected rejections (their own request names, "... [CODE]") and
    failures by request name and status code."""
    rows: list[list[object]] = [
        [name, "expected rejection", f"{e.requests:,}"]
        for name, e in sorted(stats.items())
        if name.endswith("]")
    ]
    rows += [[f.name, f.error, f"{f.occurrences:,}"] for f in failures]
    return rows


def failed_calls(stats: dict[str, Entry]) -> int:
    """Calls Locust counted as failed (expected rejections are not)."""
    return sum(e.failures for name, e in stats.items() if name != AGGREGATED)


def resource_rows(sampler: ProcessSampler, start: float, end: float) -> list[list[object]]:
    """Per group: processes, max RSS of one process and of the group, CPU over [start, end]."""
    rows: list[list[object]] = []
    ours = 0.0
    for group in sampler.samples:
        cpu = sampler.cpu_percent(group, start, end)
        ours += 0.0 if math.isnan(cpu) else cpu
        single, total = sampler.max_rss_mb(group)
        rows.append(
            [group, sampler.processes(group), f"{single:,.0f}", f"{total:,.0f}", f"{cpu:,.0f}%"]
        )
    machine = sampler.machine_cpu_percent(start, end)
    rows.append(["other processes (not this run)", "", "", "", f"{machine - ours:,.0f}%"])
    rows.append(["whole machine", "", "", "", f"{machine:,.0f}%"])
    return rows


RESOURCE_HEADER = [
    "processes",
    "count",
    "max RSS of one MB",
    "max PSS of all MB",
    "CPU (100% = one core)",
]


@dataclass(frozen=True)
class DayFigures:
    """The headline figures of a reference-day run."""

    target_peak_per_s: float
    achieved_peak_per_s: float
    """Orders created on the plateau per second: CreateOrder's Total Request Count less
    Total Failure Count in the stats history, from the plateau's start to its end."""
    create_peak: Span
    create_run: Entry
    queries_peak: dict[str, Span]
    queries_mean_ms: float
    """Every buyer read on the plateau, from each read's cumulative count and mean."""
    failures: int
    buffer_hit_ratio: float
    payment_lag: tuple[float, float, float] | None
    server_rss_mb: float


def plateau(plan: dict[str, Any]) -> tuple[float, float]:
    """The plateau's start and end, Unix seconds."""
    started = float(plan["started_at"])
    first, last = plan["plateau"]
    return started + float(first), started + float(last)


def day_figures(
    stats: dict[str, Entry],
    history: History,
    plan: dict[str, Any],
    *,
    buffer_hit_ratio: float,
    payment_lag: tuple[float, float, float] | None,
    server_rss_mb: float,
) -> DayFigures:
    """Headline figures: order creation and buyer queries on the plateau, from Locust."""
    p0, p1 = plateau(plan)
    create = next((name for name in CREATE if name in stats), CREATE[0])
    create_peak = history.span(create, p0, p1)
    queries = {name: history.span(name, p0, p1) for name in QUERIES if name in stats}
    return DayFigures(
        target_peak_per_s=float(plan["peak_per_s"]),
        achieved_peak_per_s=create_peak.ok_per_s,
        create_peak=create_peak,
        create_run=stats.get(create, Entry(create, 0, 0, *[math.nan] * 5)),
        queries_peak=queries,
        queries_mean_ms=pooled_mean_ms(list(queries.values())),
        failures=failed_calls(stats),
        buffer_hit_ratio=buffer_hit_ratio,
        payment_lag=payment_lag,
        server_rss_mb=server_rss_mb,
    )


def competitor_table(f: DayFigures) -> list[str]:
    """The article's before/after beside this run."""
    lag = (
        f"ORDER_PAID on the event stream: p50 {f.payment_lag[0] * 1000:,.0f} ms, "
        f"p99 {f.payment_lag[1] * 1000:,.0f} ms, max {f.payment_lag[2]:.1f} s after the commit"
        if f.payment_lag
        else "no order events read (orders API not used or no Redis URL)"
    )
    reads = ", ".join(
        f"{name.split('/')[1]} {ms(span.p99_ms)}" for name, span in f.queries_peak.items()
    )
    return table(
        ["", "competitor before", "competitor after", "stockcore, this run"],
        [
            [
                "order creation mean",
                *COMPETITOR["create_mean"],
                f"{ms(f.create_peak.mean_ms)} ms at the peak ({ms(f.create_run.mean_ms)} ms over the run)",
            ],
            [
                "order creation p99",
                *COMPETITOR["create_p99"],
                f"{ms(f.create_peak.p99_ms)} ms at the peak (median of Locust's 10 s p99s; worst "
                f"{ms(f.create_peak.worst_p99_ms)} ms; {ms(f.create_run.p99_ms)} ms over the run)",
            ],
            [
                "peak",
                *COMPETITOR["peak"],
                f"{f.achieved_peak_per_s:,.1f} orders/s created on the plateau "
                f"(asked {f.target_peak_per_s:,.1f})",
            ],
            [
                "buyer queries",
                *COMPETITOR["queries"],
                f"mean {ms(f.queries_mean_ms)} ms at the peak, p99 {reads or '-'} ms; PostgreSQL "
                f"buffer hit {f.buffer_hit_ratio:.1%} (no query cache: reads go to PostgreSQL)",
            ],
            ["reconciliation", *COMPETITOR["reconciliation"], lag],
        ],
    )
