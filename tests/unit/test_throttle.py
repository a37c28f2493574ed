"""The client's adaptive throttle (pure logic, on a fake clock)."""

from __future__ import annotations

import random

import pytest

from clients.throttle import AdaptiveThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_everything_is_sent_while_the_server_accepts() -> None:
    t = AdaptiveThrottle(clock=Clock(), rand=lambda: 0.0)
    for _ in range(1000):
        assert t.admit()
        t.answered(True)
    assert t.rejection_probability() == 0.0


@pytest.mark.parametrize("k", [1.1, 2.0])
def test_what_is_sent_settles_near_k_times_what_the_server_accepts(k: float) -> None:
    clock = Clock()
    rng = random.Random(7)
    t = AdaptiveThrottle(k=k, clock=clock, rand=rng.random)
    sent = accepted = 0
    tokens = 0.0
    for _ in range(20_000):  # a caller that wants 10,000 calls/s for 2 s
        clock.now += 0.0001
        tokens = min(tokens + 0.2, 5.0)  # a server that takes 2,000 calls/s
        if not t.admit():
            continue
        sent += 1
        ok = tokens >= 1
        if ok:
            tokens -= 1
            accepted += 1
        t.answered(ok, None if ok else 0.25)
    assert accepted > 0
    # Far below the 5x the caller wanted, and no more than k times what was accepted.
    assert 1.0 <= sent / accepted <= k * 1.1
    assert t.pushback == 0.25


def test_the_throttle_lets_go_once_the_server_has_accepted_everything_for_calm_s() -> None:
    clock = Clock()
    t = AdaptiveThrottle(calm_s=1.0, clock=clock, rand=lambda: 0.0)
    for _ in range(100):
        t.admit()
        t.answered(False, 0.5)
    assert t.rejection_probability() > 0.9
    clock.now += 0.5
    assert t.rejection_probability() > 0.0
    clock.now += 0.6
    assert t.rejection_probability() == 0.0


def test_old_seconds_leave_the_window() -> None:
    clock = Clock()
    t = AdaptiveThrottle(window_s=2, calm_s=10.0, clock=clock, rand=lambda: 0.0)
    for _ in range(100):
        t.admit()
        t.answered(False)
    clock.now += 3
    t.admit()
    t.answered(True)
    # one request, one accept in the window: nothing to hold back
    assert t.rejection_probability() == 0.0


@pytest.mark.parametrize("kwargs", [{"k": 0.9}, {"window_s": 0}, {"calm_s": 0.0}])
def test_settings_out_of_range_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptiveThrottle(**kwargs)  # type: ignore[arg-type]
