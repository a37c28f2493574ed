"""Rates: how much of one costly thing each caller may use a second, while others wait.

A share (server/shares.py) bounds what a caller holds at once, but a caller that keeps its
share full all the time still spends the server's CPU and PostgreSQL's at the rate its
reads complete: sixteen STRONG GetStock calls in a loop are thousands of rows a second,
and every other caller's latency pays for them. A `CallerRates` lets each caller use at
most `per_second` units (rows read, say) a second on average, and `burst` at once above
that pace, as a token bucket per caller (kept as one time per caller: when its bucket is
full again, the generic cell rate algorithm's "theoretical arrival time"). A start costs
what it will use: a read of sixteen rows takes sixteen units.

The rate is a fair share, not a quota: it refuses only a start that is *contended* (the
caller of `admit` says whether others are being served). A caller alone is served as
fast as the machine can, and its bucket is left as empty as its use made it, at most one
burst in debt, so the first contended start after a heavy use is refused at once while a
light user keeps its burst.

A caller past its rate is refused at once with a delay to come back after. A refused
caller that honours the delay must not come back as a crowd a moment later: the delay is
the time until its next place, stretched by how often it was refused in the last second
(those waiting = refusal rate x delay, so a delay growing with the refusal rate keeps the
refusals of a crowd of N waiting loops near sqrt(N x per_second) a second), jittered from
0.5x to 1.5x and at most `max_delay`. A holder of None (callers that cannot be told
apart) is not limited here, as in `Shares`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.domain.errors import CallerLimit

# How many callers' times are kept before those whose bucket is full again are forgotten.
_SWEEP_AT = 10_000


@dataclass
class _Caller:
    full_at: float
    window_start: float
    refused: int = 0


class CallerRates:
    """At most `per_second` starts a second per caller on average, `burst` at once."""

    def __init__(
        self,
        resource: str,
        per_second: float,
        burst: int,
        *,
        max_delay: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("need per_second > 0 and burst >= 1")
        self.resource = resource
        self.per_second = per_second
        self.burst = burst
        self._interval = 1.0 / per_second
        # A hair above `burst` intervals, so float steps never cost a place.
        self._tolerance = burst * self._interval * (1 + 1e-9)
        self._max_delay = max_delay
        self._clock = clock
        self._rand = rand
        self._callers: dict[str, _Caller] = {}

    def admit(self, holder: str | None, cost: int = 1, *, contended: bool = True) -> None:
        """Count a start of `cost` units (at most a burst's worth is charged) for
        `holder`, or, when `contended`, raise CallerLimit if that takes it past its rate."""
        if holder is None:
            return
        now = self._clock()
        caller = self._callers.get(holder)
        if caller is None:
            if len(self._callers) >= _SWEEP_AT:
                self._forget_idle(now)
            caller = self._callers[holder] = _Caller(full_at=now, window_start=now)
        full_at = max(caller.full_at, now)
        charge = min(max(cost, 1), self.burst) * self._interval
        if full_at + charge - now > self._tolerance:
            if contended:
                raise CallerLimit(
                    self.resource, round(self.per_second),
                    self._delay(caller, now, full_at, charge), per="a second",
                )  # fmt: skip
            # Served alone: the debt stops at one burst, so its next contended start waits
            # no longer than a caller that used a burst's worth just now.
            caller.full_at = now + self.burst * self._interval
            return
        caller.full_at = full_at + charge

    def _delay(self, caller: _Caller, now: float, full_at: float, charge: float) -> float:
        if now - caller.window_start >= 1.0:
            caller.window_start, caller.refused = now, 0
        caller.refused += 1
        next_place = full_at + charge - self._tolerance - now
        delay = max(next_place, caller.refused * charge)
        return min(self._max_delay, delay * (0.5 + self._rand()))

    def _forget_idle(self, now: float) -> None:
        # A caller whose bucket is full again is no different from one never seen.
        for holder in [h for h, c in self._callers.items() if c.full_at <= now]:
            del self._callers[holder]
