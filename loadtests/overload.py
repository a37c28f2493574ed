"""`make load-overload`: Reserve far past capacity, then back, as callers that honour the
server's pushback would send it.

    python -m loadtests.overload --callers 1500 --overload 120

Three phases over one fresh local stack (or STOCKCORE_TARGET), from one load process:

1. *before*: `--base-callers` (64) callers in a closed loop, each starting its next Reserve
   as soon as the last ended: the capacity (Reserves/s) and the admitted calls' p99;
2. *overload*: `--callers` (1,500) callers in the same loop, each operation with a
   `--deadline` (2 s), as the over-the-wire reproduction of this failure did;
3. *after*: `--base-callers` again: how long until rate and p99 are back.

Each operation is what clients/ does: attempts pass the client's adaptive throttle
(clients/throttle.py), a RESOURCE_EXHAUSTED is sent again after the server's
RetryInfo delay when that fits in the deadline (RetryPolicy), else the operation gives up.
Every attempt that reached the server and was served (OK, or a business refusal) is
"admitted"; its latency is that attempt's, not the operation's. Figures per second go
to timeline.csv and overload.png; the targets of this failure are printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from stockcore.v1 import inventory_pb2 as inv
from stockcore.v1 import inventory_pb2_grpc as inv_grpc

from clients.errors import StatusCode, from_rpc_error
from clients.inventory import RetryPolicy
from clients.throttle import AdaptiveThrottle
from loadtests import invariants, report
from loadtests.arguments import non_negative_int, positive_float, positive_int
from loadtests.driver import percentile, run_on_uvloop
from loadtests.locust.options import catalogue
from loadtests.sampler import pin
from loadtests.stack import open_stack, stock_catalogue

ROOT = Path(__file__).resolve().parent.parent
DEEP_STOCK = 1_000_000_000
_CALLER = (("stockcore-caller", "loadtests-overload"),)
_TTL = duration_pb2.Duration(seconds=900)

# Outcomes of one operation.
OK = "ok"
GAVE_UP = "gave_up"  # refused (by the server or the throttle) past its deadline's reach


@dataclass
class Second:
    """What happened in one second of the run."""

    ok: int = 0
    admitted_ms: list[float] = field(default_factory=list)
    refused_by_server: int = 0
    refused_locally: int = 0
    refusal_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass
class Recorder:
    """Per-second figures, keyed by whole seconds since the start."""

    start: float
    seconds: dict[int, Second] = field(default_factory=dict)

    def at(self, moment: float) -> Second:
        return self.seconds.setdefault(int(moment - self.start), Second())


@dataclass(frozen=True)
class PhaseFigures:
    """One phase (or part of one), summed."""

    name: str
    seconds: float
    ok_per_s: float
    admitted_p99_ms: float
    admitted_p50_ms: float
    refused_by_server: int
    refused_locally: int
    refusal_p99_ms: float
    outcomes: dict[str, int]


def figures(rec: Recorder, name: str, first: int, last: int) -> PhaseFigures:
    """Sum seconds first..last-1."""
    picked = [rec.seconds.get(s, Second()) for s in range(first, last)]
    admitted = sorted(ms for s in picked for ms in s.admitted_ms)
    refusals = sorted(ms for s in picked for ms in s.refusal_ms)
    outcomes: Counter[str] = Counter()
    for s in picked:
        outcomes.update(s.outcomes)
    span = max(last - first, 1)
    return PhaseFigures(
        name,
        span,
        sum(s.ok for s in picked) / span,
        percentile(admitted, 99),
        percentile(admitted, 50),
        sum(s.refused_by_server for s in picked),
        sum(s.refused_locally for s in picked),
        percentile(refusals, 99),
        dict(outcomes),
    )


class Load:
    """The callers: caller i works while i < `active`."""

    def __init__(
        self,
        target: str,
        skus: list[str],
        deadline: float,
        rec: Recorder,
        callers: int,
        k: float,
        naive_retry: float | None = None,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = inv_grpc.InventoryServiceStub(self._channel)
        self._skus = skus
        self._deadline = deadline
        self._rec = rec
        self._throttle = AdaptiveThrottle(k=k)
        self._policy = RetryPolicy(max_attempts=100)
        # Naive callers throttle nothing and ignore RetryInfo: each refusal is sent again
        # after this fixed pause, as simple retry loops do.
        self._naive_retry = naive_retry
        self._ids = itertools.count()
        self._prefix = f"ov-{os.getpid()}-{random.getrandbits(32):x}-"
        self.active = 0
        self._changed = asyncio.Event()
        self._stopping = False
        self._tasks = [asyncio.create_task(self._caller(i)) for i in range(callers)]

    def set_active(self, count: int) -> None:
        self.active = count
        self._changed.set()
        self._changed = asyncio.Event()

    async def stop(self) -> None:
        self._stopping = True
        self.set_active(0)
        await asyncio.gather(*self._tasks)
        await self._channel.close()

    async def _caller(self, index: int) -> None:
        while not self._stopping:
            if index >= self.active:
                await self._changed.wait()
                continue
            await self._operation()

    async def _operation(self) -> None:
        loop = asyncio.get_running_loop()
        rid = f"{self._prefix}{next(self._ids)}"
        request = inv.ReserveRequest(
            reservation_id=rid,
            lines=[inv.Line(sku=random.choice(self._skus), quantity=1)],
            ttl=_TTL,
        )
        deadline = loop.time() + self._deadline
        attempt = 1
        while True:
            sent = loop.time()
            server_delay: float | None = None
            if self._naive_retry is None and not self._throttle.admit():
                self._rec.at(sent).refused_locally += 1
                server_delay = self._throttle.pushback
            else:
                try:
                    await self._stub.Reserve(
                        request, timeout=max(deadline - sent, 0.001), metadata=_CALLER
                    )
                except grpc.aio.AioRpcError as exc:
                    now = loop.time()
                    error = from_rpc_error(exc)
                    overloaded = error.code is StatusCode.RESOURCE_EXHAUSTED
                    self._throttle.answered(not overloaded, error.retry_delay)
                    if error.code is not StatusCode.RESOURCE_EXHAUSTED:
                        second = self._rec.at(now)
                        if error.code is StatusCode.FAILED_PRECONDITION:
                            second.admitted_ms.append((now - sent) * 1000)
                        second.outcomes[error.code.name] += 1
                        return
                    second = self._rec.at(now)
                    second.refused_by_server += 1
                    second.refusal_ms.append((now - sent) * 1000)
                    server_delay = error.retry_delay
                else:
                    now = loop.time()
                    self._throttle.answered(True)
                    second = self._rec.at(now)
                    second.ok += 1
                    second.admitted_ms.append((now - sent) * 1000)
                    second.outcomes[OK] += 1
                    return
            if self._naive_retry is not None:
                if loop.time() + self._naive_retry >= deadline:
                    self._rec.at(loop.time()).outcomes[GAVE_UP] += 1
                    await asyncio.sleep(self._naive_retry)
                    return
                await asyncio.sleep(self._naive_retry)
                attempt += 1
                continue
            delay = self._policy.retry_delay(
                StatusCode.RESOURCE_EXHAUSTED,
                attempt=attempt,
                read=False,
                remaining=deadline - loop.time(),
                server_delay=server_delay,
            )
            if delay is None:
                now = loop.time()
                self._rec.at(now).outcomes[GAVE_UP] += 1
                # A caller refused for good still waits as long as it was asked to before
                # its next operation (at least a little), as a client honouring pushback.
                await asyncio.sleep(max(server_delay or 0.0, 0.05) * random.uniform(0.5, 1.5))
                return
            await asyncio.sleep(delay)
            attempt += 1


@dataclass(frozen=True)
class Plan:
    """How long each phase lasts and how many callers it has."""

    base_callers: int = 64
    callers: int = 1500
    before: float = 20.0
    overload: float = 120.0
    after: float = 20.0
    deadline: float = 2.0
    k: float = 2.0  # the client throttle's (clients/throttle.py)
    naive_retry: float | None = None  # naive callers: a fixed pause, no throttle, no RetryInfo


@dataclass(frozen=True)
class Result:
    """The phases' figures and the recovery time."""

    before: PhaseFigures
    overload: PhaseFigures
    settled: PhaseFigures  # the overload without its first 5 s
    after: PhaseFigures
    recovery_s: float | None
    recorder: Recorder
    wall_start: float  # time.time() at the start of the "before" phase


