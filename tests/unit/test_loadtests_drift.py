"""The soak's windows over the plateau, each window's figures from Locust's history and the
process sampler, and the comparison of the first full window with the last."""

from __future__ import annotations

import math

import pytest

from loadtests.drift import (
    COMPARISON_HEADER,
    REDIS_USED,
    change,
    comparison_rows,
    measure,
    window_header,
    window_rows,
    windows,
    within,
)
from loadtests.locuststats import History
from loadtests.locuststats import Sample as Row
from loadtests.sampler import ProcessSampler
from loadtests.sampler import Sample as Reading

CREATE = "OrderService/CreateOrder"
HTTP_CREATE = "HTTP " + CREATE


def test_windows_tile_the_plateau_from_its_start_and_leave_out_a_short_rest() -> None:
    assert windows(1000.0, 1040.0, 15.0) == [(1000.0, 1015.0), (1015.0, 1030.0)]
    assert windows(1000.0, 1030.0, 10.0) == [(1000.0, 1010.0), (1010.0, 1020.0), (1020.0, 1030.0)]


def test_a_plateau_a_hair_short_of_whole_windows_still_has_them_all() -> None:
    # Wall-clock plateau ends lose precision around 1.7e9 s.
    start = 1_764_000_000.123
    end = start + 1800.0 - 1e-7

    assert len(windows(start, end, 300.0)) == 6


def test_a_plateau_shorter_than_one_window_has_none() -> None:
    assert windows(1000.0, 1009.0, 10.0) == []
    assert windows(1000.0, 990.0, 10.0) == []


def test_a_window_of_no_length_is_refused() -> None:
    with pytest.raises(ValueError):
        windows(0.0, 10.0, 0.0)


@pytest.mark.parametrize(
    ("first", "last", "grown"),
    [(10.0, 11.0, 0.1), (10.0, 9.0, -0.1), (4.0, 10.0, 1.5), (2.5, 2.5, 0.0)],
)
def test_change_is_the_growth_as_a_fraction_of_the_first(
    first: float, last: float, grown: float
) -> None:
    assert change(first, last) == pytest.approx(grown)


@pytest.mark.parametrize(
    ("first", "last"), [(math.nan, 1.0), (1.0, math.nan), (0.0, 1.0), (-1.0, 1.0)]
)
def test_change_of_a_figure_without_a_positive_first_value_is_nan(
    first: float, last: float
) -> None:
    assert math.isnan(change(first, last))


def test_a_figure_may_grow_up_to_the_tolerance_and_not_beyond() -> None:
    assert within(10.0, 11.0, 0.1)
    assert within(4.0, 5.0, 0.25)
    assert not within(10.0, 11.001, 0.1)
    assert not within(9.6, 16.4, 0.1)  # the measured 45-minute run
    assert within(16.4, 9.6, 0.1)  # getting better is never a failure
    assert within(9.6, 16.4, 1.0)  # a loose tolerance lets it pass


def test_a_figure_that_cannot_be_compared_is_not_within_any_tolerance() -> None:
    assert not within(math.nan, 5.0, 10.0)
    assert not within(0.0, 5.0, 10.0)
    assert not within(5.0, math.nan, 10.0)


def _steady_history(
    name: str, per_s: int, mean_ms: float, slower_from: float, slower_ms: float
) -> list[Row]:
    """`per_s` calls a second from t=1000 to 1040; each call takes `mean_ms` until
    `slower_from` and `slower_ms` after; the 10 s p50/p99 rows are the call time, x3."""
    rows, total, total_ms = [], 0, 0.0
    for at in range(1000, 1041):
        each = mean_ms if at <= slower_from else slower_ms
        if at > 1000:
            total, total_ms = total + per_s, total_ms + per_s * each
        mean = total_ms / total if total else math.nan
        rows.append(Row(at, total, 0, mean, each, 3 * each))
    return rows


