"""Knee detection from a staircase of steps, and percentiles of Locust histograms."""

from __future__ import annotations

import math

import pytest

from loadtests.locust.steps import (
    Staircase,
    StepResult,
    find_knee,
    histogram_difference,
    histogram_percentile,
    merge_histograms,
)


def _steps(*rows: tuple[float, float, float]) -> list[StepResult]:
    return [StepResult(offered, achieved, p99) for offered, achieved, p99 in rows]


def test_knee_is_the_last_step_before_p99_crosses_the_bound() -> None:
    steps = _steps((100, 100, 10), (200, 199, 20), (300, 298, 60), (400, 390, 140), (500, 420, 90))

    knee = find_knee(steps, p99_bound_ms=100)

    assert knee.sustained == steps[2]
    assert knee.broken == steps[3]
    assert "p99 140 ms > 100 ms" in knee.reason


def test_a_later_step_within_the_bound_does_not_move_the_knee_past_a_break() -> None:
    steps = _steps((100, 100, 10), (200, 200, 150), (300, 300, 50))

    assert find_knee(steps, p99_bound_ms=100).sustained == steps[0]


def test_a_step_served_below_the_offered_rate_is_not_held() -> None:
    steps = _steps((100, 100, 10), (200, 150, 20))

    knee = find_knee(steps, p99_bound_ms=100, min_ratio=0.95)

    assert knee.sustained == steps[0]
    assert knee.broken == steps[1]
    assert "achieved" in knee.reason


def test_a_step_with_failures_is_not_held() -> None:
    steps = [StepResult(100, 100, 10), StepResult(200, 200, 10, failures=3)]

    knee = find_knee(steps)

    assert knee.broken == steps[1]
    assert "3 failed" in knee.reason


def test_a_step_without_latencies_is_not_held() -> None:
    assert find_knee([StepResult(100, 100, math.nan)]).sustained is None


def test_when_every_step_is_held_the_last_one_is_the_highest_sustained() -> None:
    steps = _steps((100, 100, 10), (200, 200, 20))

    knee = find_knee(steps)

    assert knee.sustained == steps[-1]
    assert knee.broken is None


def test_no_steps_no_knee() -> None:
    knee = find_knee([])

    assert knee.sustained is None and knee.broken is None


def test_staircase_rates_and_steps() -> None:
    stairs = Staircase(start=100, step=50, top=300, step_s=10, settle_s=2)

    assert stairs.rates == [100, 150, 200, 250, 300]
    assert stairs.step_at(0) == 0
    assert stairs.step_at(19.9) == 1
    assert stairs.step_at(49.9) == 4
    assert stairs.step_at(50.0) is None


@pytest.mark.parametrize(
    "kwargs", [{"start": 0}, {"step": 0}, {"top": 50}, {"settle_s": 20.0}, {"settle_s": -1.0}]
)
def test_staircase_rejects_impossible_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Staircase(**{"start": 100, "step": 100, "top": 500, "step_s": 20, "settle_s": 5, **kwargs})


def test_histogram_percentile_by_nearest_rank() -> None:
    histogram = {1: 50, 2: 45, 30: 4, 200: 1}

    assert histogram_percentile(histogram, 50) == 1
    assert histogram_percentile(histogram, 95) == 2
    assert histogram_percentile(histogram, 99) == 30
    assert histogram_percentile(histogram, 100) == 200
    assert math.isnan(histogram_percentile({}, 99))


def test_histogram_difference_keeps_only_the_new_calls() -> None:
    before = {1: 10, 5: 2}
    after = {1: 15, 5: 2, 80: 3}

    assert histogram_difference(after, before) == {1: 5, 80: 3}
    assert histogram_percentile(histogram_difference(after, before), 99) == 80


def test_merge_histograms_adds_counts() -> None:
    assert merge_histograms([{1: 2, 3: 1}, {3: 4, 9: 1}]) == {1: 2, 3: 5, 9: 1}
