"""Tables and plots of a load run: the reference day beside the competitor's figures, the
knee's staircase, and what the processes under test used.

Tables are Markdown, printed and written to the run's folder; plots are PNG files there too
(when matplotlib is installed; without it the tables are still written).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.calls import Calls, Latency
from loadtests.locust.daycurve import CompressedDay, DayCurve
from loadtests.locust.steps import StepResult
from loadtests.sampler import ProcessSampler

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


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def row(cells: Iterable[object]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table."""
    return [row(header), row(["---"] * len(header)), *(row(r) for r in rows)]


def latency_rows(calls: Calls, window_s: float) -> list[list[object]]:
    """Per request name: calls, rate, mean, p50, p99, max, over `window_s`."""
    rows: list[list[object]] = []
    for name in sorted(set(calls.names)):
        lat = calls.select([name]).latency(window_s)
        rows.append(
            [
                name,
                f"{lat.count:,}",
                f"{lat.per_s:,.1f}",
                _ms(lat.mean_ms),
                _ms(lat.p50_ms),
                _ms(lat.p99_ms),
                _ms(lat.max_ms),
            ]
        )
    return rows


LATENCY_HEADER = ["request", "calls", "per s", "mean ms", "p50 ms", "p99 ms", "max ms"]


def status_rows(calls: Calls) -> list[list[object]]:
    """Non-OK outcomes by request name and status code."""
    counts = calls.by_name_and_code()
    return [[name, code, f"{n:,}"] for (name, code), n in sorted(counts.items()) if code != "OK"]


