"""Open-model pacing for Locust users: task starts as a Poisson process of a given mean rate.

Locust's constant_pacing keeps every user on the phase it was created with, and users created
in the same spawn batch then call at the same instants: a hundred users at one call per second
each become a burst of a hundred concurrent calls once a second, which measures queueing in
the load generator rather than the server. Exponential gaps between the scheduled starts
spread the users out the way independent buyers are, at the same mean rate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class PoissonPacing:
    """Wait times that start a user's tasks at exponential gaps of mean `interval` seconds.

    Starts are scheduled from the previous scheduled start, not from when the task ended, so
    task duration does not lower the rate; a user that falls behind starts at once, and more
    than one interval of backlog is forgiven rather than made up in a burst.
    """

    def __init__(
        self,
        interval: float,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._rng = rng or random.Random()
        self._clock = clock
        self._next: float | None = None

    def first_delay(self) -> float:
        """A uniformly random delay before a new user's first task, to spread users out."""
        return self._rng.uniform(0.0, self.interval)

    def __call__(self) -> float:
        """Seconds to wait after the task that just ended."""
        now = self._clock()
        scheduled = now if self._next is None else max(self._next, now - self.interval)
        self._next = scheduled + self._rng.expovariate(1.0 / self.interval)
        return max(0.0, self._next - now)