async def run(target: str, skus: list[str], plan: Plan) -> Result:
    """The three phases against `target`; per-second figures and their sums."""
    rec = Recorder(time.monotonic())
    load = Load(
        target,
        skus,
        plan.deadline,
        rec,
        max(plan.callers, plan.base_callers),
        plan.k,
        plan.naive_retry,
    )
    try:
        load.set_active(plan.base_callers)
        await asyncio.sleep(2.0)  # warm-up, not counted
        rec.start = time.monotonic()
        wall_start = time.time()
        rec.seconds.clear()
        b_end = int(plan.before)
        await asyncio.sleep(plan.before)
        load.set_active(plan.callers)
        await asyncio.sleep(plan.overload)
        load.set_active(plan.base_callers)
        o_end = b_end + int(plan.overload)
        await asyncio.sleep(plan.after)
        a_end = o_end + int(plan.after)
    finally:
        await load.stop()
    before = figures(rec, "before", 0, b_end)
    return Result(
        before,
        figures(rec, "overload", b_end, o_end),
        figures(rec, "overload, after its first 5 s", b_end + 5, o_end),
        figures(rec, "after", o_end, a_end),
        recovery_time(rec, before, o_end, a_end),
        rec,
        wall_start,
    )


def recovery_time(rec: Recorder, before: PhaseFigures, start: int, end: int) -> float | None:
    """Seconds from the end of the overload to the first second from which on every second
    runs at >= 90 % of the capacity with p99 <= 2x the capacity run's (None: never)."""

    def healthy(second: int) -> bool:
        s = rec.seconds.get(second, Second())
        p99 = percentile(sorted(s.admitted_ms), 99)
        return s.ok >= 0.9 * before.ok_per_s and p99 <= 2 * before.admitted_p99_ms

    for first in range(start, end):
        if all(healthy(s) for s in range(first, end)):
            return float(first - start + 1)
    return None