def resource_rows(sampler: ProcessSampler, start: float, end: float) -> list[list[object]]:
    """Per group: processes, max RSS of one process and of the group, CPU over [start, end]."""
    rows: list[list[object]] = []
    ours = 0.0
    for group in sampler.samples:
        cpu = sampler.cpu_percent(group, start, end)
        ours += 0.0 if math.isnan(cpu) else cpu
        single, total = sampler.max_rss_mb(group)
        rows.append(
            [
                group,
                sampler.processes(group),
                f"{single:,.0f}",
                f"{total:,.0f}",
                f"{cpu:,.0f}%",
            ]
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
    create_run: Latency
    create_peak: Latency
    queries_run: Latency
    queries_peak: Latency
    failures: int
    buffer_hit_ratio: float
    payment_lag: tuple[float, float, float] | None
    server_rss_mb: float


def day_figures(
    calls: Calls,
    plan: dict[str, object],
    *,
    buffer_hit_ratio: float,
    payment_lag: tuple[float, float, float] | None,
    server_rss_mb: float,
) -> DayFigures:
    """Headline figures: order creation and buyer queries over the run and on the plateau."""
    started = float(plan["started_at"])  # type: ignore[arg-type]
    plateau = plan["plateau"]
    assert isinstance(plateau, list)
    p0, p1 = started + plateau[0], started + plateau[1]
    duration = float(plan["duration_s"])  # type: ignore[arg-type]
    create = calls.select(CREATE)
    queries = calls.select(QUERIES)
    created_on_plateau = create.select(start=p0, end=p1, ok_only=True)
    return DayFigures(
        target_peak_per_s=float(plan["peak_per_s"]),  # type: ignore[arg-type]
        achieved_peak_per_s=len(created_on_plateau) / (p1 - p0),
        create_run=create.latency(duration),
        create_peak=create.select(start=p0, end=p1).latency(p1 - p0),
        queries_run=queries.latency(duration),
        queries_peak=queries.select(start=p0, end=p1).latency(p1 - p0),
        failures=sum(
            n
            for (name, code), n in calls.by_name_and_code().items()
            if code != "OK" and "[" not in name
        ),
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
    return table(
        ["", "competitor before", "competitor after", "stockcore, this run"],
        [
            [
                "order creation mean",
                *COMPETITOR["create_mean"],
                f"{_ms(f.create_peak.mean_ms)} ms at the peak ({_ms(f.create_run.mean_ms)} ms over the run)",
            ],
            [
                "order creation p99",
                *COMPETITOR["create_p99"],
                f"{_ms(f.create_peak.p99_ms)} ms at the peak ({_ms(f.create_run.p99_ms)} ms over the run)",
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
                f"mean {_ms(f.queries_peak.mean_ms)} ms, p99 {_ms(f.queries_peak.p99_ms)} ms at the "
                f"peak; PostgreSQL buffer hit {f.buffer_hit_ratio:.1%} (no query cache: reads "
                "go to PostgreSQL)",
            ],
            ["reconciliation", *COMPETITOR["reconciliation"], lag],
        ],
    )


def plot_day(calls: Calls, plan: dict[str, object], sampler: ProcessSampler, path: Path) -> bool:
    """Orders/s asked and served, calls/s, latency and server memory over the run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    started = float(plan["started_at"])  # type: ignore[arg-type]
    duration = float(plan["duration_s"])  # type: ignore[arg-type]
    day = CompressedDay(
        DayCurve(),
        duration_s=duration,
        peak_hold_s=float(plan["plateau"][1]) - float(plan["plateau"][0]),  # type: ignore[index]
        scale=float(plan["scale"]),  # type: ignore[arg-type]
    )
    end = started + duration
    create = calls.select(CREATE)
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    xs = [x / 2 for x in range(int(duration * 2) + 1)]
    top.plot(xs, [day.rate(x) for x in xs], label="orders/s asked (shape)", color="black", lw=1)
    served = create.select(ok_only=True).per_second(started, end)
    top.plot([t + 0.5 for t, _ in served], [n for _, n in served], label="orders created /s", lw=1)
    total = calls.per_second(started, end)
    top.plot(
        [t + 0.5 for t, _ in total], [n for _, n in total], label="all calls /s", lw=0.8, alpha=0.6
    )
    top.set_ylabel("per second")
    top.legend(loc="upper left")
    top.set_title("Reference day, compressed: throughput, latency and server memory")
    for name, q, style in (("create", 50, "-"), ("create", 99, "-"), ("queries", 99, "--")):
        selection = create if name == "create" else calls.select(QUERIES)
        series = selection.percentile_series(started, end, q, bin_s=5.0)
        mid.plot([t + 2.5 for t, _ in series], [v for _, v in series], style, label=f"{name} p{q}")
    mid.set_ylabel("ms (5 s bins)")
    mid.set_yscale("log")
    mid.legend(loc="upper left")
    for group in ("server", "postgres", "redis"):
        samples = sampler.samples.get(group, [])
        if samples:
            low.plot(
                [s.at - started for s in samples],
                [sum(s.pss_kb.values()) / 1024 for s in samples],
                label=f"{group} PSS MB",
            )
    low.set_ylabel("MB")
    low.set_xlabel("seconds into the run")
    low.legend(loc="upper left")
    for axis in (top, mid, low):
        axis.axvspan(*plan["plateau"], color="orange", alpha=0.1)  # type: ignore[misc]
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_knee(
    steps: Sequence[StepResult],
    closed_loop: Sequence[tuple[int, float, float, float]],
    calls: Calls | None,
    started: float,
    ended: float,
    path: Path,
    title: str,
) -> bool:
    """The staircase (served vs offered, p99 vs offered, and over time) and the closed loop."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(12, 8))
    if steps:
        offered = [s.offered for s in steps]
        a.plot(offered, offered, ":", color="grey", label="served = offered")
        a.plot(offered, [s.achieved for s in steps], "o-", label="served /s")
        a.set_xlabel("offered /s")
        a.set_ylabel("served /s")
        a.legend()
        b.plot(offered, [s.p99_ms for s in steps], "o-", color="red", label="p99")
        b.set_xlabel("offered /s")
        b.set_ylabel("p99 ms")
        b.legend()
    if calls is not None and len(calls):
        per_s = calls.select(ok_only=True).per_second(started, ended)
        c.plot([t for t, _ in per_s], [n for _, n in per_s], lw=0.8, label="served /s")
        twin = c.twinx()
        series = calls.percentile_series(started, ended, 99, bin_s=5.0)
        twin.plot(
            [t + 2.5 for t, _ in series], [v for _, v in series], color="red", lw=1, label="p99 ms"
        )
        twin.set_ylabel("p99 ms (5 s bins)")
        c.set_xlabel("seconds into the Locust staircase")
        c.set_ylabel("per second")
        c.legend(loc="upper left")
    if closed_loop:
        levels = [str(x[0]) for x in closed_loop]
        d.plot(levels, [x[1] for x in closed_loop], "o-", label="empty call /s")
        d.plot(levels, [x[2] for x in closed_loop], "o-", label="CreateOrder /s")
        d.plot(levels, [x[3] for x in closed_loop], "o-", label="checkouts /s")
        d.set_xlabel("closed-loop callers")
        d.set_ylabel("per second")
        d.set_yscale("log")
        d.legend()
    for axis in (a, b, c, d):
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
