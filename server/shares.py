"""Shares: how much of one bounded thing each caller may hold at once.

A process-wide bound alone lets one caller take everything: one token could hold every
WatchOrders stream the process allows, one scraper every PostgreSQL connection readers
may use, one address every health watch. A `Shares` counts what each caller holds of one
resource, and refuses a caller at its share (`CallerLimit`) and everyone at the total, if
there is one (`Overloaded`): at once, before any work, with a delay to come back after.

A share may also carry a rate (server/rates.py): how much a caller may *use* a second,
for things whose cost is in what they do rather than in holding them (rows read). The rate
is enforced only while the caller is contended: another caller took from the share within
the last `CONTENDED_WINDOW_S`, or the `busy` test (say, write batches being served) holds.

Who "a caller" is, is the edge's to say (a token's subject, the customer a customer's
token acts for, a peer's address): here it is only a key. A holder of None is not
counted against any share, only the total: a server that authenticates nobody cannot tell
its callers apart, and a share all of them split would be a second, smaller total.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator

from server.domain.errors import CallerLimit, Overloaded
from server.metrics import SHARES_HELD, SHARES_REFUSED
from server.rates import CallerRates

# How recently another caller must have been served for a caller to be contended.
CONTENDED_WINDOW_S = 1.0


class Shares:
    """What each caller holds of `resource`: at most `per_caller` each, and at most
    `total` in all (None: no bound in all); with a `rate`, each caller also starts at
    most the rate's share a second."""

    def __init__(
        self,
        resource: str,
        per_caller: int,
        total: int | None = None,
        *,
        retry_after: float,
        rate: CallerRates | None = None,
        busy: Callable[[float], bool] = lambda now: False,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if per_caller < 1 or (total is not None and total < per_caller):
            raise ValueError("need 1 <= per_caller <= total")
        if retry_after <= 0:
            raise ValueError("retry_after must be above 0")
        self.resource = resource
        self.per_caller = per_caller
        self.total = total
        self._retry_after = retry_after
        self.rate = rate
        self._busy = busy
        self._clock = clock
        self._rand = rand
        # The last caller to take and when, and the last one before it that was another.
        self._latest: tuple[str | None, float] = (None, float("-inf"))
        self._other: tuple[str | None, float] = (None, float("-inf"))
        self._held: dict[str | None, int] = {}
        self.in_use = 0
        self._gauge = SHARES_HELD.labels(resource)
        self._refused_caller = SHARES_REFUSED.labels(resource, "caller")
        self._refused_total = SHARES_REFUSED.labels(resource, "total")
        self._refused_rate = SHARES_REFUSED.labels(resource, "rate")

    def held_by(self, holder: str | None) -> int:
        """How many `holder` holds now."""
        return self._held.get(holder, 0)

    def take(self, holder: str | None, cost: int = 1) -> None:
        """Count one more for `holder`, costing `cost` of its rate, or raise CallerLimit
        (its share is full, or, contended, it used its rate's worth in the last second) or
        Overloaded (the total is full); `give_back` must follow a take that returned."""
        held = self._held.get(holder, 0)
        if holder is not None and held >= self.per_caller:
            self._refused_caller.inc()
            raise CallerLimit(self.resource, self.per_caller, self.retry_after())
        if self.total is not None and self.in_use >= self.total:
            self._refused_total.inc()
            raise Overloaded(self.retry_after())
        if self.rate is not None:
            now = self._clock()
            try:
                self.rate.admit(holder, cost, contended=self.contended(holder, now))
            except CallerLimit:
                self._refused_rate.inc()
                raise
            if self._latest[0] != holder:
                self._other = self._latest
            self._latest = (holder, now)
        self._held[holder] = held + 1
        self.in_use += 1
        self._gauge.inc()

    def give_back(self, holder: str | None) -> None:
        """`holder` no longer holds one it took."""
        held = self._held[holder] - 1
        if held:
            self._held[holder] = held
        else:
            # Callers come and go: only those holding something are remembered.
            del self._held[holder]
        self.in_use -= 1
        self._gauge.dec()

    def contended(self, holder: str | None, now: float) -> bool:
        """Whether `holder` is contended at `now`: another caller took within the window,
        or the share's `busy` test holds."""
        other, at = self._other if self._latest[0] == holder else self._latest
        return (other != holder and at >= now - CONTENDED_WINDOW_S) or self._busy(now)

    def charge(self, holder: str | None, cost: int) -> None:
        """Charge `holder`'s rate with `cost` more, learnt once its read was done: never
        refused, and never leaving it more than a burst in debt."""
        if self.rate is not None and cost > 0:
            self.rate.admit(holder, cost, contended=False)

    @contextlib.contextmanager
    def holding(self, holder: str | None, cost: int = 1) -> Iterator[None]:
        """Hold one for `holder` for the block, costing `cost` of its rate (refused as
        `take` says)."""
        self.take(holder, cost)
        try:
            yield
        finally:
            self.give_back(holder)

    def retry_after(self) -> float:
        """The delay to give a refused caller, jittered (0.5x to 1.5x), so callers
        refused together do not come back together."""
        return self._retry_after * (0.5 + self._rand())
