"""Closed-loop load generation: each worker starts its next call as soon as its last one ends.

One Python process saturates a core long before a gRPC server does, so `run_in_processes`
spreads the same loop over load processes of its own (`python -m loadtests.driver`, started
by runtime.processes.spawn, so they die with the thread that started them) and merges what
they measured. The driver keeps every latency and takes exact percentiles: it is the
instrument of the closed-loop cells (empty call, make bench, the knee), not Locust.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import grpc

from runtime.processes import spawn

Op = Callable[[int], Awaitable[object]]
"""One operation; called with the worker's index, it may return an outcome label or raise."""

OpFactory = Callable[[], Awaitable[Op]]
"""Builds an `Op` inside a load process; must pickle (a module-level function or a partial)."""

OK = "ok"
"""The outcome label of a call that returned something other than a string."""

ROOT = Path(__file__).resolve().parent.parent
_T = TypeVar("_T")
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


def run_on_uvloop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` on a new uvloop event loop, or on asyncio's own when uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


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


class _Folder:
    """The files a run and its load processes meet in: spec-N (what process N runs),
    ready-N (it has built its op), go (everyone may start), result-N (what it measured)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def spec(self, n: int) -> Path:
        return self.path / f"spec-{n}"

    def ready(self, n: int) -> Path:
        return self.path / f"ready-{n}"

    def result(self, n: int) -> Path:
        return self.path / f"result-{n}"

    @property
    def go(self) -> Path:
        return self.path / "go"

    @staticmethod
    def write(path: Path, value: object) -> None:
        """Write atomically: a reader never sees half a file."""
        partial = path.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(value))
        partial.rename(path)


class _SpecUnpickler(pickle.Unpickler):
    """Finds what the starter pickled from its own `__main__` (the module it runs as, say
    loadtests.bench) in that module, as multiprocessing does for its spawned children."""

    def __init__(self, data: bytes, main_module: str) -> None:
        super().__init__(io.BytesIO(data))
        self._main_module = main_module

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__" and self._main_module:
            module = self._main_module
        return super().find_class(module, name)


async def _run_loop(folder: _Folder, n: int, main_module: str) -> Recording:
    spec = _SpecUnpickler(folder.spec(n).read_bytes(), main_module).load()
    assert isinstance(spec, _LoopSpec)
    op = await spec.make_op()
    try:
        folder.write(folder.ready(n), os.getpid())
        # Every process starts measuring at the same moment, so that their windows overlap
        # and adding their throughputs is meaningful.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while not folder.go.exists():
            if loop.time() > deadline:
                raise TimeoutError("the run never said go")
            await asyncio.sleep(0.005)
        # An op over a finite supply (a sale) sets its `exhausted` event when nothing is left.
        exhausted = getattr(op, "exhausted", None)
        return await record_closed_loop(
            op,
            concurrency=spec.workers,
            duration=spec.duration,
            warmup=spec.warmup,
            stop=exhausted if isinstance(exhausted, asyncio.Event) else None,
            first_worker=spec.first_worker,
        )
    finally:
        close = getattr(op, "aclose", None)
        if close is not None:
            await close()


def run_in_processes(
    make_op: OpFactory,
    *,
    processes: int,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
) -> RunResult:
    """Run one closed loop of `concurrency` workers split over `processes` load processes.

    Each process builds its own event loop (uvloop when installed) and its own op by awaiting
    `make_op()`; if the op has an `aclose` coroutine method it is awaited afterwards, and if
    it has an `exhausted` asyncio.Event, setting it ends that process's loop early. Worker
    indexes are unique across processes. Throughputs add up; latencies pool for percentiles.
    """
    if processes < 1 or concurrency < processes:
        raise ValueError(f"need 1 <= processes <= concurrency, got {processes} and {concurrency}")
    children: list[subprocess.Popen[bytes]] = []
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    main_module = main_spec.name if main_spec is not None else ""
    with tempfile.TemporaryDirectory(prefix="stockcore-load-") as scratch:
        folder = _Folder(Path(scratch))
        try:
            first = 0
            for n, workers in enumerate(_split(concurrency, processes)):
                folder.write(folder.spec(n), _LoopSpec(make_op, first, workers, duration, warmup))
                first += workers
                children.append(
                    spawn(
                        [sys.executable, "-m", "loadtests.driver", scratch, str(n), main_module],
                        death_signal=signal.SIGTERM,
                        cwd=ROOT,
                    )
                )
            _await_files(children, [folder.ready(n) for n in range(processes)], folder)
            folder.go.touch()
            _await_files(
                children,
                [folder.result(n) for n in range(processes)],
                folder,
                timeout=_START_TIMEOUT + warmup + duration + _DRAIN_TIMEOUT,
            )
            return merge(_result(folder, n) for n in range(processes))
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
                child.wait()


def _await_files(
    children: Sequence[subprocess.Popen[bytes]],
    wanted: Sequence[Path],
    folder: _Folder,
    timeout: float = _START_TIMEOUT,
) -> None:
    """Wait until every file in `wanted` exists; fail at once when a load process failed."""
    deadline = time.monotonic() + timeout
    checked: set[int] = set()
    while not all(path.exists() for path in wanted):
        for n, child in enumerate(children):
            if n in checked or child.poll() is None:
                continue
            checked.add(n)
            if not folder.result(n).exists():
                raise RuntimeError(f"load process {n} died with exit code {child.returncode}")
            _result(folder, n)  # raises when it failed
        if time.monotonic() > deadline:
            raise TimeoutError(f"load processes did not write {[p.name for p in wanted]} in time")
        time.sleep(0.01)


def _result(folder: _Folder, n: int) -> Recording:
    status, payload = pickle.loads(folder.result(n).read_bytes())
    if status != "ok":
        raise RuntimeError(f"load process {n} failed:\n{payload}")
    assert isinstance(payload, Recording)
    return payload


def main() -> None:
    """A load process of `run_in_processes`:
    python -m loadtests.driver <folder> <number> <the starter's main module>."""
    folder, n, main_module = _Folder(Path(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
    try:
        report: tuple[str, object] = ("ok", run_on_uvloop(_run_loop(folder, n, main_module)))
    except Exception:
        report = ("error", traceback.format_exc())
    folder.write(folder.result(n), report)


if __name__ == "__main__":
    # Run under the module's own name, so that what it pickles names loadtests.driver.
    from loadtests.driver import main as _main

    _main()
