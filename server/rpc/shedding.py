"""Load shedding: which unary calls one server process admits.

A call is admitted unless its class of calls (writes or reads) has a standing queue
(server/queue_delay.py: its requests have waited past the target for a whole interval,
and one waits past it now) or the process already holds `max_in_flight` calls (a ceiling on memory, far above what
the queues admit in practice). A refused call is answered at once, before any work, with
RESOURCE_EXHAUSTED, a google.rpc.RetryInfo and `grpc-retry-pushback-ms` saying when to
come back: the calls admitted keep a short wait, and a refused call is known to have
changed nothing (so any call may be sent again, with the same id).

The retry delay follows the pressure. Refusals are counted per window; when they came
faster than `refusal_budget` per second, the delay grows in proportion (callers that
honour it come back less often: those waiting = refusal rate x delay, by Little's law,
so the delay that brings the rate to the budget is rate / budget times the last one),
at most doubling per window and up to `max_delay` (2 s: about a caller's deadline, so
that once the pressure is gone callers are back within seconds); when they fell below
half the budget, it halves, down to `base_delay`. Each refusal draws its delay from 0.5x
to 1.5x the current one, so callers turned away together do not come back together.
Clients that also throttle themselves (clients/throttle.py) keep refusals far below the
budget; the delay is what protects the server from those that only honour RetryInfo.

WatchOrders streams live long and cost little while idle: they are bounded apart
(`max_streams`) and do not count against the calls in flight.

On shutdown the shedder *drains*: every new call is refused (as UNAVAILABLE, "shutting
down", by the caller of `enter`), open streams are ended, and `wait_idle` returns once the
calls admitted before have all been answered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from server.config import Settings
from server.metrics import OVERLOAD_RETRY_DELAY, RPC_IN_FLIGHT
from server.queue_delay import QueueDelay, Queues

# How often the retry delay is reconsidered.
WINDOW_S = 0.5


class LoadShedder:
    """Decides, per call, to admit or refuse it, by its class's queue and the ceiling."""

    def __init__(
        self,
        max_in_flight: int,
        max_streams: int,
        *,
        queues: Queues | None = None,
        refusal_budget: float = 200.0,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_in_flight < 1 or max_streams < 1:
            raise ValueError("the bounds must be at least 1")
        self.max_in_flight = max_in_flight
        queues = queues or Queues.create(Settings.overload_target_s, Settings.overload_interval_s)
        self.writes = queues.writes
        self.reads = queues.reads
        self.max_streams = max_streams
        self.in_flight = 0
        self.streams = 0
        self._budget = refusal_budget
        self._base = base_delay
        self._max = max_delay
        self._clock = clock
        self._rand = rand
        self.delay = base_delay
        self.draining = False
        self.last_refusal = -1.0
        self._streams: set[asyncio.Task[object]] = set()
        self._window_start = clock()
        self._refused_in_window = 0
        OVERLOAD_RETRY_DELAY.set(self.delay)

    def enter(self, klass: QueueDelay | None = None) -> bool:
        """Admit a unary call of `klass` (True; `leave` must follow) or refuse it (False)."""
        if (
            self.in_flight < self.max_in_flight
            and not self.draining
            and not (klass is not None and klass.refuses(self._clock()))
        ):
            self.in_flight += 1
            RPC_IN_FLIGHT.inc()
            return True
        self._refused()
        return False

    def leave(self) -> None:
        """An admitted unary call ended."""
        self.in_flight -= 1
        RPC_IN_FLIGHT.dec()

    def refused_late(self) -> None:
        """An admitted call was refused, unapplied, for waiting past its class's target
        in a standing queue (it still calls `leave`)."""
        self._refused()

    def open_stream(self) -> bool:
        """Admit a streaming call (True; `close_stream` must follow) or refuse it. The
        calling task is the stream's: `drain` cancels it."""
        if self.streams < self.max_streams and not self.draining:
            self.streams += 1
            task = asyncio.current_task()
            if task is not None:
                self._streams.add(task)
            return True
        self._refused()
        return False

    def close_stream(self) -> None:
        """An admitted streaming call ended."""
        self.streams -= 1
        task = asyncio.current_task()
        if task is not None:
            self._streams.discard(task)

    def drain(self) -> None:
        """Refuse every call from now on and end the open streams (their handlers see a
        cancellation while `draining` is set, and answer UNAVAILABLE)."""
        self.draining = True
        for task in list(self._streams):
            task.cancel()

    async def wait_idle(self, timeout: float, quiet: float = 0.05) -> bool:
        """Wait, for up to `timeout` seconds, until no admitted unary call is left and no
        call has been refused for `quiet` seconds (callers told to wait have gone
        quiet, so stopping the server cancels no call it has received but not begun)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.in_flight == 0 and self._clock() - self.last_refusal >= quiet:
                return True
            await asyncio.sleep(0.01)
        return False

    def retry_after(self) -> float:
        """The delay to give a refused caller: the current one, jittered."""
        self._reconsider()
        return self.delay * (0.5 + self._rand())

    def _refused(self) -> None:
        self.last_refusal = self._clock()
        self._reconsider()
        self._refused_in_window += 1

    def _reconsider(self) -> None:
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        rate = self._refused_in_window / elapsed
        if rate > self._budget:
            self.delay = min(self._max, self.delay * min(rate / self._budget, 2.0))
        elif rate < self._budget / 2:
            self.delay = max(self._base, self.delay / 2)
        self._window_start, self._refused_in_window = now, 0
        OVERLOAD_RETRY_DELAY.set(self.delay)
