"""A circuit breaker per partner, with three triggers, any of which opens it:

- `consecutive_failures` failures in a row;
- an error rate above `error_rate` over the last `window_s` seconds, once at least
  `min_calls` calls were made in that window;
- a share of slow calls (slower than `slow_call_s`, whether they succeeded or not) of at
  least `slow_rate` over the same window and with the same minimum.

An open breaker refuses calls for `open_s` seconds, then half-opens: it admits up to
`half_open_calls` probe calls. A probe that fails or is slow opens it again; when that
many probes have succeeded, it closes with a clean window.

The breaker never calls anything itself: callers ask `allow()` for a permit before a call
and report the call with `record(permit, ...)` (or `abandon(permit)` when it was never
made). A call admitted before a transition tells nothing about the state after it, so its
report is ignored. The clock is a parameter, so the logic is tested without waiting. One
breaker belongs to one process."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    """Where a breaker stands; the value is the metrics gauge's."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerSettings:
    """The thresholds of one breaker."""

    slow_call_s: float = 3.0
    slow_rate: float = 0.5
    error_rate: float = 0.05
    min_calls: int = 20
    window_s: float = 60.0
    consecutive_failures: int = 5
    open_s: float = 30.0
    half_open_calls: int = 3

    def __post_init__(self) -> None:
        if not (self.slow_call_s > 0 and self.window_s > 0 and self.open_s > 0):
            raise ValueError("slow_call_s, window_s and open_s must be positive")
        if not (0 < self.slow_rate <= 1 and 0 <= self.error_rate < 1):
            raise ValueError("need 0 < slow_rate <= 1 and 0 <= error_rate < 1")
        if min(self.min_calls, self.consecutive_failures, self.half_open_calls) < 1:
            raise ValueError("min_calls, consecutive_failures and half_open_calls must be >= 1")


@dataclass(frozen=True)
class Permit:
    """Leave to make one call, under the breaker state it was given in."""

    generation: int


@dataclass(frozen=True)
class Transition:
    """A change of state, when (the clock's time) and why."""

    partner: str
    before: BreakerState
    after: BreakerState
    reason: str
    at: float


class CircuitBreaker:
    """See the module's notes."""

    def __init__(
        self,
        partner: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.partner = partner
        self.settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        # (time, failed, slow) of each call in the window, oldest first.
        self._calls: deque[tuple[float, bool, bool]] = deque()
        self._failures = 0
        self._slow = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        # Bumped by every transition; permits carry the one they were given under.
        self._generation = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose time is up reads as half-open)."""
        self._maybe_half_open()
        return self._state

    def retry_at(self) -> float:
        """When a refused call may be tried again: for an open breaker, when it will
        half-open; otherwise now."""
        if self.state is BreakerState.OPEN:
            return self._opened_at + self.settings.open_s
        return self._clock()

    def allow(self) -> Permit | None:
        """A permit to make a call now, or None; in half-open, a permit takes one of the
        probe slots, which the call's `record()` or `abandon()` gives back."""
        state = self.state
        if state is BreakerState.OPEN:
            return None
        if state is BreakerState.HALF_OPEN:
            if self._probes_out + self._probes_ok >= self.settings.half_open_calls:
                return None
            self._probes_out += 1
        return Permit(self._generation)

    def abandon(self, permit: Permit) -> None:
        """A permitted call was not made after all."""
        if permit.generation == self._generation and self._state is BreakerState.HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)

    def record(self, permit: Permit, duration_s: float, ok: bool) -> None:
        """Report a permitted call: how long it took and whether it succeeded."""
        self._maybe_half_open()
        if permit.generation != self._generation:
            return
        now = self._clock()
        slow = duration_s > self.settings.slow_call_s
        if self._state is BreakerState.HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)
            if not ok or slow:
                self._open(now, f"probe {'failed' if not ok else 'slow'} ({duration_s:.2f} s)")
                return
            self._probes_ok += 1
            if self._probes_ok >= self.settings.half_open_calls:
                self._close(now)
            return
        self._calls.append((now, not ok, slow))
        self._failures += not ok
        self._slow += slow
        self._consecutive = 0 if ok else self._consecutive + 1
        self._expire(now)
        reason = self._trigger(duration_s)
        if reason is not None:
            self._open(now, reason)

    def snapshot(self) -> dict[str, object]:
        """The breaker's state and window, as JSON-ready data."""
        now = self._clock()
        self._expire(now)
        state = self.state
        return {
            "state": state.name,
            "calls": len(self._calls),
            "failures": self._failures,
            "slow": self._slow,
            "consecutive_failures": self._consecutive,
            "open_for_s": round(max(0.0, self.retry_at() - now), 3)
            if state is BreakerState.OPEN
            else 0.0,
        }

    def _trigger(self, duration_s: float) -> str | None:
        s = self.settings
        if self._consecutive >= s.consecutive_failures:
            return f"{self._consecutive} consecutive failures"
        calls = len(self._calls)
        if calls < s.min_calls:
            return None
        if self._failures / calls > s.error_rate:
            return f"error rate {self._failures}/{calls} over {s.window_s:g} s > {s.error_rate:.0%}"
        if self._slow / calls >= s.slow_rate:
            return (
                f"slow calls {self._slow}/{calls} over {s.window_s:g} s (> {s.slow_call_s:g} s,"
                f" last {duration_s:.2f} s)"
            )
        return None

    def _expire(self, now: float) -> None:
        horizon = now - self.settings.window_s
        while self._calls and self._calls[0][0] < horizon:
            _, failed, slow = self._calls.popleft()
            self._failures -= failed
            self._slow -= slow

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN:
            now = self._clock()
            if now >= self._opened_at + self.settings.open_s:
                self._probes_out = self._probes_ok = 0
                self._move(BreakerState.HALF_OPEN, "open time over: probing", now)

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._probes_out = self._probes_ok = 0
        self._move(BreakerState.OPEN, reason, now)

    def _close(self, now: float) -> None:
        self._calls.clear()
        self._failures = self._slow = self._consecutive = 0
        self._probes_out = self._probes_ok = 0
        self._move(BreakerState.CLOSED, f"{self.settings.half_open_calls} probes succeeded", now)

    def _move(self, after: BreakerState, reason: str, now: float) -> None:
        before, self._state = self._state, after
        self._generation += 1
        if self._on_transition is not None and before is not after:
            self._on_transition(Transition(self.partner, before, after, reason, now))
