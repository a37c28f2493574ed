"""Closed-loop load generation: each worker starts its next call as soon as its last one ends.

One Python process saturates a core long before a gRPC server does, so `run_in_processes`
spreads the same loop over several spawned processes and merges what they measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

import grpc

Op = Callable[[int], Awaitable[object]]
"""One operation; called with the worker's index, it may return an outcome label or raise."""

OpFactory = Callable[[], Awaitable[Op]]
"""Builds an `Op` inside a load process; must pickle (a module-level function or a partial)."""

OK = "ok"
"""The outcome label of a call that returned something other than a string."""

_T = TypeVar("_T")
_PR_SET_PDEATHSIG = 1
# How long calls still in flight at the end of the window may take before they are cancelled.
_DRAIN_TIMEOUT = 30.0
# Spawning a process and importing grpc takes seconds on a loaded two-core machine.
_START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Recording:
    """Raw measurements of one closed loop, kept so that several loops can be merged."""

    latencies: list[float]
    """Seconds taken by each call that completed inside the window."""
    outcomes: dict[str, int]
    """Completed calls in the window by outcome label."""
    failures: int
    """How many of those calls raised."""
    window: float
    """Seconds between the end of warm-up and the end of the run."""


@dataclass(frozen=True)
class RunResult:
    """Throughput and latency of a run, over the calls that completed after warm-up."""

    ops_per_s: float
    count: int
    failures: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    window_s: float
    outcomes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a terminal or a log."""
        outcomes = ", ".join(f"{label}={n}" for label, n in sorted(self.outcomes.items()))
        return (
            f"{self.ops_per_s:,.0f} ops/s  n={self.count}  p50={self.p50_ms:.2f}ms  "
            f"p90={self.p90_ms:.2f}ms  p99={self.p99_ms:.2f}ms  mean={self.mean_ms:.2f}ms  "
            f"window={self.window_s:.2f}s  [{outcomes}]"
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ascending values, interpolated between ranks; NaN if none."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not sorted_values:
        return math.nan
    rank = q / 100.0 * (len(sorted_values) - 1)
    below = math.floor(rank)
    above = math.ceil(rank)
    low, high = sorted_values[below], sorted_values[above]
    return low + (high - low) * (rank - below)


def merge(recordings: Iterable[Recording]) -> RunResult:
    """Combine loops that ran side by side: throughputs add up, latencies pool for percentiles."""
    parts = list(recordings)
    if not parts:
        raise ValueError("no recordings to merge")
    latencies = sorted(chain.from_iterable(part.latencies for part in parts))
    outcomes: Counter[str] = Counter()
    for part in parts:
        outcomes.update(part.outcomes)
    count = len(latencies)
    return RunResult(
        ops_per_s=sum(len(part.latencies) / part.window for part in parts if part.window > 0),
        count=count,
        failures=sum(part.failures for part in parts),
        p50_ms=percentile(latencies, 50) * 1000,
        p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        mean_ms=math.fsum(latencies) / count * 1000 if count else math.nan,
        window_s=max(part.window for part in parts),
        outcomes=dict(outcomes),
    )


def summarize(recording: Recording) -> RunResult:
    """The result of a single loop."""
    return merge([recording])


def outcome_label(error: BaseException) -> str:
    """Label a failed call: the gRPC status code name, or else the exception's class name."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


async def record_closed_loop(
    op: Op,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    stop: asyncio.Event | None = None,
    first_worker: int = 0,
) -> Recording:
    """Run `concurrency` workers calling `op` back to back and keep the raw measurements.

    Calls that complete within `duration` seconds after `warmup` are measured. Setting `stop`
    ends the run early: no new calls start, and the window closes at the last completion.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if duration <= 0 or warmup < 0:
        raise ValueError(f"need duration > 0 and warmup >= 0, got {duration} and {warmup}")
    stopping = stop if stop is not None else asyncio.Event()
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    failures = 0
    last_done = 0.0
    measure_from = time.perf_counter() + warmup
    end = measure_from + duration

    async def worker(index: int) -> None:
        nonlocal failures, last_done
        while not stopping.is_set():
            began = time.perf_counter()
            if began >= end:
                return
            failed = False
            try:
                result = await op(index)
            except Exception as error:
                label, failed = outcome_label(error), True
            else:
                label = result if isinstance(result, str) else OK
            done = time.perf_counter()
            # Completions, not starts, decide membership: that keeps the rate unbiased at both
            # edges of the window, since each worker has exactly one call in flight.
            if measure_from <= done <= end:
                latencies.append(done - began)
                outcomes[label] += 1
                failures += failed
                last_done = max(last_done, done)

    tasks = [asyncio.create_task(worker(first_worker + i)) for i in range(concurrency)]
    try:
        await asyncio.wait(
            tasks,
            timeout=end - time.perf_counter() + _DRAIN_TIMEOUT,
            return_when=asyncio.FIRST_EXCEPTION,
        )
    finally:
        for task in tasks:
            task.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in ended:
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome
    window_end = min(end, max(last_done, measure_from)) if stopping.is_set() else end
    return Recording(
        latencies=latencies,
        outcomes=dict(outcomes),
        failures=failures,
        window=window_end - measure_from,
    )


async def run_closed_loop(
    op: Op,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Run `concurrency` workers calling `op` back to back for `duration` seconds after `warmup`."""
    recording = await record_closed_loop(
        op, concurrency=concurrency, duration=duration, warmup=warmup, stop=stop
    )
    return summarize(recording)


