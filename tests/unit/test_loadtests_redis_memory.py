"""The Redis memory budget's arithmetic (loadtests/redis_memory.py): the busiest window of the
reference day, and which bound holds the stream."""

from __future__ import annotations

import pytest

from loadtests.locust.daycurve import DayCurve
from loadtests.redis_memory import KeySample, RedisFootprint, busiest_window, day_budget
from server.config import Settings


def footprint(*, bytes_per_entry: int = 500, events_per_order: int = 4) -> RedisFootprint:
    """A run of 1,000 orders, 100 of them still under way (one event so far); a group's
    ledger holds one entry per order."""
    ended = 900 * events_per_order
    return RedisFootprint(
        stream_entries=ended + 100,
        stream_bytes=(ended + 100) * bytes_per_entry,
        known_ids=KeySample(1000, 80.0),
        ledgers=KeySample(1000, 150.0),
        orders=1000,
        events=ended + 100,
        ended_orders=900,
        ended_events=ended,
        used_bytes=0,
        max_bytes=0,
        policy="noeviction",
    )


def test_the_busiest_hour_of_the_reference_day_is_its_sale() -> None:
    curve = DayCurve()
    sale = curve.orders_between(20 * 3600, 21 * 3600)

    assert busiest_window(curve, 3600) == pytest.approx(sale, rel=1e-3)
    # The sale's 10-minute plateau at 237 orders/s is the busiest 10 minutes.
    assert busiest_window(curve, 600) == pytest.approx(237 * 600, rel=1e-3)


def test_the_age_bound_holds_the_stream_when_it_is_below_the_length_caps() -> None:
    settings = Settings(event_stream_max_age_s=600)
    budget = day_budget(footprint(), settings)

    # 142,200 orders in the busiest 10 minutes, 4 events in each one's life, 500 bytes an
    # entry (orders still under way when the run ended do not count).
    assert budget.stream_mb == pytest.approx(237 * 600 * 4 * 500 / 1e6, rel=1e-3)
    assert budget.stream_lagging_mb == budget.stream_mb
    assert budget.day_of_stream_mb == pytest.approx(500_000 * 4 * 500 / 1e6, rel=1e-3)


def test_the_usual_length_holds_the_stream_while_groups_keep_up_and_ten_times_it_when_one_lags() -> (
    None
):
    settings = Settings(event_stream_max_age_s=3600, event_stream_maxlen=100_000)
    budget = day_budget(footprint(), settings)

    assert budget.stream_mb == pytest.approx(100_000 * 500 / 1e6)
    assert budget.stream_lagging_mb == pytest.approx(1_000_000 * 500 / 1e6)


def test_known_ids_stay_a_day_and_a_ledger_a_week() -> None:
    budget = day_budget(footprint(), Settings())

    assert budget.known_ids_mb == pytest.approx(500_000 * 80 / 1e6)
    assert budget.ledger_mb == pytest.approx(7 * 500_000 * 150 / 1e6)
