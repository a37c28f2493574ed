"""The server's bound on calls in flight, the retry delay it gives, and draining."""

from __future__ import annotations

import asyncio

import pytest

from server.rpc.shedding import WINDOW_S, LoadShedder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def shedder(clock: Clock, **kwargs: float) -> LoadShedder:
    return LoadShedder(
        3,
        2,
        refusal_budget=10,
        base_delay=0.05,
        max_delay=2.0,
        clock=clock,
        rand=lambda: 0.5,
        **kwargs,
    )


def test_admits_up_to_the_bound_and_frees_a_place_when_a_call_ends() -> None:
    s = shedder(Clock())
    assert [s.enter() for _ in range(4)] == [True, True, True, False]
    s.leave()
    assert s.enter() is True
    assert s.in_flight == 3


async def test_streams_are_bounded_apart_from_unary_calls() -> None:
    s = shedder(Clock())
    assert [s.enter() for _ in range(3)] == [True] * 3
    assert [s.open_stream() for _ in range(3)] == [True, True, False]
    s.close_stream()
    assert s.open_stream() is True


def test_the_delay_grows_with_refusals_past_the_budget_up_to_its_cap() -> None:
    clock = Clock()
    s = shedder(clock)
    for _ in range(3):
        s.enter()
    delays = []
    for _ in range(12):
        for _ in range(100):  # 200 refusals/s against a budget of 10
            s.enter()
        clock.now += WINDOW_S
        delays.append(s.retry_after())
    assert delays[0] == pytest.approx(0.1)  # doubled, not multiplied by 20 at once
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(2.0)


def test_the_delay_halves_back_to_its_base_once_refusals_stop() -> None:
    clock = Clock()
    s = shedder(clock)
    for _ in range(3):
        s.enter()
    for _ in range(4):
        for _ in range(100):
            s.enter()
        clock.now += WINDOW_S
        s.retry_after()
    high = s.delay
    clock.now += WINDOW_S
    s.retry_after()
    assert s.delay == pytest.approx(high / 2)
    for _ in range(20):
        clock.now += WINDOW_S
        s.retry_after()
    assert s.delay == pytest.approx(0.05)


def test_refused_callers_are_spread_over_half_to_one_and_a_half_times_the_delay() -> None:
    draws = iter([0.0, 0.999])
    s = LoadShedder(1, 1, base_delay=0.2, clock=Clock(), rand=lambda: next(draws))
    assert s.retry_after() == pytest.approx(0.1)
    assert s.retry_after() == pytest.approx(0.2998)


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        LoadShedder(0, 1)


async def test_draining_refuses_everything_and_waits_for_the_calls_in_flight() -> None:
    s = LoadShedder(4, 4, clock=Clock())
    assert s.enter() and s.enter()
    s.drain()
    assert not s.enter() and not s.open_stream()
    assert not await s.wait_idle(0.05)
    s.leave()
    s.leave()
    waiting = asyncio.create_task(s.wait_idle(1.0, quiet=0.0))
    assert await waiting


async def test_draining_cancels_the_open_streams() -> None:
    s = LoadShedder(4, 4)
    opened = asyncio.Event()

    async def stream() -> None:
        assert s.open_stream()
        opened.set()
        try:
            await asyncio.sleep(60)
        finally:
            s.close_stream()

    task = asyncio.create_task(stream())
    await opened.wait()
    s.drain()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.streams == 0