def run_on_uvloop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` on a new uvloop event loop, or on asyncio's own when uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM to this process when its parent exits (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        # The signal fires when the parent *thread* that started us exits, so processes should
        # be started from a thread that outlives them (the main thread, typically).
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # The parent may already have gone before the request above took effect.
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass(frozen=True)
class _LoopSpec:
    make_op: OpFactory
    first_worker: int
    workers: int
    duration: float
    warmup: float


def _split(total: int, parts: int) -> list[int]:
    """Share `total` workers among `parts` as evenly as possible."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


async def _run_loop_in_child(spec: _LoopSpec, barrier: threading.Barrier) -> Recording:
    op = await spec.make_op()
    try:
        # Every process starts measuring at the same moment, so that their windows overlap and
        # adding their throughputs is meaningful.
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait, _START_TIMEOUT)
        return await record_closed_loop(
            op,
            concurrency=spec.workers,
            duration=spec.duration,
            warmup=spec.warmup,
            first_worker=spec.first_worker,
        )
    finally:
        close = getattr(op, "aclose", None)
        if close is not None:
            await close()


def _loop_child(
    spec: _LoopSpec, barrier: threading.Barrier, results: Connection, parent_pid: int
) -> None:
    die_with_parent(parent_pid)
    try:
        recording = run_on_uvloop(_run_loop_in_child(spec, barrier))
        report: tuple[str, object] = ("ok", recording)
    except Exception:
        report = ("error", traceback.format_exc())
    # The parent stops listening once another process has failed.
    with contextlib.suppress(BrokenPipeError), results:
        results.send(report)


def run_in_processes(
    make_op: OpFactory,
    *,
    processes: int,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
) -> RunResult:
    """Run one closed loop of `concurrency` workers split over `processes` spawned processes.

    Each process builds its own event loop (uvloop when installed) and its own op by awaiting
    `make_op()`; if the op has an `aclose` coroutine method it is awaited afterwards. Worker
    indexes are unique across processes. Throughputs add up; latencies pool for percentiles.
    """
    if processes < 1 or concurrency < processes:
        raise ValueError(f"need 1 <= processes <= concurrency, got {processes} and {concurrency}")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    children: dict[Connection, multiprocessing.process.BaseProcess] = {}
    recordings: list[Recording] = []
    try:
        first = 0
        for number, workers in enumerate(_split(concurrency, processes)):
            receiver, sender = context.Pipe(duplex=False)
            spec = _LoopSpec(make_op, first, workers, duration, warmup)
            child = context.Process(
                target=_loop_child,
                args=(spec, barrier, sender, os.getpid()),
                name=f"load-{number}",
                daemon=True,
            )
            child.start()
            # Only the child may hold the sending end, so that its death reads as EOF here.
            sender.close()
            children[receiver] = child
            first += workers
        deadline = time.monotonic() + _START_TIMEOUT + warmup + duration + _DRAIN_TIMEOUT
        pending = list(children)
        while pending:
            ready = wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"{len(pending)} load processes did not report in time")
            for done in ready:
                assert isinstance(done, Connection)
                pending.remove(done)
                recordings.append(_receive(done, children[done]))
    except BaseException:
        # Release processes still waiting for the others to start.
        barrier.abort()
        raise
    finally:
        for pipe, process in children.items():
            pipe.close()
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
    return merge(recordings)


def _receive(receiver: Connection, child: multiprocessing.process.BaseProcess) -> Recording:
    try:
        status, payload = receiver.recv()
    except EOFError:
        child.join(timeout=10)
        raise RuntimeError(f"{child.name} died with exit code {child.exitcode}") from None
    if status != "ok":
        raise RuntimeError(f"{child.name} failed:\n{payload}")
    assert isinstance(payload, Recording)
    return payload