def _sampler() -> ProcessSampler:
    """Server at 50 % of a core until t=1020 and 100 % after, postgres at 20 %, the load
    at 30 %; the machine 120 % then 170 %; server RSS 60 MB then 80 MB; Redis 2 MB then 3."""
    sampler = ProcessSampler(lambda: {})
    server = postgres = load = machine = 0.0
    for at in range(1000, 1041):
        rss = 60 if at <= 1020 else 80
        sampler.samples.setdefault("server", []).append(
            Reading(at, {11: rss * 1024, 12: 1024}, {}, {11: server, 12: 0.0})
        )
        sampler.samples.setdefault("postgres", []).append(Reading(at, {21: 1}, {}, {21: postgres}))
        sampler.samples.setdefault("load", []).append(Reading(at, {31: 1}, {}, {31: load}))
        sampler.machine.append((at, machine))
        sampler.readings.setdefault(REDIS_USED, []).append((at, 2.0 if at <= 1020 else 3.0))
        server += 0.5 if at < 1020 else 1.0
        postgres += 0.2
        load += 0.3
        machine += 1.2 if at < 1020 else 1.7
    return sampler


def test_a_windows_figures_come_from_locusts_history_and_the_sampler() -> None:
    history = History(
        {
            CREATE: _steady_history(CREATE, 40, 10.0, 1020, 20.0),
            HTTP_CREATE: _steady_history(HTTP_CREATE, 10, 30.0, 1040, 30.0),
        }
    )
    sampler = _sampler()

    first = measure(history, sampler, CREATE, [CREATE, HTTP_CREATE], (1000.0, 1020.0), 55.0)
    last = measure(history, sampler, CREATE, [CREATE, HTTP_CREATE], (1020.0, 1040.0), 55.0)

    assert first.orders_per_s == pytest.approx(50.0)  # gRPC and HTTP orders together
    assert (first.create.mean_ms, last.create.mean_ms) == pytest.approx((10.0, 20.0))
    assert (last.create.p50_ms, last.create.p99_ms) == (20.0, 60.0)
    # 50 % of a core is 500 ms of CPU a second, over 50 orders a second.
    assert first.cpu_ms == pytest.approx({"server": 10.0, "postgres": 4.0, "load": 6.0})
    assert last.cpu_ms["server"] == pytest.approx(20.0)
    assert first.stack_cpu_ms == pytest.approx(14.0)  # the load processes are not under test
    assert (first.machine_cpu_ms, last.machine_cpu_ms) == pytest.approx((24.0, 34.0))
    assert (first.server_rss_mb, last.server_rss_mb) == (60.0, 80.0)
    assert (first.redis_used_mb, last.redis_used_mb) == (2.0, 3.0)


def test_without_sampled_services_the_cpu_under_test_is_the_whole_machines() -> None:
    sampler = _sampler()
    del sampler.samples["server"], sampler.samples["postgres"]
    history = History({CREATE: _steady_history(CREATE, 50, 10.0, 1040, 10.0)})

    window = measure(history, sampler, CREATE, [CREATE], (1000.0, 1020.0), 50.0)

    assert window.stack_cpu_ms == window.machine_cpu_ms == pytest.approx(24.0)
    assert math.isnan(window.server_rss_mb)


def test_a_window_without_orders_has_no_cpu_per_order() -> None:
    history = History({CREATE: _steady_history(CREATE, 0, 10.0, 1040, 10.0)})

    window = measure(history, _sampler(), CREATE, [CREATE], (1000.0, 1020.0), 50.0)

    assert window.orders_per_s == 0
    assert math.isnan(window.stack_cpu_ms)
    assert not within(window.stack_cpu_ms, window.stack_cpu_ms, 10.0)


def test_the_tables_show_each_window_and_limit_only_the_checked_figures() -> None:
    history = History({CREATE: _steady_history(CREATE, 50, 10.0, 1020, 12.0)})
    sampler = _sampler()
    groups = list(sampler.samples)
    first, last = (
        measure(history, sampler, CREATE, [CREATE], w, 50.0) for w in windows(1000.0, 1040.0, 20.0)
    )

    rows = window_rows([first, last], groups, 1000.0)
    compared = comparison_rows(first, last, groups, 0.1)

    assert len(window_header(groups)) == len(rows[0]) == len(rows[1])
    assert [r[0] for r in rows] == ["0:00-0:20", "0:20-0:40"]
    assert rows[0][1] == "50.0 of 50.0"
    assert all(len(r) == len(COMPARISON_HEADER) for r in compared)
    limited = {r[0]: r[3] for r in compared if r[4]}
    assert limited == {
        "CPU per order, processes under test (ms)": "+71.4%",
        "order creation mean (ms)": "+20.0%",
    }
    assert {r[4] for r in compared if r[4]} == {"at most +10%"}
