"""The circuit breaker's three triggers, its window, half-open probing and recovery, on a
clock the tests move."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.breaker import BreakerSettings, BreakerState, CircuitBreaker, Transition

SETTINGS = BreakerSettings(
    slow_call_s=3.0,
    slow_rate=0.5,
    error_rate=0.05,
    min_calls=20,
    window_s=60.0,
    consecutive_failures=5,
    open_s=30.0,
    half_open_calls=2,
)


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(
    settings: BreakerSettings = SETTINGS,
) -> tuple[CircuitBreaker, Clock, list[Transition]]:
    clock = Clock()
    moves: list[Transition] = []
    return (
        CircuitBreaker("carrier", settings, clock=clock, on_transition=moves.append),
        clock,
        moves,
    )


def _call(breaker: CircuitBreaker, *, ok: bool = True, duration_s: float = 0.1) -> bool:
    """Make one call if allowed; whether it was."""
    permit = breaker.allow()
    if permit is None:
        return False
    breaker.record(permit, duration_s, ok)
    return True


def test_five_consecutive_failures_open_it_and_four_do_not() -> None:
    breaker, _, moves = _breaker()
    for _ in range(4):
        _call(breaker, ok=False)
    _call(breaker)
    for _ in range(4):
        _call(breaker, ok=False)
    assert breaker.state is BreakerState.CLOSED
    _call(breaker, ok=False)
    assert breaker.state is BreakerState.OPEN
    assert [(m.before, m.after, m.reason) for m in moves] == [
        (BreakerState.CLOSED, BreakerState.OPEN, "5 consecutive failures")
    ]
    assert breaker.allow() is None


def test_six_percent_errors_open_it_on_rate_once_the_minimum_of_calls_is_made() -> None:
    breaker, clock, moves = _breaker()
    calls = 0
    while breaker.state is BreakerState.CLOSED:
        calls += 1
        _call(breaker, ok=calls % 17 != 0)  # 6 % of calls fail, spread evenly
        clock.now += 0.5
    # 1/17 is under the minimum of calls, 1/20 is not above 5 %, 2/34 is.
    assert calls == 34
    assert moves[0].reason == "error rate 2/34 over 60 s > 5%"


def test_five_percent_errors_do_not_open_it() -> None:
    breaker, clock, _ = _breaker()
    for n in range(1, 201):
        _call(breaker, ok=n % 20 != 0)
        clock.now += 0.25
    assert breaker.state is BreakerState.CLOSED


def test_slow_calls_open_it_even_when_they_succeed() -> None:
    breaker, clock, moves = _breaker()
    for n in range(1, 20):
        _call(breaker, duration_s=4.0)
        clock.now += 1.0  # calls overlap: 20 of them fit in the window
        assert breaker.state is BreakerState.CLOSED, n
    _call(breaker, duration_s=4.0)
    assert breaker.state is BreakerState.OPEN
    assert moves[0].reason.startswith("slow calls 20/20 over 60 s (> 3 s")


def test_calls_older_than_the_window_are_forgotten() -> None:
    breaker, clock, _ = _breaker()
    for _ in range(19):
        _call(breaker)
    for _ in range(3):
        _call(breaker, ok=False)
        _call(breaker)
    clock.now += 61.0
    # The 3 failures of 25 calls left the window; 20 new good calls keep it closed.
    for _ in range(20):
        _call(breaker)
    assert breaker.snapshot()["failures"] == 0
    assert breaker.state is BreakerState.CLOSED


def test_open_then_half_open_probes_then_closed_with_a_clean_window() -> None:
    breaker, clock, moves = _breaker()
    for _ in range(5):
        _call(breaker, ok=False)
    clock.now += 29.9
    assert breaker.allow() is None
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    first, second = breaker.allow(), breaker.allow()
    assert first is not None and second is not None
    assert breaker.allow() is None, "only half_open_calls probes at once"
    breaker.record(first, 0.1, True)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(second, 0.1, True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["calls"] == 0
    assert [(m.before.name, m.after.name) for m in moves] == [
        ("CLOSED", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "CLOSED"),
    ]


@pytest.mark.parametrize(("ok", "duration_s"), [(False, 0.1), (True, 3.5)])
def test_a_failed_or_slow_probe_opens_it_again(ok: bool, duration_s: float) -> None:
    breaker, clock, moves = _breaker()
    for _ in range(5):
        _call(breaker, ok=False)
    clock.now += 30.0
    assert _call(breaker, ok=ok, duration_s=duration_s)
    assert breaker.state is BreakerState.OPEN
    assert moves[-1].reason.startswith("probe failed" if not ok else "probe slow")
    assert breaker.retry_at() == clock.now + 30.0


def test_an_abandoned_probe_gives_its_slot_back() -> None:
    breaker, clock, _ = _breaker()
    for _ in range(5):
        _call(breaker, ok=False)
    clock.now += 30.0
    permits = [breaker.allow(), breaker.allow()]
    assert breaker.allow() is None
    assert permits[0] is not None
    breaker.abandon(permits[0])
    assert breaker.allow() is not None


def test_a_call_permitted_before_a_transition_tells_nothing_after_it() -> None:
    breaker, clock, _ = _breaker()
    early = breaker.allow()
    assert early is not None
    for _ in range(5):
        _call(breaker, ok=False)
    clock.now += 30.0
    probe = breaker.allow()
    assert probe is not None
    breaker.record(early, 0.1, False)  # from before it opened: ignored
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(probe, 0.1, True)
    assert breaker.state is BreakerState.HALF_OPEN


@given(st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=300))
def test_fast_successful_calls_never_open_it(durations: list[float]) -> None:
    breaker, clock, moves = _breaker()
    for duration in durations:
        assert _call(breaker, duration_s=duration)
        clock.now += duration
    assert moves == []


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        BreakerSettings(error_rate=1.0)
    with pytest.raises(ValueError):
        BreakerSettings(consecutive_failures=0)
    with pytest.raises(ValueError):
        BreakerSettings(open_s=0)
