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
    s = Shares(
        "database_reads", 16, retry_after=0.25, rate=rates(clock, burst=2),
        busy=lambda now: True, clock=clock,
    )  # fmt: skip
    with s.holding("alice"):
        pass
    with s.holding("alice"):
        pass
    with pytest.raises(CallerLimit) as refused:
        s.take("alice")
    assert refused.value.per == "a second"
    assert (s.held_by("alice"), s.in_use) == (0, 0)


def test_a_start_costs_what_it_uses_and_at_most_a_burst() -> None:
    clock = Clock()
    r = rates(clock, per_second=10.0, burst=5)
    r.admit("alice", cost=4)
    r.admit("alice", cost=1)
    with pytest.raises(CallerLimit) as refused:
        r.admit("alice", cost=3)
    # Three units come back in 0.3 s.
    assert refused.value.retry_after == pytest.approx(0.3)
    clock.now += 0.5
    # A start bigger than the burst costs the burst: it is served once the bucket is full.
    r.admit("alice", cost=50)
    with pytest.raises(CallerLimit):
        r.admit("alice", cost=1)


def test_a_caller_alone_is_not_held_but_is_left_at_most_a_burst_in_debt() -> None:
    clock = Clock()
    r = rates(clock, per_second=10.0, burst=5)
    for _ in range(100):
        r.admit("alice", contended=False)
    # Contended at once: the bucket is empty, not a hundred starts in debt.
    with pytest.raises(CallerLimit):
        r.admit("alice")
    clock.now += 0.5
    for _ in range(5):
        r.admit("alice")


def test_a_share_holds_its_rate_only_while_another_caller_takes_or_it_is_busy() -> None:
    clock = Clock()
    busy = [False]
    s = Shares(
        "database_reads", 16, retry_after=0.25, rate=rates(clock, burst=2),
        busy=lambda now: busy[0], clock=clock,
    )  # fmt: skip
    for _ in range(20):
        with s.holding("alice"):
            pass
    # Another caller within the last second: alice is contended and past her rate.
    with s.holding("bob"):
        pass
    with pytest.raises(CallerLimit):
        s.take("alice")
    # Bob's read is older than the window; alone again, alice is served.
    clock.now += 1.5
    for _ in range(20):
        with s.holding("alice"):
            pass
    # Writes being served count as contention too.
    busy[0] = True
    with pytest.raises(CallerLimit):
        s.take("alice")
    assert (s.held_by("alice"), s.in_use) == (0, 0)


def test_a_caller_is_not_contended_by_itself() -> None:
    clock = Clock()
    s = Shares("database_reads", 16, retry_after=0.25, rate=rates(clock, burst=1), clock=clock)
    with s.holding("bob"):
        pass
    clock.now += 2.0
    for _ in range(3):
        with s.holding("alice"):
            pass
    assert not s.contended("alice", clock.now)
    assert s.contended("bob", clock.now)


def test_a_charge_learnt_after_the_read_is_never_refused_and_counts_for_the_next() -> None:
    clock = Clock()
    s = Shares(
        "database_reads", 16, retry_after=0.25, rate=rates(clock, burst=5),
        busy=lambda now: True, clock=clock,
    )  # fmt: skip
    with s.holding("alice"):
        pass
    s.charge("alice", 40)  # a page of 41 rows: past the burst, yet not refused
    with pytest.raises(CallerLimit):
        s.take("alice")
    clock.now += 0.5  # a burst's worth later, the bucket is full again
    with s.holding("alice"):
        pass
