"""Rates: each caller held to so many starts a second, with a burst above that pace."""

from __future__ import annotations

import pytest

from server.domain.errors import CallerLimit
from server.rates import CallerRates
from server.shares import Shares


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rates(clock: Clock, per_second: float = 10.0, burst: int = 5) -> CallerRates:
    return CallerRates("database_reads", per_second, burst, clock=clock, rand=lambda: 0.5)


def test_a_caller_gets_its_burst_at_once_then_is_refused_while_another_is_admitted() -> None:
    clock = Clock()
    r = rates(clock)
    for _ in range(5):
        r.admit("alice")

    with pytest.raises(CallerLimit) as refused:
        r.admit("alice")
    r.admit("bob")

    assert (refused.value.resource, refused.value.limit, refused.value.per) == (
        "database_reads",
        10,
        "a second",
    )
    # The next place opens one interval (0.1 s) later.
    assert refused.value.retry_after == pytest.approx(0.1)


def test_the_pace_is_the_rate_once_the_burst_is_spent() -> None:
    clock = Clock()
    r = rates(clock)
    admitted = 0
    for _ in range(300):  # three seconds, a try every 10 ms
        try:
            r.admit("alice")
            admitted += 1
        except CallerLimit:
            pass
        clock.now += 0.01
    # The 5 of the burst, then one each 0.1 s from 0.1 s to 2.9 s (float steps of 10 ms
    # may land the last one either side of 3 s).
    assert admitted in (34, 35)


def test_an_idle_caller_gets_its_burst_back() -> None:
    clock = Clock()
    r = rates(clock)
    for _ in range(5):
        r.admit("alice")
    clock.now += 0.5
    for _ in range(5):
        r.admit("alice")
    with pytest.raises(CallerLimit):
        r.admit("alice")


def test_the_delay_grows_with_the_refusals_of_the_last_second_up_to_the_most() -> None:
    clock = Clock()
    r = CallerRates("database_reads", 10.0, 1, max_delay=2.0, clock=clock, rand=lambda: 0.5)
    r.admit("alice")
    delays = []
    for _ in range(30):
        with pytest.raises(CallerLimit) as refused:
            r.admit("alice")
        delays.append(refused.value.retry_after)
    assert delays[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert delays == sorted(delays) and delays[-1] == 2.0
    # A second later the count starts again.
    clock.now += 1.05
    r.admit("alice")
    with pytest.raises(CallerLimit) as refused:
        r.admit("alice")
    assert refused.value.retry_after == pytest.approx(0.1)


def test_callers_that_cannot_be_told_apart_are_not_limited() -> None:
    r = rates(Clock())
    for _ in range(100):
        r.admit(None)


def test_rates_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError):
        CallerRates("x", 0.0, 1)
    with pytest.raises(ValueError):
        CallerRates("x", 1.0, 0)


def test_a_share_with_a_rate_refuses_past_either_and_counts_only_what_it_admits() -> None:
    clock = Clock()
    s = Shares("database_reads", 16, retry_after=0.25, rate=rates(clock, burst=2))
    with s.holding("alice"):
        pass
    with s.holding("alice"):
        pass
    with pytest.raises(CallerLimit) as refused:
        s.take("alice")
    assert refused.value.per == "a second"
    assert (s.held_by("alice"), s.in_use) == (0, 0)
