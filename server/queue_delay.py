"""How long calls wait before work starts on them, per class of calls: the overload signal.

A count of calls in flight is the wrong signal for a batching server: three hundred calls
are cheap when they share a few batches, and sixty-four are too many when PostgreSQL is
slow. What a caller feels is the time its request waits before its batch starts, so that
is what decides admission, in the manner of CoDel (Nichols and Jacobson, "Controlling
Queue Delay", 2012): a queue is *standing* when even the best-served request of every
batch for a whole `interval` waited longer than `target`. A batch takes its queue from the
oldest request on, so the oldest request's wait (the head's sojourn) is the queue's delay.

While a class is standing, the edge refuses its new calls before any work (cheaply, with
a retry hint) as long as one of its queues holds a request that has waited past the
target, and the batchers refuse, unapplied, the queued requests that have already
waited past the target: what is admitted keeps a short wait, and what cannot be served in
time learns so at once rather than at its deadline. The first batch whose head waited
less than the target ends the state; a queue that stands again within an interval of
that is standing at once (as CoDel re-enters its dropping state), so the refusals do not
lapse for a whole interval each time a burst of retries comes back. Calls that do not queue in a batcher (a strong read,
an adjustment) follow their class's state.

Each class (writes, reads) has its own: reads are not refused because writes queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.metrics import QUEUE_DELAY, QUEUE_STANDING


class QueueDelay:
    """The standing-queue test for one class of calls."""

    def __init__(self, name: str, target: float, interval: float) -> None:
        if target <= 0 or interval <= 0:
            raise ValueError("target and interval must be above 0")
        self.name = name
        self.target = target
        self.interval = interval
        self.standing = False
        self._above_since: float | None = None
        self._ended_at = float("-inf")
        # When a batch of this class last started: others read while writes are served.
        self.last_batch_at = float("-inf")
        self._queues: list[Callable[[], float | None]] = []
        self._histogram = QUEUE_DELAY.labels(name)
        self._gauge = QUEUE_STANDING.labels(name)
        self._gauge.set(0)

    def watch(self, oldest_queued: Callable[[], float | None]) -> None:
        """Take a queue of this class into account: `oldest_queued` gives when (a
        time.monotonic() value) its oldest waiting request was queued, None when empty."""
        self._queues.append(oldest_queued)

    def refuses(self, now: float) -> bool:
        """Whether a new call of this class is refused at `now`: the queue stands and
        one of the class's queues holds a request that already waited past the target
        (a new call would wait longer still). An emptied queue admits again, so the
        batches that end the state keep coming. A request queued for longer than the
        target and an interval makes the queue stand even if no batch has started since."""
        horizon = now - self.target
        oldest = min(
            (q for q in (watched() for watched in self._queues) if q is not None), default=now
        )
        if not self.standing and oldest < horizon - self.interval:
            # No batch has started for a whole interval past the target (a batch in
            # flight is stuck, on a lock say): the queue stands without a batch to say so.
            self.standing = True
            self._above_since = now - self.interval
            self._gauge.set(1)
        return self.standing and oldest < horizon

    def head_waited(self, sojourn: float, now: float) -> None:
        """A batch starts; its oldest request waited `sojourn` seconds (at `now`)."""
        self.last_batch_at = now
        self._histogram.observe(sojourn)
        if sojourn < self.target:
            self._above_since = None
            if self.standing:
                self.standing = False
                self._ended_at = now
                self._gauge.set(0)
            return
        if self.standing:
            return
        if self._above_since is None:
            self._above_since = now
        if now - self._above_since >= self.interval or now - self._ended_at < self.interval:
            self.standing = True
            self._gauge.set(1)

    def served_since(self, since: float) -> bool:
        """Whether a batch of this class started at or after `since`."""
        return self.last_batch_at >= since

    def too_late(self, sojourn: float) -> bool:
        """Whether a queued request that waited `sojourn` seconds is refused unapplied."""
        return self.standing and sojourn > self.target


@dataclass(frozen=True)
class Queues:
    """The classes of calls of one process, each with its standing-queue test."""

    writes: QueueDelay
    reads: QueueDelay

    @classmethod
    def create(cls, target: float, interval: float) -> Queues:
        """Both classes with the same target and interval."""
        return cls(QueueDelay("writes", target, interval), QueueDelay("reads", target, interval))

    def batch_options(
        self, max_batch: int, concurrency: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Batcher keyword arguments for a batcher of writes and one of reads."""
        common: dict[str, Any] = {"max_batch": max_batch, "concurrency": concurrency}
        return {**common, "delay": self.writes}, {**common, "delay": self.reads}
