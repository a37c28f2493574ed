"""Client-side adaptive throttling, after the scheme of Google's SRE book ("Handling
Overload"), switched off as soon as the server stops refusing.

A server at capacity refuses calls with RESOURCE_EXHAUSTED before doing any work, but a
refusal still costs it about half of what serving a call costs (the gRPC runtime's share
of a call is most of a cheap call). Callers that kept sending would turn the server's
capacity into refusals. So each client counts, over the last `window_s` seconds, the
calls it wanted to make (`requests`, including those it refused itself) and those the
server accepted (anything but RESOURCE_EXHAUSTED: `accepts`), and refuses a call
locally, without sending it, with probability

    max(0, (requests - k * accepts) / (requests + 1))

so that what it sends settles near k times what the server accepts. k = 2, the book's
choice: a refusal costs the server about half a served call, but the server's bound is
on calls in flight, and callers' bursts meet it before its CPU is spent; measured with
`make load-overload` (1,500 callers, bound 64), k = 1.1 held back calls the server had
room for (goodput 62 % of capacity, the server at half a core) where k = 2 kept it at
100 %.

The book's counters remember the overload for a whole window after it ended, and what
is sent can then grow only by k per window: after a long overload a client would take
tens of seconds to send at full rate again. Here the throttle applies only while the
server has refused one of this client's calls in the last `calm_s` seconds; once it has
accepted everything for that long, every call is sent again (and if the server is still
full, its next refusals bring the throttle back within a few calls). A call refused
locally is told to wait what the server last asked for (its RetryInfo), as if the server
had refused it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable


class AdaptiveThrottle:
    """Counts requests and accepts in one-second buckets over a sliding window."""

    def __init__(
        self,
        k: float = 2.0,
        window_s: int = 2,
        calm_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not (math.isfinite(k) and k >= 1):
            raise ValueError("k must be at least 1")
        if window_s < 1:
            raise ValueError("window_s must be at least 1")
        if not (math.isfinite(calm_s) and calm_s > 0):
            raise ValueError("calm_s must be positive")
        self.k = k
        self.calm_s = calm_s
        self._clock = clock
        self._rand = rand
        self._requests = [0] * window_s
        self._accepts = [0] * window_s
        self._second = int(clock())
        self._last_refusal = -math.inf
        #: The retry delay the server gave with its last refusal (seconds), if any.
        self.pushback: float | None = None

    def _advance(self) -> int:
        now = int(self._clock())
        size = len(self._requests)
        if now - self._second >= size:
            self._requests = [0] * size
            self._accepts = [0] * size
        else:
            for second in range(self._second + 1, now + 1):
                self._requests[second % size] = 0
                self._accepts[second % size] = 0
        self._second = max(self._second, now)
        return self._second % size

    def rejection_probability(self) -> float:
        """The chance that the next call is refused locally."""
        self._advance()
        if self._clock() - self._last_refusal > self.calm_s:
            return 0.0
        requests = sum(self._requests)
        return max(0.0, (requests - self.k * sum(self._accepts)) / (requests + 1))

    def admit(self) -> bool:
        """Whether to send the next call; either way it counts as a request."""
        p = self.rejection_probability()
        self._requests[self._second % len(self._requests)] += 1
        return p <= 0.0 or self._rand() >= p

    def answered(self, accepted: bool, retry_delay: float | None = None) -> None:
        """A call sent came back: accepted (anything but RESOURCE_EXHAUSTED) or refused,
        with the server's retry delay."""
        bucket = self._advance()
        if accepted:
            self._accepts[bucket] += 1
            return
        self._last_refusal = self._clock()
        if retry_delay is not None:
            self.pushback = retry_delay