def write_timeline(rec: Recorder, path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["second", "ok", "admitted_p99_ms", "refused_by_server", "refused_locally", "gave_up"]
        )
        for second in sorted(rec.seconds):
            s = rec.seconds[second]
            p99 = percentile(sorted(s.admitted_ms), 99)
            writer.writerow(
                [
                    second,
                    s.ok,
                    f"{p99:.1f}",
                    s.refused_by_server,
                    s.refused_locally,
                    s.outcomes.get(GAVE_UP, 0),
                ]
            )


def plot(rec: Recorder, plan: Plan, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    seconds = sorted(rec.seconds)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(seconds, [rec.seconds[s].ok for s in seconds], label="Reserve OK/s")
    top.plot(
        seconds, [rec.seconds[s].refused_by_server for s in seconds], label="refused by server/s"
    )
    top.plot(
        seconds, [rec.seconds[s].refused_locally for s in seconds], label="throttled in client/s"
    )
    top.set_ylabel("per second")
    top.legend(loc="upper right")
    bottom.plot(
        seconds,
        [percentile(sorted(rec.seconds[s].admitted_ms), 99) for s in seconds],
        label="admitted p99 ms",
    )
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    for axis in (top, bottom):
        axis.axvspan(plan.before, plan.before + plan.overload, color="red", alpha=0.08)
    fig.suptitle(
        f"Reserve: {plan.base_callers} callers, then {plan.callers} "
        f"({plan.deadline:g} s deadlines), then {plan.base_callers}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def phase_row(p: PhaseFigures) -> list[object]:
    others = {k: v for k, v in p.outcomes.items() if k != OK}
    return [
        p.name,
        f"{p.seconds:g}",
        f"{p.ok_per_s:,.0f}",
        report.ms(p.admitted_p50_ms),
        report.ms(p.admitted_p99_ms),
        f"{p.refused_by_server:,}",
        f"{p.refused_locally:,}",
        report.ms(p.refusal_p99_ms),
        ", ".join(f"{k}={v:,}" for k, v in sorted(others.items())) or "0",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `make load-overload`; a bad number is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--callers", type=positive_int, default=1500)
    parser.add_argument("--base-callers", type=positive_int, default=64)
    parser.add_argument("--before", type=positive_float, default=20.0, help="seconds")
    parser.add_argument("--overload", type=positive_float, default=120.0, help="seconds")
    parser.add_argument("--after", type=positive_float, default=20.0, help="seconds")
    parser.add_argument(
        "--deadline", type=positive_float, default=2.0, help="seconds per operation"
    )
    parser.add_argument(
        "--pin-load",
        type=non_negative_int,
        metavar="CPU",
        help="pin the load to this CPU and the servers to the others (as taskset does)",
    )
    parser.add_argument(
        "--naive",
        type=positive_float,
        metavar="SECONDS",
        help="naive callers: no client throttle, RetryInfo ignored, a refusal sent again"
        " after SECONDS (e.g. 0.05)",
    )
    parser.add_argument("--k", type=positive_float, default=2.0, help="the client throttle's k")
    parser.add_argument(
        "--max-in-flight",
        type=non_negative_int,
        default=0,
        help="the server's bound (default: its own)",
    )
    parser.add_argument("--catalogue", type=positive_int, default=1000, help="SKUs")
    parser.add_argument("--reports", default=str(ROOT / ".reports"))
    args = parser.parse_args(argv)
    if args.pin_load is not None and args.pin_load >= (os.cpu_count() or 1):
        parser.error(f"--pin-load {args.pin_load}: this machine has {os.cpu_count()} CPUs")
    if args.pin_load is not None and (os.cpu_count() or 1) < 2:
        parser.error("--pin-load needs at least two CPUs: one for the load, one for the servers")
    for option in ("before", "overload", "after"):
        # Figures are kept per whole second: a phase shorter than one has none.
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1 second, got {getattr(args, option):g}")
    return args


def main() -> int:
    """Entry point of `make load-overload`."""
    args = parse_args()
    plan = Plan(
        args.base_callers,
        args.callers,
        args.before,
        args.overload,
        args.after,
        args.deadline,
        args.k,
        args.naive,
    )
    run_ = report.Run("overload", Path(args.reports))
    prefix = f"OVER{run_.tag[-6:]}"
    skus = catalogue(prefix, args.catalogue)
    bound = {"STOCKCORE_MAX_IN_FLIGHT": str(args.max_in_flight)} if args.max_in_flight else {}
    with open_stack(ROOT / ".data" / "load", shed=True, extra_env=bound) as stack:
        run_.say(
            "# Overload: Reserve past capacity and back",
            "",
            f"- command: `{' '.join(sys.argv[1:])}` (python -m loadtests.overload)",
            f"- machine: {report.describe_machine()}",
            "- one load process, the server, PostgreSQL and Redis share this machine's cores",
            f"- server: {'fresh local stack' if stack.owned else 'existing, ' + stack.target}",
            f"- phases: {plan.base_callers} callers for {plan.before:g} s, {plan.callers} for "
            f"{plan.overload:g} s, {plan.base_callers} for {plan.after:g} s; "
            f"{plan.deadline:g} s per operation",
            "- callers: "
            + (
                f"naive (no throttle, RetryInfo ignored, a refusal sent again after "
                f"{plan.naive_retry * 1000:g} ms)"
                if plan.naive_retry is not None
                else f"honour RetryInfo, client throttle k = {plan.k:g}"
            ),
            "",
        )
        asyncio.run(stock_catalogue(stack.target, skus, DEEP_STOCK, key=run_.tag))
        if args.pin_load is not None:
            # The load on its own CPU, the stack on the others: the server's share is then
            # the server's alone (on one machine both placements are worth a look).
            # This process started the stack, so the stack is among its descendants:
            # pinning the load first and the stack after leaves each where it belongs.
            rest = set(range(os.cpu_count() or 1)) - {args.pin_load}
            pin(os.getpid(), {args.pin_load})
            for root in stack.service_pids.values():
                pin(root, rest)
            run_.say(
                f"- placement: load pinned to CPU {args.pin_load}, the stack to {sorted(rest)}", ""
            )
        sampler = stack.sampler([os.getpid()])
        sampler.start()
        try:
            result = run_on_uvloop(run(stack.target, skus, plan))
        finally:
            sampler.stop()
        header = [
            "phase",
            "s",
            "OK/s",
            "admitted p50 ms",
            "admitted p99 ms",
            "refused by server",
            "throttled in client",
            "refusal p99 ms",
            "other outcomes",
        ]
        rows = [result.before, result.overload, result.settled, result.after]
        run_.say(*report.table(header, [phase_row(p) for p in rows]), "")
        # Where the CPU went: on two shared cores the callers' own work competes with the
        # server's, and the server's per-call cost shows whether refusals ate capacity.
        w = result.wall_start
        for name, start, end in (
            ("before", w, w + plan.before),
            ("overload, after its first 5 s", w + plan.before + 5, w + plan.before + plan.overload),
        ):
            run_.say(
                f"CPU, {name}:",
                "",
                *report.table(report.RESOURCE_HEADER, report.resource_rows(sampler, start, end)),
                "",
            )
        run_.say("", "## After the run", "")
        invariants.check_after_run(run_, stack.target, stack.pg_dsn, skus)
    write_timeline(result.recorder, run_.dir / "timeline.csv")
    if plot(result.recorder, plan, run_.dir / "overload.png"):
        run_.say("", f"plot: {run_.dir.name}/overload.png")
    report_targets(run_, result)
    return run_.finish()


def report_targets(run_: report.Run, result: Result) -> None:
    """The targets of the overload failure, measured in this run."""
    b, o, s = result.before, result.overload, result.settled
    lost = sum(o.outcomes.get(code, 0) for code in ("CANCELLED", "DEADLINE_EXCEEDED"))
    run_.say("", "## Targets", "")
    run_.target(
        s.ok_per_s >= 0.9 * b.ok_per_s,
        f"goodput during the overload >= 90 % of capacity: {s.ok_per_s:,.0f}/s of "
        f"{b.ok_per_s:,.0f}/s = {s.ok_per_s / b.ok_per_s:.0%} (whole overload: "
        f"{o.ok_per_s / b.ok_per_s:.0%})",
    )
    run_.target(
        o.admitted_p99_ms <= 2 * b.admitted_p99_ms + 20,
        f"admitted p99 within 2x unloaded + 20 ms: {o.admitted_p99_ms:.0f} ms vs "
        f"{b.admitted_p99_ms:.0f} ms = {o.admitted_p99_ms / b.admitted_p99_ms:.1f}x",
    )
    run_.target(
        o.refused_by_server + o.refused_locally > 0 and lost == 0,
        f"excess refused, not left to time out: {o.refused_by_server:,} refused by the server "
        f"(p99 {o.refusal_p99_ms:.1f} ms), {o.refused_locally:,} throttled in the client, "
        f"{lost:,} CANCELLED/DEADLINE_EXCEEDED",
    )
    run_.target(
        result.recovery_s is not None and result.recovery_s <= 5,
        f"recovery within 5 s: {result.recovery_s if result.recovery_s is not None else 'never'} s",
    )


if __name__ == "__main__":
    raise SystemExit(main())
