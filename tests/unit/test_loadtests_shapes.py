"""The reference day's curve, its compression into a run, and the users' Poisson pacing."""

from __future__ import annotations

import random

import pytest

from loadtests.locust.daycurve import DAY_S, CompressedDay, DayCurve
from loadtests.locust.pacing import PoissonPacing


def test_reference_day_adds_up_to_500_000_orders() -> None:
    curve = DayCurve()

    assert curve.orders_between(0.0, DAY_S, step=10.0) == pytest.approx(500_000, rel=1e-3)


def test_reference_day_holds_237_orders_per_second_for_the_whole_plateau() -> None:
    curve = DayCurve()
    plateau = range(int(curve.plateau_start_s), int(curve.plateau_end_s))

    assert all(curve.rate(t) == pytest.approx(237.0) for t in plateau)
    assert curve.plateau_end_s - curve.plateau_start_s == 600


def test_reference_day_never_exceeds_its_peak_and_is_never_idle() -> None:
    curve = DayCurve()
    rates = [curve.rate(t) for t in range(0, int(DAY_S), 60)]

    assert max(rates) == pytest.approx(237.0)
    assert min(rates) > 0


def test_reference_day_is_diurnal_with_night_trough_below_evening() -> None:
    curve = DayCurve()

    assert curve.rate(4.5 * 3600) < curve.rate(12 * 3600) < curve.rate(19.5 * 3600)
    assert curve.rate(4.5 * 3600) < 0.2 * curve.rate(19.5 * 3600)


def test_day_with_other_totals_still_adds_up() -> None:
    curve = DayCurve(orders_per_day=800_000, peak_per_s=300.0)

    assert curve.orders_between(0.0, DAY_S, step=10.0) == pytest.approx(800_000, rel=1e-3)


def test_a_plateau_the_day_cannot_afford_is_rejected() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        DayCurve(orders_per_day=100_000)


def test_a_sale_outside_the_flat_evening_hour_is_rejected() -> None:
    with pytest.raises(ValueError, match="20:00-21:00"):
        DayCurve(sale_start_s=19 * 3600)


def test_compressed_day_plays_the_whole_day_in_the_run() -> None:
    day = CompressedDay(duration_s=240.0, peak_hold_s=60.0)

    assert day.day_second(0.0) == 0.0
    assert day.day_second(240.0) == pytest.approx(DAY_S)
    seconds = [day.day_second(t / 10) for t in range(2401)]
    assert seconds == sorted(seconds)


def test_compressed_day_holds_the_peak_for_peak_hold_seconds() -> None:
    day = CompressedDay(duration_s=240.0, peak_hold_s=60.0)
    start, end = day.plateau

    assert end - start == pytest.approx(60.0)
    assert all(day.rate(start + i * 0.5) == pytest.approx(237.0) for i in range(120))
    assert day.rate(start - 1.0) < 237.0
    assert day.rate(end + 1.0) < 237.0


def test_compressed_day_keeps_the_days_rates_times_scale() -> None:
    full = CompressedDay(duration_s=180.0, peak_hold_s=30.0)
    half = CompressedDay(duration_s=180.0, peak_hold_s=30.0, scale=0.5)

    assert half.peak_per_s == pytest.approx(118.5)
    for t in (0.0, 50.0, 100.0, 179.0):
        assert half.rate(t) == pytest.approx(full.rate(t) / 2)
        assert full.rate(t) == pytest.approx(DayCurve().rate(full.day_second(t)))


@pytest.mark.parametrize("hold", [0.0, 240.0, 300.0])
def test_compressed_day_needs_a_plateau_shorter_than_the_run(hold: float) -> None:
    with pytest.raises(ValueError):
        CompressedDay(duration_s=240.0, peak_hold_s=hold)


def test_poisson_pacing_keeps_the_mean_rate_of_short_tasks() -> None:
    now = [0.0]
    pacing = PoissonPacing(2.0, rng=random.Random(7), clock=lambda: now[0])
    starts = 0
    while now[0] < 20_000.0:
        starts += 1
        now[0] += 0.05  # the task
        now[0] += pacing()

    assert starts / 20_000.0 == pytest.approx(0.5, rel=0.03)


def test_poisson_pacing_forgives_backlog_beyond_one_interval() -> None:
    now = [0.0]
    pacing = PoissonPacing(1.0, rng=random.Random(1), clock=lambda: now[0])
    pacing()
    now[0] += 100.0  # a task far longer than the interval

    immediate = 0
    for _ in range(50):
        wait = pacing()
        immediate += wait == 0.0
        now[0] += wait

    # Not a burst of ~100 immediate starts to catch up: at most about one interval's worth.
    assert immediate <= 5
    assert 0.0 <= pacing.first_delay() <= 1.0


def test_poisson_pacing_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError):
        PoissonPacing(0.0)
