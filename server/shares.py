"""Shares: how much of one bounded thing each caller may hold at once.

A process-wide bound alone lets one caller take everything: one token could hold every
WatchOrders stream the process allows, one scraper every PostgreSQL connection readers
may use, one address every health watch. A `Shares` counts what each caller holds of one
resource, and refuses a caller at its share (`CallerLimit`) and everyone at the total, if
there is one (`Overloaded`): at once, before any work, with a delay to come back after.

A share may also carry a rate (server/rates.py): how many a caller may *start* a second,
for things whose cost is in their number rather than in holding them.

Who "a caller" is, is the edge's to say (a token's subject, the customer a customer's
token acts for, a peer's address): here it is only a key. A holder of None is not
counted against any share, only the total: a server that authenticates nobody cannot tell
its callers apart, and a share all of them split would be a second, smaller total.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

from server.domain.errors import CallerLimit, Overloaded
from server.metrics import SHARES_HELD, SHARES_REFUSED
from server.rates import CallerRates


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
        self._rand = rand
        self._held: dict[str | None, int] = {}
        self.in_use = 0
        self._gauge = SHARES_HELD.labels(resource)
        self._refused_caller = SHARES_REFUSED.labels(resource, "caller")
        self._refused_total = SHARES_REFUSED.labels(resource, "total")
        self._refused_rate = SHARES_REFUSED.labels(resource, "rate")

    def held_by(self, holder: str | None) -> int:
        """How many `holder` holds now."""
        return self._held.get(holder, 0)

    def take(self, holder: str | None) -> None:
        """Count one more for `holder`, or raise CallerLimit (its share is full, or it
        started its rate's worth in the last second) or Overloaded (the total is full);
        `give_back` must follow a take that returned."""
        held = self._held.get(holder, 0)
        if holder is not None and held >= self.per_caller:
            self._refused_caller.inc()
            raise CallerLimit(self.resource, self.per_caller, self.retry_after())
        if self.total is not None and self.in_use >= self.total:
            self._refused_total.inc()
            raise Overloaded(self.retry_after())
        if self.rate is not None:
            try:
                self.rate.admit(holder)
            except CallerLimit:
                self._refused_rate.inc()
                raise
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

    @contextlib.contextmanager
    def holding(self, holder: str | None) -> Iterator[None]:
        """Hold one for `holder` for the block (refused as `take` says)."""
        self.take(holder)
        try:
            yield
        finally:
            self.give_back(holder)

    def retry_after(self) -> float:
        """The delay to give a refused caller, jittered (0.5x to 1.5x), so callers
        refused together do not come back together."""
        return self._retry_after * (0.5 + self._rand())
