"""How a long run's figures drift over its plateau (`make soak`): the plateau cut into full
windows of equal length, each window's figures taken from the run's own instruments, and
the first full window compared with the last.

Orders and latency come from Locust's stats history (loadtests/locuststats.py: the calls and
mean exact from its cumulative columns, p50/p99 the median of its 10-second percentiles in
the window); CPU, RSS and Redis's used memory from the ProcessSampler (loadtests/sampler.py).
CPU per order is the CPU a group used in the window over the orders created in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from loadtests.locuststats import History, Span
from loadtests.report import ms
from loadtests.sampler import ProcessSampler

LOAD = "load"
"""The sampler's group of load processes: not under test."""
REDIS_USED = "redis used MB"
"""The sampler's gauge of Redis's used memory (INFO memory's used_memory)."""

# (end - start) / length of a plateau read back from wall-clock times may fall a hair short
# of a whole number of windows.
_SLACK = 1e-6


def windows(start: float, end: float, length: float) -> list[tuple[float, float]]:
    """The full windows of `length` seconds from `start` to `end`, in order; a rest shorter
    than a window at the end is left out."""
    if length <= 0:
        raise ValueError("a window must last more than 0 s")
    count = max(0, math.floor((end - start) / length + _SLACK))
    return [(start + i * length, start + (i + 1) * length) for i in range(count)]


def change(first: float, last: float) -> float:
    """How much larger `last` is than `first`, as a fraction of `first` (0.1 is 10 % more);
    NaN when `first` is not a positive number or `last` is not a number."""
    if math.isnan(first) or math.isnan(last) or first <= 0:
        return math.nan
    return (last - first) / first


def within(first: float, last: float, tolerance: float) -> bool:
    """Whether a figure where more is worse (CPU per order, latency) grew by at most
    `tolerance` (a fraction) from `first` to `last`; one that cannot be compared did not."""
    grown = change(first, last)
    return not math.isnan(grown) and grown <= tolerance


@dataclass(frozen=True)
class WindowFigures:
    """What the run did in one window of the plateau."""

    start: float
    end: float
    orders_per_s: float
    """Orders created (calls that did not fail) per second."""
    asked_per_s: float
    """Orders per second the day's shape asked for."""
    create: Span
    """Order creation's calls, mean and 10-second percentiles in the window."""
    cpu_ms: dict[str, float]
    """CPU per order by process group, ms."""
    machine_cpu_ms: float
    """The whole machine's busy CPU per order, ms: every process on it, this run's or not."""
    server_rss_mb: float
    """The largest server process's RSS at the window's end."""
    redis_used_mb: float
    """Redis's used memory at the window's end (INFO memory)."""

    @property
    def stack_cpu_ms(self) -> float:
        """CPU per order of the processes under test (every group but the load processes);
        the whole machine's when none was sampled (an existing server)."""
        under_test = [v for group, v in self.cpu_ms.items() if group != LOAD and not math.isnan(v)]
        return sum(under_test) if under_test else self.machine_cpu_ms


def measure(
    history: History,
    sampler: ProcessSampler,
    create: str,
    orders: Sequence[str],
    window: tuple[float, float],
    asked_per_s: float,
) -> WindowFigures:
    """One window's figures: `orders` are the request names that create an order (gRPC and,
    in a mixed run, HTTP), `create` the one whose latency is shown."""
    start, end = window
    spans = [history.span(name, start, end) for name in orders]
    per_s = sum(span.ok for span in spans) / (end - start)

    def per_order(cpu_percent: float) -> float:
        # % of one core is 10 ms of CPU per second.
        return cpu_percent * 10.0 / per_s if per_s > 0 else math.nan

    return WindowFigures(
        start=start,
        end=end,
        orders_per_s=per_s,
        asked_per_s=asked_per_s,
        create=history.span(create, start, end),
        cpu_ms={
            group: per_order(sampler.cpu_percent(group, start, end)) for group in sampler.samples
        },
        machine_cpu_ms=per_order(sampler.machine_cpu_percent(start, end)),
        server_rss_mb=sampler.rss_mb_at("server", end),
        redis_used_mb=sampler.reading_at(REDIS_USED, end),
    )


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def _figure(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.2f}"


def _percent(fraction: float) -> str:
    return "-" if math.isnan(fraction) else f"{fraction:+.1%}"


def window_header(groups: Sequence[str]) -> list[str]:
    """Columns of `window_rows`."""
    return [
        "window (m:ss into the plateau)",
        "orders/s created of asked",
        "create mean ms",
        "create p50 ms",
        "create p99 ms",
        "CPU ms/order: under test",
        "whole machine",
        *groups,
        "server RSS MB",
        "Redis used MB",
    ]


def window_rows(
    figures: Sequence[WindowFigures], groups: Sequence[str], plateau_start: float
) -> list[list[object]]:
    """One row per window, as `window_header` names them."""
    return [
        [
            f"{_clock(w.start - plateau_start)}-{_clock(w.end - plateau_start)}",
            f"{w.orders_per_s:,.1f} of {w.asked_per_s:,.1f}",
            *map(ms, (w.create.mean_ms, w.create.p50_ms, w.create.p99_ms)),
            *map(_figure, (w.stack_cpu_ms, w.machine_cpu_ms)),
            *(_figure(w.cpu_ms.get(group, math.nan)) for group in groups),
            *map(_figure, (w.server_rss_mb, w.redis_used_mb)),
        ]
        for w in figures
    ]


COMPARISON_HEADER = ["figure", "first window", "last window", "change", "limit"]
"""Columns of `comparison_rows`."""


def comparison_rows(
    first: WindowFigures, last: WindowFigures, groups: Sequence[str], tolerance: float
) -> list[list[object]]:
    """The first full window beside the last; the limit on the figures the soak checks."""
    limit = f"at most {tolerance:+.0%}"
    checked = [
        ("CPU per order, processes under test (ms)", first.stack_cpu_ms, last.stack_cpu_ms),
        ("order creation mean (ms)", first.create.mean_ms, last.create.mean_ms),
    ]
    shown = [
        (
            f"orders created /s ({last.asked_per_s:,.1f} asked)",
            first.orders_per_s,
            last.orders_per_s,
        ),
        ("order creation p50 (ms)", first.create.p50_ms, last.create.p50_ms),
        ("order creation p99 (ms)", first.create.p99_ms, last.create.p99_ms),
        ("CPU per order, whole machine (ms)", first.machine_cpu_ms, last.machine_cpu_ms),
        *(
            (
                f"CPU per order, {group} (ms)",
                first.cpu_ms.get(group, math.nan),
                last.cpu_ms.get(group, math.nan),
            )
            for group in groups
        ),
        ("server RSS (MB)", first.server_rss_mb, last.server_rss_mb),
        ("Redis used memory (MB)", first.redis_used_mb, last.redis_used_mb),
    ]
    return [
        [name, _figure(a), _figure(b), _percent(change(a, b)), limit] for name, a, b in checked
    ] + [[name, _figure(a), _figure(b), _percent(change(a, b)), ""] for name, a, b in shown]
