"""The closed-loop driver: percentiles, merging, outcome labels, and loops run in load
processes of their own."""

from __future__ import annotations

import asyncio
import functools
import math

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.driver import OK, Recording, merge, outcome_label, percentile, run_in_processes

_values = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1)
_quantiles = st.floats(min_value=0, max_value=100)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.5], 0) == 7.5
    assert percentile([7.5], 99) == 7.5
    assert percentile([7.5], 100) == 7.5


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def test_percentile_lands_on_exact_rank_when_there_is_one() -> None:
    values = [float(n) for n in range(101)]
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("q", [-0.1, 100.1])
def test_percentile_outside_0_to_100_is_rejected(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


@given(_values, _quantiles)
def test_percentile_stays_within_the_values(values: list[float], q: float) -> None:
    values.sort()
    assert values[0] <= percentile(values, q) <= values[-1]


@given(_values, _quantiles, _quantiles)
def test_percentile_grows_with_q(values: list[float], q1: float, q2: float) -> None:
    values.sort()
    low, high = sorted((q1, q2))
    assert percentile(values, low) <= percentile(values, high) + 1e-9 * max(1.0, values[-1])


def test_merge_adds_throughputs_and_pools_latencies() -> None:
    fast = Recording(latencies=[0.001] * 100, outcomes={OK: 100}, failures=0, window=2.0)
    slow = Recording(
        latencies=[0.003] * 300, outcomes={OK: 290, "UNAVAILABLE": 10}, failures=10, window=3.0
    )

    result = merge([fast, slow])

    assert result.ops_per_s == pytest.approx(100 / 2.0 + 300 / 3.0)
    assert result.count == 400
    assert result.failures == 10
    assert result.outcomes == {OK: 390, "UNAVAILABLE": 10}
    # Three quarters of the pooled calls took 3 ms, so the median is theirs.
    assert result.p50_ms == pytest.approx(3.0)
    assert result.p99_ms == pytest.approx(3.0)
    assert result.mean_ms == pytest.approx((100 * 1.0 + 300 * 3.0) / 400)
    assert result.window_s == 3.0


def test_merge_percentiles_come_from_pooled_latencies_not_averaged_ones() -> None:
    first = Recording(latencies=[0.001, 0.002], outcomes={OK: 2}, failures=0, window=1.0)
    second = Recording(latencies=[0.010, 0.020, 0.030], outcomes={OK: 3}, failures=0, window=1.0)

    result = merge([first, second])

    assert result.p50_ms == pytest.approx(10.0)
    assert result.p90_ms == pytest.approx(percentile([1.0, 2.0, 10.0, 20.0, 30.0], 90))


def test_merge_of_nothing_is_rejected() -> None:
    with pytest.raises(ValueError):
        merge([])


def test_summary_of_a_loop_that_completed_nothing_has_no_rate_and_no_latency() -> None:
    result = merge([Recording(latencies=[], outcomes={}, failures=0, window=0.0)])

    assert result.ops_per_s == 0.0
    assert result.count == 0
    assert math.isnan(result.p50_ms)
    assert math.isnan(result.mean_ms)


def test_failed_rpc_is_labelled_with_its_status_code() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "full", None
    )

    assert outcome_label(error) == "RESOURCE_EXHAUSTED"


def test_other_failures_are_labelled_with_their_class() -> None:
    assert outcome_label(TimeoutError()) == "TimeoutError"
    assert outcome_label(KeyError("sku")) == "KeyError"


class _Countdown:
    """An op with a finite supply: it sets `exhausted` after `supply` calls in its process."""

    def __init__(self, supply: int) -> None:
        self.left = supply
        self.exhausted = asyncio.Event()

    async def __call__(self, worker: int) -> str:
        await asyncio.sleep(0.001)
        self.left -= 1
        if self.left <= 0:
            self.exhausted.set()
        return f"worker-{worker}"


async def open_countdown(supply: int) -> _Countdown:
    """Op factory of `_Countdown` (module level, so a load process can build it)."""
    return _Countdown(supply)


async def open_failing() -> _Countdown:
    """An op factory that fails in the load process."""
    raise LookupError("no such catalogue")


def test_loops_in_load_processes_pool_their_workers_and_stop_when_the_supply_runs_out() -> None:
    result = run_in_processes(
        functools.partial(open_countdown, 50),
        processes=2,
        concurrency=4,
        duration=60.0,
        warmup=0.0,
    )

    # Each process stops once its own 50 are spent; calls in flight when it did still count.
    assert 100 <= result.count <= 100 + 4
    assert set(result.outcomes) == {f"worker-{n}" for n in range(4)}
    assert result.failures == 0
    assert 0 < result.window_s < 30


def test_a_load_process_that_fails_reports_its_error() -> None:
    with pytest.raises(RuntimeError, match="no such catalogue"):
        run_in_processes(open_failing, processes=1, concurrency=1, duration=1.0)
