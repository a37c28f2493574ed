"""The empty-call floor: what the load generator and grpc.aio alone cost per call at a
scenario's pace, measured on this machine, in the same run.

    python -m loadtests.floor [--rate 1200 --users 474 --processes 2 --duration 15]

A handler that does nothing (loadtests/edge.py, `empty`) is called by Locust users like the
scenario's (loadtests/locust/empty.py: one channel each, the same reporting interceptor,
Poisson-spaced calls) at the scenario's call rate, with as many users as it had buyers. The
CPU both processes used, per call, is the least any service written on this runtime pays
for that call, before its own work: multiplied by a scenario's calls per order it is the
floor of its CPU per order, which the day's report prints beside what the order cost.
Every figure is measured; nothing here is assumed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.arguments import positive_float, positive_int
from loadtests.edge import edge_process
from loadtests.locuststats import History
from loadtests.sampler import ProcessSampler
from loadtests.swarm import Swarm, run_swarm

EMPTY_NAME = "Empty/Call"
"""How Locust names the empty call (loadtests/locust/interceptor.py's rpc_name)."""
_SETTLE_S = 3.0
"""Seconds left out at the start (users connecting) and at the end."""


@dataclass(frozen=True)
class Floor:
    """The empty call at a given pace."""

    asked_per_s: float
    calls_per_s: float
    """Empty calls answered per second over the measured window."""
    load_us: float
    """CPU of the load processes per call, in microseconds."""
    server_us: float
    """CPU of the empty server per call, in microseconds."""

    @property
    def per_call_us(self) -> float:
        """Both sides of one call."""
        return self.load_us + self.server_us

    def per_order_ms(self, calls_per_order: float) -> float:
        """The floor of an order that takes `calls_per_order` calls, in milliseconds."""
        return self.per_call_us * calls_per_order / 1000.0

    def describe(self) -> str:
        """One line for a report."""
        return (
            f"{self.calls_per_s:,.0f} empty calls/s answered (asked {self.asked_per_s:,.0f}/s): "
            f"{self.load_us:,.0f} µs of load-process CPU and {self.server_us:,.0f} µs of "
            f"server CPU per call, {self.per_call_us:,.0f} µs in all"
        )


def measure_floor(
    rate: float, users: int, *, processes: int = 2, duration: float = 15.0, out: Path | None = None
) -> Floor:
    """Call the empty server `rate` times a second from `users` Locust users in `processes`
    load processes for `duration` seconds, and return the CPU per call of both sides."""
    users = max(1, users)
    with tempfile.TemporaryDirectory() as scratch, edge_process("empty") as (target, pid):
        load_pids: list[int] = []
        sampler = ProcessSampler(lambda: {"server": [pid], "load": list(load_pids)}, 0.25)
        folder = out or Path(scratch)
        swarm = Swarm(
            "empty.py",
            target,
            folder,
            processes,
            ["--call-pacing", f"{users / rate:.6f}"],
            users=users,
            spawn_rate=users,
            run_time_s=duration + 2 * _SETTLE_S,
            expected_s=duration + 2 * _SETTLE_S + 30,
        )
        sampler.start()
        try:
            result = run_swarm(swarm, load_pids)
        finally:
            sampler.stop()
        if result.exit_code != 0:
            raise RuntimeError(f"the empty-call load exited with {result.exit_code}")
        start = result.started_at + _SETTLE_S
        end = result.ended_at - _SETTLE_S
        span = History.read(result.csv_prefix).span(EMPTY_NAME, start, end)
        if span.ok <= 0 or span.seconds <= 0:
            raise RuntimeError("no empty call was answered in the measured window")
        calls_per_s = span.ok / span.seconds
        # CPU over the sampler's window, calls over Locust's rows in the same window.
        load = sampler.cpu_percent("load", start, end)
        server = sampler.cpu_percent("server", start, end)
    return Floor(
        asked_per_s=rate,
        calls_per_s=calls_per_s,
        load_us=load * 1e4 / calls_per_s,
        server_us=server * 1e4 / calls_per_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=positive_float, default=1200.0, help="calls/s asked")
    parser.add_argument("--users", type=positive_int, default=474, help="Locust users")
    parser.add_argument("--processes", type=positive_int, default=2, help="load processes")
    parser.add_argument("--duration", type=positive_float, default=15.0, help="seconds measured")
    args = parser.parse_args()
    began = time.time()
    floor = measure_floor(args.rate, args.users, processes=args.processes, duration=args.duration)
    print(floor.describe())
    print(f"({time.time() - began:.0f} s)")


if __name__ == "__main__":
    main()
